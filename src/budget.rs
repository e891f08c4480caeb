//! A node-wide budget of bytes, and the holds taken on it: answers rendered but not yet
//! written to their clients count against it (`--response-buffer-max-bytes`), so that
//! clients that read slowly (or never) pin at most that much memory in all, not one
//! answer each. A hold goes with its answer from the shard's core to the connection and
//! is given back when the answer is dropped: written, or the connection gone.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct Budget {
    used_bytes: AtomicUsize,
    max_bytes: usize,
}

impl Budget {
    pub fn new(max_bytes: usize) -> Arc<Budget> {
        Arc::new(Budget { used_bytes: AtomicUsize::new(0), max_bytes })
    }

    /// Holds `bytes` if they fit (a hold of 0 bytes always does).
    pub fn try_hold(self: &Arc<Self>, bytes: usize) -> Option<Hold> {
        let mut used = self.used_bytes.load(Ordering::Relaxed);
        loop {
            let next = used.checked_add(bytes).filter(|&n| n <= self.max_bytes || bytes == 0)?;
            match self.used_bytes.compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Some(Hold { budget: self.clone(), bytes }),
                Err(now) => used = now,
            }
        }
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes.load(Ordering::Relaxed)
    }

    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }
}

/// Bytes held on a budget until dropped. Compares equal to any other hold (it is not
/// part of what an answer says).
#[derive(Debug)]
pub struct Hold {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.budget.used_bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl PartialEq for Hold {
    fn eq(&self, _: &Hold) -> bool {
        true
    }
}

impl Eq for Hold {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_fit_the_budget_and_give_back_on_drop() {
        let b = Budget::new(100);
        let h1 = b.try_hold(60).unwrap();
        assert!(b.try_hold(50).is_none(), "60 + 50 > 100");
        let h2 = b.try_hold(40).unwrap();
        assert_eq!(b.used_bytes(), 100);
        drop(h1);
        assert_eq!(b.used_bytes(), 40);
        assert!(b.try_hold(60).is_some());
        drop(h2);
        assert_eq!(b.used_bytes(), 0);
    }
}
