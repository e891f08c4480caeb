//! WAL record and segment decoding and recovery's scan on arbitrary bytes (a damaged or
//! hostile segment file): never a panic, never a read outside the buffer.
#![no_main]
use fleetlm::wal::{format, recovery};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = format::decode_segment_header(data);
    for at in [0, 8, 16, 24, 32, 64, data.len().saturating_sub(8), usize::MAX - 3] {
        if let format::Slot::Record(meta) = format::decode_slot(data, at, 1 << 20) {
            let _ = format::payload_at(data, at, meta.payload_len);
        }
    }
    let half = data.len() / 2;
    let _ = recovery::scan(&[(0, &data[..half]), (1, &data[half..])], 1 << 20);
});
