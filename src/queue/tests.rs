//! Table tests of the queue: which jobs wait, the Workload built, and every decision.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::*;
use crate::api::workload::{FlavorSpec, Workload};
use crate::api::{ConditionType, TFJob};
use crate::plan::{Settings, plan_with};

const UID: &str = "u-1";

fn now() -> Timestamp {
    Timestamp::from_second(1_700_000_000).expect("time")
}

/// A stored TFJob `j` in `ns`: `spec` merged over two workers asking 1 cpu, labelled for
/// queue `q` when `queued`.
fn job(queued: bool, extra: Value) -> TFJob {
    let mut j = json!({
        "apiVersion": "kubeflow.org/v1", "kind": "TFJob",
        "metadata": {"name": "j", "namespace": "ns", "uid": UID, "resourceVersion": "7"},
        "spec": {"tfReplicaSpecs": {"Worker": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "tensorflow", "image": "tf", "resources": {"requests": {"cpu": "1"}}}
        ]}}}}}
    });
    if queued {
        j["metadata"]["labels"] = json!({"kueue.x-k8s.io/queue-name": "q"});
    }
    merge(&mut j, extra);
    serde_json::from_value(j).expect("job")
}

fn merge(a: &mut Value, b: Value) {
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn suspended() -> Value {
    json!({"spec": {"runPolicy": {"suspend": true}}})
}

fn started() -> Value {
    json!({"spec": {"runPolicy": {"suspend": false}, "tfReplicaSpecs": {"Worker": {"template": {
        "metadata": {"labels": {PODSET_LABEL: "worker"}},
        "spec": {"nodeSelector": {"pool": "a"}, "tolerations": [{"key": "pool", "value": "a", "effect": "NoSchedule"}]}
    }}}}})
}

fn condition(type_: &str, status: &str, reason: &str) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": format!("{type_} {reason}"),
           "lastTransitionTime": "2023-11-14T22:00:00Z"})
}

/// The job's Workload as the operator built it, with `status`.
fn workload(status: Value) -> Workload {
    let built = workload_for(&job(true, suspended()), "q", None).expect("built");
    let mut v = serde_json::to_value(&built).expect("json");
    v["metadata"]["resourceVersion"] = json!("9");
    v["metadata"]["generation"] = json!(1);
    v["status"] = status;
    serde_json::from_value(v).expect("workload")
}

fn admitted() -> Value {
    json!({
        "conditions": [condition("QuotaReserved", "True", "QuotaReserved"), condition("Admitted", "True", "Admitted")],
        "admission": {"clusterQueue": "cq", "podSetAssignments": [{"name": "worker", "flavors": {"cpu": "pool-a"}}]}
    })
}

fn evicted() -> Value {
    let mut s = admitted();
    s["conditions"].as_array_mut().expect("list").push(condition("Evicted", "True", "Preempted"));
    s
}

fn flavors() -> BTreeMap<String, FlavorSpec> {
    BTreeMap::from([(
        "pool-a".to_string(),
        serde_json::from_value(json!({"nodeLabels": {"pool": "a"},
            "tolerations": [{"key": "pool", "value": "a", "effect": "NoSchedule"}]}))
        .expect("flavor"),
    )])
}

fn decide_for(job: &TFJob, wl: Option<&Workload>) -> Vec<Step> {
    let flavors = flavors();
    decide(&Observed { job, workload: wl, priority: Ok(None), flavors: &flavors, now: now() })
}

/// The steps by kind: `job`, `create`, `spec`, `status`, `event:<reason>`.
fn kinds(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .map(|s| match s {
            Step::PatchJob(_) => "job".to_string(),
            Step::CreateWorkload(_) => "create".to_string(),
            Step::PatchWorkload(_) => "spec".to_string(),
            Step::PatchWorkloadStatus(_) => "status".to_string(),
            Step::Event(e) => format!("event:{}", e.reason),
        })
        .collect()
}

