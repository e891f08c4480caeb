//! The async mutex.
use std::cell::{Cell, RefCell, UnsafeCell};
use std::future::Future;
use std::task::{Poll, Waker};

use openraft_rt::{OptionalSend, mutex};

use super::{register, wake_all};

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
