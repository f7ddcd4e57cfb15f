//! Table tests of the pending diagnosis, the startup deadline and failure details.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    PodCondition, PodSpec, PodStatus, PodTemplateSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::api::{ConditionStatus, ReplicaSpec, ReplicaType, RestartPolicy, TFJobSpec};
use crate::names::ANNOTATION_STARTUP_DEADLINE;

const T0: i64 = 1_700_000_000;
const UNSCHEDULABLE: &str = "0/4 nodes are available: 4 node(s) didn't match Pod's node affinity/selector.";

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(T0 + s).unwrap()
}

/// A job `j` (created at t(0)) with 1 PS and 2 workers, restart policy `Never`.
fn job(annotation: Option<&str>) -> TFJob {
    let template = PodTemplateSpec {
        metadata: None,
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "tensorflow".into(),
                image: Some("tf".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    };
    let mut spec = TFJobSpec::default();
    for (k, n) in [("PS", 1), ("Worker", 2)] {
        spec.tf_replica_specs.insert(
            k.into(),
            ReplicaSpec {
                replicas: Some(n),
                template: template.clone().into(),
                restart_policy: Some(RestartPolicy::Never),
            },
        );
    }
    let mut j = TFJob::new("j", spec);
    j.metadata.namespace = Some("ns".into());
    j.metadata.uid = Some("uid-j".into());
    j.metadata.creation_timestamp = Some(Time(t(0)));
    if let Some(a) = annotation {
        j.metadata.annotations =
            Some(BTreeMap::from([(ANNOTATION_STARTUP_DEADLINE.to_string(), a.to_string())]));
    }
    j
}

/// What a pod's status says.
#[derive(Clone, Copy)]
enum S {
    Running,
    Pending,
    Unschedulable,
    Waiting(&'static str),
    Exited(i32, &'static str),
}

/// The pod of replica `rt`/`i`, created at t(0), in state `s`.
fn pod(j: &TFJob, rt: ReplicaType, i: i32, s: S) -> Pod {
    let view = JobView::new(j).unwrap();
    let mut p = crate::objects::Builder::new(&view, None).pod(ReplicaId { rtype: rt, index: i }).unwrap();
    p.metadata.uid = Some(format!("uid-{rt}-{i}"));
    p.metadata.creation_timestamp = Some(Time(t(0)));
    let container = |state: ContainerState| {
        Some(vec![ContainerStatus { name: "tensorflow".into(), state: Some(state), ..Default::default() }])
    };
    p.status = Some(match s {
        S::Running => PodStatus { phase: Some("Running".into()), ..Default::default() },
        S::Pending => PodStatus { phase: Some("Pending".into()), ..Default::default() },
        S::Unschedulable => PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some(UNSCHEDULABLE.into()),
                ..Default::default()
            }]),
            ..Default::default()
        },
        S::Waiting(reason) => PodStatus {
            phase: Some(if reason == "CrashLoopBackOff" { "Running" } else { "Pending" }.into()),
            container_statuses: container(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: Some(format!("told {reason}")),
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
        S::Exited(code, msg) => PodStatus {
            phase: Some("Failed".into()),
            container_statuses: container(ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    reason: Some("Error".into()),
                    message: Some(msg.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        },
    });
    p
}

/// All three pods, worker 1 in state `w1`, the others running.
fn pods(j: &TFJob, w1: S) -> Vec<Pod> {
    vec![
        pod(j, ReplicaType::PS, 0, S::Running),
        pod(j, ReplicaType::Worker, 0, S::Running),
        pod(j, ReplicaType::Worker, 1, w1),
    ]
}

fn services(j: &TFJob) -> Vec<Service> {
    let v = JobView::new(j).unwrap();
    let mut out = Vec::new();
    for (&rt, r) in &v.replicas {
        out.extend((0..r.count).filter_map(|i| crate::objects::service_for(&v, rt, i)));
    }
    out
}

fn run(j: &TFJob, pods: &[Pod], now: i64, default: Option<i64>) -> Plan {
    let settings = Settings { startup_deadline_seconds: default, ..Settings::default() };
    plan_with(j, pods, &services(j), t(now), settings)
}

/// The job after the plan's status write.
fn applied(mut j: TFJob, p: &Plan) -> TFJob {
    if let Some(st) = &p.status {
        j.status = Some(st.clone());
    }
    j
}

fn status(j: &TFJob) -> TFJobStatus {
    j.status.clone().unwrap_or_default()
}

fn reasons(p: &Plan) -> Vec<&str> {
    p.all_events().map(|e| e.reason.as_str()).collect()
}

#[test]
fn why_a_pod_has_not_started() {
    let j = job(None);
    let w = |s| diagnosis::why(&pod(&j, ReplicaType::Worker, 0, s), t(100)).map(|w| (w.reason, w.message));
    // (case, pod state, want reason and message)
    type Want = Option<(&'static str, &'static str)>;
    let cases: [(&str, S, Want); 8] = [
        ("running", S::Running, None),
        ("pending without a reason yet", S::Pending, None),
        ("unschedulable: the scheduler's message", S::Unschedulable, Some(("Unschedulable", UNSCHEDULABLE))),
        (
            "image pull",
            S::Waiting("ErrImagePull"),
            Some(("ErrImagePull", "container tensorflow: told ErrImagePull")),
        ),
        (
            "pull backoff",
            S::Waiting("ImagePullBackOff"),
            Some(("ImagePullBackOff", "container tensorflow: told ImagePullBackOff")),
        ),
        (
            "missing secret",
            S::Waiting("CreateContainerConfigError"),
            Some(("CreateContainerConfigError", "container tensorflow: told CreateContainerConfigError")),
        ),
        (
            "crash loop",
            S::Waiting("CrashLoopBackOff"),
            Some(("CrashLoopBackOff", "container tensorflow: told CrashLoopBackOff")),
        ),
        ("ContainerCreating is normal progress", S::Waiting("ContainerCreating"), None),
    ];
    for (case, s, want) in cases {
        let got = w(s);
        assert_eq!(got.as_ref().map(|(r, m)| (r.as_str(), m.as_str())), want, "{case}");
    }
    let mut long = pod(&j, ReplicaType::Worker, 0, S::Unschedulable);
    long.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].message = Some("é".repeat(2000));
    let m = diagnosis::why(&long, t(100)).unwrap().message;
    assert!(m.len() <= diagnosis::MESSAGE_MAX + '…'.len_utf8(), "bounded: {}", m.len());
}

#[test]
fn diagnosis_after_the_grace_with_a_requeue_at_its_end() {
    let j = applied(job(None), &run(&job(None), &[], 0, None));
    let stuck = pods(&j, S::Unschedulable);
    // Inside the grace: no condition, but a wake-up when it ends.
    let p = run(&j, &stuck, 10, None);
    let j = applied(j, &p);
    assert!(status(&j).condition(ConditionType::PodsNotStarted).is_none());
    assert_eq!(p.requeue_at, Some(t(30)), "wakes up when the grace ends");
    assert!(!reasons(&p).contains(&diagnosis::EVENT_REASON));
    // Past it: the condition, first in the list, and one Warning event.
    let p = run(&j, &stuck, 30, None);
    let j = applied(j, &p);
    let st = status(&j);
    let c = st.condition(ConditionType::PodsNotStarted).expect("PodsNotStarted");
    assert_eq!(c.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(
        c.message.as_deref(),
        Some(format!("Worker 1 (pod j-worker-1): Unschedulable: {UNSCHEDULABLE}").as_str())
    );
    assert_eq!(st.conditions.first().map(|c| c.type_), Some(ConditionType::PodsNotStarted));
    assert_eq!(st.conditions.last().map(|c| c.type_), Some(ConditionType::Running), "State stays Kubeflow's");
    assert_eq!(p.events.iter().filter(|e| e.reason == diagnosis::EVENT_REASON).count(), 1);
    assert_eq!(
        p.events.iter().find(|e| e.reason == diagnosis::EVENT_REASON).unwrap().type_,
        EventType::Warning
    );
    // The same diagnosis again: no change, no event.
    let again = run(&j, &stuck, 40, None);
    assert_eq!(again.status, None, "nothing changed");
    assert!(again.events.is_empty());
    // The pods start: the condition goes.
    let p = run(&j, &pods(&j, S::Running), 50, None);
    assert!(p.status.unwrap().condition(ConditionType::PodsNotStarted).is_none());
}

#[test]
fn one_event_per_change_of_diagnosis() {
    let j0 = job(None);
    let mut j = applied(j0.clone(), &run(&j0, &[], 0, None));
    // (state of worker 1, whether an event is due)
    let steps = [
        (S::Waiting("ErrImagePull"), true),
        (S::Waiting("ImagePullBackOff"), false),
        (S::Waiting("ErrImagePull"), false),
        (S::Waiting("CreateContainerConfigError"), true),
        (S::Unschedulable, true),
        (S::Unschedulable, false),
    ];
    for (n, (s, event)) in steps.into_iter().enumerate() {
        let p = run(&j, &pods(&j, s), 31 + n as i64, None);
        let got = p.events.iter().filter(|e| e.reason == diagnosis::EVENT_REASON).count();
        assert_eq!(got, usize::from(event), "step {n}");
        j = applied(j, &p);
        let c = status(&j);
        let c = c.condition(ConditionType::PodsNotStarted).unwrap();
        assert_eq!(c.last_transition_time, Some(Time(t(31))), "step {n}: the condition held throughout");
    }
}

#[test]
fn many_stuck_pods_name_the_first_and_count_the_rest() {
    let j = applied(job(None), &run(&job(None), &[], 0, None));
    let all: Vec<Pod> = [(ReplicaType::PS, 0), (ReplicaType::Worker, 0), (ReplicaType::Worker, 1)]
        .into_iter()
        .map(|(rt, i)| pod(&j, rt, i, S::Waiting("ImagePullBackOff")))
        .collect();
    let st = run(&j, &all, 31, None).status.unwrap();
    let msg = st.condition(ConditionType::PodsNotStarted).unwrap().message.clone().unwrap();
    assert!(msg.starts_with("PS 0 (pod j-ps-0): ImagePullBackOff"), "{msg}");
    assert!(msg.ends_with("; 2 more pod(s) have not started"), "{msg}");
}

#[test]
fn startup_annotation_values() {
    // (annotation, want)
    let cases = [
        (None, Ok(None)),
        (Some("60"), Ok(Some(60))),
        (Some(" 5 "), Ok(Some(5))),
        (Some("0"), Err(())),
        (Some("-1"), Err(())),
        (Some("10m"), Err(())),
        (Some(""), Err(())),
    ];
    for (a, want) in cases {
        assert_eq!(startup::annotation(&job(a)).map_err(|_| ()), want, "{a:?}");
    }
}

/// Runs `j` from creation with its pods in `w1` (worker 1) and the others running.
fn stuck_at(j: &TFJob, now: i64, w1: S, default: Option<i64>) -> Plan {
    let j = applied(j.clone(), &run(j, &[], 0, default));
    run(&j, &pods(&j, w1), now, default)
}

#[test]
fn startup_deadline() {
    // (case, annotation, default, worker 1, now, want startupDeadline, want failed)
    let cases = [
        ("annotation: before the deadline", Some("60"), None, S::Unschedulable, 59, Some(60), false),
        ("annotation: at the deadline", Some("60"), None, S::Unschedulable, 60, None, true),
        ("the default", None, Some(20), S::Pending, 20, None, true),
        ("the annotation wins over the default", Some("100"), Some(20), S::Pending, 50, Some(100), false),
        ("neither: no deadline", None, None, S::Unschedulable, 9999, None, false),
        ("malformed: the default applies", Some("soon"), Some(20), S::Pending, 25, None, true),
        ("malformed, no default: no deadline", Some("soon"), None, S::Pending, 9999, None, false),
        ("every pod started: no deadline", Some("60"), None, S::Running, 61, None, false),
        ("a failed pod has started", Some("10"), Some(5), S::Exited(1, "x"), 61, None, false),
    ];
    for (case, a, default, w1, now, want_deadline, want_failed) in cases {
        let p = stuck_at(&job(a), now, w1, default);
        let st = p.status.clone().unwrap();
        let failed = st.condition(ConditionType::Failed);
        let exceeded = failed.is_some_and(|c| c.reason.as_deref() == Some(startup::REASON_EXCEEDED));
        assert_eq!(exceeded, want_failed, "{case}: {failed:?}");
        assert_eq!(st.startup_deadline, want_deadline.map(|s| Time(t(s))), "{case}");
        if let Some(s) = want_deadline {
            assert!(p.requeue_at.is_some_and(|r| r <= t(s)), "{case}: requeue by the deadline");
        }
    }
}

#[test]
fn startup_deadline_message_has_the_diagnosis_and_the_job_is_cleaned_up() {
    let mut j = job(Some("45"));
    j.spec.clean_pod_policy = Some(crate::api::CleanPodPolicy::All);
    let p = stuck_at(&j, 45, S::Waiting("ImagePullBackOff"), None);
    let st = p.status.clone().unwrap();
    let c = st.condition(ConditionType::Failed).unwrap();
    assert_eq!(
        c.message.as_deref(),
        Some(
            "TFJob ns/j has failed because its pods did not all start within the startup deadline of 45s: \
             Worker 1 (pod j-worker-1): ImagePullBackOff: container tensorflow: told ImagePullBackOff."
        )
    );
    assert!(st.condition(ConditionType::PodsNotStarted).is_none(), "a finished job has no diagnosis");
    assert_eq!(p.delete_pods.len(), 3, "cleanPodPolicy applies");
    assert!(reasons(&p).contains(&startup::REASON_EXCEEDED));
}

#[test]
fn started_pods_are_never_failed_by_the_startup_deadline() {
    let j0 = job(Some("30"));
    let j = applied(j0.clone(), &run(&j0, &[], 0, None));
    let p = run(&j, &pods(&j, S::Running), 10, None);
    let j = applied(j, &p);
    assert_eq!(status(&j).pods_started_time, Some(Time(t(10))));
    // A pod later stuck (re-created, crash looping) long after the deadline.
    let p = run(&j, &pods(&j, S::Waiting("CrashLoopBackOff")), 500, None);
    let st = p.status.unwrap();
    assert!(!st.is_finished());
    assert_eq!(st.startup_deadline, None);
    assert_eq!(
        st.condition(ConditionType::PodsNotStarted).unwrap().reason.as_deref(),
        Some("CrashLoopBackOff")
    );
}

#[test]
fn startup_deadline_patched_shorter_then_away() {
    let j0 = job(Some("600"));
    let j = applied(j0.clone(), &run(&j0, &[], 0, None));
    let p = run(&j, &pods(&j, S::Unschedulable), 40, None);
    let j = applied(j, &p);
    assert_eq!(status(&j).startup_deadline, Some(Time(t(600))));
    assert_eq!(status(&j).applied_policy.unwrap().startup_deadline_seconds, Some(600));

    // Patched away: no deadline, one event.
    let mut away = j.clone();
    away.metadata.annotations = None;
    let p = run(&away, &pods(&j, S::Unschedulable), 41, None);
    assert_eq!(reasons(&p), [startup::REASON_UPDATED]);
    assert_eq!(p.events[0].note, "the startup deadline changed from 600s to unset");
    let st = p.status.unwrap();
    assert_eq!((st.startup_deadline, st.applied_policy.unwrap().startup_deadline_seconds), (None, None));

    // Patched shorter than the time already passed: fails at once.
    let mut shorter = j.clone();
    shorter.metadata.annotations.as_mut().unwrap().insert(ANNOTATION_STARTUP_DEADLINE.into(), "30".into());
    let p = run(&shorter, &pods(&j, S::Unschedulable), 41, None);
    assert!(reasons(&p).contains(&startup::REASON_UPDATED));
    let c = p.status.unwrap().condition(ConditionType::Failed).cloned().unwrap();
    assert_eq!(c.reason.as_deref(), Some(startup::REASON_EXCEEDED));
    assert!(c.message.unwrap().contains("Unschedulable: 0/4 nodes"));
}

#[test]
fn malformed_annotation_gets_a_condition_and_one_event() {
    let j0 = job(Some("ten"));
    let p = run(&j0, &[], 0, None);
    let warn: Vec<_> = p.events.iter().filter(|e| e.reason == "InvalidStartupDeadline").collect();
    assert_eq!(warn.len(), 1);
    assert_eq!(warn[0].type_, EventType::Warning);
    let j = applied(j0, &p);
    let st = status(&j);
    let c = st.condition(ConditionType::InvalidStartupDeadline).unwrap();
    assert_eq!((c.reason.as_deref(), c.status), (Some(startup::REASON_INVALID), ConditionStatus::True));
    assert_eq!(st.conditions.last().map(|c| c.type_), Some(ConditionType::Created), "State stays Kubeflow's");
    assert!(!st.is_finished());
    let again = run(&j, &pods(&j, S::Pending), 5, None);
    assert!(again.events.iter().all(|e| e.reason != "InvalidStartupDeadline"), "no repeat");
    // Fixed: the condition goes and the value applies.
    let mut fixed = j.clone();
    fixed.metadata.annotations.as_mut().unwrap().insert(ANNOTATION_STARTUP_DEADLINE.into(), "90".into());
    let st = run(&fixed, &pods(&j, S::Pending), 6, None).status.unwrap();
    assert!(st.condition(ConditionType::InvalidStartupDeadline).is_none());
    assert_eq!(st.startup_deadline, Some(Time(t(90))));
}

#[test]
fn startup_counts_from_the_last_resume() {
    let j0 = job(Some("60"));
    let mut j = applied(j0.clone(), &run(&j0, &[], 0, None));
    let st = j.status.as_mut().unwrap();
    st.pods_started_time = Some(Time(t(5)));
    st.conditions.push(crate::api::JobCondition {
        type_: ConditionType::Suspended,
        status: ConditionStatus::False,
        reason: Some("TFJobResumed".into()),
        message: None,
        last_update_time: Some(Time(t(100))),
        last_transition_time: Some(Time(t(100))),
    });
    let st = run(&j, &pods(&j, S::Unschedulable), 120, None).status.unwrap();
    assert_eq!(st.startup_deadline, Some(Time(t(160))), "started before the resume does not count");
    assert_eq!(st.pods_started_time, None);
}

#[test]
fn failure_details_survive_cleanup() {
    let mut j0 = job(None);
    j0.spec.clean_pod_policy = Some(crate::api::CleanPodPolicy::All);
    let j = applied(j0.clone(), &run(&j0, &[], 0, None));
    let long: &'static str = format!("Traceback: {}", "x".repeat(2000)).leak();
    let p = run(&j, &pods(&j, S::Exited(3, long)), 5, None);
    let c = p.status.clone().unwrap().condition(ConditionType::Failed).cloned().unwrap();
    let msg = c.message.unwrap();
    assert!(
        msg.starts_with("TFJob ns/j has failed because 1 Worker replica(s) failed: pod j-worker-1 container tensorflow exited with code 3 (Error): Traceback: xxx"),
        "{msg}"
    );
    assert!(msg.len() < 700, "the termination message is bounded: {}", msg.len());
    assert_eq!(p.delete_pods.len(), 3, "and the pods go");
}

/// Worker 1 crash-looping, running again since `since` after its second failure.
fn running_again(j: &TFJob, since: i64) -> Vec<Pod> {
    let mut all = pods(j, S::Running);
    let s = all[2].status.as_mut().unwrap();
    s.container_statuses = Some(vec![ContainerStatus {
        name: "tensorflow".into(),
        restart_count: 2,
        state: Some(ContainerState {
            running: Some(k8s_openapi::api::core::v1::ContainerStateRunning {
                started_at: Some(Time(t(since))),
            }),
            ..Default::default()
        }),
        last_state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated { exit_code: 1, ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    all
}

#[test]
fn a_crash_loop_stays_diagnosed_between_back_offs() {
    let j0 = job(None);
    let mut j = applied(j0.clone(), &run(&j0, &[], 0, None));
    j.spec.tf_replica_specs.values_mut().for_each(|r| r.restart_policy = Some(RestartPolicy::OnFailure));
    let p = run(&j, &pods(&j, S::Waiting("CrashLoopBackOff")), 35, None);
    assert_eq!(p.events.iter().filter(|e| e.reason == diagnosis::EVENT_REASON).count(), 1);
    let j = applied(j, &p);
    // Running again since t(40): still a crash loop until it has run for the grace.
    let p = run(&j, &running_again(&j, 40), 45, None);
    assert!(p.events.iter().all(|e| e.reason != diagnosis::EVENT_REASON), "the same diagnosis: no event");
    assert_eq!(p.requeue_at, Some(t(70)), "looks again when the grace of running ends");
    let j = applied(j, &p);
    let st = status(&j);
    let c = st.condition(ConditionType::PodsNotStarted).unwrap();
    assert_eq!(c.reason.as_deref(), Some("CrashLoopBackOff"));
    assert!(c.message.as_deref().unwrap().contains("restarted 2 time(s), exited with code 1 last"), "{c:?}");
    assert_eq!(c.last_transition_time, Some(Time(t(35))), "held throughout");
    // Up for the grace: cleared.
    let p = run(&j, &running_again(&j, 40), 70, None);
    assert!(p.status.unwrap().condition(ConditionType::PodsNotStarted).is_none());
}

#[test]
fn pods_started_time_is_the_last_pods_start_whenever_planned() {
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateRunning, ContainerStatus};
    let j0 = job(None);
    let j = applied(j0.clone(), &run(&j0, &[], 0, None));
    let mut running = pods(&j, S::Running);
    for (p, at) in running.iter_mut().zip([3, 7, 5]) {
        let st = p.status.get_or_insert_with(Default::default);
        st.container_statuses = Some(vec![ContainerStatus {
            name: "tensorflow".into(),
            state: Some(ContainerState {
                running: Some(ContainerStateRunning { started_at: Some(Time(t(at))) }),
                ..Default::default()
            }),
            ..Default::default()
        }]);
    }
    // (case, planned at, want)
    let cases = [("first seen", 10, t(7)), ("planned again before it is written", 12, t(7))];
    for (case, now, want) in cases {
        let p = run(&j, &running, now, None);
        assert_eq!(p.status.and_then(|s| s.pods_started_time), Some(Time(want)), "{case}");
    }
    // Without container start times: when the operator saw them all started.
    let p = run(&j, &pods(&j, S::Running), 10, None);
    assert_eq!(p.status.and_then(|s| s.pods_started_time), Some(Time(t(10))), "no start times");
}
