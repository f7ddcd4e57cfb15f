//! The benchmark's TFJobs: the batch jobs and the deadline jobs, in the Kubeflow `runPolicy`
//! shape, their pods on kwok nodes.

use serde_json::{Value, json};

use super::Options;

fn template(annotations: Value) -> Value {
    json!({"metadata": {"annotations": annotations}, "spec": crate::kwok_pod_spec()})
}

/// A job of the batch: PS running until cleaned up, workers succeeding after `run_for`.
pub fn batch_job(name: &str, o: &Options) -> Value {
    json!({
        "apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": name},
        "spec": {
            "runPolicy": {"cleanPodPolicy": "Running", "ttlSecondsAfterFinished": o.ttl},
            "tfReplicaSpecs": {
                "PS": {"replicas": o.ps, "restartPolicy": "Never", "template": template(json!({}))},
                "Worker": {"replicas": o.workers, "restartPolicy": "Never",
                           "template": template(json!({"kwok.test/outcome": "succeed", "kwok.test/run-for": o.run_for}))}
            }
        }
    })
}

/// The huge job: 1 PS and `replicas - 1` workers that must all succeed (`AllWorkers`), so
/// every one of its pods is created.
pub fn huge_job(name: &str, o: &Options, replicas: i32) -> Value {
    let mut job = batch_job(name, o);
    job["spec"]["tfReplicaSpecs"]["PS"]["replicas"] = json!(1);
    job["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] = json!(replicas - 1);
    job["spec"]["successPolicy"] = json!("AllWorkers");
    job
}

/// A deadline job: one worker that runs until the deadline fails the job.
pub fn deadline_job(name: &str, o: &Options) -> Value {
    json!({
        "apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": name},
        "spec": {
            "runPolicy": {"cleanPodPolicy": "Running", "ttlSecondsAfterFinished": o.ttl,
                          "activeDeadlineSeconds": o.deadline},
            "tfReplicaSpecs": {"Worker": {"replicas": 1, "restartPolicy": "Never", "template": template(json!({}))}}
        }
    })
}
