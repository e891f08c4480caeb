//! The free-space guard: while the data dir's filesystem has less free space than a
//! reserve, this node refuses the writes it handles (503 with `Retry-After`) instead of
//! proposing them.
//!
//! Why: an entry that is in the log must be applied, and applying can need a new
//! preallocated message-body segment. Without room for it the state machine fails,
//! openraft stops the shard for good (a replica must not skip an entry), and the shard
//! stays down until the node restarts with space — seen on a full tmpfs: every write
//! and linearizable read then failed, and each attempt logged an error line. Refusing
//! before proposing keeps the shard alive and reads served; writes resume by themselves
//! once space is freed. The reserve defaults to one WAL segment and one body segment per
//! shard (what every shard rolling once more can take).
use std::cell::Cell;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One core's view of the data dir's free space (checked at most once per `recheck`).
pub struct DiskGuard {
    dir: PathBuf,
    reserve_bytes: u64,
    recheck: Duration,
    last: Cell<Option<(Instant, u64)>>,
}

impl DiskGuard {
    /// `reserve_bytes` 0 turns the guard off.
    pub fn new(dir: PathBuf, reserve_bytes: u64, recheck: Duration) -> DiskGuard {
        DiskGuard { dir, reserve_bytes, recheck, last: Cell::new(None) }
    }

    pub fn reserve_bytes(&self) -> u64 {
        self.reserve_bytes
    }

    /// Why writes must wait now, if they must. A filesystem that cannot be asked (an
    /// error from statvfs) does not block writes: the guard only prevents what it sees.
    pub fn refusal(&self) -> Option<String> {
        if self.reserve_bytes == 0 {
            return None;
        }
        let now = Instant::now();
        let free = match self.last.get() {
            Some((at, free)) if now.duration_since(at) < self.recheck => free,
            _ => {
                let free = crate::files::free_bytes(&self.dir).ok()?;
                self.last.set(Some((now, free)));
                free
            }
        };
        refusal(free, self.reserve_bytes)
    }
}

/// The refusal for `free_bytes` against `reserve_bytes` (pure).
pub fn refusal(free_bytes: u64, reserve_bytes: u64) -> Option<String> {
    (free_bytes < reserve_bytes).then(|| {
        format!(
            "the data disk is nearly full ({} MiB free, {} MiB kept in reserve): writes resume when space is freed",
            free_bytes >> 20,
            reserve_bytes >> 20
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_only_below_the_reserve() {
        assert!(refusal(100 << 20, 64 << 20).is_none());
        assert!(refusal(64 << 20, 64 << 20).is_none());
        let why = refusal(10 << 20, 64 << 20).expect("below the reserve");
        assert!(why.contains("10 MiB free") && why.contains("64 MiB kept in reserve"), "{why}");
    }

    #[test]
    fn a_zero_reserve_never_refuses_and_a_huge_one_always_does() {
        let dir = tempfile::tempdir().unwrap();
        assert!(DiskGuard::new(dir.path().into(), 0, Duration::ZERO).refusal().is_none());
        assert!(DiskGuard::new(dir.path().into(), u64::MAX, Duration::ZERO).refusal().is_some());
    }
}
