//! Every write the controller makes to the API server (the Lease's writes are in
//! [`crate::leader`]), each idempotent and each asking the leadership gate first: fixed
//! names; a 409 on create is success only for an object this job controls; deletes carry the
//! uid seen as a precondition and take a 404 as success (a finished job's cleanup deletes a
//! collection instead, selected by the job's operator-name and job-name labels); status goes
//! by JSON merge patch of what changed, with one field manager. Events go through the queue
//! of [`events`].

pub mod events;
pub mod merge_patch;
pub mod pod_group;
pub mod workload;

pub use pod_group::check_pod_groups_served;

use std::fmt::Debug;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{TFJob, TFJobStatus};
use crate::error::Error;
use crate::leader::Gate;
use crate::names;
use crate::plan::{ObjectKey, PlannedEvent, PodSelection};
use events::EventQueue;

/// The field manager of every write.
pub const FIELD_MANAGER: &str = "tfjob-operator";

/// A namespaced object the writer creates (pods and services).
pub trait Namespaced:
    Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
{
}

impl<K> Namespaced for K where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
{
}

/// What a create came to.
#[derive(Debug)]
pub enum Created<K> {
    /// Created now.
    New(K),
    /// Already there, controlled by this job and not terminating (a create the cache had not
    /// shown yet).
    Existing(K),
    /// An object of the same name is being deleted (an earlier one's, or this job's own, such
    /// as its PodGroup of before a suspension): wait for it to go.
    Terminating,
    /// An object of the same name exists and is not this job's: never adopted.
    Foreign,
    /// The API server refused the object (400, 403, 422): the user's to fix; its message.
    Refused(String),
    /// The namespace is being deleted or is gone: nothing more is created in it.
    NamespaceGone,
    /// Failed for a reason not the job's (no answer, a timeout, 429, 5xx such as an admission
    /// webhook that cannot be called): retried with backoff and logged; once it lasts, shown
    /// to the user as the cluster's failure (`CreateRetrying`), never as a refusal.
    Transient(kube::Error),
}

/// Whether a failed create was refused because its namespace is being deleted or is gone.
pub fn namespace_gone(e: &kube::Error) -> bool {
    let kube::Error::Api(s) = e else { return false };
    let terminating =
        s.details.as_ref().is_some_and(|d| d.causes.iter().any(|c| c.reason == "NamespaceTerminating"))
            || s.message.contains("because it is being terminated");
    (s.code == 403 && terminating)
        || (s.code == 404 && s.details.as_ref().is_some_and(|d| d.kind == "namespaces"))
}

/// What a failed create came to: only answers that refuse the object are the user's to see.
pub fn failed_create<K>(e: kube::Error) -> Created<K> {
    match &e {
        _ if namespace_gone(&e) => Created::NamespaceGone,
        kube::Error::Api(s) if matches!(s.code, 400 | 403 | 422) => Created::Refused(s.message.clone()),
        _ => Created::Transient(e),
    }
}

/// The API writer: a client, the leadership gate and the event queue.
#[derive(Clone)]
pub struct Writer {
    client: Client,
    gate: Gate,
    events: EventQueue,
}

/// What the API server made of a TTL delete of a TFJob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobDeletion {
    Deleted,
    /// No such job (deleted by someone, or by an earlier request whose answer was lost).
    NotFound,
    /// The job changed since the plan read it (a patch landed first): not deleted.
    Changed,
}

/// Whether a failed request was answered by the API server with a refusal, so that it
/// certainly did not take effect (a 4xx); a broken connection, a timeout or a 5xx may have.
pub fn refused(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if (400..500).contains(&s.code))
}

/// Whether the API server refused a request as not permitted (403).
pub fn forbidden(e: &Error) -> bool {
    matches!(e, Error::DeletePodsOf { source, .. } | Error::DeleteServicesOf { source, .. } if is_status(source, 403))
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// The API server's message for a failed request.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => s.message.clone(),
        other => other.to_string(),
    }
}

/// What became of a request that failed without refusing anything, for the user: the API
/// server's code and message (an admission webhook that cannot be called names itself and
/// why), or that no answer came.
pub fn failure_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("the API server answered {}: {}", s.code, s.message),
        other => format!("no answer from the API server: {other}"),
    }
}

