//! Backoff, pure: how long a job waits after its creates were refused, after they failed
//! for a reason not the job's (and when such failures have lasted long enough to be reported),
//! and after a failed reconcile, and the per-job records of these. The caller passes the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The first wait after a refused create.
pub const CREATE_BACKOFF_FIRST: Duration = Duration::from_secs(5);
/// Create attempts after refusals wait [`CREATE_BACKOFF_FIRST`], doubling to at most this.
pub const CREATE_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Creates in a namespace found terminating are held back this long, then tried again.
pub const NAMESPACE_GONE_HOLD: Duration = Duration::from_secs(30);
/// A create blocked by an object of the same name still terminating is retried after this.
pub const BLOCKED_RETRY: Duration = Duration::from_secs(1);
/// A job queued for room to create ([`super::write_slots`]) is woken when it has it, and looked
/// at again after this all the same.
pub const QUEUED_RECHECK: Duration = Duration::from_secs(30);
/// Creates that failed for a reason not the job's (no answer, 429, 5xx such as an admission
/// webhook that cannot be called) are retried after 1 s, doubling to at most this; the first
/// attempt after the cause is gone is at most this late.
pub const TRANSIENT_RETRY_MAX: Duration = Duration::from_secs(30);
/// Such failures are reported to the user (a Warning event and the `ReplicaFailure` condition)
/// once the job's creates have failed this long in a row: longer than an API server takes to
/// restart (the fault tests' outages last 15 to 25 s), so a restart reports nothing, and short
/// enough that a lasting failure is shown within a minute (the attempt at 31 s reports it).
pub const REPORT_TRANSIENT_AFTER: Duration = Duration::from_secs(30);
/// A failure this long after the previous one starts a new run of failures (the job created
/// nothing meanwhile: finished, suspended, or nothing was missing).
pub const TRANSIENT_RUN_GAP: Duration = Duration::from_secs(90);
/// The first wait after a failed reconcile is twice this.
const ERROR_BACKOFF_UNIT: Duration = Duration::from_millis(500);
/// Failed reconciles wait at most this.
const ERROR_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The wait after the `refusals`-th refusal in a row (1-based): 5 s, 10 s, 20 s, 40 s, 60 s.
pub fn create_delay(refusals: u32) -> Duration {
    CREATE_BACKOFF_FIRST.saturating_mul(1 << refusals.saturating_sub(1).min(4)).min(CREATE_BACKOFF_MAX)
}

/// The wait after the `failures`-th create failure in a row not the job's: 1 s, 2 s, 4 s, 8 s,
/// 16 s, then 30 s.
pub fn transient_delay(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.saturating_sub(1).min(5)).min(TRANSIENT_RETRY_MAX)
}

/// The wait after the `errors`-th failed reconcile in a row (1-based): 1 s, 2 s, ... 60 s.
pub fn error_delay(errors: u32) -> Duration {
    ERROR_BACKOFF_UNIT.saturating_mul(1 << errors.min(7)).min(ERROR_BACKOFF_MAX)
}

/// A job's refused creates: how many in a row, when the next attempt may run, and its run of
/// create failures not its own, if one is going on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CreateBackoff {
    pub refusals: u32,
    pub until: Instant,
    pub failing: Option<FailingCreates>,
}

impl CreateBackoff {
    /// The record after one more refusal at `now`: an answer that refuses the object ends a
    /// run of failures.
    pub fn after_refusal(prev: Option<CreateBackoff>, now: Instant) -> CreateBackoff {
        let refusals = prev.map_or(0, |b| b.refusals).saturating_add(1);
        CreateBackoff { refusals, until: now + create_delay(refusals), failing: None }
    }

    /// The record after one more create failure not the job's at `now`: the refusals are kept,
    /// the run goes on (or a new one starts) and the next attempt waits [`transient_delay`].
    pub fn after_transient(prev: Option<CreateBackoff>, now: Instant) -> CreateBackoff {
        let failing = FailingCreates::after(prev.and_then(|b| b.failing), now);
        CreateBackoff {
            refusals: prev.map_or(0, |b| b.refusals),
            until: now + transient_delay(failing.failures),
            failing: Some(failing),
        }
    }
}

