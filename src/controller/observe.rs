//! Observe: the watches of the operator's pods and services (label-selected, slimmed,
//! indexed by owner), and what one reconcile sees of its job: the newer of the cached and the
//! last written TFJob, and its pods and services from the caches with the unseen writes
//! overlaid.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use super::index::OwnerIndex;
use super::unseen::UnseenWrites;
use crate::api::TFJob;
use crate::names;

/// Keeps in a cached object only what planning reads, so the caches stay small: metadata
/// without managedFields and annotations, and a pod's status. Specs are dropped.
pub trait Slim {
    fn slim(&mut self);
}

impl Slim for Pod {
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
        self.spec = None;
    }
}

impl Slim for Service {
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
        self.spec = None;
        self.status = None;
    }
}

/// The cached pods and services, each with its owner index.
pub struct Caches {
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub pod_index: Arc<Mutex<OwnerIndex>>,
    pub service_index: Arc<Mutex<OwnerIndex>>,
}

/// What one reconcile sees.
pub struct Observed {
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
}

/// The TFJob that controls an object, if one does.
fn controller_of(meta: &ObjectMeta) -> Option<ObjectRef<TFJob>> {
    let owner = names::tfjob_controller(meta)?;
    Some(ObjectRef::new(&owner.name).within(meta.namespace.as_deref()?))
}

/// A label-selected, reflected watch of the operator's pods or services, slimmed (see
/// [`Slim`]), so memory does not grow with unrelated objects, and indexed by owner. It runs
/// on its own task, so the cache keeps filling while every reconcile slot is busy; the
/// controller gets only the owning TFJob's reference of each changed object, through a
/// channel.
pub fn owned_stream<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    index: Arc<Mutex<OwnerIndex>>,
) -> impl Stream<Item = ObjectRef<TFJob>>
where
    K: Resource<DynamicType = ()>
        + Slim
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let cfg = watcher::Config::default().labels(&names::operator_selector());
    let stream = watcher(api, cfg).default_backoff().modify(K::slim).reflect(writer);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // Watch errors are retried with backoff inside the stream.
        while let Some(event) = stream.next().await {
            let (obj, deleted) = match &event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
                Ok(watcher::Event::Delete(o)) => (o, true),
                _ => continue,
            };
            {
                let mut ix = index.lock().unwrap_or_else(PoisonError::into_inner);
                if deleted { ix.deleted(obj.meta()) } else { ix.applied(obj.meta()) }
            }
            let Some(owner) = controller_of(obj.meta()) else { continue };
            if tx.unbounded_send(owner).is_err() {
                break;
            }
        }
    });
    rx
}

/// The cached objects the index lists for `uid`; keys the cache no longer has are dropped.
fn cached_owned_by<K>(store: &Store<K>, index: &Mutex<OwnerIndex>, uid: &str) -> Vec<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut ix = index.lock().unwrap_or_else(PoisonError::into_inner);
    let mut out = Vec::new();
    for key in ix.owned(uid) {
        match store.get(&ObjectRef::new(&key.1).within(&key.0)) {
            Some(o) => out.push(o),
            None => ix.remove(uid, &key),
        }
    }
    out
}

/// The newer of the cached job and the one this process last wrote.
pub fn job(unseen: &Mutex<UnseenWrites>, cached: Arc<TFJob>, now: Instant) -> Arc<TFJob> {
    unseen.lock().unwrap_or_else(PoisonError::into_inner).status.view(cached, now)
}

/// The pods and services `job` controls, with the unseen writes overlaid.
pub fn owned(caches: &Caches, unseen: &Mutex<UnseenWrites>, job: &TFJob, now: Instant) -> Observed {
    let (ns, uid) = (job.namespace().unwrap_or_default(), job.uid().unwrap_or_default());
    let owned = |meta: &ObjectMeta| {
        meta.namespace.as_deref() == Some(ns.as_str()) && names::controlled_by(meta, &uid)
    };
    let cached_pods: Vec<Arc<Pod>> = cached_owned_by(&caches.pods, &caches.pod_index, &uid)
        .into_iter()
        .filter(|p| owned(&p.metadata))
        .collect();
    let cached_svcs: Vec<Arc<Service>> = cached_owned_by(&caches.services, &caches.service_index, &uid)
        .into_iter()
        .filter(|s| owned(&s.metadata))
        .collect();
    let mut u = unseen.lock().unwrap_or_else(PoisonError::into_inner);
    Observed {
        pods: u.pods.view(&cached_pods, now, |o| owned(&o.metadata)),
        services: u.services.view(&cached_svcs, now, |o| owned(&o.metadata)),
    }
}
