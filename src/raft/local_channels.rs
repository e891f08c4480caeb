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
use std::cell::{Cell, Ref, RefCell, UnsafeCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use openraft_rt::{
    Mpsc, MpscReceiver, MpscSender, MpscWeakSender, OneshotSender, OptionalSend, OptionalSync, SendError, TryRecvError,
    mutex, oneshot, watch,
};

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

// ---------------------------------------------------------------------------------
// Bounded mpsc

struct MpscState<T> {
    queue: VecDeque<T>,
    capacity: usize,
    senders: usize,
    receiver_alive: bool,
    receiver_waker: Option<Waker>,
    /// Senders waiting for room, in arrival order. Room goes to the front one (woken
    /// alone, one per freed slot), and a sender that finds others waiting queues behind
    /// them: first come, first served, as tokio's semaphore does.
    waiting: VecDeque<WaitingSend>,
    next_ticket: u64,
}

/// A sender's place in the queue for room; its waker is taken when it is woken.
struct WaitingSend {
    ticket: u64,
    waker: Option<Waker>,
}

impl<T> MpscState<T> {
    /// The waker of the front waiting sender if there is room for it (each woken once).
    fn wake_front_if_room(&mut self) -> Option<Waker> {
        if self.queue.len() < self.capacity { self.waiting.front_mut().and_then(|w| w.waker.take()) } else { None }
    }
}

type MpscShared<T> = Rc<RefCell<MpscState<T>>>;

/// The bounded multi-producer channel family.
pub struct LocalMpsc;

pub struct LocalMpscSender<T>(MpscShared<T>);
pub struct LocalMpscReceiver<T>(MpscShared<T>);
/// Does not keep the channel open; upgrades while a strong sender exists.
pub struct LocalMpscWeakSender<T>(MpscShared<T>);

impl Mpsc for LocalMpsc {
    type Sender<T: OptionalSend> = LocalMpscSender<T>;
    type Receiver<T: OptionalSend> = LocalMpscReceiver<T>;
    type WeakSender<T: OptionalSend> = LocalMpscWeakSender<T>;

    fn channel<T: OptionalSend>(buffer: usize) -> (Self::Sender<T>, Self::Receiver<T>) {
        // tokio refuses a zero capacity too.
        assert!(buffer > 0, "mpsc channel capacity must be at least 1");
        let shared = Rc::new(RefCell::new(MpscState {
            queue: VecDeque::new(),
            capacity: buffer,
            senders: 1,
            receiver_alive: true,
            receiver_waker: None,
            waiting: VecDeque::new(),
            next_ticket: 0,
        }));
        (LocalMpscSender(shared.clone()), LocalMpscReceiver(shared))
    }
}

impl<T> Clone for LocalMpscSender<T> {
    fn clone(&self) -> Self {
        self.0.borrow_mut().senders += 1;
        LocalMpscSender(self.0.clone())
    }
}

impl<T> Drop for LocalMpscSender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.0.borrow_mut();
            s.senders -= 1;
            if s.senders == 0 { s.receiver_waker.take() } else { None }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Clone for LocalMpscWeakSender<T> {
    fn clone(&self) -> Self {
        LocalMpscWeakSender(self.0.clone())
    }
}

impl<T> Drop for LocalMpscReceiver<T> {
    fn drop(&mut self) {
        let (queued, waiting) = {
            let mut s = self.0.borrow_mut();
            s.receiver_alive = false;
            let wakers: Vec<Waker> = s.waiting.iter_mut().filter_map(|w| w.waker.take()).collect();
            (std::mem::take(&mut s.queue), wakers)
        };
        // Queued messages are dropped here, as tokio does when its receiver goes:
        // a responder inside one tells its waiter.
        drop(queued);
        wake_all(waiting);
    }
}

/// `LocalMpscSender::send`: waits for room in arrival order (see `MpscState::waiting`).
pub struct LocalMpscSend<T> {
    shared: MpscShared<T>,
    msg: Option<T>,
    /// This send's place among the waiting ones, once it had to wait.
    ticket: Option<u64>,
}

// The message is moved out, never pinned: the future may move freely.
impl<T> Unpin for LocalMpscSend<T> {}

impl<T> Future for LocalMpscSend<T> {
    type Output = Result<(), SendError<T>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let mut s = this.shared.borrow_mut();
        if !s.receiver_alive {
            drop(s);
            this.ticket = None;
            return Poll::Ready(Err(SendError(this.msg.take().expect("polled after completion"))));
        }
        let first = match this.ticket {
            None => s.waiting.is_empty(),
            Some(t) => s.waiting.front().is_some_and(|w| w.ticket == t),
        };
        if first && s.queue.len() < s.capacity {
            if this.ticket.take().is_some() {
                s.waiting.pop_front();
            }
            s.queue.push_back(this.msg.take().expect("polled after completion"));
            // Room may remain (several slots freed before this ran): pass it on.
            let (receiver, next) = (s.receiver_waker.take(), s.wake_front_if_room());
            drop(s);
            for w in [receiver, next].into_iter().flatten() {
                w.wake();
            }
            return Poll::Ready(Ok(()));
        }
        match this.ticket {
            None => {
                let ticket = s.next_ticket;
                s.next_ticket += 1;
                s.waiting.push_back(WaitingSend { ticket, waker: Some(cx.waker().clone()) });
                this.ticket = Some(ticket);
            }
            Some(t) => {
                if let Some(w) = s.waiting.iter_mut().find(|w| w.ticket == t)
                    && !w.waker.as_ref().is_some_and(|old| old.will_wake(cx.waker()))
                {
                    w.waker = Some(cx.waker().clone());
                }
            }
        }
        Poll::Pending
    }
}