/// A run of a job's create failures that are not the job's fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FailingCreates {
    /// The first failure of the run.
    pub since: Instant,
    /// The latest failure.
    pub last: Instant,
    /// Failed attempts in the run.
    pub failures: u32,
    /// The run has been reported (its Warning event published).
    pub reported: bool,
}

impl FailingCreates {
    /// The run after one more failure at `now`; a new run after a gap of more than
    /// [`TRANSIENT_RUN_GAP`].
    pub fn after(prev: Option<FailingCreates>, now: Instant) -> FailingCreates {
        match prev {
            Some(p) if now.saturating_duration_since(p.last) <= TRANSIENT_RUN_GAP => {
                FailingCreates { last: now, failures: p.failures.saturating_add(1), ..p }
            }
            _ => FailingCreates { since: now, last: now, failures: 1, reported: false },
        }
    }

    /// How long the run has lasted.
    pub fn lasted(&self) -> Duration {
        self.last.saturating_duration_since(self.since)
    }

    /// Whether the run has lasted long enough to be shown to the user.
    pub fn due(&self) -> bool {
        self.lasted() >= REPORT_TRANSIENT_AFTER
    }
}

/// What a reconcile does to its job's create backoff.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateBackoffChange {
    /// Nothing was attempted: keep the record.
    Keep,
    /// Every create went through: forget the refusals.
    Clear,
    /// A create was refused: this is the new record.
    Set(CreateBackoff),
}

/// The backoff records of every job, by uid.
#[derive(Debug, Default)]
pub struct Backoffs {
    pub(super) creates: HashMap<String, CreateBackoff>,
    pub(super) errors: HashMap<String, u32>,
}

impl Backoffs {
    /// The job's create backoff record, if its last creates were refused.
    pub fn create(&self, uid: &str) -> Option<CreateBackoff> {
        self.creates.get(uid).copied()
    }

    /// Until when the job's creates must wait, if they must at `now`.
    pub fn creates_wait_until(&self, uid: &str, now: Instant) -> Option<Instant> {
        self.creates.get(uid).map(|b| b.until).filter(|until| *until > now)
    }

    pub fn change_create(&mut self, uid: &str, change: CreateBackoffChange) {
        match change {
            CreateBackoffChange::Keep => {}
            CreateBackoffChange::Clear => {
                self.creates.remove(uid);
            }
            CreateBackoffChange::Set(b) => {
                self.creates.insert(uid.to_string(), b);
            }
        }
    }

    /// Counts a failed reconcile of the job and returns how long to wait before the next.
    pub fn failed(&mut self, uid: &str) -> Duration {
        let n = self.errors.entry(uid.to_string()).or_default();
        *n = n.saturating_add(1);
        error_delay(*n)
    }

    /// A reconcile of the job succeeded: its error count starts again.
    pub fn succeeded(&mut self, uid: &str) {
        self.errors.remove(uid);
    }

