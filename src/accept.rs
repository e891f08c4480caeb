//! Accept-loop pacing (the HTTP listener in `crate::node`, the peer listener in
//! `crate::shard::peer`): when `accept` fails (EMFILE/ENFILE when descriptors run out,
//! ENOBUFS, …) the loop must neither spin nor flood the log. It waits, twice as long
//! after each failure in a row up to a ceiling, and logs the first failure and then at
//! most one summary line per interval.
use std::time::{Duration, Instant};

/// Pause after the first failed accept.
pub const ACCEPT_RETRY_MIN_MS: u64 = 10;
/// Longest pause between accepts while they keep failing.
pub const ACCEPT_RETRY_MAX_MS: u64 = 1_000;
/// At most one log line per this while accepts keep failing.
pub const ACCEPT_LOG_INTERVAL_MS: u64 = 10_000;

/// At most one line per `ACCEPT_LOG_INTERVAL_MS`, counting the ones left out: for
/// failures a stranger can cause at will (a failed accept, a failed peer handshake).
#[derive(Debug, Default)]
pub struct RateLimitedLog {
    not_logged: u64,
    last_log: Option<Instant>,
}

impl RateLimitedLog {
    /// The line to log for `what` at `now`, if one is due.
    pub fn line(&mut self, now: Instant, what: &str) -> Option<String> {
        let due = self.last_log.is_none_or(|t| now.duration_since(t) >= Duration::from_millis(ACCEPT_LOG_INTERVAL_MS));
        if !due {
            self.not_logged += 1;
            return None;
        }
        let line = format!("{what}; {} more since the last line", self.not_logged);
        self.not_logged = 0;
        self.last_log = Some(now);
        Some(line)
    }
}

/// One accept loop's failure state. Pure: the caller sleeps and logs.
#[derive(Debug, Default)]
pub struct AcceptPacing {
    failures_in_a_row: u32,
    log: RateLimitedLog,
}

impl AcceptPacing {
    /// A failed accept at `now`: how long to wait, and the line to log, if one is due.
    pub fn failed(&mut self, now: Instant, error: &std::io::Error) -> (Duration, Option<String>) {
        self.failures_in_a_row = self.failures_in_a_row.saturating_add(1);
        let exp = self.failures_in_a_row.saturating_sub(1).min(16);
        let wait = Duration::from_millis((ACCEPT_RETRY_MIN_MS << exp).min(ACCEPT_RETRY_MAX_MS));
        let hint = if error.raw_os_error() == Some(libc::EMFILE) || error.raw_os_error() == Some(libc::ENFILE) {
            " (out of file descriptors: raise the limit, `ulimit -n`, or lower the connection caps)"
        } else {
            ""
        };
        (wait, self.log.line(now, &format!("accept: {error}{hint}")))
    }

    /// An accept succeeded: the next failure waits the minimum again.
    pub fn succeeded(&mut self) {
        self.failures_in_a_row = 0;
    }
}

/// Accepts the next connection on `listener`. A failed accept waits (paced, as above)
/// and is logged (rate-limited), prefixed with `what`, and the loop goes on.
pub async fn next_connection(
    listener: &glommio::net::TcpListener,
    pacing: &mut AcceptPacing,
    what: &str,
) -> glommio::net::TcpStream {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                pacing.succeeded();
                return stream;
            }
            Err(e) => {
                let (wait, line) = pacing.failed(Instant::now(), &std::io::Error::from(e));
                if let Some(line) = line {
                    eprintln!("{what}: {line}");
                }
                glommio::timer::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_ceiling_and_logs_are_rate_limited() {
        let mut p = AcceptPacing::default();
        let t0 = Instant::now();
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let (w, line) = p.failed(t0, &emfile);
        assert_eq!(w, Duration::from_millis(ACCEPT_RETRY_MIN_MS));
        assert!(line.unwrap().contains("out of file descriptors"));
        let mut logged = 0;
        let mut last = w;
        for i in 1..1000u64 {
            let (w, line) = p.failed(t0 + Duration::from_millis(i), &emfile);
            assert!(w >= last && w <= Duration::from_millis(ACCEPT_RETRY_MAX_MS));
            last = w;
            logged += line.is_some() as u32;
        }
        assert_eq!(last, Duration::from_millis(ACCEPT_RETRY_MAX_MS));
        assert_eq!(logged, 0, "one line per interval");
        let (_, line) = p.failed(t0 + Duration::from_millis(ACCEPT_LOG_INTERVAL_MS), &emfile);
        assert!(line.unwrap().contains("999 more since the last line"));
        p.succeeded();
        assert_eq!(p.failed(t0, &emfile).0, Duration::from_millis(ACCEPT_RETRY_MIN_MS));
    }
}
