//! The slimmed pods and services plan as the full ones and keep exactly the fields read.
//! Their fixtures are the objects as the API server stores them.

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use super::*;
use crate::api::{JobView, ReplicaType, TFJob};
use crate::plan::gang::GangScheduling;
use crate::plan::{self, ReplicaId, Settings};

pub(super) const T0: &str = "2026-12-02T10:00:00Z";

pub(super) fn t(s: i64) -> Timestamp {
    T0.parse::<Timestamp>().unwrap() + k8s_openapi::jiff::SignedDuration::from_secs(s)
}

pub(super) fn at(s: i64) -> String {
    t(s).to_string()
}

/// The benchmark's job: 1 PS, 4 workers on kwok nodes (workers restart by exit code).
pub(super) fn job() -> TFJob {
    let template = |annotations: Value| {
        json!({"metadata": {"annotations": annotations}, "spec": {
            "containers": [{"name": "tensorflow", "image": "tensorflow/tensorflow:2.16.1"}],
            "terminationGracePeriodSeconds": 0,
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]
        }})
    };
    serde_json::from_value(json!({
        "apiVersion": "kubeflow.org/v1", "kind": "TFJob",
        "metadata": {"name": "b-17", "namespace": "bench-1000", "uid": "0b6f1d1e-3c55-4a84-9a43-6f4f3b0f0c17",
                     "resourceVersion": "84512", "creationTimestamp": T0},
        "spec": {
            "runPolicy": {"cleanPodPolicy": "Running", "ttlSecondsAfterFinished": 10},
            "tfReplicaSpecs": {
                "PS": {"replicas": 1, "restartPolicy": "Never", "template": template(json!({}))},
                "Worker": {"replicas": 4, "restartPolicy": "ExitCode",
                           "template": template(json!({"kwok.test/outcome": "succeed", "kwok.test/run-for": "5s"}))}
            }
        }
    }))
    .unwrap()
}

/// What the API server adds to every object: uid, version, creation time, managedFields.
fn stored(mut o: Value, i: usize, manager_fields: Value) -> Value {
    let m = &mut o["metadata"];
    m["uid"] = json!(format!("5f0c2d7e-8a31-4c6b-b0e2-{i:012}"));
    m["resourceVersion"] = json!(format!("{}", 90000 + i));
    m["creationTimestamp"] = json!(T0);
    m["generation"] = json!(1);
    m["finalizers"] = json!(["example.com/keep"]);
    m["managedFields"] = json!([
        {"manager": "tfjob-operator", "operation": "Update", "apiVersion": "v1", "time": T0,
         "fieldsType": "FieldsV1", "fieldsV1": manager_fields},
        {"manager": "kwok", "operation": "Update", "apiVersion": "v1", "time": T0, "subresource": "status",
         "fieldsType": "FieldsV1", "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {},
         "f:hostIP": {}, "f:hostIPs": {}, "f:phase": {}, "f:podIP": {}, "f:podIPs": {}, "f:startTime": {}}}}
    ]);
    o
}

/// A container status as the kubelet (here kwok) reports it.
fn container(name: &str, restarts: i32, state: Value, last: Value) -> Value {
    json!({"name": name, "image": "tensorflow/tensorflow:2.16.1",
           "imageID": "docker.io/tensorflow/tensorflow@sha256:6f2b8ee4f4c0f3c4b36ca2d0b37c9b2b5b3b8e6f8f8d3a0c9d4e2c1b0a9f8e7d",
           "containerID": "containerd://7c3a0e9b5d1f4a8c2e6b0d4f8a2c6e0b4d8f2a6c0e4b8d2f6a0c4e8b2d6f0a4c",
           "ready": true, "started": true, "restartCount": restarts, "state": state, "lastState": last,
           "volumeMounts": [{"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount",
                             "readOnly": true, "recursiveReadOnly": "Disabled"}]})
}

