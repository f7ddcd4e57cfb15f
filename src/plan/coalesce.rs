//! Status write coalescing, a step of planning: a status change that only moves replicas'
//! counts (`active`, and `succeeded` with `completedIndexes`, and `podsStartedTime` when no
//! startup deadline waits on it) waits [`COUNTS_HOLD`] from when
//! it was first planned, so the pods of a job starting or finishing one after the other cost
//! one write instead of one each, and most often none: the next write that cannot wait (the
//! job's `Running`, `Succeeded` or `Failed`, a failure, a restart) carries them. Conditions,
//! times, failures, restarts and everything else are written at once, and so is every status
//! of a plan that deletes a pod: a success is on record before the operator deletes anything.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;

use super::Plan;
use crate::api::TFJobStatus;

/// How long a status write that only moves counts waits from when it was first planned:
/// long enough that the pods of a job that the scheduler and the kubelets start, or that
/// finish, over several seconds show in the next write that cannot wait instead of in writes
/// of their own; short enough that `kubectl get` catches up within seconds (BENCHMARKS.md,
/// "Status writes per job"). A success held this long is still in its pod, which only the
/// operator's own cleanup or suspension deletes, after a status write that records it; a pod
/// someone else deletes meanwhile is run again, as Kubeflow's operator always does.
pub const COUNTS_HOLD: Duration = Duration::from_secs(10);

/// Whether `new` differs from `old` in replicas' `active` or `succeeded` counts (with their
/// `completedIndexes`), or in `podsStartedTime` while no startup deadline is pending, and
/// nothing else (the `lastReconcileTime` that goes with every change aside).
pub fn only_counts(old: &TFJobStatus, new: &TFJobStatus) -> bool {
    let no_deadline = old.startup_deadline.is_none() && new.startup_deadline.is_none();
    let without_counts = |s: &TFJobStatus| {
        let mut s = s.clone();
        s.last_reconcile_time = None;
        if no_deadline {
            s.pods_started_time = None;
        }
        for r in s.replica_statuses.values_mut() {
            r.active = 0;
            r.succeeded = 0;
            r.completed_indexes = Default::default();
        }
        s
    };
    let moved = old.replica_statuses != new.replica_statuses
        || (no_deadline && old.pods_started_time != new.pods_started_time);
    moved && without_counts(old) == without_counts(new)
}

/// Until when the status write of a plan that changes `old` into `new` waits: `None` writes
/// now. `last_write` is this process's last status write of the job (never written by this
/// process, as after a restart: written now); `held_since` is when the change now pending
/// was first held (`None`: it is new now).
pub fn hold_until(
    old: &TFJobStatus,
    new: &TFJobStatus,
    last_write: Option<Instant>,
    held_since: Option<Instant>,
    now: Instant,
) -> Option<Instant> {
    last_write?;
    let until = held_since.unwrap_or(now) + COUNTS_HOLD;
    (now < until && only_counts(old, new)).then_some(until)
}