fn patch_of(steps: &[Step], kind: &str) -> Value {
    steps
        .iter()
        .find_map(|s| match (s, kind) {
            (Step::PatchJob(p), "job")
            | (Step::PatchWorkload(p), "spec")
            | (Step::PatchWorkloadStatus(p), "status") => Some(p.clone()),
            _ => None,
        })
        .expect("the patch")
}

fn with_status(mut j: TFJob, status: Value) -> TFJob {
    j.status = Some(serde_json::from_value(status).expect("status"));
    j
}

#[test]
fn a_job_waits_in_its_queue_until_every_template_carries_the_admissions_pod_set() {
    let cases: [(&str, TFJob, Option<&str>); 5] = [
        ("not queued", job(false, json!({})), None),
        ("queued, never admitted", job(true, json!({})), Some("q")),
        ("queued and suspended", job(true, suspended()), Some("q")),
        ("started on an admission", job(true, started()), None),
        (
            "one of two templates started",
            {
                let mut j = job(true, started());
                merge_job(&mut j, json!({"spec": {"tfReplicaSpecs": {"PS": {"template": {}}}}}));
                j
            },
            Some("q"),
        ),
    ];
    for (name, j, want) in cases {
        assert_eq!(waiting_in(&j), want, "{name}");
    }
}

fn merge_job(j: &mut TFJob, extra: Value) {
    let mut v = serde_json::to_value(&*j).expect("json");
    merge(&mut v, extra);
    *j = serde_json::from_value(v).expect("job");
}

#[test]
fn the_workload_has_one_pod_set_per_type_in_kueues_order_owned_by_the_job() {
    let mut j = job(true, started());
    merge_job(
        &mut j,
        json!({"spec": {"tfReplicaSpecs": {"ps": {"template": {"spec": {"containers": [{"name": "tensorflow"}]}}}, "Chief": {"replicas": 1, "template": {}}}}}),
    );
    let p = Priority { name: "high".into(), value: 1000 };
    let wl = workload_for(&j, "q", Some(&p)).expect("built");
    let names: Vec<(&str, i32)> = wl.spec.pod_sets.iter().map(|s| (s.name.as_str(), s.count)).collect();
    assert_eq!(names, [("chief", 1), ("ps", 1), ("worker", 2)]);
    let worker = &wl.spec.pod_sets[2].template;
    assert!(
        !worker
            .metadata
            .as_ref()
            .and_then(|m| m.labels.as_ref())
            .is_some_and(|l| l.contains_key(PODSET_LABEL))
    );
    assert_eq!(wl.metadata.name.as_deref(), Some(workload_name("j", UID).as_str()));
    let owner = &wl.metadata.owner_references.as_ref().expect("owner")[0];
    assert_eq!((owner.uid.as_str(), owner.controller), (UID, Some(true)));
    assert_eq!(wl.metadata.labels.as_ref().and_then(|l| l.get(JOB_UID_LABEL)).map(String::as_str), Some(UID));
    assert_eq!((wl.spec.queue_name.as_str(), wl.spec.priority), ("q", Some(1000)));
    assert_eq!(
        wl.spec.priority_class_ref.as_ref().map(|r| (r.kind.as_str(), r.name.as_str())),
        Some(("WorkloadPriorityClass", "high"))
    );
    let v = serde_json::to_value(&wl).expect("json");
    assert_eq!(
        (v["apiVersion"].as_str(), v["kind"].as_str()),
        (Some("kueue.x-k8s.io/v1beta2"), Some("Workload"))
    );
    assert!(v["spec"].get("active").is_none(), "never written: {v}");
    assert_ne!(workload_name("j", "u-1"), workload_name("j", "u-2"));
}

