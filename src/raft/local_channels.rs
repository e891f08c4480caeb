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
    /// Senders waiting for room; all are woken when room appears (a dropped waiting
    /// future must not swallow the only wake-up).
    send_wakers: Vec<Waker>,
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
            send_wakers: Vec::new(),
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
            (std::mem::take(&mut s.queue), std::mem::take(&mut s.send_wakers))
        };
        // Queued messages are dropped here, as tokio does when its receiver goes:
        // a responder inside one tells its waiter.
        drop(queued);
        wake_all(waiting);
    }
}

impl<T: OptionalSend> MpscSender<LocalMpsc, T> for LocalMpscSender<T> {
    fn send(&self, msg: T) -> impl Future<Output = Result<(), SendError<T>>> + OptionalSend {
        let shared = self.0.clone();
        let mut msg = Some(msg);
        std::future::poll_fn(move |cx| {
            let woken = {
                let mut s = shared.borrow_mut();
                if !s.receiver_alive {
                    drop(s);
                    return Poll::Ready(Err(SendError(msg.take().expect("polled after completion"))));
                }
                if s.queue.len() >= s.capacity {
                    register(&mut s.send_wakers, cx.waker());
                    return Poll::Pending;
                }
                s.queue.push_back(msg.take().expect("polled after completion"));
                s.receiver_waker.take()
            };
            if let Some(w) = woken {
                w.wake();
            }
            Poll::Ready(Ok(()))
        })
    }

    fn downgrade(&self) -> LocalMpscWeakSender<T> {
        LocalMpscWeakSender(self.0.clone())
    }
}

impl<T> LocalMpscReceiver<T> {
    /// Takes the front message; wakes the senders waiting for room.
    fn pop(&mut self) -> Result<T, TryRecvError> {
        let (msg, waiting) = {
            let mut s = self.0.borrow_mut();
            match s.queue.pop_front() {
                Some(m) => (m, std::mem::take(&mut s.send_wakers)),
                None if s.senders == 0 => return Err(TryRecvError::Disconnected),
                None => return Err(TryRecvError::Empty),
            }
        };
        wake_all(waiting);
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