/// A pod's status: `phase`, conditions of that state, the tensorflow container's status and
/// the node's addresses.
fn pod_status(phase: &str, scheduled: Value, extra: &[Value], containers: Vec<Value>) -> Value {
    let cond =
        |t: &str, s: &str| json!({"type": t, "status": s, "lastProbeTime": null, "lastTransitionTime": T0});
    let ready = if phase == "Running" { "True" } else { "False" };
    let mut conditions = vec![
        cond("PodReadyToStartContainers", "True"),
        cond("Initialized", "True"),
        cond("Ready", ready),
        cond("ContainersReady", ready),
        scheduled,
    ];
    conditions.extend(extra.iter().cloned());
    json!({"phase": phase, "conditions": conditions, "containerStatuses": containers,
           "hostIP": "10.0.0.7", "hostIPs": [{"ip": "10.0.0.7"}], "podIP": "10.0.3.41", "podIPs": [{"ip": "10.0.3.41"}],
           "qosClass": "BestEffort", "startTime": T0})
}

fn scheduled() -> Value {
    json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": T0})
}

fn running(since: i64) -> Value {
    json!({"running": {"startedAt": at(since)}})
}

fn exited(code: i32, reason: &str, message: &str) -> Value {
    json!({"terminated": {"exitCode": code, "reason": reason, "message": message, "signal": 9,
                          "startedAt": at(1), "finishedAt": at(6),
                          "containerID": "containerd://7c3a0e9b5d1f4a8c2e6b0d4f8a2c6e0b4d8f2a6c0e4b8d2f6a0c4e8b2d6f0a4c"}})
}

/// The states the table puts a replica in, each as the API server shows it.
fn status_of(state: &str) -> Value {
    let tf = |restarts, state, last| vec![container("tensorflow", restarts, state, last)];
    match state {
        "running" => pod_status("Running", scheduled(), &[], tf(0, running(2), json!({}))),
        "succeeded" => {
            pod_status("Succeeded", scheduled(), &[], tf(0, exited(0, "Completed", ""), json!({})))
        }
        "failed-137" => pod_status(
            "Failed",
            scheduled(),
            &[],
            tf(0, exited(137, "OOMKilled", "out of memory"), json!({})),
        ),
        "failed-1" => {
            pod_status("Failed", scheduled(), &[], tf(0, exited(1, "Error", "Traceback: boom"), json!({})))
        }
        "crash-loop" => {
            pod_status("Running", scheduled(), &[], tf(3, running(50), exited(1, "Error", "boom")))
        }
        "image-pull" => pod_status(
            "Pending",
            scheduled(),
            &[],
            tf(
                0,
                json!({"waiting": {"reason": "ImagePullBackOff",
            "message": "Back-off pulling image \"tensorflow/tensorflow:9\""}}),
                json!({}),
            ),
        ),
        "unschedulable" => pod_status(
            "Pending",
            json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/12 nodes are available: 12 Insufficient nvidia.com/gpu.", "lastProbeTime": null,
            "lastTransitionTime": T0}),
            &[],
            vec![],
        ),
        "evicted" => {
            let mut s = pod_status("Failed", scheduled(), &[], tf(0, exited(137, "Error", ""), json!({})));
            s["reason"] = json!("Evicted");
            s["message"] = json!("The node was low on resource: memory.");
            s
        }
        "disrupted" => pod_status(
            "Failed",
            scheduled(),
            &[json!({"type": "DisruptionTarget", "status": "True",
            "reason": "PreemptionByScheduler", "message": "preempted", "lastTransitionTime": T0})],
            tf(0, exited(143, "Error", ""), json!({})),
        ),
        "init-waiting" => {
            let mut s = pod_status("Pending", scheduled(), &[], vec![]);
            s["initContainerStatuses"] = json!([container(
                "setup",
                0,
                json!({"waiting": {"reason": "CreateContainerConfigError",
                "message": "secret \"creds\" not found"}}),
                json!({})
            )]);
            s
        }
        other => panic!("no state {other}"),
    }
}