#[test]
fn each_state_of_a_job_and_its_workload_gets_its_steps() {
    let finished = |reason: &str| {
        json!({"conditions": [{"type": reason, "status": "True", "reason": format!("TFJob{reason}"), "message": "done",
               "lastUpdateTime": "2023-11-14T22:00:00Z", "lastTransitionTime": "2023-11-14T22:00:00Z"}]})
    };
    let moved = {
        let mut j = job(true, suspended());
        merge_job(
            &mut j,
            json!({"spec": {"tfReplicaSpecs": {"Worker": {"template": {"spec": {"nodeSelector": {"zone": "b"}}}}}}}),
        );
        j
    };
    let active = |n: i32| json!({"replicaStatuses": {"Worker": {"active": n}}});
    let pending = workload(json!({"conditions": [condition("QuotaReserved", "False", "Pending")]}));
    let released = workload(
        json!({"conditions": [condition("QuotaReserved", "False", "Pending"), condition("Evicted", "True", "Preempted")]}),
    );
    let done = workload(json!({"conditions": [condition("Finished", "True", "Succeeded")]}));
    let mut foreign = workload(json!({}));
    foreign.metadata.owner_references = None;
    let cases: Vec<(&str, TFJob, Option<Workload>, Vec<&str>)> = vec![
        ("not queued: nothing", job(false, json!({})), None, vec![]),
        ("new, unsuspended: suspended, then its Workload", job(true, json!({})), None, vec!["job", "create"]),
        ("new, suspended: its Workload", job(true, suspended()), None, vec!["create"]),
        ("waiting, in step: nothing", job(true, suspended()), Some(pending.clone()), vec![]),
        ("waiting, nodeSelector changed: the Workload follows", moved, Some(pending), vec!["spec"]),
        (
            "admitted: started",
            job(true, suspended()),
            Some(workload(admitted())),
            vec!["job", "event:Admitted"],
        ),
        (
            "admitted while unsuspended: suspended first",
            job(true, json!({})),
            Some(workload(admitted())),
            vec!["job"],
        ),
        ("admitted and started: nothing", job(true, started()), Some(workload(admitted())), vec![]),
        (
            "evicted while running: stopped",
            job(true, started()),
            Some(workload(evicted())),
            vec!["job", "event:Stopped"],
        ),
        (
            "evicted, pods still active: wait",
            with_status(job(true, suspended()), active(1)),
            Some(workload(evicted())),
            vec![],
        ),
        (
            "evicted, no pod active: quota released",
            with_status(job(true, suspended()), active(0)),
            Some(workload(evicted())),
            vec!["status"],
        ),
        ("released: nothing", job(true, suspended()), Some(released), vec![]),
        (
            "succeeded: Workload finished",
            with_status(job(true, started()), finished("Succeeded")),
            Some(workload(admitted())),
            vec!["status"],
        ),
        (
            "finished twice: nothing",
            with_status(job(true, started()), finished("Failed")),
            Some(done),
            vec![],
        ),
        (
            "not its Workload: a warning only",
            job(true, json!({})),
            Some(foreign),
            vec!["event:WorkloadNotOwned"],
        ),
    ];
    for (name, j, wl, want) in cases {
        assert_eq!(kinds(&decide_for(&j, wl.as_ref())), want, "{name}");
    }
}

#[test]
fn a_start_merges_the_flavor_and_a_stop_restores_the_template() {
    let start = patch_of(&decide_for(&job(true, suspended()), Some(&workload(admitted()))), "job");
    assert_eq!(start["metadata"]["resourceVersion"], "7");
    assert_eq!(start["spec"]["runPolicy"]["suspend"], false);
    let t = &start["spec"]["tfReplicaSpecs"]["Worker"]["template"];
    assert_eq!(
        t["metadata"]["labels"],
        json!({PODSET_LABEL: "worker", LOCAL_QUEUE_LABEL: "q", CLUSTER_QUEUE_LABEL: "cq"})
    );
    assert_eq!(t["spec"]["nodeSelector"], json!({"pool": "a"}));
    assert_eq!(t["spec"]["tolerations"], json!([{"key": "pool", "value": "a", "effect": "NoSchedule"}]));

    let stop = patch_of(&decide_for(&job(true, started()), Some(&workload(evicted()))), "job");
    assert_eq!(stop["spec"]["runPolicy"]["suspend"], true);
    let t = &stop["spec"]["tfReplicaSpecs"]["Worker"]["template"];
    assert_eq!(t["metadata"]["labels"], json!({PODSET_LABEL: null}));
    assert_eq!(t["spec"]["nodeSelector"], json!({"pool": null}));
    assert_eq!(t["spec"]["tolerations"], Value::Null);

    // Without a Workload, only the admission's label goes.
    let bare = stop_patch(&job(true, started()), None);
    assert_eq!(
        bare["spec"]["tfReplicaSpecs"]["Worker"]["template"],
        json!({"metadata": {"labels": {PODSET_LABEL: null, LOCAL_QUEUE_LABEL: null, CLUSTER_QUEUE_LABEL: null}}})
    );

    // A flavor whose node label the template selects otherwise: not started, a warning.
    let conflict = job(
        true,
        json!({"spec": {"runPolicy": {"suspend": true}, "tfReplicaSpecs": {"Worker": {"template": {"spec": {"nodeSelector": {"pool": "b"}}}}}}}),
    );
    assert_eq!(kinds(&decide_for(&conflict, Some(&workload(admitted())))), ["event:FailedToStart"]);
    // A flavor not found: not started either.
    let none = BTreeMap::new();
    let steps = decide(&Observed {
        job: &job(true, suspended()),
        workload: Some(&workload(admitted())),
        priority: Ok(None),
        flavors: &none,
        now: now(),
    });
    assert_eq!(kinds(&steps), ["event:FailedToStart"]);
}

