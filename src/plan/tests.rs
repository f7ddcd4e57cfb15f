//! Table-driven tests of every planning rule.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStatus, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::api::{
    CleanPodPolicy, ReplicaSpec, ReplicaType, RestartPolicy, RunPolicy, SuccessPolicy, TFJobSpec,
};
use crate::names;
use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec};

const T0: i64 = 1_700_000_000;

fn pod_for(j: &TFJob, rt: ReplicaType, i: i32, domain: Option<&str>) -> Option<Pod> {
    let view = JobView::new(j).ok()?;
    crate::objects::Builder::new(&view, domain).pod(ReplicaId { rtype: rt, index: i })
}

/// The pods a plan creates, built as apply builds them.
fn built_pods(j: &TFJob, p: &Plan) -> Vec<Pod> {
    p.create_pods.iter().map(|r| pod_for(j, r.rtype, r.index, None).unwrap()).collect()
}

fn service_for(j: &TFJob, rt: ReplicaType, i: i32) -> Option<Service> {
    crate::objects::service_for(&JobView::new(j).ok()?, rt, i)
}

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(T0 + s).unwrap()
}

fn template() -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: None,
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "tensorflow".into(),
                image: Some("tf".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// A stored job named `j` in `ns` with these replica types (key, replicas, restart policy).
fn job(types: &[(&str, i32, Option<RestartPolicy>)]) -> TFJob {
    let mut spec = TFJobSpec::default();
    for (k, n, rp) in types {
        spec.tf_replica_specs.insert(
            k.to_string(),
            ReplicaSpec { replicas: Some(*n), template: template().into(), restart_policy: *rp },
        );
    }
    let mut j = TFJob::new("j", spec);
    j.metadata.namespace = Some("ns".into());
    j.metadata.uid = Some("uid-j".into());
    j
}

fn ps_worker(rp: Option<RestartPolicy>) -> TFJob {
    job(&[("PS", 1, rp), ("Worker", 2, rp)])
}

fn pod(j: &TFJob, rt: ReplicaType, i: i32, phase: &str) -> Pod {
    let mut p = pod_for(j, rt, i, None).unwrap();
    p.metadata.uid = Some(format!("uid-{}", p.metadata.name.clone().unwrap()));
    p.status = Some(PodStatus { phase: Some(phase.into()), ..Default::default() });
    p
}

fn uid(mut p: Pod, uid: &str) -> Pod {
    p.metadata.uid = Some(uid.into());
    p
}

fn terminated(mut p: Pod, code: i32, reason: &str) -> Pod {
    let s = p.status.get_or_insert_with(Default::default);
    // As on a real node: a failed pod was scheduled, and that condition stays True.
    s.conditions = Some(vec![PodCondition {
        type_: "PodScheduled".into(),
        status: "True".into(),
        ..Default::default()
    }]);
    s.container_statuses = Some(vec![ContainerStatus {
        name: "tensorflow".into(),
        state: Some(ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                reason: Some(reason.into()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    p
}

fn restarted(mut p: Pod, count: i32) -> Pod {
    let s = p.status.get_or_insert_with(Default::default);
    s.container_statuses =
        Some(vec![ContainerStatus { name: "tensorflow".into(), restart_count: count, ..Default::default() }]);
    p
}

fn deleting(mut p: Pod) -> Pod {
    p.metadata.deletion_timestamp = Some(Time(t(0)));
    p
}

fn services(j: &TFJob) -> Vec<Service> {
    let r = j.spec.replicas().unwrap();
    r.iter().flat_map(|(&rt, r)| (0..r.count).map(move |i| service_for(j, rt, i).unwrap())).collect()
}

/// The job after the plan's status write.
fn applied(mut j: TFJob, p: &Plan) -> TFJob {
    if let Some(st) = p.status_after_pod_deletes.as_ref().or(p.status.as_ref()) {
        j.status = Some(st.clone());
    }
    j
}

/// A job that started at T0 and was planned once with `pods` observed.
fn started(j: TFJob, pods: &[Pod]) -> TFJob {
    let p = plan(&j, pods, &services(&j), t(0));
    applied(j, &p)
}

fn cond(j: &TFJob, c: ConditionType) -> Option<(String, String)> {
    let st = j.status.as_ref()?;
    st.condition(c).map(|c| (c.status.as_str().to_string(), c.reason.clone().unwrap_or_default()))
}

fn last_condition(p: &Plan) -> Option<(ConditionType, String)> {
    let c = p.status.as_ref()?.conditions.last()?;
    Some((c.type_, c.reason.clone()?))
}

fn deleted(p: &Plan) -> Vec<&str> {
    p.delete_pods.iter().map(|d| d.name.as_str()).collect()
}

fn deleted_services(p: &Plan) -> Vec<&str> {
    p.delete_services.iter().map(|d| d.name.as_str()).collect()
}

fn created(p: &Plan) -> Vec<String> {
    p.create_pods.iter().map(|r| names::replica_name("j", r.rtype, r.index)).collect()
}

fn reasons(p: &Plan) -> Vec<&str> {
    p.all_events().map(|e| e.reason.as_str()).collect()
}

#[test]
fn new_job_is_created_and_gets_every_pod_and_service() {
    let j = ps_worker(None);
    let p = plan(&j, &[], &[], t(0));
    let st = p.status.as_ref().unwrap();
    assert_eq!(st.conditions.len(), 1);
    let c = &st.conditions[0];
    assert_eq!(
        (c.type_, c.reason.as_deref(), c.message.as_deref()),
        (ConditionType::Created, Some("TFJobCreated"), Some("TFJob j is created."))
    );
    assert_eq!(st.start_time, Some(Time(t(0))));
    assert_eq!(created(&p), ["j-ps-0", "j-worker-0", "j-worker-1"]);
    let svcs: Vec<_> = p.create_services.iter().map(|r| names::replica_name("j", r.rtype, r.index)).collect();
    assert_eq!(svcs, ["j-ps-0", "j-worker-0", "j-worker-1"]);
    assert!(reasons(&p).is_empty(), "the Created condition has no event, as in Kubeflow");
    assert!(p.delete_pods.is_empty() && !p.delete_job && p.requeue_at.is_none());
    assert_eq!(
        st.replica_statuses.keys().copied().collect::<Vec<_>>(),
        [ReplicaType::PS, ReplicaType::Worker]
    );
}

#[test]
fn running_then_stable_with_no_writes() {
    let j = ps_worker(None);
    let j = started(j, &[]);
    let pods = [
        pod(&j, ReplicaType::PS, 0, "Running"),
        pod(&j, ReplicaType::Worker, 0, "Running"),
        pod(&j, ReplicaType::Worker, 1, "Pending"),
    ];
    let p = plan(&j, &pods, &services(&j), t(1));
    assert_eq!(last_condition(&p), Some((ConditionType::Running, "TFJobRunning".into())));
    let st = p.status.as_ref().unwrap();
    assert_eq!(st.condition(ConditionType::Running).unwrap().message.as_deref(), Some("TFJob j is running."));
    assert_eq!(st.replica_statuses[&ReplicaType::PS].active, 1);
    assert_eq!(st.replica_statuses[&ReplicaType::Worker].active, 1);
    assert_eq!(st.last_reconcile_time, Some(Time(t(1))));
    assert!(p.create_pods.is_empty() && p.create_services.is_empty() && p.delete_pods.is_empty());
    assert!(reasons(&p).is_empty(), "the Running condition has no event, as in Kubeflow");
    let j = applied(j, &p);
    let again = plan(&j, &pods, &services(&j), t(30));
    assert_eq!(again, Plan::default(), "nothing changed: no write, no event, no action");
}

#[test]
fn only_pods_controlled_by_this_job_count() {
    let j = started(job(&[("Worker", 2, None)]), &[]);
    let mut foreign = pod(&j, ReplicaType::Worker, 0, "Running");
    foreign.metadata.owner_references =
        Some(vec![OwnerReference { uid: "other".into(), controller: Some(true), ..Default::default() }]);
    let p = plan(&j, &[foreign], &services(&j), t(1));
    assert_eq!(created(&p), ["j-worker-0", "j-worker-1"], "a pod of another uid is not ours");
    assert!(p.delete_pods.is_empty(), "and never ours to delete");
}

#[test]
fn success_rules() {
    use ReplicaType::*;
    // (case, types, success policy, pods (type, index, phase), want Succeeded)
    type Case = (
        &'static str,
        Vec<(&'static str, i32)>,
        Option<SuccessPolicy>,
        Vec<(ReplicaType, i32, &'static str)>,
        bool,
    );
    let cases: Vec<Case> = vec![
        (
            "worker 0 succeeded",
            vec![("PS", 1), ("Worker", 2)],
            None,
            vec![(PS, 0, "Running"), (Worker, 0, "Succeeded"), (Worker, 1, "Running")],
            true,
        ),
        (
            "worker 1 succeeded only",
            vec![("PS", 1), ("Worker", 2)],
            None,
            vec![(PS, 0, "Running"), (Worker, 0, "Running"), (Worker, 1, "Succeeded")],
            false,
        ),
        (
            "AllWorkers waits for every worker",
            vec![("PS", 1), ("Worker", 2)],
            Some(SuccessPolicy::AllWorkers),
            vec![(PS, 0, "Running"), (Worker, 0, "Succeeded"), (Worker, 1, "Running")],
            false,
        ),
        (
            "AllWorkers with every worker done",
            vec![("PS", 1), ("Worker", 2)],
            Some(SuccessPolicy::AllWorkers),
            vec![(PS, 0, "Running"), (Worker, 0, "Succeeded"), (Worker, 1, "Succeeded")],
            true,
        ),
        (
            "chief decides, not worker 0",
            vec![("Chief", 1), ("Worker", 2)],
            None,
            vec![(Chief, 0, "Running"), (Worker, 0, "Succeeded"), (Worker, 1, "Succeeded")],
            false,
        ),
        (
            "chief succeeded while workers run",
            vec![("Chief", 1), ("Worker", 2)],
            None,
            vec![(Chief, 0, "Succeeded"), (Worker, 0, "Running"), (Worker, 1, "Running")],
            true,
        ),
        (
            "master decides like chief",
            vec![("Master", 1), ("Worker", 1)],
            None,
            vec![(Master, 0, "Succeeded"), (Worker, 0, "Running")],
            true,
        ),
        (
            "evaluator success is irrelevant",
            vec![("Worker", 1), ("Evaluator", 1)],
            None,
            vec![(Worker, 0, "Running"), (Evaluator, 0, "Succeeded")],
            false,
        ),
        (
            "PS success is irrelevant",
            vec![("PS", 1), ("Worker", 1)],
            None,
            vec![(PS, 0, "Succeeded"), (Worker, 0, "Running")],
            false,
        ),
    ];
    for (name, types, sp, pods, want) in cases {
        let mut j = job(&types.iter().map(|(k, n)| (*k, *n, None)).collect::<Vec<_>>());
        j.spec.success_policy = sp;
        let j = started(j, &[]);
        let pods: Vec<Pod> = pods.iter().map(|(rt, i, ph)| pod(&j, *rt, *i, ph)).collect();
        let p = plan(&j, &pods, &services(&j), t(5));
        let st = p.status.as_ref().unwrap();
        assert_eq!(st.is_true(ConditionType::Succeeded), want, "{name}");
        if want {
            let c = st.conditions.last().unwrap();
            assert_eq!(
                (c.reason.as_deref(), c.message.as_deref()),
                (Some("TFJobSucceeded"), Some("TFJob ns/j successfully completed.")),
                "{name}"
            );
            assert_eq!(st.completion_time, Some(Time(t(5))), "{name}");
            assert!(!st.is_true(ConditionType::Running) && !st.is_true(ConditionType::Failed), "{name}");
            assert!(p.create_pods.is_empty(), "{name}: a finished job gets no pods");
        }
    }
}

#[test]
fn failure_and_restart_rules() {
    use RestartPolicy::*;
    // (restart policy, exit code, want job failed, want pod re-created, want restarts counted)
    let cases = [
        (Never, 1, true, false, 0),
        (Never, 137, true, false, 0),
        (ExitCode, 1, true, false, 0),
        (ExitCode, 127, true, false, 0),
        (ExitCode, 128, false, true, 1),
        (ExitCode, 137, false, true, 1),
        (OnFailure, 1, false, true, 1),
        (Always, 0, false, true, 1),
    ];
    for (rp, code, fails, recreate, restarts) in cases {
        let j = started(job(&[("Worker", 2, Some(rp))]), &[]);
        let pods = [
            terminated(pod(&j, ReplicaType::Worker, 0, "Failed"), code, "Error"),
            pod(&j, ReplicaType::Worker, 1, "Running"),
        ];
        let p = plan(&j, &pods, &services(&j), t(3));
        let st = p.status.as_ref().unwrap();
        assert_eq!(st.is_true(ConditionType::Failed), fails, "{rp:?} {code}");
        assert_eq!(deleted(&p) == ["j-worker-0"], recreate, "{rp:?} {code}");
        assert_eq!(st.replica_statuses[&ReplicaType::Worker].restarts, restarts, "{rp:?} {code}");
        if fails {
            let c = st.conditions.last().unwrap();
            assert_eq!(c.reason.as_deref(), Some("TFJobFailed"));
            assert_eq!(
                c.message.as_deref().unwrap(),
                format!(
                    "TFJob ns/j has failed because 1 Worker replica(s) failed: pod j-worker-0 container tensorflow exited with code {code} (Error)."
                )
            );
            assert_eq!(st.replica_statuses[&ReplicaType::Worker].failed, 1);
        } else {
            assert_eq!(
                last_condition(&p),
                Some((ConditionType::Restarting, "TFJobRestarting".into())),
                "{rp:?} {code}"
            );
            assert!(reasons(&p).contains(&"TFJobRestarting"));
            assert!(p.create_pods.is_empty(), "the failed pod is re-created only once it is gone");
        }
    }
}

#[test]
fn failure_message_names_container_reason_and_every_failing_type() {
    let j = started(job(&[("PS", 1, None), ("Worker", 1, None), ("Evaluator", 1, None)]), &[]);
    for (rt, name) in [(ReplicaType::PS, "PS"), (ReplicaType::Evaluator, "Evaluator")] {
        let failed = terminated(pod(&j, rt, 0, "Failed"), 137, "OOMKilled");
        let p = plan(&j, &[failed, pod(&j, ReplicaType::Worker, 0, "Running")], &services(&j), t(2));
        let msg = p.status.unwrap().conditions.last().unwrap().message.clone().unwrap();
        assert_eq!(
            msg,
            format!(
                "TFJob ns/j has failed because 1 {name} replica(s) failed: pod j-{}-0 container tensorflow exited with code 137 (OOMKilled).",
                rt.lower()
            )
        );
    }
    let mut no_container = pod(&j, ReplicaType::PS, 0, "Failed");
    no_container.status.as_mut().unwrap().reason = Some("NodeLost".into());
    let p = plan(&j, &[no_container], &services(&j), t(2));
    assert!(
        p.status
            .unwrap()
            .conditions
            .last()
            .unwrap()
            .message
            .clone()
            .unwrap()
            .ends_with("pod j-ps-0 failed (NodeLost).")
    );
}

#[test]
fn dynamic_worker_tolerates_worker_failures_only() {
    let mut j = job(&[("PS", 1, None), ("Worker", 2, None)]);
    j.spec.enable_dynamic_worker = Some(true);
    let j = started(j, &[]);
    let failed_worker = terminated(pod(&j, ReplicaType::Worker, 1, "Failed"), 1, "Error");
    let p = plan(
        &j,
        &[pod(&j, ReplicaType::PS, 0, "Running"), pod(&j, ReplicaType::Worker, 0, "Running"), failed_worker],
        &services(&j),
        t(2),
    );
    let st = p.status.unwrap();
    assert!(!st.is_finished());
    assert_eq!(st.replica_statuses[&ReplicaType::Worker].failed, 1);
    assert!(
        p.create_pods.is_empty() && p.delete_pods.is_empty(),
        "a failed dynamic worker is neither re-run nor deleted"
    );
    let failed_ps = terminated(pod(&j, ReplicaType::PS, 0, "Failed"), 1, "Error");
    let p = plan(&j, &[failed_ps, pod(&j, ReplicaType::Worker, 0, "Running")], &services(&j), t(2));
    assert!(p.status.unwrap().is_true(ConditionType::Failed));
}

/// Runs a sequence of observations through plan, writing status back each time.
fn sequence(mut j: TFJob, steps: &[Vec<Pod>]) -> (TFJob, Plan) {
    let mut last = Plan::default();
    for (n, pods) in steps.iter().enumerate() {
        last = plan(&j, pods, &services(&j), t(1 + n as i64));
        j = applied(j, &last);
    }
    (j, last)
}

#[test]
fn backoff_limit_counts_recreations_and_in_place_restarts() {
    // ExitCode: three pods in turn fail with 137; backoffLimit 2 allows two restarts.
    let mut j = job(&[("Worker", 1, Some(RestartPolicy::ExitCode))]);
    j.spec.backoff_limit = Some(2);
    let j = started(j, &[]);
    let failed =
        |n: u32| uid(terminated(pod(&j, ReplicaType::Worker, 0, "Failed"), 137, "Error"), &format!("u{n}"));
    let steps = vec![
        vec![failed(1)],
        vec![deleting(failed(1))],
        vec![],
        vec![failed(2)],
        vec![deleting(failed(2))],
        vec![],
    ];
    let (j2, last) = sequence(j.clone(), &steps);
    let st = j2.status.clone().unwrap();
    assert_eq!(st.replica_statuses[&ReplicaType::Worker].restarts, 2, "each re-creation counted once");
    assert!(!st.is_finished());
    assert_eq!(created(&last), ["j-worker-0"]);
    let (j3, last) = sequence(j2, &[vec![failed(3)]]);
    assert_eq!(cond(&j3, ConditionType::Failed), Some(("True".into(), "BackoffLimitExceeded".into())));
    assert!(
        !deleted(&last).contains(&"j-worker-0") || last.status.as_ref().unwrap().is_finished(),
        "the third failure is not restarted"
    );
    assert!(last.create_pods.is_empty());

    // OnFailure: the container restarts in place; restartCount 1, 2, then 3.
    let mut j = job(&[("Worker", 1, Some(RestartPolicy::OnFailure))]);
    j.spec.run_policy = Some(RunPolicy { backoff_limit: Some(2), ..Default::default() });
    let j = started(j, &[]);
    let running = |n| restarted(pod(&j, ReplicaType::Worker, 0, "Running"), n);
    let (j2, _) =
        sequence(j.clone(), &[vec![running(1)], vec![running(1)], vec![running(2)], vec![running(2)]]);
    let st = j2.status.clone().unwrap();
    assert_eq!(st.replica_statuses[&ReplicaType::Worker].restarts, 2);
    assert!(!st.is_finished());
    let (j3, last) = sequence(j2, &[vec![running(3)]]);
    assert_eq!(cond(&j3, ConditionType::Failed), Some(("True".into(), "BackoffLimitExceeded".into())));
    assert_eq!(deleted(&last), ["j-worker-0"], "then cleaned per cleanPodPolicy Running");

    // backoffLimit 0 fails on the first restart; absent is unlimited.
    let mut j = job(&[("Worker", 1, Some(RestartPolicy::OnFailure))]);
    j.spec.backoff_limit = Some(0);
    let (j0, _) =
        sequence(started(j.clone(), &[]), &[vec![restarted(pod(&j, ReplicaType::Worker, 0, "Running"), 1)]]);
    assert_eq!(cond(&j0, ConditionType::Failed), Some(("True".into(), "BackoffLimitExceeded".into())));
    j.spec.backoff_limit = None;
    let (ju, _) =
        sequence(started(j.clone(), &[]), &[vec![restarted(pod(&j, ReplicaType::Worker, 0, "Running"), 50)]]);
    assert!(!ju.status.unwrap().is_finished());
}

#[test]
fn restarts_survive_operator_restart_and_pod_replacement() {
    let j = started(job(&[("Worker", 1, Some(RestartPolicy::OnFailure))]), &[]);
    let p1 = restarted(uid(pod(&j, ReplicaType::Worker, 0, "Running"), "a"), 2);
    let (j, _) = sequence(j, &[vec![p1.clone()]]);
    // A fresh operator sees the same pod: the stored ledger prevents counting again.
    let (j, _) = sequence(j, &[vec![p1.clone()], vec![p1]]);
    assert_eq!(j.status.as_ref().unwrap().replica_statuses[&ReplicaType::Worker].restarts, 2);
    // The pod fails as a whole and is replaced by a new uid with its own count.
    let failed = terminated(uid(pod(&j, ReplicaType::Worker, 0, "Failed"), "a"), 1, "Error");
    let mut failed = failed;
    failed.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0].restart_count = 2;
    let p2 = restarted(uid(pod(&j, ReplicaType::Worker, 0, "Running"), "b"), 1);
    let (j, _) =
        sequence(j, &[vec![failed.clone()], vec![deleting(failed)], vec![], vec![p2.clone()], vec![p2]]);
    let rs = &j.status.as_ref().unwrap().replica_statuses[&ReplicaType::Worker];
    assert_eq!(rs.restarts, 2 + 1 + 1, "two in place, one re-creation, one in place on the new pod");
    assert_eq!(
        rs.counted_restarts,
        vec![crate::api::PodRestarts { uid: "b".into(), count: 1 }],
        "gone pods are forgotten"
    );
}

#[test]
fn disruptions_are_recreated_without_failing_or_counting() {
    for rp in [None, Some(RestartPolicy::ExitCode), Some(RestartPolicy::OnFailure)] {
        let mut j = job(&[("Worker", 2, rp)]);
        j.spec.backoff_limit = Some(0);
        let j = started(j, &[]);
        let w1 = pod(&j, ReplicaType::Worker, 1, "Running");
        // Deleted by someone else while running: wait, then re-create.
        let p = plan(
            &j,
            &[pod(&j, ReplicaType::Worker, 0, "Running"), deleting(w1.clone())],
            &services(&j),
            t(2),
        );
        let st = p.status.clone().unwrap();
        assert!(!st.is_finished(), "{rp:?}");
        assert!(
            p.create_pods.is_empty() && p.delete_pods.is_empty(),
            "{rp:?}: terminating pod is waited out"
        );
        let j2 = applied(j.clone(), &p);
        let p = plan(&j2, &[pod(&j, ReplicaType::Worker, 0, "Running")], &services(&j), t(3));
        assert_eq!(created(&p), ["j-worker-1"], "{rp:?}");
        // Evicted, and failed with a DisruptionTarget condition.
        let mut evicted = terminated(pod(&j, ReplicaType::Worker, 1, "Failed"), 137, "Error");
        evicted.status.as_mut().unwrap().reason = Some("Evicted".into());
        let mut preempted = terminated(pod(&j, ReplicaType::Worker, 1, "Failed"), 143, "Error");
        preempted.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "DisruptionTarget".into(),
            status: "True".into(),
            ..Default::default()
        }]);
        for disrupted in [evicted, preempted] {
            let p = plan(&j, &[pod(&j, ReplicaType::Worker, 0, "Running"), disrupted], &services(&j), t(2));
            let st = p.status.clone().unwrap();
            assert!(!st.is_finished(), "{rp:?}");
            assert_eq!(deleted(&p), ["j-worker-1"], "{rp:?}");
            assert_eq!(st.replica_statuses[&ReplicaType::Worker].restarts, 0, "{rp:?}");
            assert!(!st.is_true(ConditionType::Restarting));
        }
    }
}

#[test]
fn succeeded_index_is_not_run_again() {
    let mut j = job(&[("Worker", 2, None)]);
    j.spec.success_policy = Some(SuccessPolicy::AllWorkers);
    let j = started(j, &[]);
    let (j, _) = sequence(
        j.clone(),
        &[vec![pod(&j, ReplicaType::Worker, 0, "Running"), pod(&j, ReplicaType::Worker, 1, "Succeeded")]],
    );
    let p = plan(&j, &[pod(&j, ReplicaType::Worker, 0, "Running")], &services(&j), t(9));
    assert!(p.create_pods.is_empty(), "worker 1 succeeded before its pod vanished");
    let w = &j.status.as_ref().unwrap().replica_statuses[&ReplicaType::Worker];
    assert_eq!(w.completed_indexes.iter().collect::<Vec<_>>(), [1]);
    let p = plan(&j, &[pod(&j, ReplicaType::Worker, 0, "Succeeded")], &services(&j), t(10));
    assert!(p.status.unwrap().is_true(ConditionType::Succeeded), "all workers done, one of them from status");
}

#[test]
fn zero_replicas_create_nothing_and_stay_still() {
    let j = job(&[("Worker", 1, None), ("Evaluator", 0, None)]);
    let p = plan(&j, &[], &[], t(0));
    assert_eq!(created(&p), ["j-worker-0"]);
    assert_eq!(p.create_services.len(), 1);
    let j = applied(j, &p);
    let pods = [pod(&j, ReplicaType::Worker, 0, "Running")];
    let j = applied(j.clone(), &plan(&j, &pods, &services(&j), t(1)));
    assert_eq!(plan(&j, &pods, &services(&j), t(2)), Plan::default());
}

#[test]
fn stray_pods_and_services_are_removed() {
    let j = started(job(&[("Worker", 1, None)]), &[]);
    let stray = pod(&j, ReplicaType::Worker, 3, "Running");
    let mut evaluator = pod(&j, ReplicaType::Worker, 0, "Running");
    evaluator.metadata.name = Some("j-evaluator-0".into());
    evaluator.metadata.labels = Some(names::replica_labels("j", ReplicaType::Evaluator, 0));
    let mut svcs = services(&j);
    let mut extra = service_for(&j, ReplicaType::Worker, 0).unwrap();
    extra.metadata.name = Some("j-worker-3".into());
    svcs.push(extra);
    let p = plan(&j, &[pod(&j, ReplicaType::Worker, 0, "Running"), stray, evaluator], &svcs, t(1));
    assert_eq!(deleted(&p), ["j-worker-3", "j-evaluator-0"]);
    assert_eq!(deleted_services(&p), ["j-worker-3"]);
}

fn finish(j: TFJob, at: i64) -> TFJob {
    let pods = [
        pod(&j, ReplicaType::PS, 0, "Running"),
        pod(&j, ReplicaType::Worker, 0, "Succeeded"),
        pod(&j, ReplicaType::Worker, 1, "Running"),
    ];
    let p = plan(&j, &pods, &services(&j), t(at));
    assert!(p.status.as_ref().unwrap().is_true(ConditionType::Succeeded));
    applied(j, &p)
}

fn set_policy(
    j: &mut TFJob,
    seed_place: bool,
    clean: Option<CleanPodPolicy>,
    ttl: Option<i32>,
    ads: Option<i64>,
) {
    if seed_place {
        j.spec.clean_pod_policy = clean;
        j.spec.ttl_seconds_after_finished = ttl;
        j.spec.active_deadline_seconds = ads;
    } else {
        let rp = j.spec.run_policy.get_or_insert_with(Default::default);
        rp.clean_pod_policy = clean;
        rp.ttl_seconds_after_finished = ttl;
        rp.active_deadline_seconds = ads;
    }
}

#[test]
fn clean_pod_policy_after_success_failure_and_deadline() {
    use CleanPodPolicy::{All, Running};
    let phases = [
        (ReplicaType::PS, 0, "Running"),
        (ReplicaType::Worker, 0, "Succeeded"),
        (ReplicaType::Worker, 1, "Pending"),
    ];
    // (policy, want pods deleted, want services deleted, want the one-request selection);
    // `Running` keeps every service until the job is deleted.
    let all_three = vec!["j-ps-0", "j-worker-0", "j-worker-1"];
    let cases = [
        (Some(All), all_three.clone(), all_three, Some(PodSelection::All)),
        (Some(Running), vec!["j-ps-0", "j-worker-1"], vec![], Some(PodSelection::Unfinished)),
        (None, vec!["j-ps-0", "j-worker-1"], vec![], Some(PodSelection::Unfinished)),
        (Some(CleanPodPolicy::None), vec![], vec![], None),
    ];
    for seed_place in [true, false] {
        for (policy, want_pods, want_svcs, selection) in &cases {
            let mut j = ps_worker(None);
            set_policy(&mut j, seed_place, *policy, None, Some(100));
            let j = started(j, &[]);
            let pods: Vec<Pod> = phases.iter().map(|(rt, i, ph)| pod(&j, *rt, *i, ph)).collect();
            // After success.
            let p = plan(&j, &pods, &services(&j), t(5));
            assert!(p.status.as_ref().unwrap().is_true(ConditionType::Succeeded));
            assert_eq!(deleted(&p), *want_pods, "success {policy:?}");
            assert_eq!(deleted_services(&p), *want_svcs, "success {policy:?}");
            // One request per kind; the outcome event waits for it and names what went.
            assert_eq!(p.cleanup.as_ref().map(|c| c.pods), *selection, "success {policy:?}");
            let outcome = p.cleanup.as_ref().and_then(|c| c.outcome.as_ref()).map(|e| e.reason.as_str());
            assert_eq!(outcome, selection.map(|_| "TFJobSucceeded"), "success {policy:?}");
            let in_events = p.events.iter().filter(|e| e.reason == "TFJobSucceeded").count();
            assert_eq!(in_events, usize::from(selection.is_none()), "published once: {:?}", p.events);
            // After failure: worker 0 failed instead (Never).
            let mut failing = pods.clone();
            failing[1] = terminated(pod(&j, ReplicaType::Worker, 0, "Failed"), 1, "Error");
            let p = plan(&j, &failing, &services(&j), t(5));
            assert!(p.status.as_ref().unwrap().is_true(ConditionType::Failed));
            assert_eq!(deleted(&p), *want_pods, "failure {policy:?}");
            // After the deadline, with nothing finished.
            let mut waiting = pods.clone();
            waiting[1] = pod(&j, ReplicaType::Worker, 0, "Failed");
            waiting[1].status.as_mut().unwrap().phase = Some("Succeeded".into());
            let p = plan(&j, &waiting[..1], &services(&j), t(100));
            assert_eq!(last_condition(&p), Some((ConditionType::Failed, "DeadlineExceeded".into())));
            let want_deadline: Vec<&str> =
                if *policy == Some(CleanPodPolicy::None) { vec![] } else { vec!["j-ps-0"] };
            assert_eq!(deleted(&p), want_deadline, "deadline {policy:?}");
            assert!(p.status.is_some() && p.create_pods.is_empty(), "finished first, nothing re-created");
        }
    }
}

#[test]
fn clean_pod_policy_patched_after_finish() {
    for seed_place in [true, false] {
        let mut j = ps_worker(None);
        set_policy(&mut j, seed_place, Some(CleanPodPolicy::None), None, None);
        let j = finish(started(j, &[]), 5);
        let pods = [
            pod(&j, ReplicaType::PS, 0, "Running"),
            pod(&j, ReplicaType::Worker, 0, "Succeeded"),
            pod(&j, ReplicaType::Worker, 1, "Running"),
        ];
        assert!(deleted(&plan(&j, &pods, &services(&j), t(6))).is_empty());
        let mut all = j.clone();
        set_policy(&mut all, seed_place, Some(CleanPodPolicy::All), None, None);
        let p = plan(&all, &pods, &services(&j), t(7));
        assert_eq!(deleted(&p), ["j-ps-0", "j-worker-0", "j-worker-1"]);
        assert_eq!(p.delete_services.len(), 3);
        assert_eq!(reasons(&p), ["CleanPodPolicyUpdated"]);
        let later = Cleanup { pods: PodSelection::All, outcome: None };
        assert_eq!(p.cleanup, Some(later), "finished before: the deletes get their own events");
        assert_eq!(p.events[0].note, "cleanPodPolicy changed from None to All");
        let all = applied(all, &p);
        // Back to None after cleanup: nothing comes back.
        let mut none = all.clone();
        set_policy(&mut none, seed_place, Some(CleanPodPolicy::None), None, None);
        let p = plan(&none, &[], &[], t(8));
        assert!(p.create_pods.is_empty() && p.create_services.is_empty() && p.delete_pods.is_empty());
        let none = applied(none, &p);
        assert_eq!(plan(&none, &[], &[], t(20)), Plan::default());
    }
}

#[test]
fn finished_job_keeps_counts_and_gets_no_pods() {
    let j = finish(started(ps_worker(None), &[]), 5);
    let counts = j.status.as_ref().unwrap().replica_statuses.clone();
    assert_eq!(counts[&ReplicaType::Worker].active, 1);
    assert_eq!(counts[&ReplicaType::Worker].succeeded, 1);
    // Later every pod is gone (cleaned): no re-creation, no status change.
    let p = plan(&j, &[], &[], t(50));
    assert_eq!(p, Plan::default());
}

#[test]
fn active_deadline_from_start_and_patched() {
    for seed_place in [true, false] {
        let mut j = ps_worker(None);
        set_policy(&mut j, seed_place, None, None, Some(10));
        let j = started(j, &[]);
        let pods = [
            pod(&j, ReplicaType::PS, 0, "Running"),
            pod(&j, ReplicaType::Worker, 0, "Running"),
            pod(&j, ReplicaType::Worker, 1, "Running"),
        ];
        let st = j.status.clone().unwrap();
        assert_eq!(st.deadline, Some(Time(t(10))), "published deadline = startTime + 10s");
        let early = plan(&j, &pods, &services(&j), t(9));
        assert!(!early.status.as_ref().unwrap().is_finished(), "never early");
        assert_eq!(early.requeue_at, Some(t(10)));
        let j = applied(j, &early);
        let at = plan(&j, &pods, &services(&j), t(10));
        let st = at.status.clone().unwrap();
        let c = st.conditions.last().unwrap();
        assert_eq!((c.type_, c.reason.as_deref()), (ConditionType::Failed, Some("DeadlineExceeded")));
        assert_eq!(
            c.message.as_deref(),
            Some("TFJob ns/j has failed because it was active longer than the specified deadline of 10s.")
        );
        assert_eq!(st.completion_time, Some(Time(t(10))));
        assert_eq!(
            deleted(&at),
            ["j-ps-0", "j-worker-0", "j-worker-1"],
            "running pods cleaned after the status"
        );

        // (patched value, now, want failed, want requeue, want event note)
        let cases = [
            (Some(3), 5, true, None, "activeDeadlineSeconds changed from 10s to 3s"),
            (Some(60), 10, false, Some(t(60)), "activeDeadlineSeconds changed from 10s to 60s"),
            (Some(60), 60, true, None, "activeDeadlineSeconds changed from 10s to 60s"),
            (None, 15, false, None, "activeDeadlineSeconds changed from 10s to unset"),
        ];
        for (ads, now, fails, requeue, note) in cases {
            let mut patched = j.clone();
            set_policy(&mut patched, seed_place, None, None, ads);
            let p = plan(&patched, &pods, &services(&j), t(now));
            let st = p.status.clone().unwrap();
            assert_eq!(st.is_true(ConditionType::Failed), fails, "{ads:?} at {now}");
            assert_eq!(p.requeue_at, requeue, "{ads:?} at {now}");
            assert_eq!(st.deadline, ads.map(|a| Time(t(a))), "{ads:?}");
            assert_eq!(p.events[0].reason, "DeadlineUpdated");
            assert_eq!(p.events[0].note, note);
        }
    }
}

#[test]
fn ttl_after_finish_and_patched() {
    for seed_place in [true, false] {
        let mut j = ps_worker(None);
        set_policy(&mut j, seed_place, None, Some(5), None);
        let j = finish(started(j, &[]), 10);
        let st = j.status.clone().unwrap();
        assert_eq!(st.expires, Some(Time(t(15))));
        let before = plan(&j, &[], &[], t(14));
        assert!(!before.delete_job);
        assert_eq!(before.requeue_at, Some(t(15)));
        assert!(plan(&j, &[], &[], t(15)).delete_job);

        // (patched ttl, now, want delete, want requeue)
        let cases = [
            (Some(2), 12, true, None),
            (Some(2), 11, false, Some(t(12))),
            (Some(100), 15, false, Some(t(110))),
            (Some(100), 110, true, None),
            (None, 500, false, None),
            (Some(0), 10, true, None),
        ];
        for (ttl, now, del, requeue) in cases {
            let mut patched = j.clone();
            set_policy(&mut patched, seed_place, None, ttl, None);
            let p = plan(&patched, &[], &[], t(now));
            assert_eq!((p.delete_job, p.requeue_at), (del, requeue), "{ttl:?} at {now}");
            assert_eq!(p.status.as_ref().unwrap().expires, ttl.map(|s| Time(t(10 + i64::from(s)))));
            assert_eq!(reasons(&p), ["TTLUpdated"]);
        }
    }
    // Added after finish.
    let j = finish(started(ps_worker(None), &[]), 10);
    assert_eq!(plan(&j, &[], &[], t(100)), Plan::default());
    let mut added = j.clone();
    added.spec.ttl_seconds_after_finished = Some(30);
    let p = plan(&added, &[], &[], t(100));
    assert!(p.delete_job);
    assert_eq!(p.events[0].note, "ttlSecondsAfterFinished changed from unset to 30s");
}

#[test]
fn policy_events_first_recording_and_shadowed_changes() {
    let mut j = ps_worker(None);
    j.spec.active_deadline_seconds = Some(100);
    j.spec.run_policy = Some(RunPolicy { active_deadline_seconds: Some(50), ..Default::default() });
    let p = plan(&j, &[], &[], t(0));
    assert!(reasons(&p).is_empty(), "the first recording emits no update event");
    let applied_policy = p.status.as_ref().unwrap().applied_policy.clone().unwrap();
    assert_eq!(applied_policy.active_deadline_seconds, Some(100));
    assert_eq!(applied_policy.clean_pod_policy, Some(CleanPodPolicy::Running));
    let j = applied(j, &p);
    let mut shadowed = j.clone();
    shadowed.spec.run_policy = Some(RunPolicy { active_deadline_seconds: Some(5), ..Default::default() });
    let p = plan(&shadowed, &[], &services(&j), t(1));
    assert!(
        !reasons(&p).iter().any(|r| r.ends_with("Updated")),
        "a shadowed runPolicy change changes nothing"
    );
    let mut unshadowed = shadowed.clone();
    unshadowed.spec.active_deadline_seconds = None;
    let p = plan(&unshadowed, &[], &services(&j), t(6));
    assert_eq!(
        p.events.iter().find(|e| e.reason == "DeadlineUpdated").unwrap().note,
        "activeDeadlineSeconds changed from 100s to 5s",
        "removing the seed field falls back to runPolicy"
    );
    assert!(p.status.unwrap().is_true(ConditionType::Failed), "and 5s after start has passed");
}

#[test]
fn template_restart_policy_warning_once() {
    let mut j = job(&[("Worker", 2, Some(RestartPolicy::OnFailure))]);
    j.spec.tf_replica_specs.get_mut("Worker").unwrap().template.spec.as_mut().unwrap().restart_policy =
        Some("Always".into());
    let p = plan(&j, &[], &[], t(0));
    let warn = p.events.iter().find(|e| e.reason == "SetPodTemplateRestartPolicy").unwrap();
    assert_eq!(warn.type_, EventType::Warning);
    assert!(warn.note.contains("Always") && warn.note.contains("Worker"));
    let j = applied(j, &p);
    assert!(!reasons(&plan(&j, &[], &[], t(1))).contains(&"SetPodTemplateRestartPolicy"));
}

#[test]
fn invalid_spec_fails_once_with_a_warning() {
    let mut j = job(&[("Worker", 1, None)]);
    j.spec.tf_replica_specs.insert("Launcher".into(), ReplicaSpec::default());
    let p = plan(&j, &[], &[], t(0));
    assert_eq!(last_condition(&p), Some((ConditionType::Failed, "InvalidTFJobSpec".into())));
    assert!(p.events.iter().any(|e| e.type_ == EventType::Warning
        && e.reason == "InvalidTFJobSpec"
        && e.note.contains("Launcher")));
    assert!(p.create_pods.is_empty());
    let j = applied(j, &p);
    assert_eq!(plan(&j, &[], &[], t(1)), Plan::default());
}

#[test]
fn job_without_uid_is_not_planned() {
    let mut j = ps_worker(None);
    j.metadata.uid = None;
    assert_eq!(plan(&j, &[], &[], t(0)), Plan::default());
}

#[test]
fn restarting_then_running_again() {
    let j = started(job(&[("Worker", 1, Some(RestartPolicy::OnFailure))]), &[]);
    let (j, p) = sequence(j.clone(), &[vec![restarted(pod(&j, ReplicaType::Worker, 0, "Running"), 1)]]);
    assert_eq!(last_condition(&p), Some((ConditionType::Restarting, "TFJobRestarting".into())));
    assert_eq!(
        p.status.as_ref().unwrap().conditions.last().unwrap().message.as_deref(),
        Some("TFJob j is restarting because 1 Worker replica(s) failed.")
    );
    let (j, p) = sequence(j.clone(), &[vec![restarted(pod(&j, ReplicaType::Worker, 0, "Running"), 1)]]);
    assert_eq!(last_condition(&p), Some((ConditionType::Running, "TFJobRunning".into())));
    assert!(cond(&j, ConditionType::Restarting).is_none());
}

#[test]
fn replica_failure_is_set_by_the_writer_and_cleared_by_the_plan() {
    let j = ps_worker(None);
    let p = plan(&j, &[], &[], t(0));
    let j = applied(j, &p);
    let failed = with_replica_failure(j.status.as_ref().unwrap(), "pods \"j-ps-0\" is forbidden", t(1));
    let c = failed.condition(ConditionType::ReplicaFailure).unwrap();
    assert_eq!((c.status.as_str(), c.reason.as_deref()), ("True", Some("FailedCreatePod")));
    assert!(!failed.is_finished(), "not a terminal condition");
    let mut j = j;
    j.status = Some(failed);
    // Still nothing created: the plan keeps the condition and asks to create again.
    let p = plan(&j, &[], &services(&j), t(2));
    assert!(p.status.is_none() && p.create_pods.len() == 3);
    // Every pod exists: cleared.
    let pods = [
        pod(&j, ReplicaType::PS, 0, "Pending"),
        pod(&j, ReplicaType::Worker, 0, "Pending"),
        pod(&j, ReplicaType::Worker, 1, "Pending"),
    ];
    let p = plan(&j, &pods, &services(&j), t(3));
    assert!(p.status.unwrap().condition(ConditionType::ReplicaFailure).is_none());
}

#[test]
fn terminal_events_are_normal_for_success_and_warnings_for_failure() {
    let j = started(ps_worker(None), &[]);
    let pods = [pod(&j, ReplicaType::PS, 0, "Running"), pod(&j, ReplicaType::Worker, 0, "Succeeded")];
    let p = plan(&j, &pods, &services(&j), t(3));
    let ev = p.all_events().find(|e| e.reason == "TFJobSucceeded").unwrap();
    assert_eq!(ev.type_, EventType::Normal, "success is Normal");
    let failed = [
        pod(&j, ReplicaType::PS, 0, "Running"),
        terminated(pod(&j, ReplicaType::Worker, 0, "Failed"), 1, "Error"),
    ];
    let p = plan(&j, &failed, &services(&j), t(3));
    assert_eq!(
        p.all_events().find(|e| e.reason == "TFJobFailed").unwrap().type_,
        EventType::Warning,
        "failure is a Warning"
    );
}

#[test]
fn restarting_message_names_only_the_types_that_restarted() {
    let j = started(
        job(&[("PS", 1, Some(RestartPolicy::OnFailure)), ("Worker", 1, Some(RestartPolicy::OnFailure))]),
        &[],
    );
    let pods =
        [pod(&j, ReplicaType::PS, 0, "Running"), restarted(pod(&j, ReplicaType::Worker, 0, "Running"), 2)];
    let p = plan(&j, &pods, &services(&j), t(2));
    let msg = p.status.unwrap().conditions.last().unwrap().message.clone().unwrap();
    assert_eq!(msg, "TFJob j is restarting because 2 Worker replica(s) failed.");
}

#[test]
fn no_worker_replicas_never_succeed_by_vacuity() {
    // The CRD refuses such a job; a spec that got past it (an older CRD) must not succeed at once.
    for types in [vec![("PS", 1, None)], vec![("PS", 1, None), ("Worker", 0, None)]] {
        let j = started(job(&types), &[]);
        let p = plan(&j, &[pod(&j, ReplicaType::PS, 0, "Running")], &services(&j), t(2));
        assert!(!p.status.unwrap().is_finished(), "{types:?}");
    }
}

#[test]
fn failure_message_prefers_the_tensorflow_container() {
    let j = started(job(&[("Worker", 1, None)]), &[]);
    let mut p = terminated(pod(&j, ReplicaType::Worker, 0, "Failed"), 137, "OOMKilled");
    let statuses = p.status.as_mut().unwrap().container_statuses.as_mut().unwrap();
    let mut sidecar = statuses[0].clone();
    sidecar.name = "sidecar".into();
    sidecar.state.as_mut().unwrap().terminated.as_mut().unwrap().exit_code = 2;
    statuses.insert(0, sidecar);
    let plan = plan(&j, &[p], &services(&j), t(2));
    let msg = plan.status.unwrap().conditions.last().unwrap().message.clone().unwrap();
    assert!(msg.ends_with("container tensorflow exited with code 137 (OOMKilled)."), "{msg}");
}

#[test]
fn a_disrupted_pod_being_deleted_is_waited_out_not_failed() {
    let j = started(job(&[("Worker", 2, None)]), &[]);
    let mut evicted = deleting(terminated(pod(&j, ReplicaType::Worker, 1, "Failed"), 137, "Error"));
    evicted.status.as_mut().unwrap().reason = Some("Evicted".into());
    let p = plan(&j, &[pod(&j, ReplicaType::Worker, 0, "Running"), evicted], &services(&j), t(2));
    let st = p.status.unwrap();
    assert!(!st.is_finished(), "an eviction in progress is not a failure under Never");
    assert!(p.delete_pods.is_empty() && p.create_pods.is_empty(), "waited out");
    assert_eq!(st.replica_statuses[&ReplicaType::Worker].failed, 0);
}

#[test]
fn terminating_pods_are_not_active_and_no_empty_restart_records() {
    let j = started(job(&[("Worker", 2, None)]), &[]);
    let pods =
        [pod(&j, ReplicaType::Worker, 0, "Running"), deleting(pod(&j, ReplicaType::Worker, 1, "Running"))];
    let p = plan(&j, &pods, &services(&j), t(2));
    let rs = &p.status.unwrap().replica_statuses[&ReplicaType::Worker];
    assert_eq!(rs.active, 1, "a pod being deleted is not active");
    assert!(
        rs.counted_restarts.is_empty(),
        "pods without restarts leave no records: {:?}",
        rs.counted_restarts
    );
}

fn suspend(mut j: TFJob, on: bool) -> TFJob {
    j.spec.run_policy.get_or_insert_with(Default::default).suspend = Some(on);
    j
}

fn active(j: &TFJob) -> Vec<(ReplicaType, i32)> {
    j.status.as_ref().unwrap().replica_statuses.iter().map(|(t, r)| (*t, r.active)).collect()
}

#[test]
fn job_created_suspended_gets_no_pods_and_no_clock() {
    let mut j = suspend(ps_worker(None), true);
    j.spec.active_deadline_seconds = Some(5);
    j.spec.ttl_seconds_after_finished = Some(0);
    let p = plan(&j, &[], &[], t(0));
    assert!(p.create_pods.is_empty() && p.create_services.is_empty());
    assert_eq!(reasons(&p), ["TFJobSuspended"]);
    assert_eq!(p.events[0].note, "TFJob j is suspended.");
    assert_eq!((p.requeue_at, p.delete_job), (None, false));
    let j = applied(j, &p);
    let st = j.status.as_ref().unwrap();
    assert_eq!(
        st.conditions.iter().map(|c| (c.type_, c.status.as_str())).collect::<Vec<_>>(),
        [(ConditionType::Created, "True"), (ConditionType::Suspended, "True")]
    );
    assert_eq!(
        st.condition(ConditionType::Suspended).unwrap().message.as_deref(),
        Some("TFJob j is suspended.")
    );
    assert_eq!((&st.start_time, &st.deadline), (&None, &None));
    assert_eq!(active(&j), [(ReplicaType::PS, 0), (ReplicaType::Worker, 0)]);
    // Long past the deadline it would have had: nothing happens, no event repeats.
    let again = plan(&j, &[], &[], t(3600));
    assert_eq!(again, Plan::default());
}

#[test]
fn resume_creates_pods_from_the_templates_as_they_are_now() {
    let mut j = suspend(ps_worker(None), true);
    j.spec.active_deadline_seconds = Some(50);
    let mut j = suspend(applied(j.clone(), &plan(&j, &[], &[], t(0))), false);
    let w = j.spec.tf_replica_specs.get_mut("Worker").unwrap();
    let spec = w.template.spec.as_mut().unwrap();
    spec.node_selector = Some([("pool".to_string(), "a".to_string())].into());
    w.template.metadata.get_or_insert_with(Default::default).labels =
        Some([("kueue.x-k8s.io/podset".to_string(), "worker".to_string())].into());
    let p = plan(&j, &[], &[], t(100));
    assert_eq!(reasons(&p), ["TFJobResumed"]);
    assert_eq!(p.events[0].note, "TFJob j is resumed.");
    assert_eq!(created(&p), ["j-ps-0", "j-worker-0", "j-worker-1"]);
    let worker = &built_pods(&j, &p)[1];
    assert_eq!(worker.spec.as_ref().unwrap().node_selector.as_ref().unwrap()["pool"], "a");
    assert_eq!(worker.metadata.labels.as_ref().unwrap()["kueue.x-k8s.io/podset"], "worker");
    assert_eq!(p.create_services.len(), 3);
    let st = p.status.as_ref().unwrap();
    assert_eq!(
        cond(&applied(j.clone(), &p), ConditionType::Suspended),
        Some(("False".into(), "TFJobResumed".into()))
    );
    assert_eq!(st.start_time, Some(Time(t(100))), "the deadline counts from the resume");
    assert_eq!(st.deadline, Some(Time(t(150))));
    assert_eq!(p.requeue_at, Some(t(150)));
    // The next reconcile does not announce the resume again.
    let j = applied(j, &p);
    let pods: Vec<Pod> = p.create_pods.iter().map(|r| pod(&j, r.rtype, r.index, "Running")).collect();
    let p = plan(&j, &pods, &services(&j), t(101));
    assert!(reasons(&p).is_empty(), "nothing announced again; Running has no event");
    assert_eq!(cond(&applied(j, &p), ConditionType::Running), Some(("True".into(), "TFJobRunning".into())));
}

#[test]
fn suspending_a_running_job_deletes_everything_and_reports_zero_active_after_the_deletes() {
    use ReplicaType::*;
    let mut j = ps_worker(Some(RestartPolicy::OnFailure));
    j.spec.active_deadline_seconds = Some(30);
    j.spec.clean_pod_policy = Some(CleanPodPolicy::None);
    j.spec.backoff_limit = Some(0);
    let pods = vec![pod(&j, PS, 0, "Running"), pod(&j, Worker, 0, "Running"), pod(&j, Worker, 1, "Running")];
    let j = started(j, &pods);
    assert_eq!(cond(&j, ConditionType::Running), Some(("True".into(), "TFJobRunning".into())));
    // Worker 1 succeeds in the moment the job is suspended: the suspend records it.
    let pods =
        vec![pod(&j, PS, 0, "Running"), pod(&j, Worker, 0, "Running"), pod(&j, Worker, 1, "Succeeded")];
    let j = suspend(j, true);
    let p = plan(&j, &pods, &services(&j), t(10));
    assert_eq!(deleted(&p), ["j-ps-0", "j-worker-0", "j-worker-1"], "whatever cleanPodPolicy says");
    assert_eq!(deleted_services(&p), ["j-ps-0", "j-worker-0", "j-worker-1"]);
    assert!(p.create_pods.is_empty() && p.create_services.is_empty());
    assert_eq!(reasons(&p), ["TFJobSuspended"]);
    assert_eq!(p.requeue_at, None, "the deadline stops");
    let before = p.status.as_ref().unwrap();
    let counts =
        |st: &TFJobStatus| st.replica_statuses.iter().map(|(t, r)| (*t, r.active)).collect::<Vec<_>>();
    assert_eq!(counts(before), [(PS, 1), (Worker, 1)], "before the deletes: the pods not yet deleted");
    let after = p.status_after_pod_deletes.as_ref().expect("a status after the deletes");
    assert_eq!(*after, suspend::inactive(before), "the same status with active 0");
    let j = applied(j, &p);
    let st = j.status.clone().unwrap();
    assert_eq!(active(&j), [(PS, 0), (Worker, 0)]);
    assert_eq!(st.replica_statuses[&Worker].completed_indexes.to_string(), "1");
    assert_eq!(st.replica_statuses.values().map(|r| r.restarts + r.failed).sum::<i32>(), 0);
    assert_eq!(cond(&j, ConditionType::Running), Some(("False".into(), "TFJobSuspended".into())));
    assert_eq!(cond(&j, ConditionType::Suspended), Some(("True".into(), "TFJobSuspended".into())));
    assert_eq!((st.deadline.as_ref(), st.completion_time.as_ref()), (None, None));
    // While the pods terminate, and then fail as they are killed: no failure, no restart,
    // no second event, even with backoffLimit 0 and long past the old deadline.
    let dying: Vec<Pod> = pods.iter().cloned().map(deleting).collect();
    assert_eq!(plan(&j, &dying, &[], t(11)), Plan::default());
    let killed: Vec<Pod> = dying.iter().cloned().map(|p| terminated(p, 137, "Error")).collect();
    let p = plan(&j, &killed, &[], t(500));
    assert_eq!((p.status.as_ref(), reasons(&p), deleted(&p)), (None, vec![], vec![]));
    // Resumed while the killed pods still terminate: their ends count as nothing, and their
    // indexes wait for them to go.
    let resumed = suspend(j.clone(), false);
    let p = plan(&resumed, &killed, &[], t(600));
    assert_eq!(reasons(&p), ["TFJobResumed"]);
    assert!(p.create_pods.is_empty(), "created {:?} before the old pods went", created(&p));
    let st = p.status.as_ref().unwrap();
    assert!(!st.is_finished(), "{st:?}");
    assert_eq!(st.replica_statuses.values().map(|r| r.restarts + r.failed).sum::<i32>(), 0);
    // A pod of the resumed run that fails while being deleted still counts (OnFailure: a
    // restart, past backoffLimit 0).
    let later = applied(resumed.clone(), &p);
    let mut own = deleting(terminated(pod(&j, PS, 0, "Failed"), 1, "Error"));
    own.metadata.deletion_timestamp = Some(Time(t(601)));
    let p2 = plan(&later, &[own], &[], t(602));
    assert_eq!(last_condition(&p2), Some((ConditionType::Failed, "BackoffLimitExceeded".into())));
    // Resumed with the pods gone: worker 1 is not run again.
    let p = plan(&resumed, &[], &[], t(600));
    assert_eq!(created(&p), ["j-ps-0", "j-worker-0"]);
    let st = p.status.unwrap();
    assert_eq!((st.start_time, st.deadline), (Some(Time(t(600))), Some(Time(t(630)))));
    assert_eq!(st.replica_statuses[&Worker].completed_indexes.to_string(), "1");
}

#[test]
fn a_suspended_jobs_pods_stay_active_until_each_has_a_delete_accepted() {
    use ReplicaType::*;
    let j = job(&[("PS", 1, None), ("Worker", 600, None)]);
    let running: Vec<Pod> = (0..3).map(|i| pod(&j, Worker, i, "Running")).collect();
    let j = suspend(started(j.clone(), &[&running[..], &[pod(&j, PS, 0, "Running")]].concat()), true);
    let p = |pods: &[Pod]| plan(&j, pods, &[], t(10));
    let counts = |st: Option<&TFJobStatus>| {
        st.map(|st| st.replica_statuses.iter().map(|(t, r)| (*t, r.active)).collect::<Vec<_>>())
    };
    let workers = |n: i32, phase: &str| (0..n).map(|i| pod(&j, Worker, i, phase)).collect::<Vec<_>>();
    // (case, pods; active written before the deletes; after them; pods deleted)
    type Counts = Option<Vec<(ReplicaType, i32)>>;
    let cases: Vec<(&str, Vec<Pod>, Counts, Counts, usize)> = vec![
        (
            "running",
            workers(3, "Running"),
            Some(vec![(PS, 0), (Worker, 3)]),
            Some(vec![(PS, 0), (Worker, 0)]),
            3,
        ),
        (
            "pending counts, terminating does not",
            vec![pod(&j, PS, 0, "Pending"), deleting(pod(&j, Worker, 0, "Running"))],
            Some(vec![(PS, 1), (Worker, 0)]),
            Some(vec![(PS, 0), (Worker, 0)]),
            1,
        ),
        (
            "every delete accepted before: 0 at once",
            workers(3, "Running").into_iter().map(deleting).collect(),
            Some(vec![(PS, 0), (Worker, 0)]),
            None,
            0,
        ),
        ("only finished pods: 0 at once", workers(2, "Succeeded"), Some(vec![(PS, 0), (Worker, 0)]), None, 2),
        (
            "cut at the bound: not yet 0",
            workers(600, "Running"),
            Some(vec![(PS, 0), (Worker, 600)]),
            None,
            500,
        ),
    ];
    for (case, pods, before, after, deletes) in cases {
        let p = p(&pods);
        assert_eq!(counts(p.status.as_ref()), before, "{case}");
        assert_eq!(counts(p.status_after_pod_deletes.as_ref()), after, "{case}");
        assert_eq!(p.delete_pods.len(), deletes, "{case}");
        if let Some(after) = &p.status_after_pod_deletes {
            assert_eq!(
                *after,
                suspend::inactive(p.status.as_ref().unwrap()),
                "{case}: only the counts differ"
            );
        }
    }
}

#[test]
fn suspending_a_finished_job_changes_nothing() {
    use ReplicaType::*;
    let j = ps_worker(None);
    let j = started(j.clone(), &[pod(&j, PS, 0, "Running"), pod(&j, Worker, 0, "Running")]);
    let done =
        [pod(&j, PS, 0, "Succeeded"), pod(&j, Worker, 0, "Succeeded"), pod(&j, Worker, 1, "Succeeded")];
    let j = applied(j.clone(), &plan(&j, &done, &services(&j), t(5)));
    assert!(j.status.as_ref().unwrap().is_finished());
    let p = plan(&suspend(j, true), &done, &[], t(6));
    assert_eq!((p.status, p.events, p.delete_pods), (None, vec![], vec![]));
}

#[test]
fn kueue_warnings_on_creation() {
    let queued = |mut j: TFJob| {
        j.metadata.labels = Some([(names::KUEUE_QUEUE_LABEL.to_string(), "q".to_string())].into());
        j
    };
    let multikueue = |mut j: TFJob| {
        j.spec.run_policy.get_or_insert_with(Default::default).managed_by =
            Some("kueue.x-k8s.io/multikueue".into());
        j
    };
    let flat = |mut j: TFJob| {
        j.spec.backoff_limit = Some(1);
        j.spec.ttl_seconds_after_finished = Some(5);
        j
    };
    let odd = || job(&[("Ps", 1, None), ("worker", 2, None)]);
    let cases: [(&str, TFJob, &[&str]); 7] = [
        ("queued, canonical keys", queued(ps_worker(None)), &[]),
        ("queued, other spellings", queued(odd()), &["ReplicaKeyNotSeenByKueue"]),
        ("not queued, other spellings", odd(), &[]),
        ("queued, fields under spec", queued(flat(ps_worker(None))), &["FieldsLostByMultiKueue"]),
        ("MultiKueue, fields under spec", multikueue(flat(ps_worker(None))), &["FieldsLostByMultiKueue"]),
        ("not queued, fields under spec", flat(ps_worker(None)), &[]),
        ("queued, both", queued(flat(odd())), &["ReplicaKeyNotSeenByKueue", "FieldsLostByMultiKueue"]),
    ];
    for (name, j, want) in cases {
        let p = plan(&j, &[], &[], t(0));
        let warned: Vec<&PlannedEvent> = p.events.iter().filter(|e| e.type_ == EventType::Warning).collect();
        assert_eq!(warned.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(), want, "{name}");
        let again = plan(&applied(j, &p), &[], &[], t(1));
        assert!(again.events.iter().all(|e| e.type_ != EventType::Warning), "{name}: warned twice");
    }
    let p = plan(&queued(flat(odd())), &[], &[], t(0));
    let notes: Vec<&str> = p.events.iter().map(|e| e.note.as_str()).collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("the pods of Ps, worker are not counted against the quota of queue q")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n
                .starts_with("spec.ttlSecondsAfterFinished, spec.backoffLimit are set directly under spec")),
        "{notes:?}"
    );
}

#[test]
fn status_written_by_earlier_versions_is_read_and_rewritten_compactly() {
    let mut j = started(job(&[("Worker", 3, Some(RestartPolicy::OnFailure))]), &[]);
    // As an earlier version stored it: succeeded indexes as a list, full pod uids.
    let w = j.status.as_mut().unwrap().replica_statuses.get_mut(&ReplicaType::Worker).unwrap();
    w.succeeded_indexes = vec![1, 2];
    w.succeeded = 2;
    w.restarts = 2;
    w.counted_restarts = vec![crate::api::PodRestarts { uid: "uid-j-worker-0-full".into(), count: 2 }];
    let w0 = uid(restarted(pod(&j, ReplicaType::Worker, 0, "Running"), 2), "uid-j-worker-0-full");
    let p = plan(&j, std::slice::from_ref(&w0), &services(&j), t(5));
    assert!(p.create_pods.is_empty(), "succeeded indexes are not run again: {:?}", created(&p));
    let st = p.status.as_ref().expect("the running condition changes");
    let w = &st.replica_statuses[&ReplicaType::Worker];
    assert_eq!((w.succeeded, w.restarts, w.completed_indexes.to_string()), (2, 2, "1,2".into()));
    assert_eq!(w.counted_restarts, [crate::api::PodRestarts { uid: "uid-j-worker-".into(), count: 2 }]);
    let json = serde_json::to_value(st).unwrap();
    let stored = &json["replicaStatuses"]["Worker"];
    assert_eq!(stored["completedIndexes"], "1,2");
    assert!(stored.get("succeededIndexes").is_none(), "the list is not written again: {stored}");
    // One more in-place restart of the same pod is counted once.
    let j = applied(j, &p);
    let p = plan(&j, &[restarted(w0, 3)], &services(&j), t(6));
    let st = p.status.as_ref().unwrap_or_else(|| panic!("{:?}", j.status));
    assert_eq!(st.replica_statuses[&ReplicaType::Worker].restarts, 3);
}

#[test]
fn a_job_at_the_maximum_size_keeps_its_status_small() {
    use crate::api::rules::MAX_TOTAL_REPLICAS;
    let n = MAX_TOTAL_REPLICAS - 1;
    let j = started(job(&[("PS", 1, None), ("Worker", n, Some(RestartPolicy::OnFailure))]), &[]);
    // The worst case: every other worker succeeded, every other one restarted in place.
    let pods: Vec<Pod> = (0..n)
        .map(|i| {
            let name = format!("{:08x}-{:04x}-4000-8000-000000000000", i * 7919, i);
            let p = pod(&j, ReplicaType::Worker, i, if i % 2 == 0 { "Succeeded" } else { "Running" });
            uid(restarted(p, 5), &name)
        })
        .collect();
    let p = plan(&j, &pods, &services(&j), t(5));
    let st = p.status.as_ref().unwrap();
    let w = &st.replica_statuses[&ReplicaType::Worker];
    assert_eq!(w.completed_indexes.len(), 500);
    assert_eq!(w.counted_restarts.len(), 999);
    let bytes = serde_json::to_vec(st).unwrap().len();
    assert!(bytes < 64 * 1024, "{bytes} bytes of status at {MAX_TOTAL_REPLICAS} replicas");
    assert!(p.delete_pods.len() + p.delete_services.len() <= MAX_WRITES_PER_RECONCILE, "bounded deletes");
}

#[test]
fn creates_and_deletes_are_bounded_per_reconcile() {
    let j = started(job(&[("PS", 1, None), ("Worker", 699, None)]), &[]);
    let p = plan(&j, &[], &[], t(1));
    assert_eq!((p.create_services.len(), p.create_pods.len(), p.more), (500, 0, true), "services first");
    let p = plan(&j, &[], &services(&j), t(1));
    assert_eq!((p.create_services.len(), p.create_pods.len(), p.more), (0, 500, true));
    assert_eq!(p.create_pods[0], ReplicaId { rtype: ReplicaType::PS, index: 0 });
    let pods: Vec<Pod> = (0..699).map(|i| pod(&j, ReplicaType::Worker, i, "Running")).collect();
    let p = plan(&j, &pods, &services(&j), t(1));
    assert_eq!((p.create_pods.len(), p.more), (1, false), "only the PS is missing");
    // The job fails (a deadline): cleanup deletes at most 500, pods first.
    let mut failing = j.clone();
    failing.spec.active_deadline_seconds = Some(1);
    let failing = started(failing, &pods);
    let p = plan(&failing, &pods, &services(&failing), t(2));
    assert_eq!((p.delete_pods.len(), p.delete_services.len(), p.more), (500, 0, true));
}

#[test]
fn master_replica_type_gets_one_warning() {
    // (case, replica keys, warned)
    let cases: [(&str, &[&str], bool); 4] = [
        ("Master", &["Master", "Worker"], true),
        ("master, another spelling", &["master", "PS"], true),
        ("Chief", &["Chief", "Worker"], false),
        ("workers only", &["Worker"], false),
    ];
    for (case, keys, warned) in cases {
        let j = job(&keys.iter().map(|k| (*k, 1, None)).collect::<Vec<_>>());
        let p = plan(&j, &[], &[], t(0));
        let got: Vec<&PlannedEvent> = p.events.iter().filter(|e| e.reason == "MasterReplicaType").collect();
        assert_eq!(got.len(), usize::from(warned), "{case}");
        if let Some(e) = got.first() {
            assert_eq!(e.type_, EventType::Warning, "{case}");
            assert!(
                e.note.starts_with(&format!("replica type {} runs as before", keys[0])),
                "{case}: {}",
                e.note
            );
            assert!(e.note.contains("Chief is the replacement"), "{case}");
        }
        // Still planned as before: a pod for every replica.
        assert_eq!(p.create_pods.len(), keys.len(), "{case}");
        let again = plan(&applied(j, &p), &[], &[], t(1));
        assert!(again.events.iter().all(|e| e.reason != "MasterReplicaType"), "{case}: warned twice");
    }
}
