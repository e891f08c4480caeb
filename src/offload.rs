//! CPU-heavy pure work (validating and rendering a large request body) on background
//! threads of the lowest priority, so that it uses CPU the executors leave idle instead
//! of stalling them: a 1 MiB body of numbers takes ≈30 ms to parse and render; on an
//! executor that is 30 ms of latency for every other request of its core, and on the
//! executor's own blocking-pool thread (same CPU, same priority) the kernel still hands
//! it whole time slices. Under SCHED_IDLE the executors preempt it.
//!
//! The queue is bounded: when it is full the work is refused (the caller answers 503),
//! so a flood of large bodies waits in the clients, not in this process's memory.
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// The node's pool of low-priority worker threads.
pub struct Offload {
    tx: SyncSender<Job>,
}

/// The queue was full.
#[derive(Debug, thiserror::Error)]
#[error("the server is busy with large requests; retry shortly")]
pub struct Busy;

impl Offload {
    /// `threads` workers at the idle scheduling class, at most `queue_max` jobs waiting.
    pub fn start(threads: usize, queue_max: usize) -> std::io::Result<Arc<Offload>> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(queue_max.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("fleetlm-offload-{i}")).spawn(move || worker(&rx))?;
        }
        Ok(Arc::new(Offload { tx }))
    }

    /// Runs `f` on a worker; its result, or `Busy` when the queue is full.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Busy> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        match self.tx.try_send(job) {
            Ok(()) => result.await.map_err(|_| Busy),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    // SAFETY: plain syscalls on this thread. Lowering one's own priority is always
    // allowed; a failure only leaves the thread at normal priority. SCHED_IDLE: the
    // thread runs only on CPU time nothing else wants, and a waking executor takes the
    // CPU back at once (nice 19 alone still left the executors' tail latency at 3x).
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19);
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            // A panic (a bug) costs that request its answer (the caller sees `Busy`),
            // never the worker.
            Ok(job) => {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            }
            Err(_) => return, // the node is gone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_jobs_and_refuses_past_the_queue() {
        let offload = Offload::start(1, 1).unwrap();
        let got = futures_lite::future::block_on(offload.run(|| 6 * 7)).unwrap();
        assert_eq!(got, 42);
        // One job blocks the worker, one waits in the queue, the third is refused.
        let (release, wait) = std::sync::mpsc::channel::<()>();
        let o = offload.clone();
        let blocker = std::thread::spawn(move || futures_lite::future::block_on(o.run(move || wait.recv().is_ok())));
        std::thread::sleep(std::time::Duration::from_millis(100));
        let o = offload.clone();
        let queued = std::thread::spawn(move || futures_lite::future::block_on(o.run(|| 1)));
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert!(futures_lite::future::block_on(offload.run(|| 2)).is_err(), "the queue holds one");
        release.send(()).unwrap();
        assert!(blocker.join().unwrap().unwrap());
        assert_eq!(queued.join().unwrap().unwrap(), 1);
    }
}
