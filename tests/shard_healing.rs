//! A shard that a storage failure stopped heals itself: on a small real filesystem
//! (tmpfs) filled to the brim, a message-body segment cannot be allocated, applying
//! fails and openraft stops the shard's Raft core; once space is freed the node re-opens
//! the shard in-process (no restart), readiness and `/metrics` say so, and every
//! acknowledged append is there. Needs root (it mounts a tmpfs), as CI runs.
mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{msg_body, request, try_request};

struct Mounted {
    dir: std::path::PathBuf,
    server: Option<Child>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.server.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_shard_stopped_by_a_full_disk_reopens_once_space_is_freed() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let ok = Command::new("mount").args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(ok.success(), "mount a tmpfs");
    let mut m = Mounted { dir: mnt.clone(), server: None };
    let port = common::free_ports(1);
    m.server = Some(
        Command::new(env!("CARGO_BIN_EXE_fleetlm"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
            .arg(mnt.join("data"))
            .args(["--shards", "1", "--cores", "1", "--disk-reserve-bytes", "0", "--body-max-bytes", "65536"])
            .args(["--segment-size-bytes", "1048576", "--body-segment-size-bytes", "262144"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(tmp.path().join("server.log")).unwrap()))
            .spawn()
            .unwrap(),
    );
    let ready = || try_request(port, "GET", "/health/ready").is_some_and(|r| r.status == 200);
    wait_for(60, "ready", ready);
    assert_eq!(request(port, "PUT", "/v1/contexts/h", &[], br#"{"token_budget":100000000}"#).status, 201);
    // Fill the filesystem (the guard is off: --disk-reserve-bytes 0).
    let filler = mnt.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let block = vec![7u8; 64 << 10];
    while std::io::Write::write_all(&mut f, &block).is_ok() {}
    drop(f);
    // Appends of 50 KB: a new 256 KiB body segment is needed every few, and cannot be.
    let mut acked = Vec::new();
    for i in 0..40 {
        let body = msg_body(&format!("{i:02}{}", "z".repeat(50_000)));
        let r = request(port, "POST", "/v1/contexts/h/messages", &[], body.as_bytes());
        match r.status {
            201 => acked.push(r.json()["seq"].as_u64().unwrap()),
            503 => break,
            s => panic!("append {i}: {s} {}", String::from_utf8_lossy(&r.body)),
        }
    }
    wait_for(10, "the shard reported stopped", || {
        try_request(port, "GET", "/health/ready")
            .is_some_and(|r| r.status == 503 && r.json()["status"] == "shard_stopped")
    });
    // Space again: the node re-opens the shard by itself.
    std::fs::remove_file(&filler).unwrap();
    wait_for(60, "ready again without a restart", ready);
    let metrics = String::from_utf8(request(port, "GET", "/metrics", &[], b"").body).unwrap();
    assert!(metrics.contains("fleetlm_shard_restarts_total 1"), "{metrics}");
    assert!(metrics.contains("fleetlm_shards_stopped 0"), "{metrics}");
    // Everything acknowledged is there, in order, and the shard takes writes.
    let page = request(port, "GET", "/v1/contexts/h/messages?limit=1000", &[], b"").json();
    let seqs: Vec<u64> = page["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!(acked.iter().all(|s| seqs.contains(s)), "acknowledged {acked:?}, stored {seqs:?}");
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "contiguous");
    let r = request(port, "POST", "/v1/contexts/h/messages", &[], msg_body("after healing").as_bytes());
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["seq"], seqs.len() as u64 + 1);
}
