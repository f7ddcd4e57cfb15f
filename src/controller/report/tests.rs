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
    let prev = Some(CreateBackoff { refusals: 2, until: n.mono, failing: None });
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
            CreateBackoffChange::Set(CreateBackoff { refusals: 2, until: n.mono + S(30), failing: None }),
        ),
        (
            "first refusal: 5 s",
            plan_at(30),
            CreateStep::Refused("no".into()),
            None,
            Some(S(5)),
            CreateBackoffChange::Set(CreateBackoff { refusals: 1, until: n.mono + S(5), failing: None }),
        ),
        (
            "third refusal: 20 s",
            Plan::default(),
            CreateStep::Refused("no".into()),
            prev,
            Some(S(20)),
            CreateBackoffChange::Set(CreateBackoff { refusals: 3, until: n.mono + S(20), failing: None }),
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
            CreateBackoffChange::Set(CreateBackoff { refusals: 1, until: n.mono + S(5), failing: None }),
        ),
        (
            "a deadline sooner than the backoff",
            plan_at(2),
            CreateStep::Refused("no".into()),
            None,
            Some(S(2) + Duration::from_millis(1)),
            CreateBackoffChange::Set(CreateBackoff { refusals: 1, until: n.mono + S(5), failing: None }),
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

/// Per step, the events' (reason, note).
type StepEvents = Vec<Vec<(String, String)>>;

/// Runs the report over `steps` (seconds after the first, the create step's outcome), feeding
/// each report's backoff and status into the next, as a reconcile does. Returns, per step,
/// the events' (reason, note), and the job's final `ReplicaFailure` condition (reason, message).
fn run(steps: &[(u64, CreateStep)]) -> (StepEvents, Option<(String, String)>, Vec<Report>) {
    let n = now();
    let mut backoffs = crate::controller::backoff::Backoffs::default();
    let mut status: Option<TFJobStatus> = None;
    let (mut events, mut reports) = (Vec::new(), Vec::new());
    for (secs, creates) in steps {
        let t = Now { wall: at(n, *secs as i64), mono: n.mono + S(*secs) };
        let r = report(
            &Plan::default(),
            &applied(status.clone(), None, creates.clone()),
            backoffs.create("j"),
            t,
        );
        backoffs.change_create("j", r.create_backoff);
        if let Some(st) = &r.follow_up_status {
            status = Some(st.clone());
        }
        events.push(r.events.iter().map(|e| (e.reason.clone(), e.note.clone())).collect());
        reports.push(r);
    }
    let condition = status.and_then(|s| {
        let c = s.condition(ConditionType::ReplicaFailure)?.clone();
        Some((c.reason.unwrap_or_default(), c.message.unwrap_or_default()))
    });
    (events, condition, reports)
}

#[test]
fn failing_creates_are_reported_once_they_last_and_cleared_when_they_go_through() {
    let down = || {
        CreateStep::Transient("Creating pod j-worker-0 failed: the API server answered 500: webhook".into())
    };
    let msg = format!("Creating pod j-worker-0 failed: the API server answered 500: webhook. {NOT_THE_JOBS}");
    let warning = |secs: u64| {
        vec![(REASON_CREATE_RETRYING.to_string(), format!("Creates have failed for {secs} s. {msg}"))]
    };
    let retrying = Some((REASON_CREATE_RETRYING.to_string(), msg.clone()));
    let refused = Some((REASON_FAILED_CREATE.to_string(), "quota".to_string()));
    let none = Vec::new;
    // (case, steps, the events of each step, the final ReplicaFailure condition)
    type Case = (&'static str, Vec<(u64, CreateStep)>, StepEvents, Option<(String, String)>);
    let cases: Vec<Case> = vec![
        (
            "an API server restart: retried, nothing reported",
            vec![(0, down()), (1, down()), (3, down()), (7, down()), (15, down()), (23, CreateStep::Done)],
            vec![none(), none(), none(), none(), none(), none()],
            None,
        ),
        (
            "a webhook down: reported by the attempt at 31 s, once",
            vec![
                (0, down()),
                (1, down()),
                (3, down()),
                (7, down()),
                (15, down()),
                (31, down()),
                (61, down()),
            ],
            vec![none(), none(), none(), none(), none(), warning(31), none()],
            retrying.clone(),
        ),
        (
            "the webhook back: the condition goes with the first creates that go through",
            vec![(0, down()), (30, down()), (60, CreateStep::Done)],
            vec![none(), warning(30), none()],
            None,
        ),
        (
            "a refusal then: it supersedes",
            vec![(0, down()), (30, down()), (60, CreateStep::Refused("quota".into()))],
            vec![none(), warning(30), none()],
            refused.clone(),
        ),
        (
            "a refusal stays while failures have not lasted",
            vec![(0, CreateStep::Refused("quota".into())), (5, down()), (6, down())],
            vec![none(), none(), none()],
            refused.clone(),
        ),
        (
            "a refusal is not cleared by the report once creates go through",
            vec![(0, CreateStep::Refused("quota".into())), (5, CreateStep::Done)],
            vec![none(), none()],
            refused,
        ),
        (
            "a new run after a long quiet: reported again after it lasts",
            vec![(0, down()), (30, down()), (300, down()), (310, down()), (330, down())],
            vec![none(), warning(30), none(), none(), warning(30)],
            retrying,
        ),
    ];
    for (name, steps, want_events, want_condition) in cases {
        let (events, condition, _) = run(&steps);
        assert_eq!(events, want_events, "{name}");
        assert_eq!(condition, want_condition, "{name}");
    }
}

#[test]
fn failing_creates_wait_and_write_the_condition_only_when_it_changes() {
    let down =
        || CreateStep::Transient("Creating pod j-worker-0 failed: no answer from the API server".into());
    let steps =
        [(0, down()), (1, down()), (3, down()), (7, down()), (15, down()), (31, down()), (61, down())];
    let (_, _, reports) = run(&steps);
    let waits: Vec<_> = reports.iter().map(|r| r.requeue_after).collect();
    let want: Vec<_> = [1, 2, 4, 8, 16, 30, 30].into_iter().map(|s| Some(S(s))).collect();
    assert_eq!(waits, want, "retried after 1 s, doubling to 30 s");
    let writes: Vec<bool> = reports.iter().map(|r| r.follow_up_status.is_some()).collect();
    assert_eq!(writes, [false, false, false, false, false, true, false], "one status write");
    let CreateBackoffChange::Set(b) = reports[0].create_backoff else { panic!("{:?}", reports[0]) };
    let f = b.failing.expect("a run of failures");
    assert_eq!((b.refusals, b.until.duration_since(f.since), f.failures), (0, S(1), 1));
}