impl<T> Drop for LocalMpscSend<T> {
    /// A waiting send given up (its caller stopped waiting) leaves the queue; if it was
    /// at the front, the room it may have been woken for goes to the next one.
    fn drop(&mut self) {
        let Some(t) = self.ticket.take() else { return };
        let next = {
            let mut s = self.shared.borrow_mut();
            match s.waiting.iter().position(|w| w.ticket == t) {
                Some(i) => {
                    s.waiting.remove(i);
                    if i == 0 { s.wake_front_if_room() } else { None }
                }
                None => None,
            }
        };
        if let Some(w) = next {
            w.wake();
        }
    }
}

impl<T: OptionalSend> MpscSender<LocalMpsc, T> for LocalMpscSender<T> {
    fn send(&self, msg: T) -> impl Future<Output = Result<(), SendError<T>>> + OptionalSend {
        LocalMpscSend { shared: self.0.clone(), msg: Some(msg), ticket: None }
    }

    fn downgrade(&self) -> LocalMpscWeakSender<T> {
        LocalMpscWeakSender(self.0.clone())
    }
}

impl<T> LocalMpscReceiver<T> {
    /// Takes the front message; the slot it frees goes to the first waiting sender.
    fn pop(&mut self) -> Result<T, TryRecvError> {
        let (msg, next) = {
            let mut s = self.0.borrow_mut();
            match s.queue.pop_front() {
                Some(m) => (m, s.wake_front_if_room()),
                None if s.senders == 0 => return Err(TryRecvError::Disconnected),
                None => return Err(TryRecvError::Empty),
            }
        };
        if let Some(w) = next {
            w.wake();
        }
        Ok(msg)
    }
}

impl<T: OptionalSend> MpscReceiver<T> for LocalMpscReceiver<T> {
    fn recv(&mut self) -> impl Future<Output = Option<T>> + OptionalSend {
        std::future::poll_fn(move |cx| match self.pop() {
            Ok(m) => Poll::Ready(Some(m)),
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
            Err(TryRecvError::Empty) => {
                self.0.borrow_mut().receiver_waker = Some(cx.waker().clone());
                Poll::Pending
            }
        })
    }

    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.pop()
    }
}

