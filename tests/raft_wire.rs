//! The node-to-node frames: what a leader sends is what a follower decodes (postcard,
//! commands with arbitrary JSON inside), frames over the limit are refused on both
//! sides, and a snapshot's body bytes stream through the staging receiver unchanged.
use fleetlm::config::StoreLimits;
use fleetlm::raft::FleetRaft;
use fleetlm::raft::bodies::{BodiesReceiver, BodiesSource};
use fleetlm::raft::wire::{PeerRequest, WireError, read_frame, write_frame};
use fleetlm::shard::leaders::preferred_leader;
use fleetlm::store::{Command, NewMessage};
use futures_lite::future::block_on;
use futures_lite::io::Cursor;
use openraft::entry::RaftEntry;
use openraft::raft::AppendEntriesRequest;
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::vote::RaftLeaderId;
use serde_json::json;

type C = FleetRaft;

fn append_command(text: &str) -> Command {
    let v = json!({"role": "user", "parts": [{"type": "text", "text": text}, {"type": "x", "n": [1, 2.5, null]}],
                   "metadata": {"k": {"nested": true}}});
    let message = NewMessage::from_json(&v, false, &StoreLimits::default()).expect("valid message");
    Command::Append {
        id: "ctx-é".into(),
        message,
        if_version: Some(3),
        idempotency_key: Some("k1".into()),
        now: "t".into(),
    }
}

fn log_id(term: u64, index: u64) -> LogIdOf<C> {
    LogIdOf::<C>::new(openraft::impls::leader_id_adv::LeaderId::new(term, 1).to_committed(), index)
}

#[test]
fn append_entries_round_trip_through_a_frame() {
    let entries: Vec<EntryOf<C>> =
        (1..=3).map(|i| EntryOf::<C>::new_normal(log_id(2, i), append_command(&format!("m{i} \"quoted\"")))).collect();
    let rpc = AppendEntriesRequest::<C> {
        vote: VoteOf::<C>::new_committed(2, 1),
        prev_log_id: Some(log_id(1, 0)),
        entries: entries.clone(),
        leader_commit: Some(log_id(2, 1)),
    };
    let req = PeerRequest::Append { shard: 7, rpc };
    let mut buf = Cursor::new(Vec::new());
    block_on(write_frame(&mut buf, &req, 1 << 20)).expect("encode");
    let mut read = Cursor::new(buf.into_inner());
    let back: PeerRequest = block_on(read_frame(&mut read, 1 << 20)).expect("decode");
    let PeerRequest::Append { shard, rpc } = back else { panic!("wrong variant") };
    assert_eq!(shard, 7);
    assert_eq!(rpc.entries, entries);
    assert_eq!(rpc.leader_commit, Some(log_id(2, 1)));
}

#[test]
fn frames_over_the_limit_are_refused_both_ways() {
    let req = PeerRequest::Call { id: 1, shard: 0, call: vec![7u8; 4096] };
    let mut buf = Cursor::new(Vec::new());
    assert!(matches!(block_on(write_frame(&mut buf, &req, 1024)), Err(WireError::TooLarge(_, 1024))));
    block_on(write_frame(&mut buf, &req, 1 << 20)).expect("encode");
    let mut read = Cursor::new(buf.into_inner());
    let r: Result<PeerRequest, _> = block_on(read_frame(&mut read, 1024));
    assert!(matches!(r, Err(WireError::TooLarge(_, 1024))));
    // A truncated frame is an i/o error, not a panic or a hang.
    let mut short = Cursor::new(vec![10u8, 0, 0, 0, 1, 2]);
    let r: Result<PeerRequest, _> = block_on(read_frame(&mut short, 1024));
    assert!(matches!(r, Err(WireError::Io(_))));
}

#[test]
fn snapshot_bodies_stream_into_staging_files_unchanged() {
    let dir = std::env::temp_dir().join(format!("fleetlm-wire-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let segment = 4096u64;
    let bytes: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut rx = BodiesReceiver::create(&dir.join("incoming"), segment).expect("staging");
    for chunk in bytes.chunks(777) {
        rx.write(chunk).expect("write");
    }
    let source = rx.finish().expect("finish");
    assert_eq!(source.len(), bytes.len() as u64);
    let mut back = vec![0u8; bytes.len()];
    source.read_at(0, &mut back).expect("read back");
    assert_eq!(back, bytes);
    // Reads that span segment files.
    let mut mid = vec![0u8; 5000];
    source.read_at(3000, &mut mid).expect("read across segments");
    assert_eq!(mid, bytes[3000..8000]);
    assert!(source.read_at(9000, &mut [0u8; 2000]).is_err(), "past the end");
    assert!(matches!(source, BodiesSource::Files { .. }));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn leaders_spread_by_shard_over_sorted_voters() {
    let voters = [3, 1, 2];
    let picks: Vec<_> = (0..6).map(|s| preferred_leader(s, &voters).unwrap()).collect();
    assert_eq!(picks, vec![1, 2, 3, 1, 2, 3]);
    assert_eq!(preferred_leader(5, &[]), None);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Commands in the WAL are postcard bytes written by whichever build proposed them. These
/// two were written at 569dcaa, when a message's parts and metadata were JSON values
/// (encoded as their text by an adapter): they must still decode, to the same message, and
/// encode back to the same bytes — a restart replays such entries through apply.
#[test]
fn commands_written_by_an_earlier_build_still_decode() {
    let append = "02036374780475736572425b7b2274657874223a2268c3a9205c22715c22222c2274797065223a2274657874227d2c7b226e22\
                  3a5b312c322e352c6e756c6c5d2c2274797065223a2278227d5d1b7b2261223a312c226b223a7b226e6573746564223a747275\
                  657d7d0a0000010301026b310174";
    let compact = "040163010673797374656d025b5d027b7d000104010432303236000174";
    let unhex =
        |h: &str| (0..h.len()).step_by(2).map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap()).collect::<Vec<u8>>();

    let v = json!({"role": "user", "parts": [{"type": "text", "text": "hé \"q\""}, {"type": "x", "n": [1, 2.5, null]}],
                   "metadata": {"k": {"nested": true}, "a": 1}});
    let message = NewMessage::from_json(&v, false, &StoreLimits::default()).unwrap();
    let expected = Command::Append {
        id: "ctx".into(),
        message,
        if_version: Some(3),
        idempotency_key: Some("k1".into()),
        now: "t".into(),
    };
    let decoded: Command = postcard::from_bytes(&unhex(append)).expect("an earlier build's append decodes");
    assert_eq!(decoded, expected);
    assert_eq!(hex(&postcard::to_allocvec(&expected).unwrap()), append);

    let item = json!({"role": "system", "parts": [], "seq": 4, "inserted_at": "2026"});
    let replacement = vec![NewMessage::from_json(&item, true, &StoreLimits::default()).unwrap()];
    let expected = Command::Compact { id: "c".into(), replacement, if_version: None, now: "t".into() };
    let decoded: Command = postcard::from_bytes(&unhex(compact)).expect("an earlier build's compaction decodes");
    assert_eq!(decoded, expected);
    assert_eq!(hex(&postcard::to_allocvec(&expected).unwrap()), compact);
}