/// Holds back the status write of `plan` when it only moves counts, deletes no pod and has
/// not waited its window yet: the plan then writes no status, wakes the job when the hold
/// ends, and says it held one. `old` is the job's status as observed; `mono` is `now` on the
/// monotonic clock that `last_write` and `held_since` were taken on.
pub fn hold(
    plan: &mut Plan,
    old: &TFJobStatus,
    (last_write, held_since): (Option<Instant>, Option<Instant>),
    now: Timestamp,
    mono: Instant,
) {
    let Some(new) = &plan.status else { return };
    if !plan.delete_pods.is_empty() {
        return;
    }
    if let Some(until) = hold_until(old, new, last_write, held_since, mono) {
        plan.status = None;
        plan.status_held = true;
        let wake = now + until.saturating_duration_since(mono);
        plan.requeue_at = Some(plan.requeue_at.map_or(wake, |r| r.min(wake)));
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
    fn a_held_status_leaves_the_plan_and_wakes_the_job() {
        let (t0, wall) = (Instant::now(), "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap());
        let base = status(&[(ReplicaType::Worker, 1)]);
        let more = status(&[(ReplicaType::Worker, 2)]);
        let later = wall + COUNTS_HOLD + Duration::from_secs(4);
        let sooner = wall + Duration::from_millis(100);
        // Planned at t0 + 300 ms, first held at t0: it wakes when the window from t0 ends.
        let wake = wall + COUNTS_HOLD - Duration::from_millis(300);
        // (case, planned status, planned requeue, last write, want: status kept, held, requeue)
        type Case<'a> = (
            &'a str,
            Option<&'a TFJobStatus>,
            Option<Timestamp>,
            Option<Instant>,
            (bool, bool, Option<Timestamp>),
        );
        let cases: [Case; 5] = [
            ("no status planned", None, None, Some(t0), (false, false, None)),
            (
                "counts within the window: held to its end",
                Some(&more),
                None,
                Some(t0),
                (false, true, Some(wake)),
            ),
            (
                "a later wake-up gives way to the hold's end",
                Some(&more),
                Some(later),
                Some(t0),
                (false, true, Some(wake)),
            ),
            ("a sooner wake-up stays", Some(&more), Some(sooner), Some(t0), (false, true, Some(sooner))),
            ("never written: written now", Some(&more), Some(later), None, (true, false, Some(later))),
        ];
        for (name, planned, requeue_at, last, (kept, held, requeue)) in cases {
            let mut p = Plan { status: planned.cloned(), requeue_at, ..Default::default() };
            hold(&mut p, &base, (last, Some(t0)), wall, t0 + Duration::from_millis(300));
            assert_eq!((p.status.is_some(), p.status_held, p.requeue_at), (kept, held, requeue), "{name}");
        }
        // A plan that deletes a pod writes its status first, at once, whatever it moves.
        let gone = crate::plan::ObjectKey { name: "j-worker-1".into(), uid: "u1".into() };
        let mut p = Plan { status: Some(more.clone()), delete_pods: vec![gone], ..Default::default() };
        hold(&mut p, &base, (Some(t0), Some(t0)), wall, t0 + Duration::from_millis(300));
        assert!(p.status.is_some() && !p.status_held, "a plan that deletes a pod is not held");
    }

    #[test]
    fn what_waits_and_for_how_long() {
        use ReplicaType::*;
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let end = |from: Instant| from + COUNTS_HOLD;
        let long_ago = Some(t0);
        let later = ms(60_000);
        let base = status(&[(PS, 1), (Worker, 1)]);
        let more_active = status(&[(PS, 1), (Worker, 3)]);
        let mut running = more_active.clone();
        let at = "2026-01-01T00:00:00Z".parse().unwrap();
        crate::plan::set(&mut running, ConditionType::Running, "TFJobRunning", "running".into(), at);
        let mut succeeded = more_active.clone();
        if let Some(w) = succeeded.replica_statuses.get_mut(&Worker) {
            w.succeeded = 1;
        }
        let mut failed = more_active.clone();
        if let Some(w) = failed.replica_statuses.get_mut(&Worker) {
            w.failed = 1;
        }
        let mut reconciled = more_active.clone();
        reconciled.last_reconcile_time = Some(Time(at));
        let new_type = status(&[(PS, 1), (Worker, 1), (Chief, 1)]);
        let mut all_started = base.clone();
        all_started.pods_started_time = Some(Time(at));
        // With a startup deadline pending, `podsStartedTime` ends it: written at once.
        let mut deadline_ended = all_started.clone();
        deadline_ended.startup_deadline = None;
        let mut deadline_pending = base.clone();
        deadline_pending.startup_deadline = Some(Time(at));
        // (case, new status, last write, first held, now, held until)
        type Case<'a> =
            (&'a str, &'a TFJobStatus, Option<Instant>, Option<Instant>, Instant, Option<Instant>);
        let cases: Vec<Case> = vec![
            ("new counts wait a window from now", &more_active, Some(t0), None, ms(300), Some(end(ms(300)))),
            (
                "also long after the last write (pods start long after the job's Created)",
                &more_active,
                long_ago,
                None,
                later,
                Some(end(later)),
            ),
            (
                "held before: to the end of its window",
                &more_active,
                Some(t0),
                Some(ms(100)),
                ms(300),
                Some(end(ms(100))),
            ),
            (
                "the reconcile time goes with the counts",
                &reconciled,
                Some(t0),
                None,
                ms(300),
                Some(end(ms(300))),
            ),
            ("its window over: now", &more_active, Some(t0), Some(ms(100)), end(ms(100)), None),
            ("never written by this process: now", &more_active, None, None, ms(300), None),
            ("a condition: now", &running, Some(t0), Some(ms(100)), ms(300), None),
            (
                "a success that decides nothing waits too",
                &succeeded,
                Some(t0),
                Some(ms(100)),
                ms(300),
                Some(end(ms(100))),
            ),
            ("a failure: now", &failed, Some(t0), Some(ms(100)), ms(300), None),
            (
                "every pod started, no startup deadline: waits like the counts",
                &all_started,
                Some(t0),
                None,
                ms(300),
                Some(end(ms(300))),
            ),
            ("a replica type appears: now", &new_type, Some(t0), None, ms(300), None),
            ("no change at all: nothing to hold", &base, Some(t0), Some(ms(100)), ms(300), None),
        ];
        for (name, new, last, since, now, want) in cases {
            assert_eq!(hold_until(&base, new, last, since, now), want, "{name}");
        }
        let ends = hold_until(&deadline_pending, &deadline_ended, Some(t0), None, ms(300));
        assert_eq!(ends, None, "every pod started ends a pending startup deadline: written at once");
    }
}
