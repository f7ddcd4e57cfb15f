//! Every write the operator makes to the API server, each idempotent: fixed names, a 409 on
//! create is success only for an object this job controls, a 404 on delete is success, and
//! status goes by server-side apply with one field manager. Events go through a bounded
//! queue to a publisher task, so creates never wait behind them.

use std::fmt::Debug;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::warn;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::api::{TFJob, TFJobStatus};
use crate::error::Error;
use crate::http::Health;
use crate::metrics::Metrics;
use crate::names;
use crate::plan::{PlannedEvent, PodRef};

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

/// What a create found.
#[derive(Debug)]
pub enum Created<K> {
    /// Created now.
    New(K),
    /// Already there and controlled by this job (a create the cache had not shown yet).
    Existing(K),
    /// A pod of the same name is being deleted (an earlier job's): wait for it to go.
    Terminating,
    /// An object of the same name exists and is not this job's: never adopted.
    Foreign,
}

/// Events waiting for the publisher. When it is full (the API server is slower than the
/// events come), new events are dropped and counted, as client-go's recorder does.
const EVENT_QUEUE: usize = 8192;
/// Events published at once.
const EVENTS_IN_FLIGHT: usize = 8;

/// The API writer: a client, the events' reporting instance, the leadership gate and the
/// event queue.
#[derive(Clone)]
pub struct Writer {
    client: Client,
    instance: String,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
    events: mpsc::Sender<Event>,
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

impl Writer {
    /// The writer, and its event publisher, which ends once every clone of the writer is
    /// dropped and the queue is empty.
    pub fn new(
        client: Client,
        instance: Option<String>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let publisher = tokio::spawn(publish_events(client.clone(), health.clone(), rx));
        let instance = instance.unwrap_or_else(|| FIELD_MANAGER.into());
        (Writer { client, instance, health, metrics, events: tx }, publisher)
    }

    /// Refuses every write once this process no longer leads.
    fn gate(&self) -> Result<(), Error> {
        if self.health.leading() { Ok(()) } else { Err(Error::NotLeader) }
    }

    fn jobs(&self, job: &TFJob) -> Api<TFJob> {
        Api::namespaced(self.client.clone(), &job.namespace().unwrap_or_default())
    }

    /// Writes the job's whole status (server-side apply, forced, one field manager).
    pub async fn patch_status(&self, job: &TFJob, status: &TFJobStatus) -> Result<TFJob, Error> {
        self.gate()?;
        let body =
            serde_json::json!({ "apiVersion": names::API_VERSION, "kind": names::KIND, "status": status });
        let mut written = self
            .jobs(job)
            .patch_status(&job.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(body))
            .await
            .map_err(|source| Error::PatchStatus { job: job.name_any(), source })?;
        // Kept until the cache catches up: without managedFields, as the cache keeps jobs.
        written.metadata.managed_fields = None;
        Ok(written)
    }

    /// Creates a pod or service for the job with uid `owner`.
    pub async fn create<K: Namespaced>(
        &self,
        owner: &str,
        obj: &K,
    ) -> Result<Result<Created<K>, kube::Error>, Error> {
        self.gate()?;
        let api: Api<K> = Api::namespaced(self.client.clone(), &obj.namespace().unwrap_or_default());
        Ok(self.create_in(&api, owner, obj).await)
    }

    async fn create_in<K: Namespaced>(
        &self,
        api: &Api<K>,
        owner: &str,
        obj: &K,
    ) -> Result<Created<K>, kube::Error> {
        match api
            .create(&PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() }, obj)
            .await
        {
            Ok(o) => Ok(Created::New(o)),
            Err(e) if is_status(&e, 409) => match api.get_opt(&obj.name_any()).await? {
                Some(found) if names::controlled_by(found.meta(), owner) => Ok(Created::Existing(found)),
                Some(found) if found.meta().deletion_timestamp.is_some() => Ok(Created::Terminating),
                Some(_) => Ok(Created::Foreign),
                None => Ok(Created::Terminating), // gone between the two calls: try again
            },
            Err(e) => Err(e),
        }
    }

    /// Deletes a pod by name, only if it still has the uid the plan saw. Gone is success.
    pub async fn delete_pod(&self, namespace: &str, pod: &PodRef) -> Result<(), Error> {
        self.gate()?;
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: Some(pod.uid.clone()), resource_version: None }),
            ..Default::default()
        };
        match api.delete(&pod.name, &dp).await {
            Ok(_) => Ok(()),
            // 404: already gone; 409: the precondition failed, so that pod is gone too.
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(()),
            Err(source) => Err(Error::DeletePod { name: pod.name.clone(), source }),
        }
    }

    /// Deletes a service by name. Gone is success.
    pub async fn delete_service(&self, namespace: &str, name: &str) -> Result<(), Error> {
        self.gate()?;
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(source) => Err(Error::DeleteService { name: name.into(), source }),
        }
    }

    /// Deletes the TFJob for its TTL, only if it is still the version the plan saw: a patch
    /// that lands first (a longer TTL) wins. Returns whether it was deleted.
    pub async fn delete_job(&self, job: &TFJob) -> Result<bool, Error> {
        self.gate()?;
        let dp = DeleteParams {
            preconditions: Some(Preconditions { uid: job.uid(), resource_version: job.resource_version() }),
            ..DeleteParams::background()
        };
        match self.jobs(job).delete(&job.name_any(), &dp).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(false),
            Err(source) => Err(Error::DeleteJob { job: job.name_any(), source }),
        }
    }

    /// Queues an event about the job: one new Event object per happening, never a series
    /// (the plan and the writes it makes decide when something happened), stamped now.
    pub async fn publish(&self, job: &TFJob, ev: &PlannedEvent) -> Result<(), Error> {
        self.gate()?;
        let now = Timestamp::now();
        let ns = job.namespace().unwrap_or_default();
        let mut note = ev.note.clone();
        if note.len() > 1000 {
            let mut cut = 1000;
            while !note.is_char_boundary(cut) {
                cut -= 1;
            }
            note.truncate(cut);
        }
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", job.name_any(), now.as_nanosecond())),
                namespace: Some(ns.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some("Reconcile".into()),
            reason: Some(ev.reason.clone()),
            note: Some(note),
            type_: Some(if ev.warning { "Warning" } else { "Normal" }.into()),
            regarding: Some(job.object_ref(&())),
            reporting_controller: Some(FIELD_MANAGER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.event_dropped();
                warn!(reason = %ev.reason, job = %job.name_any(), "the event queue is full: event dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
        Ok(())
    }
}

/// Publishes queued events, [`EVENTS_IN_FLIGHT`] at once, while this process leads. A failed
/// publish is logged; events are informational and never retried.
async fn publish_events(client: Client, health: Arc<Health>, rx: mpsc::Receiver<Event>) {
    let queue = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
    queue
        .for_each_concurrent(EVENTS_IN_FLIGHT, |event| {
            let (client, health) = (client.clone(), health.clone());
            async move {
                if !health.leading() {
                    return;
                }
                let api: Api<Event> =
                    Api::namespaced(client, event.metadata.namespace.as_deref().unwrap_or_default());
                if let Err(e) = api.create(&PostParams::default(), &event).await {
                    warn!(reason = ?event.reason, error = %api_message(&e), "publishing an event failed");
                }
            }
        })
        .await;
}
