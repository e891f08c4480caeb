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
//!
//! openraft's sleeps until a deadline — each group's tick loop — end on a grid
//! (`coalesced`, `RAFT_TIMER_SLACK_US`): every group ticks every 10 ms at a random
//! phase, and without the grid each tick of each group was a wake-up of its executor of
//! its own (and a `membarrier`, a context switch and several `io_uring_enter` each, on
//! this machine's VM). Its other sleeps and its timeouts stay exact.
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

/// `deadline` moved later, to the next point of a grid of `slack` starting at `origin`
/// (unchanged when `slack` is zero or the deadline is before the origin).
fn coalesced(deadline: Instant, origin: Instant, slack: Duration) -> Instant {
    let Some(since) = deadline.checked_duration_since(origin) else { return deadline };
    let slack_ns = slack.as_nanos();
    if slack_ns == 0 {
        return deadline;
    }
    let rounded_ns = since.as_nanos().div_ceil(slack_ns) * slack_ns;
    origin + Duration::from_nanos(u64::try_from(rounded_ns).unwrap_or(u64::MAX))
}

/// The grid's origin, shared by every core of the process.
static TIMER_ORIGIN: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// The duration of an openraft timer set at `now` for `duration`: one at least
/// `RAFT_TIMER_COALESCE_MIN_US` long ends on the grid of `RAFT_TIMER_SLACK_US`
/// (never earlier than asked), so that timers of many groups share a wake-up.
fn raft_timer_duration(now: Instant, duration: Duration, origin: Instant) -> Duration {
    if duration < Duration::from_micros(crate::config::RAFT_TIMER_COALESCE_MIN_US) {
        return duration;
    }
    let slack = Duration::from_micros(crate::config::RAFT_TIMER_SLACK_US);
    coalesced(now + duration, origin, slack).saturating_duration_since(now)
}

/// A timer for openraft (see `raft_timer_duration`).
fn raft_timer(duration: Duration) -> glommio::timer::Timer {
    glommio::timer::Timer::new(raft_timer_duration(Instant::now(), duration, *TIMER_ORIGIN))
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

    /// openraft's periodic timer (each group's tick loop sleeps until its next tick)
    /// ends on the grid; its other sleeps and its timeouts are exact.
    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        Sleep { timer: raft_timer(until(deadline)) }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_move_to_the_next_grid_point_and_never_earlier() {
        let origin = Instant::now();
        let slack = Duration::from_millis(2);
        let at = |us: u64| origin + Duration::from_micros(us);
        assert_eq!(coalesced(at(1), origin, slack), at(2_000));
        assert_eq!(coalesced(at(2_000), origin, slack), at(2_000), "on the grid: unchanged");
        assert_eq!(coalesced(at(2_001), origin, slack), at(4_000));
        assert_eq!(coalesced(at(7_999), origin, slack), at(8_000));
        for us in (0..50_000).step_by(137) {
            let c = coalesced(at(us), origin, slack);
            assert!(c >= at(us) && c - at(us) < slack, "{us} µs → {:?}", c - origin);
        }
        // No grid: unchanged; a deadline before the origin: unchanged.
        assert_eq!(coalesced(at(1_234), origin, Duration::ZERO), at(1_234));
        let before = origin.checked_sub(Duration::from_millis(5)).unwrap_or(origin);
        assert_eq!(coalesced(before, origin, slack), before);
    }

    #[test]
    fn only_sleeps_long_enough_are_coalesced_and_none_is_shortened() {
        let origin = Instant::now();
        let now = origin + Duration::from_micros(12_345);
        let min = Duration::from_micros(crate::config::RAFT_TIMER_COALESCE_MIN_US);
        let slack = Duration::from_micros(crate::config::RAFT_TIMER_SLACK_US);
        // Short sleeps (a yield, openraft's 1 µs batching pause) stay exact.
        for d in [Duration::ZERO, Duration::from_nanos(1), Duration::from_micros(1), min - Duration::from_nanos(1)] {
            assert_eq!(raft_timer_duration(now, d, origin), d);
        }
        // A 10 ms tick ends on the grid, at most one step late.
        for d in [min, Duration::from_millis(10), Duration::from_millis(150), Duration::from_secs(3)] {
            let got = raft_timer_duration(now, d, origin);
            assert!(got >= d && got - d < slack, "{d:?} → {got:?}");
            let end = now + got;
            assert_eq!((end - origin).as_nanos() % slack.as_nanos(), 0, "{d:?} ends on the grid");
        }
    }
}
