//! The bounded multi-producer channel.
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use openraft_rt::{Mpsc, MpscReceiver, MpscSender, MpscWeakSender, OptionalSend, SendError, TryRecvError};

use super::wake_all;

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