    /// Forgets the job (it is being deleted).
    pub fn forget(&mut self, uid: &str) {
        self.creates.remove(uid);
        self.errors.remove(uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn create_delays_double_to_a_minute() {
        let want = [(0, 5), (1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (6, 60), (u32::MAX, 60)];
        for (n, secs) in want {
            assert_eq!(create_delay(n), S(secs), "refusal {n}");
        }
    }

    #[test]
    fn transient_retries_double_to_half_a_minute() {
        let want = [(0, 1), (1, 1), (2, 2), (3, 4), (4, 8), (5, 16), (6, 30), (7, 30), (u32::MAX, 30)];
        for (n, secs) in want {
            assert_eq!(transient_delay(n), S(secs), "failure {n}");
        }
    }

    #[test]
    fn failures_not_the_jobs_are_reported_once_they_last_30_s() {
        // (case, failures at these seconds, want: the run's start, failures, due at the last)
        type Case = (&'static str, &'static [u64], (u64, u32, bool));
        let cases: [Case; 6] = [
            ("one failure", &[0], (0, 1, false)),
            // The retries of an API server restart that lasts 25 s: the sixth attempt (31 s)
            // goes through.
            ("an API server restart", &[0, 1, 3, 7, 15], (0, 5, false)),
            ("a webhook down: the attempt at 31 s reports", &[0, 1, 3, 7, 15, 31], (0, 6, true)),
            ("exactly 30 s", &[0, 30], (0, 2, true)),
            ("a gap of 90 s is the same run", &[0, 90], (0, 2, true)),
            ("a longer gap starts a new run", &[0, 91, 100], (91, 2, false)),
        ];
        let t0 = Instant::now();
        for (name, at, (since, failures, report)) in cases {
            let mut run = None;
            for &secs in at {
                run = Some(FailingCreates::after(run, t0 + S(secs)));
            }
            let run = run.expect("a run");
            assert_eq!((run.since, run.failures, run.due()), (t0 + S(since), failures, report), "{name}");
            assert!(!run.reported, "{name}: only the report marks it reported");
        }
        // The marker carries through the run.
        let reported = FailingCreates { reported: true, ..FailingCreates::after(None, t0) };
        assert!(FailingCreates::after(Some(reported), t0 + S(30)).reported);
        assert!(!FailingCreates::after(Some(reported), t0 + S(91)).reported, "a new run");
    }

    #[test]
    fn refusals_and_failures_not_the_jobs_keep_apart() {
        let t0 = Instant::now();
        let refused = CreateBackoff::after_refusal(None, t0);
        let failed = CreateBackoff::after_transient(Some(refused), t0 + S(10));
        let run = FailingCreates { since: t0 + S(10), last: t0 + S(10), failures: 1, reported: false };
        assert_eq!(
            failed,
            CreateBackoff { refusals: 1, until: t0 + S(11), failing: Some(run) },
            "refusals kept"
        );
        let again = CreateBackoff::after_transient(Some(failed), t0 + S(11));
        assert_eq!((again.until, again.failing.map(|f| f.failures)), (t0 + S(13), Some(2)));
        let refused = CreateBackoff::after_refusal(Some(again), t0 + S(13));
        assert_eq!(
            refused,
            CreateBackoff { refusals: 2, until: t0 + S(23), failing: None },
            "an answer ends the run"
        );
    }

    #[test]
    fn error_delays_double_to_a_minute() {
        let ms = Duration::from_millis;
        let want = [(0, ms(500)), (1, S(1)), (2, S(2)), (3, S(4)), (6, S(32)), (7, S(60)), (u32::MAX, S(60))];
        for (n, d) in want {
            assert_eq!(error_delay(n), d, "error {n}");
        }
    }

    /// The batches `n` creates go out in when every batch gets the room it asks for, or at
    /// most `room`.

    #[test]
    fn create_backoff_records() {
        let t0 = Instant::now();
        let mut b = Backoffs::default();
        assert_eq!(b.creates_wait_until("u", t0), None);
        let first = CreateBackoff::after_refusal(b.create("u"), t0);
        assert_eq!(first, CreateBackoff { refusals: 1, until: t0 + S(5), failing: None });
        b.change_create("u", CreateBackoffChange::Set(first));
        assert_eq!(b.creates_wait_until("u", t0), Some(t0 + S(5)));
        assert_eq!(b.creates_wait_until("u", t0 + S(5)), None, "due at the instant itself");
        assert_eq!(b.creates_wait_until("other", t0), None);
        let second = CreateBackoff::after_refusal(b.create("u"), t0 + S(5));
        assert_eq!(second, CreateBackoff { refusals: 2, until: t0 + S(15), failing: None });
        b.change_create("u", CreateBackoffChange::Keep);
        assert_eq!(b.create("u"), Some(first), "Keep keeps");
        b.change_create("u", CreateBackoffChange::Clear);
        assert_eq!(b.create("u"), None);
    }

    #[test]
    fn error_counts_per_job() {
        let mut b = Backoffs::default();
        assert_eq!(b.failed("u"), S(1));
        assert_eq!(b.failed("u"), S(2));
        assert_eq!(b.failed("v"), S(1), "per job");
        b.succeeded("u");
        assert_eq!(b.failed("u"), S(1), "a success starts again");
        b.change_create("u", CreateBackoffChange::Set(CreateBackoff::after_refusal(None, Instant::now())));
        b.forget("u");
        assert_eq!((b.create("u"), b.failed("u")), (None, S(1)), "forgotten");
    }
}
