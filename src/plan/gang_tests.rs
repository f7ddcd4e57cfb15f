//! Table tests of gang scheduling's decisions ([`super::gang`]).

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use super::gang::*;
use super::{Plan, set};
use crate::api::{
    ConditionType, JobView, PodGroup, ReplicaSpec, RunPolicy, SchedulingPolicy as Policy, TFJob, TFJobSpec,
    TFJobStatus,
};
use crate::names;

fn job(replicas: &[(&str, i32)], policy: Option<Policy>) -> TFJob {
    let mut spec = TFJobSpec {
        run_policy: Some(RunPolicy { scheduling_policy: policy, ..Default::default() }),
        ..Default::default()
    };
    for (k, n) in replicas {
        spec.tf_replica_specs.insert(k.to_string(), ReplicaSpec { replicas: Some(*n), ..Default::default() });
    }
    let mut j = TFJob::new("train", spec);
    j.metadata.namespace = Some("ns".into());
    j.metadata.uid = Some("uid-1".into());
    j
}

fn pod(name: &str) -> Pod {
    Pod {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: Some(Default::default()),
        status: None,
    }
}

fn observed(deleting: bool) -> PodGroup {
    let j = job(&[("Worker", 2)], None);
    let mut g = pod_group_for(&JobView::new(&j).unwrap()).unwrap();
    g.metadata.uid = Some("pg-uid".into());
    if deleting {
        g.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    }
    g
}

fn succeeded() -> TFJobStatus {
    let mut st = TFJobStatus::default();
    set(&mut st, ConditionType::Succeeded, "Succeeded", "done".into(), Timestamp::UNIX_EPOCH);
    st
}

#[test]
fn the_pod_group_is_named_after_the_job_owned_by_it_and_sized_by_all_replicas() {
    let j = job(&[("PS", 1), ("Worker", 3), ("Evaluator", 1)], None);
    let g = pod_group_for(&JobView::new(&j).unwrap()).unwrap();
    assert_eq!(g.metadata.name.as_deref(), Some("train"));
    assert_eq!(g.metadata.namespace.as_deref(), Some("ns"));
    assert!(names::controlled_by(&g.metadata, "uid-1"));
    assert_eq!(g.min_count(), Some(5));
    assert_eq!(g.spec.priority_class_name, None);
    let labels = g.metadata.labels.clone().unwrap();
    assert_eq!(labels.get(names::LABEL_JOB_NAME).map(String::as_str), Some("train"));
    let v = serde_json::to_value(&g).unwrap();
    assert_eq!(v["apiVersion"], "scheduling.k8s.io/v1alpha2");
    assert_eq!(v["kind"], "PodGroup");
    assert_eq!(v["spec"], serde_json::json!({"schedulingPolicy": {"gang": {"minCount": 5}}}));
}

#[test]
fn min_available_and_the_priority_class_come_from_the_scheduling_policy() {
    let policy = Policy { min_available: Some(2), priority_class: Some("high".into()), ..Default::default() };
    let j = job(&[("Worker", 4)], Some(policy));
    let g = pod_group_for(&JobView::new(&j).unwrap()).unwrap();
    assert_eq!(g.min_count(), Some(2));
    assert_eq!(g.spec.priority_class_name.as_deref(), Some("high"));
    let mut p = pod("train-worker-0");
    join(&mut p, &j);
    assert_eq!(p.metadata.labels.as_ref().unwrap().get(LABEL_POD_GROUP).map(String::as_str), Some("train"));
    let spec = p.spec.unwrap();
    assert_eq!(spec.scheduling_group.and_then(|g| g.pod_group_name).as_deref(), Some("train"));
    assert_eq!(spec.priority_class_name.as_deref(), Some("high"));
    // A template's own priority class stays.
    let mut p = pod("train-worker-1");
    p.spec.as_mut().unwrap().priority_class_name = Some("mine".into());
    join(&mut p, &j);
    assert_eq!(p.spec.unwrap().priority_class_name.as_deref(), Some("mine"));
}

