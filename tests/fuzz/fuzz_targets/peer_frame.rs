//! Peer frames (length, checksum, postcard body) on arbitrary bytes, as a stranger on the
//! peer port could send them after a handshake: a typed error, never a panic, and never
//! an allocation past the frame limit.
#![no_main]
use fleetlm::raft::wire::{PeerRequest, PeerResponse, read_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = futures_lite::io::Cursor::new(data);
    let _ = futures_lite::future::block_on(read_frame::<_, PeerRequest>(&mut r, 1 << 16));
    let mut r = futures_lite::io::Cursor::new(data);
    let _ = futures_lite::future::block_on(read_frame::<_, PeerResponse>(&mut r, 1 << 16));
});