/// The job's pod of replica `rtype`/`index` as the API server stores it, in `state`;
/// `terminating` adds a deletion time and grace.
pub(super) fn full_pod(j: &TFJob, rtype: ReplicaType, index: i32, state: &str, terminating: bool) -> Pod {
    let view = JobView::new(j).unwrap();
    let built = crate::objects::Builder::new(&view, None).pod(ReplicaId { rtype, index }).unwrap();
    let fields = json!({"f:metadata": {"f:labels": {"f:training.kubeflow.org/job-name": {}, "f:training.kubeflow.org/operator-name": {},
        "f:training.kubeflow.org/replica-index": {}, "f:training.kubeflow.org/replica-type": {}}, "f:ownerReferences": {}},
        "f:spec": {"f:containers": {"k:{\"name\":\"tensorflow\"}": {"f:env": {}, "f:image": {}, "f:ports": {}}}}});
    let i = rtype as usize * 100 + usize::try_from(index).unwrap();
    let mut o = stored(serde_json::to_value(built).unwrap(), i, fields);
    o["metadata"]["labels"][crate::plan::gang::LABEL_POD_GROUP] = json!("b-17");
    o["metadata"]["labels"]["app"] = json!("train");
    o["metadata"]["ownerReferences"]
        .as_array_mut()
        .unwrap()
        .push(json!({"apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "uid-cm"}));
    o["spec"]["nodeName"] = json!("kwok-node-7");
    o["spec"]["serviceAccountName"] = json!("default");
    o["status"] = status_of(state);
    if terminating {
        o["metadata"]["deletionTimestamp"] = json!(at(40));
        o["metadata"]["deletionGracePeriodSeconds"] = json!(30);
    }
    serde_json::from_value(o).unwrap()
}

pub(super) fn full_service(j: &TFJob, rtype: ReplicaType, index: i32) -> Service {
    let view = JobView::new(j).unwrap();
    let built = crate::objects::service_for(&view, rtype, index).unwrap();
    let mut o = stored(serde_json::to_value(built).unwrap(), 500 + index as usize, json!({"f:spec": {}}));
    let spec = &mut o["spec"];
    spec["clusterIPs"] = json!(["None"]);
    spec["ipFamilies"] = json!(["IPv4"]);
    spec["ipFamilyPolicy"] = json!("SingleStack");
    spec["sessionAffinity"] = json!("None");
    spec["type"] = json!("ClusterIP");
    spec["internalTrafficPolicy"] = json!("Cluster");
    o["status"] = json!({"loadBalancer": {}});
    serde_json::from_value(o).unwrap()
}

fn slimmed<K: Slim + Clone>(objects: &[K]) -> Vec<K> {
    objects
        .iter()
        .cloned()
        .map(|mut o| {
            o.slim();
            o
        })
        .collect()
}

/// The job's pods: PS 0 and the workers in the states given, worker `terminating` (if any)
/// being deleted.
fn pods(j: &TFJob, workers: [&str; 4], terminating: Option<i32>) -> Vec<Pod> {
    let mut out = vec![full_pod(j, ReplicaType::PS, 0, "running", false)];
    for (i, s) in (0..).zip(workers) {
        out.push(full_pod(j, ReplicaType::Worker, i, s, terminating == Some(i)));
    }
    out
}

#[test]
fn a_slim_pod_plans_as_the_full_one() {
    let j = job();
    let services: Vec<Service> = (0..4)
        .map(|i| full_service(&j, ReplicaType::Worker, i))
        .chain([full_service(&j, ReplicaType::PS, 0)])
        .collect();
    let r = "running";
    let cases: [(&str, [&str; 4], Option<i32>); 10] = [
        ("all running", [r, r, r, r], None),
        ("worker 0 succeeded", ["succeeded", r, r, r], None),
        ("all workers succeeded", ["succeeded"; 4], None),
        ("a retryable exit code: recreated", [r, "failed-137", r, r], None),
        ("a permanent exit code: the job fails", [r, r, "failed-1", r], None),
        ("a crash loop, running again", [r, "crash-loop", r, r], None),
        ("waiting to pull its image", [r, "image-pull", r, r], None),
        ("unschedulable", [r, r, r, "unschedulable"], None),
        ("evicted and disrupted", ["evicted", "disrupted", r, r], None),
        ("an init container waiting, a pod terminating", ["init-waiting", r, r, "failed-137"], Some(3)),
    ];
    let mut diagnosed = 0;
    for (name, workers, terminating) in cases {
        let full = pods(&j, workers, terminating);
        let slim = slimmed(&full);
        for now in [5, 45, 200] {
            let settings = Settings { startup_deadline_seconds: Some(120), ..Settings::default() };
            let want = plan::plan_with(&j, &full, &services, t(now), settings);
            let got = plan::plan_with(&j, &slim, &slimmed(&services), t(now), settings);
            assert_eq!(got, want, "{name} at {now} s");
            let gang_want = plan::gang::decide(GangScheduling::Native, &j, &full, &want, None);
            let gang_got = plan::gang::decide(GangScheduling::Native, &j, &slim, &got, None);
            assert_eq!(gang_got, gang_want, "{name} at {now} s: gang");
            let refs = |p: &[Pod]| plan::diagnosis::diagnose(&p.iter().collect::<Vec<_>>(), t(now));
            assert_eq!(refs(&slim), refs(&full), "{name} at {now} s: diagnosis");
            diagnosed += refs(&full).pods.len();
        }
    }
    assert!(diagnosed >= 10, "the table exercises the diagnosis: {diagnosed}");
}

#[test]
fn a_slim_pod_keeps_exactly_what_is_read() {
    let j = job();
    let mut pod = full_pod(&j, ReplicaType::Worker, 1, "crash-loop", true);
    pod.slim();
    let want = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "b-17-worker-1", "namespace": "bench-1000", "uid": "5f0c2d7e-8a31-4c6b-b0e2-000000000401",
            "resourceVersion": "90401", "creationTimestamp": T0,
            "deletionTimestamp": at(40), "deletionGracePeriodSeconds": 30,
            "labels": {"tfjob.kubeflow.org/pod-group": "b-17", "training.kubeflow.org/replica-index": "1",
                       "training.kubeflow.org/replica-type": "worker"},
            "ownerReferences": [{"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "name": "b-17",
                                 "uid": "0b6f1d1e-3c55-4a84-9a43-6f4f3b0f0c17", "controller": true, "blockOwnerDeletion": true}]
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": "tensorflow", "image": "", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"running": {"startedAt": at(50)}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "boom"}}}]
        }
    });
    assert_eq!(serde_json::to_value(&pod).unwrap(), want);
    let mut svc = full_service(&j, ReplicaType::PS, 0);
    svc.slim();
    let v = serde_json::to_value(&svc).unwrap();
    assert_eq!(
        v.as_object().map(|o| o.keys().map(String::as_str).collect::<Vec<_>>()),
        Some(vec!["apiVersion", "kind", "metadata"]),
        "{v}"
    );
    assert_eq!(
        v["metadata"]["labels"],
        json!({"training.kubeflow.org/replica-index": "0",
        "training.kubeflow.org/replica-type": "ps"})
    );
    assert!(v["metadata"].get("managedFields").is_none() && v["metadata"].get("finalizers").is_none(), "{v}");
}

