//! The backoff of the operator's watches after a failure, pure: short enough that a watch is
//! back within about a second of the API server answering again (kube's default grows to 30 s
//! and keeps its length for 2 minutes, so after a 15 s outage a watch could wait 13 s more),
//! and long enough that a watch whose list keeps failing costs at most one request a second.

use std::time::{Duration, Instant};

use kube::runtime::utils::Backoff;

/// The first wait after a failure.
pub const FIRST: Duration = Duration::from_millis(200);
/// Waits double up to this.
pub const MAX: Duration = Duration::from_secs(1);
/// A success resets the waits only this long after the last failure: the watcher reports
/// success (a new list starting) between failures of a list that keeps failing.
pub const QUIET: Duration = Duration::from_secs(10);

/// Exponential waits from [`FIRST`] to [`MAX`], reset by a success [`QUIET`] after the last
/// failure. The clock is passed in ([`WatchBackoff::next_at`], [`WatchBackoff::reset_at`]) so
/// the rule is tested without time.
#[derive(Clone, Debug, Default)]
pub struct WatchBackoff {
    /// Failures in a row, and when the last one was met.
    failures: u32,
    last: Option<Instant>,
}

impl WatchBackoff {
    pub fn new() -> WatchBackoff {
        WatchBackoff::default()
    }

    /// The wait after one more failure at `now`.
    pub fn next_at(&mut self, now: Instant) -> Duration {
        let wait = FIRST.saturating_mul(1 << self.failures.min(8)).min(MAX);
        self.failures = self.failures.saturating_add(1);
        self.last = Some(now);
        wait
    }

    /// A success at `now`.
    pub fn reset_at(&mut self, now: Instant) {
        if self.last.is_none_or(|last| now.saturating_duration_since(last) >= QUIET) {
            self.failures = 0;
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_at(Instant::now()))
    }
}

impl Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.reset_at(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_to_a_second_and_reset_only_after_a_quiet_spell() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = WatchBackoff::new();
        // (step, seconds after t0, want: Some(wait) after a failure, None for a success)
        let steps: [(&str, u64, Option<Duration>); 12] = [
            ("fail", 0, Some(ms(200))),
            ("fail", 1, Some(ms(400))),
            ("fail", 2, Some(ms(800))),
            ("fail", 3, Some(ms(1000))),
            ("fail", 4, Some(ms(1000))),
            ("fail", 5, Some(ms(1000))),
            // A list starting again between failures does not reset the waits.
            ("ok", 6, None),
            ("fail", 6, Some(ms(1000))),
            // Quiet for 10 s since the last failure: the next failure starts short again.
            ("ok", 15, None),
            ("fail", 15, Some(ms(1000))),
            ("ok", 25, None),
            ("fail", 26, Some(ms(200))),
        ];
        for (i, (step, at, want)) in steps.into_iter().enumerate() {
            let now = t0 + Duration::from_secs(at);
            match step {
                "fail" => assert_eq!(Some(b.next_at(now)), want, "step {i}"),
                _ => b.reset_at(now),
            }
        }
    }
}