#[test]
fn a_release_clears_the_reservation_and_a_finish_keeps_kueues_conditions() {
    let j = with_status(job(true, suspended()), json!({"replicaStatuses": {"Worker": {"active": 0}}}));
    let p = patch_of(&decide_for(&j, Some(&workload(evicted()))), "status");
    assert_eq!(p["metadata"]["resourceVersion"], "9");
    assert_eq!(p["status"]["admission"], Value::Null);
    assert!(
        p["status"].as_object().is_some_and(|s| s.contains_key("admission")),
        "admission must be sent as null"
    );
    let by_type = |t: &str| {
        p["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(
        (by_type("QuotaReserved")["status"].as_str(), by_type("QuotaReserved")["reason"].as_str()),
        (Some("False"), Some("Pending"))
    );
    assert_eq!(
        (by_type("Admitted")["status"].as_str(), by_type("Admitted")["reason"].as_str()),
        (Some("False"), Some("NoReservation"))
    );
    assert_eq!(
        (by_type("Requeued")["status"].as_str(), by_type("Requeued")["reason"].as_str()),
        (Some("True"), Some("Preempted"))
    );
    assert_eq!(by_type("Evicted")["status"], "True", "Kueue's own condition is kept");
    assert_eq!(by_type("QuotaReserved")["observedGeneration"], 1);

    let j = with_status(
        job(true, started()),
        json!({"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
        "message": "too slow", "lastUpdateTime": "2023-11-14T22:00:00Z", "lastTransitionTime": "2023-11-14T22:00:00Z"}]}),
    );
    let p = patch_of(&decide_for(&j, Some(&workload(admitted()))), "status");
    let cs = p["status"]["conditions"].as_array().expect("conditions");
    assert_eq!(cs.len(), 3, "Kueue's two and Finished: {cs:?}");
    let f = cs.iter().find(|c| c["type"] == "Finished").expect("Finished");
    assert_eq!(
        (f["status"].as_str(), f["reason"].as_str(), f["message"].as_str()),
        (Some("True"), Some("Failed"), Some("too slow"))
    );
    assert!(p["status"].get("admission").is_none(), "a finish keeps the admission");
}

#[test]
fn a_priority_class_that_cannot_be_read_holds_a_new_workload_and_keeps_an_existing_one() {
    let j = job(true, suspended());
    let none = BTreeMap::new();
    let err = Err("WorkloadPriorityClass high is not found".to_string());
    let steps =
        decide(&Observed { job: &j, workload: None, priority: err.clone(), flavors: &none, now: now() });
    assert_eq!(kinds(&steps), ["event:WorkloadPriorityClassNotFound"]);
    let wl = workload(json!({}));
    let steps = decide(&Observed { job: &j, workload: Some(&wl), priority: err, flavors: &none, now: now() });
    assert!(steps.is_empty(), "{steps:?}");
    // A class whose value changed: the waiting Workload follows.
    let p = Ok(Some(Priority { name: "high".into(), value: 1000 }));
    let steps = decide(&Observed { job: &j, workload: Some(&wl), priority: p, flavors: &none, now: now() });
    assert_eq!(patch_of(&steps, "spec")["spec"]["priority"], 1000);
}

