//! The job cache's own type: a TFJob kept as its metadata and its spec and status as compact
//! JSON, decoded when a reconcile reads it.
//!
//! A decoded `TFJob` costs some 14 KB in its cache however small its manifest: each pod
//! template holds an inline `PodSpec` (1488 bytes) and `Container`s, mostly empty fields,
//! and every map node has room for 11 entries. Its JSON is about a tenth of that. Decoding a
//! job takes some tens of microseconds, once per reconcile; a job at 1000 jobs is reconciled
//! a handful of times.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};

use crate::api::{TFJob, TFJobSpec, TFJobStatus};
use crate::error::Error;

/// A TFJob as the job cache keeps it: its metadata (slimmed by the job watch) and the rest
/// as JSON. The controller's triggers and reconciles name jobs by it. (It decodes from a
/// TFJob's JSON too, as kube's controller asks of the type it runs on.)
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "TFJob")]
pub struct CachedJob {
    metadata: ObjectMeta,
    /// `{"spec": .., "status": ..}` as [`Body`] writes them.
    body: Box<str>,
}

/// What [`CachedJob::body`] holds, written.
#[derive(Serialize)]
struct Body<'a> {
    spec: &'a TFJobSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: &'a Option<TFJobStatus>,
}

/// What [`CachedJob::body`] holds, read.
#[derive(Deserialize)]
struct Decoded {
    spec: TFJobSpec,
    #[serde(default)]
    status: Option<TFJobStatus>,
}

impl CachedJob {
    /// `job` as the cache keeps it. A job whose spec cannot be written as JSON (none can: its
    /// types write what they read) is kept with an empty body and fails to decode.
    pub fn new(job: &TFJob) -> CachedJob {
        let body = serde_json::to_string(&Body { spec: &job.spec, status: &job.status }).unwrap_or_default();
        CachedJob { metadata: job.metadata.clone(), body: body.into_boxed_str() }
    }

    /// The job this was made from.
    pub fn job(&self) -> Result<TFJob, Error> {
        let Decoded { spec, status } = serde_json::from_str(&self.body).map_err(|e| Error::CachedJob {
            job: self.metadata.name.clone().unwrap_or_default(),
            source: e,
        })?;
        Ok(TFJob { metadata: self.metadata.clone(), spec, status })
    }
}

impl From<TFJob> for CachedJob {
    fn from(job: TFJob) -> CachedJob {
        CachedJob::new(&job)
    }
}

/// The cache's reference to `job`.
pub fn key(job: &TFJob) -> ObjectRef<CachedJob> {
    let r = ObjectRef::new(job.meta().name.as_deref().unwrap_or_default());
    match job.meta().namespace.as_deref() {
        Some(ns) => r.within(ns),
        None => r,
    }
}

/// A watch event of decoded jobs as the job cache takes it.
pub fn event(e: &watcher::Event<TFJob>) -> watcher::Event<CachedJob> {
    use watcher::Event::*;
    match e {
        Init => Init,
        InitDone => InitDone,
        InitApply(j) => InitApply(CachedJob::new(j)),
        Apply(j) => Apply(CachedJob::new(j)),
        Delete(j) => Delete(CachedJob::new(j)),
    }
}

/// The job `cached` holds, shared.
pub fn decoded(cached: &CachedJob) -> Result<Arc<TFJob>, Error> {
    cached.job().map(Arc::new)
}

/// Served at the TFJobs' own path and kind: only the cache's copy is compact.
impl k8s_openapi::Resource for CachedJob {
    const API_VERSION: &'static str = "kubeflow.org/v1";
    const GROUP: &'static str = "kubeflow.org";
    const KIND: &'static str = "TFJob";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "tfjobs";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for CachedJob {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Jobs of both shapes, with and without status, decode back exactly.
    #[test]
    fn a_cached_job_decodes_back_exactly() {
        let template = json!({"metadata": {"labels": {"a": "b"}, "annotations": {"x": "y"}}, "spec": {
            "containers": [{"name": "tensorflow", "image": "tf:1", "command": ["python"], "args": ["-c", "1"],
                            "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"nvidia.com/gpu": "1"}},
                            "env": [{"name": "A", "value": "1"}]}],
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}]}});
        let kubeflow = json!({
            "apiVersion": "kubeflow.org/v1", "kind": "TFJob",
            "metadata": {"name": "a", "namespace": "ns", "uid": "u-1", "resourceVersion": "7",
                         "labels": {"kueue.x-k8s.io/queue-name": "q"}},
            "spec": {"runPolicy": {"cleanPodPolicy": "All", "ttlSecondsAfterFinished": 10, "activeDeadlineSeconds": 60,
                                   "backoffLimit": 3, "suspend": false},
                     "successPolicy": "AllWorkers",
                     "tfReplicaSpecs": {"PS": {"replicas": 1, "restartPolicy": "Never", "template": template},
                                        "Worker": {"replicas": 4, "restartPolicy": "ExitCode", "template": template}}},
            "status": {"conditions": [{"type": "Created", "status": "True", "reason": "TFJobCreated",
                                       "message": "TFJob ns/a is created.", "lastUpdateTime": "2026-12-02T10:00:00Z",
                                       "lastTransitionTime": "2026-12-02T10:00:00Z"}],
                       "replicaStatuses": {"Worker": {"active": 4}}, "startTime": "2026-12-02T10:00:00Z"}
        });
        let mut seed = kubeflow.clone();
        seed["spec"] = json!({"cleanPodPolicy": "Running", "ttlSecondsAfterFinished": 5,
                              "tfReplicaSpecs": {"Chief": {"replicas": 1, "template": template}}});
        seed.as_object_mut().unwrap().remove("status");
        for (name, v) in [("kubeflow's shape, with status", kubeflow), ("the seed's shape, no status", seed)]
        {
            let job: TFJob = serde_json::from_value(v).unwrap();
            let cached = CachedJob::new(&job);
            assert_eq!(cached.job().unwrap(), job, "{name}");
            assert!(cached.body.len() < 2000, "{name}: {} bytes of JSON", cached.body.len());
            assert_eq!(key(&job), ObjectRef::from_obj(&cached), "{name}");
        }
    }

    #[test]
    fn a_body_that_cannot_be_decoded_names_the_job() {
        let cached = CachedJob {
            metadata: ObjectMeta { name: Some("a".into()), ..Default::default() },
            body: "{}".into(),
        };
        let err = cached.job().unwrap_err().to_string();
        assert!(err.contains("TFJob a") && err.contains("spec"), "{err}");
    }
}
