//! A node whose core fails to start stops as a whole, with the reason, instead of
//! running on with some of its shards served and others not.
mod common;

use std::time::{Duration, Instant};

#[test]
fn a_core_that_cannot_start_stops_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let base = common::free_ports(3);
    // Core 1's peer port is taken by a bound socket that does not listen (as a client
    // connection's port would be): the port probe sees no listener, the bind fails.
    let _taken = socket_bound(base + 1);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fleetlm"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", base + 2), "--cores", "2", "--insecure-peers"])
        .args(["--peer-listen", &format!("127.0.0.1:{base}"), "--data-dir"])
        .arg(dir.path().join("data"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the node kept running with a core that could not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(err.contains("core 1 stopped") && err.contains("bind peer port"), "{err}");
}

/// A socket bound to `port` on 127.0.0.1 that does not listen.
fn socket_bound(port: u16) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket syscalls on a descriptor we own; `addr` is a valid sockaddr_in.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr { s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be() },
            sin_zero: [0; 8],
        };
        let rc = libc::bind(fd, &addr as *const _ as *const libc::sockaddr, std::mem::size_of_val(&addr) as u32);
        assert_eq!(rc, 0, "bind {port}");
        std::os::fd::OwnedFd::from_raw_fd(fd)
    }
}

/// The CPUs each executor's threads (named `fleetlm-core-N…`: the executor and its
/// helper thread) of process `pid` may run on, from `/proc/PID/task/*/status`; one
/// entry per distinct name and CPU list.
fn executor_cpus(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks of the server") {
        let dir = task.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default().trim().to_owned();
        if !name.starts_with("fleetlm-core-") {
            continue;
        }
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default();
        out.push((name, cpus));
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn executors_are_pinned_one_per_cpu_unless_no_pin() {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if cpus < 2 {
        eprintln!("skipped: needs 2 CPUs to tell pinned from unpinned");
        return;
    }
    let all = format!("0-{}", cpus - 1);
    let tmp = tempfile::tempdir().unwrap();

    let pinned = common::Server::start(&tmp.path().join("pinned"), &["--cores", "2"]);
    let threads = executor_cpus(pinned.pid().unwrap());
    let allowed: Vec<&str> = threads.iter().map(|(_, cpus)| cpus.as_str()).collect();
    assert_eq!(allowed, ["0", "1"], "by default executor i runs on CPU i only: {threads:?}");
    drop(pinned);

    let unpinned = common::Server::start(&tmp.path().join("unpinned"), &["--cores", "2", "--no-pin"]);
    let threads = executor_cpus(unpinned.pid().unwrap());
    assert_eq!(threads.len(), 2, "two executors: {threads:?}");
    for (name, allowed) in &threads {
        assert_eq!(allowed, &all, "{name} with --no-pin may run on every CPU");
    }
    assert_eq!(unpinned.req("GET", "/health/ready", "").status, 200);
}