impl<T: OptionalSend> MpscWeakSender<LocalMpsc, T> for LocalMpscWeakSender<T> {
    fn upgrade(&self) -> Option<LocalMpscSender<T>> {
        let mut s = self.0.borrow_mut();
        if s.senders == 0 {
            return None;
        }
        s.senders += 1;
        drop(s);
        Some(LocalMpscSender(self.0.clone()))
    }
}

// ---------------------------------------------------------------------------------
// Watch

struct WatchState<T> {
    value: RefCell<T>,
    version: Cell<u64>,
    senders: Cell<usize>,
    receivers: Cell<usize>,
    wakers: RefCell<Vec<Waker>>,
}

impl<T> WatchState<T> {
    fn changed(&self) {
        self.version.set(self.version.get() + 1);
        let wakers = std::mem::take(&mut *self.wakers.borrow_mut());
        wake_all(wakers);
    }
}

/// The single-value broadcast channel family.
pub struct LocalWatch;

pub struct LocalWatchSender<T>(Rc<WatchState<T>>);
pub struct LocalWatchReceiver<T> {
    shared: Rc<WatchState<T>>,
    seen: u64,
}

impl watch::Watch for LocalWatch {
    type Sender<T: OptionalSend + OptionalSync> = LocalWatchSender<T>;
    type Receiver<T: OptionalSend + OptionalSync> = LocalWatchReceiver<T>;
    type Ref<'a, T: OptionalSend + 'a> = Ref<'a, T>;

    fn channel<T: OptionalSend + OptionalSync>(init: T) -> (Self::Sender<T>, Self::Receiver<T>) {
        let shared = Rc::new(WatchState {
            value: RefCell::new(init),
            version: Cell::new(0),
            senders: Cell::new(1),
            receivers: Cell::new(1),
            wakers: RefCell::new(Vec::new()),
        });
        (LocalWatchSender(shared.clone()), LocalWatchReceiver { shared, seen: 0 })
    }
}

impl<T> Clone for LocalWatchSender<T> {
    fn clone(&self) -> Self {
        self.0.senders.set(self.0.senders.get() + 1);
        LocalWatchSender(self.0.clone())
    }
}

impl<T> Drop for LocalWatchSender<T> {
    fn drop(&mut self) {
        self.0.senders.set(self.0.senders.get() - 1);
        if self.0.senders.get() == 0 {
            // Receivers waiting in `changed` learn that nothing will come.
            let wakers = std::mem::take(&mut *self.0.wakers.borrow_mut());
            wake_all(wakers);
        }
    }
}

impl<T> Clone for LocalWatchReceiver<T> {
    fn clone(&self) -> Self {
        self.shared.receivers.set(self.shared.receivers.get() + 1);
        LocalWatchReceiver { shared: self.shared.clone(), seen: self.seen }
    }
}

impl<T> Drop for LocalWatchReceiver<T> {
    fn drop(&mut self) {
        self.shared.receivers.set(self.shared.receivers.get() - 1);
    }
}

impl<T: OptionalSend + OptionalSync> watch::WatchSender<LocalWatch, T> for LocalWatchSender<T> {
    fn send(&self, value: T) -> Result<(), watch::SendError<T>> {
        if self.0.receivers.get() == 0 {
            return Err(watch::SendError(value));
        }
        let old = self.0.value.replace(value);
        drop(old);
        self.0.changed();
        Ok(())
    }

    fn send_if_modified<F>(&self, modify: F) -> bool
    where
        F: FnOnce(&mut T) -> bool,
    {
        let modified = modify(&mut self.0.value.borrow_mut());
        if modified {
            self.0.changed();
        }
        modified
    }

    fn borrow_watched(&self) -> Ref<'_, T> {
        self.0.value.borrow()
    }

    fn subscribe(&self) -> LocalWatchReceiver<T> {
        self.0.receivers.set(self.0.receivers.get() + 1);
        LocalWatchReceiver { shared: self.0.clone(), seen: self.0.version.get() }
    }
}

