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