/// The merge patch of a status write: what changed from `job.status` to `status`, fenced by
/// the job's resourceVersion. Fields that earlier versions wrote and this one only reads are
/// counted in the old status, so that the patch removes them.
fn status_patch(job: &TFJob, status: &TFJobStatus) -> Result<serde_json::Value, serde_json::Error> {
    let mut old = serde_json::to_value(&job.status)?;
    for (t, r) in job.status.iter().flat_map(|s| &s.replica_statuses) {
        if let (false, Some(replica)) = (
            r.succeeded_indexes.is_empty(),
            old.pointer_mut(&format!(
                "/replicaStatuses/{}",
                serde_json::to_value(t)?.as_str().unwrap_or_default()
            )),
        ) {
            replica["succeededIndexes"] = serde_json::to_value(&r.succeeded_indexes)?;
        }
    }
    let new = serde_json::to_value(status)?;
    let mut patch = serde_json::json!({ "metadata": { "resourceVersion": job.resource_version() } });
    if let Some(d) = merge_patch::diff(&old, &new) {
        patch["status"] = d;
    }
    Ok(patch)
}

/// Delete options with the uid the plan saw as a precondition.
fn with_uid(uid: &str) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions { uid: Some(uid.to_string()), resource_version: None }),
        ..Default::default()
    }
}

impl Writer {
    pub fn new(client: Client, gate: Gate, events: EventQueue) -> Writer {
        Writer { client, gate, events }
    }

