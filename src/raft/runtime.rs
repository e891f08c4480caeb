//! `GlommioRuntime`: openraft's `AsyncRuntime` on a glommio executor.
//!
//! openraft (with its `single-threaded` feature) needs spawn, sleep, timeouts, an
//! instant, an rng and channel types. Tasks are `glommio::spawn_local(..).detach()`:
//! openraft drops join handles of tasks it expects to keep running, and a dropped
//! glommio task is cancelled, so every task is detached and its output comes back
//! through a oneshot. Channels are our single-threaded ones (`super::local_channels`:
//! a group never leaves its core, and tokio's thread-safe channels cost measurably per
//! batch), and so is the mutex. Proven by
//! `openraft_rt::testing::Suite` in `tests/raft_runtime.rs`.
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use openraft_rt::{AsyncRuntime, OptionalSend};

use super::local_channels::{LocalMpsc, LocalMutex, LocalOneshot, LocalOneshotReceiver, LocalWatch, oneshot_channel};

/// The runtime: one glommio executor (used by `block_on`; inside an executor the
/// associated functions work on the current one).
pub struct GlommioRuntime {
    executor: glommio::LocalExecutor,
}

impl std::fmt::Debug for GlommioRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GlommioRuntime").finish()
    }
}

/// Why a spawned task produced no output.
#[derive(Debug)]
pub enum JoinError {
    /// The task panicked; the panic was caught at the task boundary.
    Panicked(String),
    /// The task was dropped before finishing (its executor stopped).
    Cancelled,
}

impl std::fmt::Display for JoinError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JoinError::Panicked(msg) => write!(f, "task panicked: {msg}"),
            JoinError::Cancelled => f.write_str("task cancelled"),
        }
    }
}

/// Output of a detached task. Dropping it does not cancel the task.
pub struct JoinHandle<T> {
    rx: LocalOneshotReceiver<Result<T, JoinError>>,
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.rx).poll(cx) {
            Poll::Ready(Ok(out)) => Poll::Ready(out),
            Poll::Ready(Err(_)) => Poll::Ready(Err(JoinError::Cancelled)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A sleep on glommio's timer wheel.
pub struct Sleep {
    timer: glommio::timer::Timer,
}

impl Future for Sleep {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.timer).poll(cx).map(|_| ())
    }
}

/// The deadline of a `timeout` passed.
#[derive(Debug)]
pub struct Elapsed;

impl std::fmt::Display for Elapsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("deadline elapsed")
    }
}

pin_project_lite::pin_project! {
    /// `future`, or `Elapsed` once the timer fires first.
    pub struct Timeout<F> {
        #[pin]
        future: F,
        timer: glommio::timer::Timer,
    }
}

impl<F: Future> Future for Timeout<F> {
    type Output = Result<F::Output, Elapsed>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.future.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        match Pin::new(this.timer).poll(cx) {
            Poll::Ready(_) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `future`, or `Err(Elapsed)` after `duration` (for callers outside openraft).
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    Timeout { future, timer: glommio::timer::Timer::new(duration) }
}

fn until(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

impl AsyncRuntime for GlommioRuntime {
    type JoinError = JoinError;
    type JoinHandle<T: OptionalSend + 'static> = JoinHandle<T>;
    type Sleep = Sleep;
    type Instant = Instant;
    type TimeoutError = Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = Timeout<T>;
    type ThreadLocalRng = rand::rngs::ThreadRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        let (tx, rx) = oneshot_channel();
        glommio::spawn_local(async move {
            // A panic stays inside its task, as with tokio: the handle reports it.
            let out = AssertUnwindSafe(future).catch_unwind().await;
            let _ = tx.send(out.map_err(|p| JoinError::Panicked(panic_message(&*p))));
        })
        .detach();
        JoinHandle { rx }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        Sleep { timer: glommio::timer::Timer::new(duration) }
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Self::sleep(until(deadline))
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        Timeout { future, timer: glommio::timer::Timer::new(duration) }
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        Self::timeout(until(deadline), future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        matches!(join_error, JoinError::Panicked(_))
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        rand::rng()
    }

    type Mpsc = LocalMpsc;
    type Watch = LocalWatch;
    type Oneshot = LocalOneshot;
    type Mutex<T: OptionalSend + 'static> = LocalMutex<T>;

    /// A new executor on the calling thread. `threads` is ignored: glommio is one
    /// executor per thread, and FleetLM runs one runtime per core.
    fn new(_threads: usize) -> Self {
        let executor = glommio::LocalExecutorBuilder::default()
            .io_memory(crate::config::GLOMMIO_IO_MEMORY_BYTES)
            .make()
            .expect("creating a glommio executor (io_uring and locked memory are required)");
        GlommioRuntime { executor }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.executor.run(future)
    }
}
