//! The writes of the operator's own Kueue Workloads (`--kueue-workloads=operator`): the job's
//! suspend-and-templates patch, the Workload's create, its spec and status patches. Every
//! patch is a merge patch fenced by the resourceVersion it was decided from, so a 409 means
//! "decide again from what is stored now".

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::Value;

use super::{Created, FIELD_MANAGER, Writer, is_status};
use crate::api::TFJob;
use crate::api::workload::Workload;
use crate::error::Error;

/// What a fenced patch came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patched {
    Done,
    /// The object changed since the decision (409) or is gone (404): decide again.
    Stale,
}

fn outcome(res: Result<(), kube::Error>, err: impl FnOnce(kube::Error) -> Error) -> Result<Patched, Error> {
    match res {
        Ok(()) => Ok(Patched::Done),
        Err(e) if is_status(&e, 409) || is_status(&e, 404) => Ok(Patched::Stale),
        Err(e) => Err(err(e)),
    }
}

impl Writer {
    /// Patches the job's `runPolicy.suspend` and templates (a merge patch with its
    /// resourceVersion).
    pub async fn patch_job(&self, job: &TFJob, patch: &Value) -> Result<Patched, Error> {
        self.gate.check()?;
        let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let res = self.jobs(job).patch(&job.name_any(), &pp, &Patch::Merge(patch)).await.map(drop);
        outcome(res, |source| Error::PatchJob { job: job.name_any(), source })
    }

    /// Creates the job's Workload (job uid `owner`), as [`Writer::create`].
    pub async fn create_workload(&self, owner: &str, wl: &Workload) -> Result<Created<Workload>, Error> {
        self.create(owner, wl).await
    }

    /// Patches the Workload's spec, or its status (`status`), by a merge patch with its
    /// resourceVersion.
    pub async fn patch_workload(&self, wl: &Workload, patch: &Value, status: bool) -> Result<Patched, Error> {
        self.gate.check()?;
        let api: Api<Workload> = Api::namespaced(self.client.clone(), &wl.namespace().unwrap_or_default());
        let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let name = wl.name_any();
        let res = if status {
            api.patch_status(&name, &pp, &Patch::Merge(patch)).await
        } else {
            api.patch(&name, &pp, &Patch::Merge(patch)).await
        };
        outcome(res.map(drop), |source| Error::PatchWorkload { name, source })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::{Method, Request, Response};
    use kube::client::Body;
    use serde_json::json;
    use tower_test::mock;

    use super::*;
    use crate::leader::Gate;
    use crate::metrics::Metrics;
    use crate::writer::events;

    /// A writer on a mock API server that answers each request with the next (code, body)
    /// and records (method, path, content type, body).
    async fn run(
        answers: Vec<(u16, serde_json::Value)>,
        call: impl AsyncFnOnce(Writer) -> Vec<Result<Patched, Error>>,
    ) -> (Vec<Result<Patched, Error>>, Vec<(Method, String, String, serde_json::Value)>) {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(service, "default");
        let (queue, _publisher) = events::queue("test".into(), Arc::new(Metrics::default()));
        let writer = Writer::new(client, Gate::always_open(), queue);
        let serve = tokio::spawn(async move {
            let mut seen = Vec::new();
            for (code, body) in answers {
                let Some((req, send)) = handle.next_request().await else { break };
                let (parts, b) = req.into_parts();
                let bytes = b.collect_bytes().await.expect("body");
                let sent = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
                let ct =
                    parts.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                seen.push((parts.method, parts.uri.path().to_string(), ct, sent));
                let response = Response::builder()
                    .status(code)
                    .body(Body::from(serde_json::to_vec(&body).expect("json")));
                send.send_response(response.expect("response"));
            }
            seen
        });
        let results = call(writer).await;
        (results, serve.await.expect("served"))
    }

    fn status(code: u16) -> serde_json::Value {
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": "Conflict", "message": "changed"})
    }

    fn job() -> TFJob {
        serde_json::from_value(json!({"apiVersion": "kubeflow.org/v1", "kind": "TFJob",
            "metadata": {"name": "j", "namespace": "ns", "uid": "u", "resourceVersion": "7"},
            "spec": {"tfReplicaSpecs": {}}}))
        .expect("job")
    }

    fn workload() -> Workload {
        serde_json::from_value(json!({"metadata": {"name": "w", "namespace": "ns", "resourceVersion": "9"}}))
            .expect("wl")
    }

    #[tokio::test]
    async fn patches_are_merge_patches_and_a_conflict_or_a_gone_object_means_decide_again() {
        let patch = json!({"metadata": {"resourceVersion": "7"}, "spec": {"runPolicy": {"suspend": true}}});
        let (results, seen) = run(
            vec![
                (200, serde_json::to_value(job()).expect("json")),
                (409, status(409)),
                (404, status(404)),
                (500, status(500)),
            ],
            async |w: Writer| {
                vec![
                    w.patch_job(&job(), &patch).await,
                    w.patch_workload(&workload(), &patch, true).await,
                    w.patch_workload(&workload(), &patch, false).await,
                    w.patch_workload(&workload(), &patch, true).await,
                ]
            },
        )
        .await;
        assert!(matches!(results[0], Ok(Patched::Done)));
        assert!(matches!(results[1], Ok(Patched::Stale)), "409");
        assert!(matches!(results[2], Ok(Patched::Stale)), "404");
        assert!(matches!(results[3], Err(Error::PatchWorkload { .. })), "500 is an error to retry");
        let paths: Vec<(&Method, &str, &str)> =
            seen.iter().map(|(m, p, ct, _)| (m, p.as_str(), ct.as_str())).collect();
        assert_eq!(
            paths,
            [
                (
                    &Method::PATCH,
                    "/apis/kubeflow.org/v1/namespaces/ns/tfjobs/j",
                    "application/merge-patch+json"
                ),
                (
                    &Method::PATCH,
                    "/apis/kueue.x-k8s.io/v1beta2/namespaces/ns/workloads/w/status",
                    "application/merge-patch+json"
                ),
                (
                    &Method::PATCH,
                    "/apis/kueue.x-k8s.io/v1beta2/namespaces/ns/workloads/w",
                    "application/merge-patch+json"
                ),
                (
                    &Method::PATCH,
                    "/apis/kueue.x-k8s.io/v1beta2/namespaces/ns/workloads/w/status",
                    "application/merge-patch+json"
                ),
            ]
        );
        assert_eq!(seen[0].3, patch, "the patch is sent as decided, its resourceVersion included");
    }

    #[tokio::test]
    async fn no_write_without_the_lease() {
        let (service, _handle) = mock::pair::<Request<Body>, Response<Body>>();
        let (queue, _publisher) = events::queue("test".into(), Arc::new(Metrics::default()));
        let writer = Writer::new(kube::Client::new(service, "default"), Gate::elected(), queue);
        let r = writer.patch_job(&job(), &json!({})).await;
        assert!(matches!(r, Err(Error::NotLeader)), "{r:?}");
    }
}