#[test]
fn with_the_operators_workloads_a_queued_job_gets_no_pods_until_started() {
    let own = Settings { workloads: WorkloadsBy::Operator, ..Settings::default() };
    let cases: [(&str, TFJob, Settings, usize, Option<&str>); 4] = [
        ("own Workloads, waiting", job(true, json!({})), own, 0, Some(REASON_QUEUED)),
        ("own Workloads, started", job(true, started()), own, 2, None),
        ("own Workloads, not queued", job(false, json!({})), own, 2, None),
        (
            "Kueue's integration: the label alone holds nothing",
            job(true, json!({})),
            Settings::default(),
            2,
            None,
        ),
    ];
    for (name, j, settings, pods, reason) in cases {
        let p = plan_with(&j, &[], &[], now(), settings);
        assert_eq!(p.create_pods.len(), pods, "{name}");
        let st = p.status.expect("a status");
        let suspended =
            st.condition(ConditionType::Suspended).filter(|c| c.status == crate::api::ConditionStatus::True);
        assert_eq!(suspended.and_then(|c| c.reason.as_deref()), reason, "{name}");
        if let Some(c) = suspended {
            let msg = c.message.as_deref().unwrap_or_default();
            assert!(msg.contains("LocalQueue q") && msg.contains(&workload_name("j", UID)), "{name}: {msg}");
        }
    }
}

#[test]
fn the_operators_workload_reads_every_key_so_odd_keys_get_no_warning() {
    let mut j = job(true, json!({}));
    let w = j.spec.tf_replica_specs.remove("Worker").expect("worker");
    j.spec.tf_replica_specs.insert("worker".into(), w);
    let warned = |settings: Settings| -> Vec<String> {
        plan_with(&j, &[], &[], now(), settings).events.into_iter().map(|e| e.reason).collect()
    };
    assert!(warned(Settings::default()).contains(&"ReplicaKeyNotSeenByKueue".to_string()));
    let own = Settings { workloads: WorkloadsBy::Operator, ..Settings::default() };
    assert!(!warned(own).contains(&"ReplicaKeyNotSeenByKueue".to_string()));
    let wl = workload_for(&j, "q", None).expect("built");
    assert_eq!(wl.spec.pod_sets.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["worker"]);
}

#[test]
fn an_admission_checks_pod_set_update_is_merged_and_a_conflict_holds_the_job() {
    let mut status = admitted();
    status["admissionChecks"] = json!([{"name": "prov", "state": "Ready", "lastTransitionTime": "2023-11-14T22:00:00Z",
        "message": "", "podSetUpdates": [{"name": "worker", "labels": {"l": "1"}, "annotations": {"a": "2"},
        "nodeSelector": {"zone": "z"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]}]}]);
    let wl = workload(status);
    let start = patch_of(&decide_for(&job(true, suspended()), Some(&wl)), "job");
    let t = &start["spec"]["tfReplicaSpecs"]["Worker"]["template"];
    assert_eq!(t["metadata"]["labels"]["l"], "1");
    assert_eq!(t["metadata"]["annotations"], json!({"a": "2"}));
    assert_eq!(t["spec"]["nodeSelector"], json!({"pool": "a", "zone": "z"}));
    assert_eq!(t["spec"]["tolerations"].as_array().map(Vec::len), Some(2));
    let clash = job(
        true,
        json!({"spec": {"runPolicy": {"suspend": true}, "tfReplicaSpecs": {"Worker": {"template": {"metadata": {"annotations": {"a": "other"}}}}}}}),
    );
    assert_eq!(kinds(&decide_for(&clash, Some(&wl))), ["event:FailedToStart"]);
}
