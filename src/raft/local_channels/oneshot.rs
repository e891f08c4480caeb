//! The oneshot channel.
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use openraft_rt::{OneshotSender, OptionalSend, oneshot};

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