    fn jobs(&self, job: &TFJob) -> Api<TFJob> {
        Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default())
    }

    /// Writes what changed from the job's status (`job.status`, as planned from) to `status`,
    /// as a JSON merge patch ([`merge_patch::diff`]), and returns the stored object, without
    /// managedFields as the cache keeps jobs. A merge patch costs the API server less than a
    /// server-side apply of the whole status (BENCHMARKS.md, "Where the API server's CPU
    /// goes"); the operator is the status' only writer.
    ///
    /// Fenced: the patch carries the resourceVersion of the job it was planned from, so it is
    /// refused ([`Error::StaleStatus`]) when the stored job changed since (another writer, a
    /// new leader, a user's patch, or a write of this process whose answer was lost); the job
    /// is then read and planned again from fresh state. A stale process can never erase what
    /// another wrote.
    pub async fn patch_status(&self, job: &TFJob, status: &TFJobStatus) -> Result<TFJob, Error> {
        self.gate.check()?;
        let body =
            status_patch(job, status).map_err(|source| Error::StatusPatch { job: job.name_any(), source })?;
        let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let mut written =
            self.jobs(job).patch_status(&job.name_any(), &pp, &Patch::Merge(body)).await.map_err(
                |source| match source {
                    e if is_status(&e, 409) => Error::StaleStatus { job: job.name_any() },
                    e if is_status(&e, 404) => Error::JobGone { job: job.name_any() },
                    source => Error::PatchStatus { job: job.name_any(), source },
                },
            )?;
        written.metadata.managed_fields = None;
        Ok(written)
    }

    /// Creates a pod, service or PodGroup for the job with uid `owner`: what the API server
    /// made of it ([`Created`]). `Err` only when this process does not lead.
    pub async fn create<K: Namespaced>(&self, owner: &str, obj: &K) -> Result<Created<K>, Error> {
        self.gate.check()?;
        let api: Api<K> = Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default());
        let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        Ok(match api.create(&pp, obj).await {
            Ok(o) => Created::New(o),
            Err(e) if is_status(&e, 409) => match api.get_opt(&obj.name_any()).await {
                // Terminating first, also when it is this job's own (its PodGroup of before a
                // suspension): a new object is wanted, not one that is going away.
                Ok(Some(found)) if found.meta().deletion_timestamp.is_some() => Created::Terminating,
                Ok(Some(found)) if names::controlled_by(found.meta(), owner) => Created::Existing(found),
                Ok(Some(_)) => Created::Foreign,
                Ok(None) => Created::Terminating, // gone between the two calls: try again
                Err(source) => Created::Transient(source),
            },
            Err(e) => failed_create(e),
        })
    }

    /// Whether the job still exists (the same uid): asked before creating from a job cache
    /// that may be stale, so no pod is made for a job deleted meanwhile.
    pub async fn job_exists(&self, job: &TFJob) -> Result<bool, Error> {
        Ok(self.read_job(job).await?.is_some())
    }

    /// The job as stored now, without managedFields as the cache keeps jobs; `None` when it
    /// is gone or was replaced by another of the same name (another uid).
    pub async fn read_job(&self, job: &TFJob) -> Result<Option<TFJob>, Error> {
        match self.jobs(job).get_opt(&job.name_any()).await {
            Ok(found) => Ok(found.filter(|f| f.uid() == job.uid()).map(|mut f| {
                f.metadata.managed_fields = None;
                f
            })),
            Err(source) => Err(Error::ReadJob { job: job.name_any(), source }),
        }
    }

    /// Deletes a pod, only if it still has the uid the plan saw. Gone is success.
    pub async fn delete_pod(&self, namespace: &str, pod: &ObjectKey) -> Result<(), Error> {
        self.gate.check()?;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(&pod.name, &with_uid(&pod.uid)).await {
            Ok(_) => Ok(()),
            // 404: already gone; 409: the precondition failed, so that pod is gone too.
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(source) => Err(Error::DeletePod { name: pod.name.clone(), source }),
        }
    }

    /// Deletes a service, only if it still has the uid the plan saw. Gone is success.
    pub async fn delete_service(&self, namespace: &str, svc: &ObjectKey) -> Result<(), Error> {
        self.gate.check()?;
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(&svc.name, &with_uid(&svc.uid)).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(source) => Err(Error::DeleteService { name: svc.name.clone(), source }),
        }
    }

    /// Deletes in one request the pods of `job` that `selection` picks (by the job's labels,
    /// and by phase for [`PodSelection::Unfinished`]); returns each pod deleted.
    pub async fn delete_pods_of(
        &self,
        job: &TFJob,
        selection: PodSelection,
    ) -> Result<Vec<ObjectKey>, Error> {
        let phase = match selection {
            PodSelection::Unfinished => Some("status.phase!=Succeeded,status.phase!=Failed"),
            PodSelection::All => None,
        };
        self.gate.check()?;
        self.delete_collection::<Pod>(job, phase)
            .await
            .map_err(|source| Error::DeletePodsOf { job: job.name_any(), source })
    }

    /// Deletes in one request every service of `job` (by the job's labels); returns each
    /// service deleted.
    pub async fn delete_services_of(&self, job: &TFJob) -> Result<Vec<ObjectKey>, Error> {
        self.gate.check()?;
        self.delete_collection::<Service>(job, None)
            .await
            .map_err(|source| Error::DeleteServicesOf { job: job.name_any(), source })
    }

    async fn delete_collection<K: Namespaced>(
        &self,
        job: &TFJob,
        fields: Option<&str>,
    ) -> Result<Vec<ObjectKey>, kube::Error> {
        let api: Api<K> = Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default());
        let mut lp = ListParams::default().labels(&names::job_selector(&job.name_any()));
        if let Some(fields) = fields {
            lp = lp.fields(fields);
        }
        // The API server answers with the objects it deleted (a Status only for a kind that
        // has no list to give back).
        let deleted = api.delete_collection(&DeleteParams::default(), &lp).await?.left();
        Ok(deleted
            .map(|list| list.items.iter().map(|o| ObjectKey::of(o.meta())).collect())
            .unwrap_or_default())
    }

    /// Deletes the TFJob for its TTL, only if it is still the version the plan saw: a patch
    /// that lands first (a longer TTL) wins.
    pub async fn delete_job(&self, job: &TFJob) -> Result<JobDeletion, Error> {
        self.gate.check()?;
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: job.uid(), resource_version: job.resource_version() }),
            ..DeleteParams::background()
        };
        match self.jobs(job).delete(&job.name_any(), &dp).await {
            Ok(_) => Ok(JobDeletion::Deleted),
            Err(e) if is_status(&e, 404) => Ok(JobDeletion::NotFound),
            Err(e) if is_status(&e, 409) => Ok(JobDeletion::Changed),
            Err(source) => Err(Error::DeleteJob { job: job.name_any(), source }),
        }
    }

    /// Queues an event about the job, stamped `now`: one new Event object per happening.
    pub fn publish(&self, job: &TFJob, ev: &PlannedEvent, now: Timestamp) -> Result<(), Error> {
        self.gate.check()?;
        self.events.push(job, ev, now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::{Status, response::StatusDetails};

    fn api(code: u16, message: &str, cause: Option<&str>) -> kube::Error {
        let mut s = Status::failure(message, "Reason").with_code(code);
        s.details = cause.map(|c| {
            serde_json::from_value::<StatusDetails>(serde_json::json!({"causes": [{"reason": c}]}))
                .expect("details")
        });
        kube::Error::Api(Box::new(s))
    }

    fn namespace_not_found() -> kube::Error {
        let mut s = Status::failure("namespaces \"x\" not found", "NotFound").with_code(404);
        s.details = Some(
            serde_json::from_value(serde_json::json!({"name": "x", "kind": "namespaces"})).expect("details"),
        );
        kube::Error::Api(Box::new(s))
    }

    /// A status write sends what changed and the resourceVersion it was planned from; the
    /// list an earlier version wrote (`succeededIndexes`) is removed as it is rewritten.
    #[test]
    fn status_patches_hold_what_changed_fenced_by_the_version_read() {
        use crate::api::{ReplicaStatus, ReplicaType};
        let mut job: TFJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubeflow.org/v1", "kind": "TFJob",
            "metadata": {"name": "j", "namespace": "ns", "resourceVersion": "41"},
            "spec": {"tfReplicaSpecs": {}},
            "status": {"replicaStatuses": {
                "PS": {"active": 1},
                "Worker": {"active": 2, "succeeded": 2, "succeededIndexes": [1, 2]},
            }},
        }))
        .expect("job");
        let old = job.status.clone().expect("status");
        let mut new = old.clone().upgraded();
        let w = new.replica_statuses.get_mut(&ReplicaType::Worker).expect("worker");
        *w = ReplicaStatus { active: 1, succeeded: 3, ..std::mem::take(w) };
        w.completed_indexes.extend([0]);
        let patch = status_patch(&job, &new).expect("patch");
        assert_eq!(
            patch,
            serde_json::json!({
                "metadata": {"resourceVersion": "41"},
                "status": {"replicaStatuses": {"Worker": {
                    "active": 1, "succeeded": 3, "completedIndexes": "0-2", "succeededIndexes": null,
                }}},
            })
        );
        // Nothing changed: only the fence (the API server stores nothing new).
        job.status = Some(new.clone());
        assert_eq!(
            status_patch(&job, &new).expect("patch"),
            serde_json::json!({"metadata": {"resourceVersion": "41"}})
        );
        // No status before: all of it.
        job.status = None;
        let all = status_patch(&job, &new).expect("patch");
        assert_eq!(all["status"], serde_json::to_value(&new).expect("status"));
    }

    #[test]
    fn only_refusals_of_the_object_are_the_users() {
        #[derive(Debug, PartialEq)]
        enum Want {
            Refused(String),
            NamespaceGone,
            Transient,
        }
        use Want::*;
        let cases = [
            ("invalid", api(422, "spec.volumes: not found", None), Refused("spec.volumes: not found".into())),
            ("bad request", api(400, "bad quantity", None), Refused("bad quantity".into())),
            ("quota", api(403, "exceeded quota: q", None), Refused("exceeded quota: q".into())),
            (
                "terminating namespace (cause)",
                api(403, "forbidden", Some("NamespaceTerminating")),
                NamespaceGone,
            ),
            (
                "terminating namespace (message)",
                api(403, "unable to create new content in namespace x because it is being terminated", None),
                NamespaceGone,
            ),
            ("namespace gone", namespace_not_found(), NamespaceGone),
            ("another 404", api(404, "the server could not find the requested resource", None), Transient),
            ("throttled", api(429, "too many requests", None), Transient),
            ("server error", api(500, "etcdserver: request timed out", None), Transient),
            ("unavailable", api(503, "unavailable", None), Transient),
            ("unauthorized", api(401, "Unauthorized", None), Transient),
            ("no answer", kube::Error::Service("connection refused".into()), Transient),
        ];
        for (name, e, want) in cases {
            let got = match failed_create::<()>(e) {
                Created::Refused(m) => Refused(m),
                Created::NamespaceGone => NamespaceGone,
                Created::Transient(_) => Transient,
                other => panic!("{name}: {other:?}"),
            };
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn a_failure_message_says_who_answered_what() {
        let webhook = "Internal error occurred: failed calling webhook \"w.test\": connection refused";
        let cases = [
            (api(500, webhook, None), format!("the API server answered 500: {webhook}")),
            (api(429, "too many requests", None), "the API server answered 429: too many requests".into()),
            (
                kube::Error::Service("connection refused".into()),
                "no answer from the API server: ServiceError: connection refused".into(),
            ),
        ];
        for (e, want) in cases {
            assert_eq!(failure_message(&e), want);
        }
    }
}