#[test]
fn a_cached_pod_or_service_gives_back_exactly_the_slim_one() {
    use crate::controller::observe::{CachedPod, CachedService};
    let j = job();
    let states = [
        "running",
        "succeeded",
        "failed-137",
        "failed-1",
        "crash-loop",
        "image-pull",
        "unschedulable",
        "evicted",
        "disrupted",
        "init-waiting",
    ];
    let mut compared = 0;
    for state in states {
        for (rtype, index, terminating) in [(ReplicaType::Worker, 2, false), (ReplicaType::PS, 0, true)] {
            let full = full_pod(&j, rtype, index, state, terminating);
            let want = slimmed(std::slice::from_ref(&full)).remove(0);
            // As the watch decodes it: from the API server's JSON.
            let cached: CachedPod = serde_json::from_value(serde_json::to_value(&full).unwrap()).unwrap();
            assert_eq!(cached.to_pod(), want, "{state}, terminating {terminating}");
            assert_eq!(CachedPod::from(full).to_pod(), want, "{state}");
            assert!(want.status.is_some() && want.metadata.labels.is_some(), "{state}: the fixture has both");
            compared += 1;
        }
    }
    assert_eq!(compared, 2 * states.len());
    // A pod with no status and no labels at all.
    let bare =
        Pod { metadata: ObjectMeta { name: Some("p".into()), ..Default::default() }, ..Default::default() };
    assert_eq!(CachedPod::from(bare.clone()).to_pod(), bare);
    for (rtype, index) in [(ReplicaType::PS, 0), (ReplicaType::Worker, 3)] {
        let full = full_service(&j, rtype, index);
        let want = slimmed(std::slice::from_ref(&full)).remove(0);
        let cached: CachedService = serde_json::from_value(serde_json::to_value(&full).unwrap()).unwrap();
        assert_eq!(cached.to_service(), want);
    }
}
