//! The rate of large request bodies a core lets through (`--large-body-bytes-per-sec`).
//!
//! Why: the disk is shared. A client that streams large bodies (a 900 KB compaction
//! summary after another, ≈ 100 MB/s from one connection) keeps the device busy with
//! the WAL's and the body store's writes, and every honest append's fdatasync queues
//! behind them: measured, the honest clients' p99 rose 7–11× (`bench/results/hardening.md`).
//! Pacing those bodies to a byte rate keeps the device's queue short; at 8 MB/s the
//! honest p99 stayed within 1.5–1.7× of quiet, at 16 MB/s 2.0–2.2×.
//!
//! The limiter is a GCRA (generic cell rate algorithm, the virtual-scheduling form of a
//! token bucket): `tat` is the time at which the bytes admitted so far have been "paid"
//! at the rate. A body may start once `tat` is within `burst` of now; one that would
//! have to wait longer than `wait_max` is refused instead (429 with Retry-After), so
//! the bytes waiting in a core are at most `rate × wait_max + burst`. Pure: the caller
//! passes the clock and does the waiting.
use std::time::{Duration, Instant};

/// What to do with one large body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Go ahead.
    Now,
    /// Go ahead after this wait (the bytes are already counted).
    After(Duration),
    /// Over the rate by more than the longest wait: refuse; the same body would be
    /// admitted within the wait limit after `retry_after`.
    Refused { retry_after: Duration },
}

/// One core's limiter.
#[derive(Debug, Clone)]
pub struct ByteRate {
    /// 0: no limit.
    bytes_per_sec: u64,
    /// Bytes that may go at once after a quiet period (at least the largest body, so
    /// that any single body passes an idle limiter).
    burst: Duration,
    wait_max: Duration,
    /// Theoretical arrival time: when everything admitted so far is paid for.
    tat: Option<Instant>,
}

impl ByteRate {
    pub fn new(bytes_per_sec: u64, burst_bytes: u64, wait_max: Duration) -> ByteRate {
        let burst = cost(bytes_per_sec, burst_bytes);
        ByteRate { bytes_per_sec, burst, wait_max, tat: None }
    }

    /// Decides for a body of `bytes` arriving at `now`, and counts it unless refused.
    pub fn admit(&mut self, now: Instant, bytes: u64) -> Admit {
        if self.bytes_per_sec == 0 {
            return Admit::Now;
        }
        let paid_until = self.tat.map_or(now, |tat| tat.max(now));
        let new_tat = paid_until + cost(self.bytes_per_sec, bytes);
        // May start once `new_tat - burst <= start`.
        let start = new_tat.checked_sub(self.burst).unwrap_or(now).max(now);
        let wait = start - now;
        if wait > self.wait_max {
            return Admit::Refused { retry_after: wait - self.wait_max };
        }
        self.tat = Some(new_tat);
        if wait.is_zero() { Admit::Now } else { Admit::After(wait) }
    }
}

/// Time to pay for `bytes` at `bytes_per_sec` (0 when unlimited).
fn cost(bytes_per_sec: u64, bytes: u64) -> Duration {
    if bytes_per_sec == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(bytes as f64 / bytes_per_sec as f64)
}

/// `Retry-After` in whole seconds, at least 1.
pub fn retry_after_secs(retry_after: Duration) -> u64 {
    retry_after.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn an_idle_limiter_lets_a_burst_through_then_paces() {
        let t0 = Instant::now();
        let mut r = ByteRate::new(MIB, MIB, Duration::from_secs(2));
        // The burst: 1 MiB at once.
        assert_eq!(r.admit(t0, MIB / 2), Admit::Now);
        assert_eq!(r.admit(t0, MIB / 2), Admit::Now);
        // The next half MiB is paid for at 1 MiB/s: 0.5 s.
        assert_eq!(r.admit(t0, MIB / 2), Admit::After(Duration::from_millis(500)));
        // And the next after that one: 1 s.
        assert_eq!(r.admit(t0, MIB / 2), Admit::After(Duration::from_secs(1)));
        // 2 MiB more would wait 3 s (> 2 s): refused, retry in 1 s; nothing counted.
        assert_eq!(r.admit(t0, 2 * MIB), Admit::Refused { retry_after: Duration::from_secs(1) });
        assert_eq!(r.admit(t0, MIB / 2), Admit::After(Duration::from_millis(1500)));
        // After a quiet period the burst is back.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(r.admit(later, MIB), Admit::Now);
    }

    #[test]
    fn zero_means_no_limit() {
        let t0 = Instant::now();
        let mut r = ByteRate::new(0, MIB, Duration::from_secs(1));
        for _ in 0..1000 {
            assert_eq!(r.admit(t0, 100 * MIB), Admit::Now);
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    proptest! {
        /// Over any sequence of arrivals, the bytes admitted up to the moment each one
        /// may start never exceed `burst + rate × elapsed`, and no admitted body waits
        /// longer than `wait_max`.
        #[test]
        fn admitted_bytes_stay_under_the_rate(
            rate in 1u64..(64 * MIB),
            burst in 1u64..(4 * MIB),
            wait_max_ms in 0u64..5_000,
            arrivals in proptest::collection::vec((0u64..2_000, 1u64..(2 * MIB)), 1..200),
        ) {
            let t0 = Instant::now();
            let wait_max = Duration::from_millis(wait_max_ms);
            let mut r = ByteRate::new(rate, burst, wait_max);
            let (mut now, mut admitted, mut last_start) = (t0, 0u128, t0);
            for (gap_ms, bytes) in arrivals {
                now += Duration::from_millis(gap_ms);
                let start = match r.admit(now, bytes) {
                    Admit::Now => now,
                    Admit::After(wait) => {
                        prop_assert!(wait <= wait_max);
                        now + wait
                    }
                    Admit::Refused { retry_after } => {
                        prop_assert!(!retry_after.is_zero());
                        continue;
                    }
                };
                admitted += bytes as u128;
                last_start = last_start.max(start);
                let elapsed = (last_start - t0).as_secs_f64();
                // Slack for rounding: durations are whole nanoseconds, one per admission.
                let allowed = burst as f64 + rate as f64 * elapsed + 1.0 + rate as f64 * 1e-9 * 201.0;
                prop_assert!((admitted as f64) <= allowed, "admitted {admitted} > allowed {allowed}");
            }
        }
    }
}
