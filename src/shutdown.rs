//! Stopping on SIGTERM or SIGINT: what an orchestrator's stop (Kubernetes, systemd) or a
//! Ctrl-C does to a node.
//!
//! Nothing durable depends on it: an append is acknowledged only once it is on a
//! quorum's disks, so a node may die at any instant (`kill -9` is what the crash tests
//! do). What a graceful stop adds is for clients: for `grace` the node keeps serving, but
//! `/health/ready` answers 503 `shutting_down` (a load balancer stops sending), every
//! answer carries `Connection: close` (clients reconnect elsewhere after the request
//! they are in), new streams get 503, and every open stream is sent a final
//! `{"type":"end","reason":"shutdown"}` (clients resume elsewhere with their cursor),
//! and in a cluster the shards this node leads are handed to other voters while it
//! refuses replication (`crate::shard::leaders`, `crate::shard::rpc`); then the process
//! exits with status 0. A second signal exits at once.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

static REQUESTED: AtomicBool = AtomicBool::new(false);

/// Whether a stop was requested (the node is in its grace period).
pub fn requested() -> bool {
    REQUESTED.load(Ordering::Acquire)
}

/// Blocks SIGTERM and SIGINT in the calling thread, and so in every thread it starts
/// afterwards (call it before any), and starts the thread that waits for them.
pub fn install(grace: Duration) -> std::io::Result<()> {
    // SAFETY: plain signal-set calls on a local set; pthread_sigmask changes only this
    // thread's mask.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        set
    };
    std::thread::Builder::new().name("fleetlm-signals".into()).spawn(move || wait_for_signals(set, grace))?;
    Ok(())
}

fn wait_for_signals(set: libc::sigset_t, grace: Duration) {
    let first = next_signal(&set);
    REQUESTED.store(true, Ordering::Release);
    eprintln!(
        "fleetlm: {} received: stopping in {} ms (not ready, streams ended, connections closed after each answer); \
         a second signal stops at once",
        signal_name(first),
        grace.as_millis()
    );
    // The second signal, or the end of the grace period, whichever comes first.
    let (tx, rx) = std::sync::mpsc::channel::<i32>();
    let _ = std::thread::Builder::new().name("fleetlm-signals-2".into()).spawn(move || {
        let _ = tx.send(next_signal(&set));
    });
    if let Ok(second) = rx.recv_timeout(grace) {
        eprintln!("fleetlm: {} received again: stopping now", signal_name(second));
    } else {
        eprintln!("fleetlm: stopped");
    }
    std::process::exit(0);
}

fn next_signal(set: &libc::sigset_t) -> i32 {
    loop {
        let mut sig = 0;
        // SAFETY: `set` is a valid, initialised signal set; `sig` a valid out pointer.
        if unsafe { libc::sigwait(set, &mut sig) } == 0 {
            return sig;
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        _ => "signal",
    }
}
