//! The watch channel: the latest value, and a wake-up for every change.
use std::cell::{Cell, Ref, RefCell};
use std::rc::Rc;
use std::task::{Poll, Waker};

use openraft_rt::{OptionalSend, OptionalSync, watch};

use super::{register, wake_all};

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