#[test]
fn the_plan_s_pods_join_the_gang_only_when_it_says_so() {
    let j = job(&[("Worker", 2)], None);
    let joined = GangPlan { join: true, ..Default::default() }.member(pod("train-worker-0"), &j);
    let group = joined.spec.as_ref().and_then(|s| s.scheduling_group.as_ref());
    assert_eq!(group.and_then(|g| g.pod_group_name.as_deref()), Some("train"));
    assert_eq!(GangPlan::default().member(pod("train-worker-0"), &j), pod("train-worker-0"));
}

/// What [`decide`] came to: a PodGroup to create (its `minCount`), the uid of one to delete,
/// whether the pods join.
type Decided<'a> = (Option<i32>, Option<&'a str>, bool);

/// A case: its name, the mode, the job, its pods, the plan so far, the PodGroup observed, and
/// what is decided.
type Case<'a> = (&'a str, GangScheduling, &'a TFJob, Vec<Pod>, &'a Plan, &'a Option<PodGroup>, Decided<'a>);

#[test]
fn the_pod_group_is_created_for_a_running_job_and_deleted_for_a_finished_or_suspended_one() {
    use GangScheduling::{Native, None as Off};
    let running = job(&[("Worker", 2)], None);
    let mut done = running.clone();
    done.status = Some(succeeded());
    let mut suspended = running.clone();
    suspended.spec.run_policy.as_mut().unwrap().suspend = Some(true);
    let mut no_uid = running.clone();
    no_uid.metadata.uid = None;
    let with_policy = job(&[("Worker", 2)], Some(Policy { min_available: Some(1), ..Default::default() }));
    let finishing = Plan { status: Some(succeeded()), ..Default::default() };
    let mut member = pod("train-worker-0");
    join(&mut member, &running);
    let mut going = pod("train-worker-0");
    going.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
    let (live, deleting, none) = (Some(observed(false)), Some(observed(true)), Option::<PodGroup>::None);
    let empty = Plan::default();
    #[rustfmt::skip]
    let cases: [Case<'_>; 14] = [
        ("running, none seen: created, sized by all replicas", Native, &running, vec![], &empty, &none, (Some(2), None, true)),
        ("running, seen: not created again, pods still join", Native, &running, vec![], &empty, &live, (None, None, true)),
        ("running, seen terminating (a suspension's): created again", Native, &running, vec![], &empty, &deleting, (Some(2), None, true)),
        ("without gang scheduling: nothing, whatever the policy", Off, &with_policy, vec![], &empty, &live, (None, None, false)),
        ("without gang scheduling, finished: nothing", Off, &done, vec![], &empty, &live, (None, None, false)),
        ("no uid: nothing", Native, &no_uid, vec![], &empty, &none, (None, None, false)),
        ("finished: deleted with the uid seen", Native, &done, vec![], &empty, &live, (None, Some("pg-uid"), false)),
        ("finished by this very plan: deleted", Native, &running, vec![], &finishing, &live, (None, Some("pg-uid"), false)),
        ("finished, already being deleted: nothing more", Native, &done, vec![], &empty, &deleting, (None, None, false)),
        ("finished, gone: nothing more", Native, &done, vec![], &empty, &none, (None, None, false)),
        ("suspended: deleted", Native, &suspended, vec![], &empty, &live, (None, Some("pg-uid"), false)),
        ("started without gang scheduling: left so", Native, &running, vec![pod("train-worker-0")], &empty, &none, (None, None, false)),
        ("its pods name a PodGroup that is gone: created again", Native, &running, vec![member], &empty, &none, (Some(2), None, true)),
        ("only terminating pods (a resume): a new gang", Native, &running, vec![going], &empty, &none, (Some(2), None, true)),
    ];
    for (name, mode, j, pods, planned, seen, want) in cases {
        let g = decide(mode, j, &pods, planned, seen.as_ref());
        let got: Decided<'_> = (
            g.create.as_ref().and_then(PodGroup::min_count),
            g.delete.as_ref().map(|k| k.uid.as_str()),
            g.join,
        );
        assert_eq!(got, want, "{name}");
    }
    // The PodGroup created is the job's own, as built.
    let g = decide(Native, &running, &[], &empty, None);
    assert_eq!(g.create, pod_group_for(&JobView::new(&running).unwrap()));
    assert_eq!(g.delete.map(|k| k.name), None);
    let g = decide(Native, &done, &[], &empty, live.as_ref());
    assert_eq!(g.delete.map(|k| k.name).as_deref(), Some("train"));
}
