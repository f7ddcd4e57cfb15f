//! Status write coalescing, pure: a status change that only moves replicas' `active` counts,
//! planned within [`ACTIVE_COUNTS_HOLD`] of the job's last status write, waits for the rest of
//! that window, so the pods of a job starting one after the other cost one write instead of
//! one each. Conditions, times, successes, failures, restarts and everything else are written
//! at once: no reader waits for them.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::books::PerJob;
use crate::api::TFJobStatus;

/// How long after a status write another write that only moves `active` counts waits.
pub const ACTIVE_COUNTS_HOLD: Duration = Duration::from_secs(1);

/// Whether `new` differs from `old` in replicas' `active` counts and nothing else (the
/// `lastReconcileTime` that goes with every change aside).
pub fn only_active_counts(old: &TFJobStatus, new: &TFJobStatus) -> bool {
    let without_counts = |s: &TFJobStatus| {
        let mut s = s.clone();
        s.last_reconcile_time = None;
        for r in s.replica_statuses.values_mut() {
            r.active = 0;
        }
        s
    };
    old.replica_statuses != new.replica_statuses && without_counts(old) == without_counts(new)
}

/// Until when the status write of a plan that changes `old` into `new` waits, given the
/// job's last status write: `None` writes now.
pub fn hold_until(
    old: &TFJobStatus,
    new: &TFJobStatus,
    last_write: Option<Instant>,
    now: Instant,
) -> Option<Instant> {
    let until = last_write? + ACTIVE_COUNTS_HOLD;
    (now < until && only_active_counts(old, new)).then_some(until)
}

/// When each job's status was last written by this process, by job uid.
#[derive(Debug, Default)]
pub struct StatusWrites {
    last: HashMap<String, Instant>,
}

impl StatusWrites {
    pub fn last(&self, uid: &str) -> Option<Instant> {
        self.last.get(uid).copied()
    }

    pub fn wrote(&mut self, uid: &str, at: Instant) {
        self.last.insert(uid.to_string(), at);
    }

    pub fn forget(&mut self, uid: &str) {
        self.last.remove(uid);
    }
}

impl PerJob for StatusWrites {
    #[cfg(test)]
    fn jobs(&self) -> HashSet<String> {
        self.last.keys().cloned().collect()
    }

    fn retain_jobs(&mut self, listed: &HashSet<String>) {
        self.last.retain(|uid, _| listed.contains(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConditionType, ReplicaStatus, ReplicaType};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn status(active: &[(ReplicaType, i32)]) -> TFJobStatus {
        TFJobStatus {
            replica_statuses: active
                .iter()
                .map(|(t, a)| (*t, ReplicaStatus { active: *a, ..Default::default() }))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn what_waits_and_for_how_long() {
        use ReplicaType::*;
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let base = status(&[(PS, 1), (Worker, 1)]);
        let more_active = status(&[(PS, 1), (Worker, 3)]);
        let mut running = more_active.clone();
        let at = "2026-01-01T00:00:00Z".parse().unwrap();
        crate::plan::set(&mut running, ConditionType::Running, "TFJobRunning", "running".into(), at);
        let mut succeeded = more_active.clone();
        if let Some(w) = succeeded.replica_statuses.get_mut(&Worker) {
            w.succeeded = 1;
        }
        let mut reconciled = more_active.clone();
        reconciled.last_reconcile_time = Some(Time(at));
        let new_type = status(&[(PS, 1), (Worker, 1), (Chief, 1)]);
        // (case, new status, last write, now, held until)
        type Case<'a> = (&'a str, &'a TFJobStatus, Option<Instant>, Instant, Option<Instant>);
        let cases: Vec<Case> = vec![
            (
                "active counts within the window wait for its end",
                &more_active,
                Some(t0),
                ms(300),
                Some(ms(1000)),
            ),
            ("the reconcile time goes with the counts", &reconciled, Some(t0), ms(300), Some(ms(1000))),
            ("active counts after the window: now", &more_active, Some(t0), ms(1000), None),
            ("never written by this process: now", &more_active, None, ms(300), None),
            ("a condition: now", &running, Some(t0), ms(300), None),
            ("a success: now", &succeeded, Some(t0), ms(300), None),
            ("a replica type appears: now", &new_type, Some(t0), ms(300), None),
            ("no change at all: nothing to hold", &base, Some(t0), ms(300), None),
        ];
        for (name, new, last, now, want) in cases {
            assert_eq!(hold_until(&base, new, last, now), want, "{name}");
        }
    }

    #[test]
    fn last_writes_are_per_job_and_forgotten() {
        let t0 = Instant::now();
        let mut w = StatusWrites::default();
        assert_eq!(w.last("a"), None);
        w.wrote("a", t0);
        w.wrote("b", t0 + Duration::from_secs(1));
        assert_eq!(w.last("a"), Some(t0));
        w.forget("a");
        assert_eq!((w.last("a"), w.last("b")), (None, Some(t0 + Duration::from_secs(1))));
    }
}
