//! Single-threaded channels for openraft on one glommio executor: `LocalMpsc`,
//! `LocalWatch`, `LocalOneshot`, and the async mutex `LocalMutex`.
//!
//! A shard's Raft group lives on one core (openraft's `single-threaded` feature), so
//! its channels never cross threads. tokio's channels, which openraft's tokio adapter
//! provides, pay for threads anyway: atomics, a semaphore per bounded send, and for a
//! watch a lock on each of eight notifiers per send. openraft sends on several watches
//! after every batch of work of every group (`RaftCore::flush_metrics`), so with many
//! small groups that cost is paid per append (bench/results/shard-sweep.md). These are
//! `Rc` + `RefCell` versions with the same semantics, checked by openraft's runtime
//! conformance suite (`tests/raft_runtime.rs`). Being `!Send`, they cannot be moved to
//! another thread by mistake: the compiler refuses.
//!
//! Rule kept throughout: no user value is dropped and no waker is woken while a
//! `RefCell` is borrowed (a dropped message may own a sender of the same channel).

mod mpsc;
mod mutex;
mod oneshot;
mod watch;

use std::task::Waker;

pub use mpsc::{LocalMpsc, LocalMpscReceiver, LocalMpscSend, LocalMpscSender, LocalMpscWeakSender};
pub use mutex::{LocalMutex, LocalMutexGuard};
pub use oneshot::{LocalOneshot, LocalOneshotReceiver, LocalOneshotSender, OneshotClosed, oneshot_channel};
pub use watch::{LocalWatch, LocalWatchReceiver, LocalWatchSender};

/// Wakes every waker taken out of a list (outside any borrow).
fn wake_all(wakers: Vec<Waker>) {
    for w in wakers {
        w.wake();
    }
}

/// Adds `waker` unless an equivalent one is already registered: a future polled again
/// before anything changed must not grow the list.
fn register(list: &mut Vec<Waker>, waker: &Waker) {
    if !list.iter().any(|w| w.will_wake(waker)) {
        list.push(waker.clone());
    }
}