impl<T: OptionalSend + OptionalSync> watch::WatchReceiver<LocalWatch, T> for LocalWatchReceiver<T> {
    async fn changed(&mut self) -> Result<(), watch::RecvError> {
        std::future::poll_fn(|cx| {
            let version = self.shared.version.get();
            if version != self.seen {
                self.seen = version;
                return Poll::Ready(Ok(()));
            }
            if self.shared.senders.get() == 0 {
                return Poll::Ready(Err(watch::RecvError(())));
            }
            register(&mut self.shared.wakers.borrow_mut(), cx.waker());
            Poll::Pending
        })
        .await
    }

    fn borrow_watched(&self) -> Ref<'_, T> {
        self.shared.value.borrow()
    }

    fn borrow_and_update(&mut self) -> Ref<'_, T> {
        self.seen = self.shared.version.get();
        self.shared.value.borrow()
    }
}

// ---------------------------------------------------------------------------------
// Oneshot

struct OneshotState<T> {
    value: Option<T>,
    sender_alive: bool,
    receiver_alive: bool,
    waker: Option<Waker>,
}

/// The one-value channel family.
pub struct LocalOneshot;

pub struct LocalOneshotSender<T>(Rc<RefCell<OneshotState<T>>>);
pub struct LocalOneshotReceiver<T>(Rc<RefCell<OneshotState<T>>>);

/// The sender was dropped without sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OneshotClosed;

impl std::fmt::Display for OneshotClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("oneshot sender dropped without sending")
    }
}

impl std::error::Error for OneshotClosed {}

/// A oneshot channel (also used by the runtime's join handles).
pub fn oneshot_channel<T>() -> (LocalOneshotSender<T>, LocalOneshotReceiver<T>) {
    let shared =
        Rc::new(RefCell::new(OneshotState { value: None, sender_alive: true, receiver_alive: true, waker: None }));
    (LocalOneshotSender(shared.clone()), LocalOneshotReceiver(shared))
}

impl oneshot::Oneshot for LocalOneshot {
    type Sender<T: OptionalSend> = LocalOneshotSender<T>;
    type Receiver<T: OptionalSend> = LocalOneshotReceiver<T>;
    type ReceiverError = OneshotClosed;

    fn channel<T: OptionalSend>() -> (Self::Sender<T>, Self::Receiver<T>) {
        oneshot_channel()
    }
}

impl<T> LocalOneshotSender<T> {
    /// Delivers `t`, or gives it back when the receiver is gone.
    pub fn send(self, t: T) -> Result<(), T> {
        let waker = {
            let mut s = self.0.borrow_mut();
            if !s.receiver_alive {
                return Err(t);
            }
            s.value = Some(t);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }
}

impl<T: OptionalSend> OneshotSender<T> for LocalOneshotSender<T> {
    fn send(self, t: T) -> Result<(), T> {
        LocalOneshotSender::send(self, t)
    }
}

impl<T> Drop for LocalOneshotSender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut s = self.0.borrow_mut();
            s.sender_alive = false;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for LocalOneshotReceiver<T> {
    fn drop(&mut self) {
        let value = {
            let mut s = self.0.borrow_mut();
            s.receiver_alive = false;
            s.value.take()
        };
        drop(value);
    }
}

impl<T> Future for LocalOneshotReceiver<T> {
    type Output = Result<T, OneshotClosed>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.0.borrow_mut();
        if let Some(v) = s.value.take() {
            return Poll::Ready(Ok(v));
        }
        if !s.sender_alive {
            return Poll::Ready(Err(OneshotClosed));
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

// ---------------------------------------------------------------------------------
// Async mutex

/// An async mutex for tasks of one thread: held across awaits, so a `RefCell` would
/// not do. `UnsafeCell` and `Cell` make it `!Sync`; `locked` is the exclusion.
pub struct LocalMutex<T> {
    locked: Cell<bool>,
    value: UnsafeCell<T>,
    /// Tasks waiting for the lock; all are woken on unlock (the first to run takes it).
    waiters: RefCell<Vec<Waker>>,
}

pub struct LocalMutexGuard<'a, T> {
    mutex: &'a LocalMutex<T>,
}

impl<T> std::ops::Deref for LocalMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: this guard is the only one (`locked`), the mutex is not `Sync`, and the
        // returned borrow cannot outlive the guard.
        unsafe { &*self.mutex.value.get() }
    }
}

