//! Table tests of the report: follow-up status, create backoff and requeue.

use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::api::{ConditionType, TFJob};
use crate::plan::REASON_FAILED_CREATE;

const S: fn(u64) -> Duration = Duration::from_secs;

fn now() -> Now {
    Now { wall: Timestamp::from_second(1_700_000_000).unwrap(), mono: Instant::now() }
}

fn at(n: Now, secs: i64) -> Timestamp {
    Timestamp::from_second(n.wall.as_second() + secs).unwrap()
}

fn applied(
    job_status: Option<TFJobStatus>,
    written_over: Option<Option<TFJobStatus>>,
    creates: CreateStep,
) -> Applied {
    let mut job = TFJob::new("j", Default::default());
    job.status = job_status;
    Applied { job, status_written_over: written_over, creates, job_deleted: false }
}

#[test]
fn requeue_is_the_soonest_of_plan_backoff_and_blocked() {
    let n = now();
    let plan_at = |secs| Plan { requeue_at: Some(at(n, secs)), ..Default::default() };
    let prev = Some(CreateBackoff { refusals: 2, until: n.mono });
    // (case, plan, creates, previous backoff, want requeue, want backoff change)
    type Case =
        (&'static str, Plan, CreateStep, Option<CreateBackoff>, Option<Duration>, CreateBackoffChange);
    let cases: Vec<Case> = vec![
        (
            "nothing to wait for",
            Plan::default(),
            CreateStep::NoneNeeded,
            None,
            None,
            CreateBackoffChange::Keep,
        ),
        (
            "the plan's instant",
            plan_at(30),
            CreateStep::NoneNeeded,
            None,
            Some(S(30) + Duration::from_millis(1)),
            CreateBackoffChange::Keep,
        ),
        (
            "an instant already past",
            plan_at(-5),
            CreateStep::NoneNeeded,
            None,
            Some(Duration::ZERO),
            CreateBackoffChange::Keep,
        ),
        (
            "created: backoff cleared",
            plan_at(30),
            CreateStep::Done,
            prev,
            Some(S(30) + Duration::from_millis(1)),
            CreateBackoffChange::Clear,
        ),
        ("blocked: 1 s", plan_at(30), CreateStep::Blocked, None, Some(S(1)), CreateBackoffChange::Keep),
        (
            "an instant sooner than blocked",
            plan_at(0),
            CreateStep::Blocked,
            None,
            Some(Duration::from_millis(1)),
            CreateBackoffChange::Keep,
        ),
        (
            "waiting for the backoff",
            plan_at(30),
            CreateStep::Waiting { until: n.mono + S(7) },
            prev,
            Some(S(7)),
            CreateBackoffChange::Keep,
        ),
        (
            "the namespace is going: held back silently, then tried again",
            Plan::default(),
            CreateStep::NamespaceGone,
            prev,
            Some(S(30)),
            CreateBackoffChange::Set(CreateBackoff { refusals: 2, until: n.mono + S(30) }),
        ),
        (
            "first refusal: 5 s",
            plan_at(30),
            CreateStep::Refused("no".into()),
            None,
            Some(S(5)),
            CreateBackoffChange::Set(CreateBackoff { refusals: 1, until: n.mono + S(5) }),
        ),
        (
            "third refusal: 20 s",
            Plan::default(),
            CreateStep::Refused("no".into()),
            prev,
            Some(S(20)),
            CreateBackoffChange::Set(CreateBackoff { refusals: 3, until: n.mono + S(20) }),
        ),
        (
            "cut at the per-reconcile bound: the rest at once",
            Plan { more: true, ..plan_at(30) },
            CreateStep::Done,
            prev,
            Some(Duration::ZERO),
            CreateBackoffChange::Clear,
        ),
        (
            "cut deletes, nothing to create: at once",
            Plan { more: true, ..Plan::default() },
            CreateStep::NoneNeeded,
            None,
            Some(Duration::ZERO),
            CreateBackoffChange::Keep,
        ),
        (
            "cut, but refused: the backoff holds",
            Plan { more: true, ..Plan::default() },
            CreateStep::Refused("no".into()),
            None,
            Some(S(5)),
            CreateBackoffChange::Set(CreateBackoff { refusals: 1, until: n.mono + S(5) }),
        ),
        (
            "a deadline sooner than the backoff",
            plan_at(2),
            CreateStep::Refused("no".into()),
            None,
            Some(S(2) + Duration::from_millis(1)),
            CreateBackoffChange::Set(CreateBackoff { refusals: 1, until: n.mono + S(5) }),
        ),
    ];
    for (name, plan, creates, backoff, want_requeue, want_backoff) in cases {
        let r = report(&plan, &applied(None, None, creates), backoff, n);
        assert_eq!(r.requeue_after, want_requeue, "{name}");
        assert_eq!(r.create_backoff, want_backoff, "{name}");
    }
}

#[test]
fn a_refusal_sets_replica_failure_once() {
    let n = now();
    let r = report(&Plan::default(), &applied(None, None, CreateStep::Refused("quota".into())), None, n);
    let st = r.follow_up_status.expect("a ReplicaFailure condition to write");
    let c = st.condition(ConditionType::ReplicaFailure).expect("ReplicaFailure");
    assert_eq!((c.reason.as_deref(), c.message.as_deref()), (Some(REASON_FAILED_CREATE), Some("quota")));
    // Already there with the same message: nothing to write.
    let r = report(
        &Plan::default(),
        &applied(Some(st.clone()), None, CreateStep::Refused("quota".into())),
        None,
        n,
    );
    assert_eq!(r.follow_up_status, None);
    // A new message is written.
    let r = report(&Plan::default(), &applied(Some(st), None, CreateStep::Refused("other".into())), None, n);
    assert!(r.follow_up_status.is_some());
    for creates in
        [CreateStep::Done, CreateStep::Blocked, CreateStep::NoneNeeded, CreateStep::Waiting { until: n.mono }]
    {
        let r = report(&Plan::default(), &applied(None, None, creates.clone()), None, n);
        assert_eq!(r.follow_up_status, None, "{creates:?}");
    }
}

#[test]
fn a_deleted_job_waits_for_nothing() {
    let n = now();
    let plan = Plan { requeue_at: Some(at(n, 5)), ..Default::default() };
    let mut a = applied(None, None, CreateStep::Refused("x".into()));
    a.job_deleted = true;
    let r = report(&plan, &a, None, n);
    assert_eq!(
        (r.requeue_after, r.follow_up_status, r.create_backoff),
        (None, None, CreateBackoffChange::Keep)
    );
}

#[test]
fn duration_until_rounds_up_and_never_goes_negative() {
    let n = now().wall;
    let t = |ms: i64| n.checked_add(k8s_openapi::jiff::SignedDuration::from_millis(ms)).unwrap();
    assert_eq!(duration_until(t(1500), n), Duration::from_millis(1501));
    assert_eq!(duration_until(t(0), n), Duration::from_millis(1));
    assert_eq!(duration_until(t(-1), n), Duration::ZERO);
}