impl<T> std::ops::DerefMut for LocalMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this borrow exclusive.
        unsafe { &mut *self.mutex.value.get() }
    }
}

impl<T> Drop for LocalMutexGuard<'_, T> {
    fn drop(&mut self) {
        self.mutex.locked.set(false);
        let waiters = std::mem::take(&mut *self.mutex.waiters.borrow_mut());
        wake_all(waiters);
    }
}

impl<T: OptionalSend + 'static> mutex::Mutex<T> for LocalMutex<T> {
    type Guard<'a> = LocalMutexGuard<'a, T>;

    fn new(value: T) -> Self {
        LocalMutex { locked: Cell::new(false), value: UnsafeCell::new(value), waiters: RefCell::new(Vec::new()) }
    }

    fn lock(&self) -> impl Future<Output = LocalMutexGuard<'_, T>> + OptionalSend {
        std::future::poll_fn(move |cx| {
            if self.locked.get() {
                register(&mut self.waiters.borrow_mut(), cx.waker());
                Poll::Pending
            } else {
                self.locked.set(true);
                Poll::Ready(LocalMutexGuard { mutex: self })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;

    /// A waker that counts its wake-ups.
    struct Counter(AtomicUsize);
    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Counter>, Waker) {
        let c = Arc::new(Counter(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    fn poll_send(f: &mut LocalMpscSend<u32>, waker: &Waker) -> Poll<Result<(), SendError<u32>>> {
        Pin::new(f).poll(&mut Context::from_waker(waker))
    }

    #[test]
    fn a_freed_slot_wakes_one_waiting_sender_and_they_are_served_in_arrival_order() {
        let (tx, mut rx) = <LocalMpsc as Mpsc>::channel::<u32>(1);
        let (_, w) = counting();
        assert!(poll_send(&mut LocalMpscSend { shared: tx.0.clone(), msg: Some(0), ticket: None }, &w).is_ready());
        // Five senders wait for room, in this order.
        let mut sends: Vec<_> =
            (1..=5).map(|i| LocalMpscSend { shared: tx.0.clone(), msg: Some(i), ticket: None }).collect();
        let counters: Vec<_> = (0..5).map(|_| counting()).collect();
        for (f, (_, w)) in sends.iter_mut().zip(&counters) {
            assert!(poll_send(f, w).is_pending());
        }
        let woken = || counters.iter().map(|(c, _)| c.0.load(Ordering::SeqCst)).collect::<Vec<_>>();

        // One receive frees one slot: only the first waiting sender is woken.
        assert_eq!(rx.try_recv().unwrap(), 0);
        assert_eq!(woken(), [1, 0, 0, 0, 0]);
        // A newcomer finds others waiting and queues behind them instead of taking the slot.
        let mut late = LocalMpscSend { shared: tx.0.clone(), msg: Some(99), ticket: None };
        assert!(poll_send(&mut late, &w).is_pending());
        // A later sender polled again (spuriously) is still not let in ahead of the first.
        assert!(poll_send(&mut sends[2], &counters[2].1).is_pending());
        assert!(poll_send(&mut sends[0], &counters[0].1).is_ready());
        assert_eq!(rx.try_recv().unwrap(), 1);
        assert_eq!(woken(), [1, 1, 0, 0, 0]);

        // The woken sender gives up (its caller stopped waiting): the slot goes to the next.
        drop(sends.remove(1));
        assert_eq!(woken(), [1, 1, 1, 0, 0]);
        for (i, expected) in [(1, 3), (1, 4), (1, 5)] {
            assert!(poll_send(&mut sends[i], &counters[expected as usize - 1].1).is_ready());
            sends.remove(i);
            assert_eq!(rx.try_recv().unwrap(), expected);
        }
        assert!(poll_send(&mut late, &w).is_ready(), "the newcomer is served last");
        assert_eq!(rx.try_recv().unwrap(), 99);
        assert!(tx.0.borrow().waiting.is_empty());
    }
}
