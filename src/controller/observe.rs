//! Observe: the watches of the operator's pods and services (label-selected, slimmed,
//! indexed by owner), and what one reconcile sees of its job: the newer of the cached and the
//! last written TFJob, and its pods and services from the caches with the unseen writes
//! overlaid.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

use tracing::{info, warn};

use super::books::Forget;
use super::cached_job::{self, CachedJob};
use super::decode::JobEvent;
use super::index::{Owner, OwnerIndex};
use super::job_counting::JobCounting;
use super::reflect::InPlace;
use super::unseen::UnseenWrites;
use super::watch_backoff::WatchBackoff;
use crate::api::PodGroup;
use crate::api::TFJob;

use crate::metrics::Metrics;
use crate::names;

mod cached;
mod slim;
pub use cached::{CachedPod, CachedService};
pub use slim::Slim;

/// Objects per page of a watch's list: 50 pods as the API server sends them are some 900 KB
/// of text, held whole while they are decoded. A re-list runs beside a full cache, and its
/// pages are what it adds to the peak.
const LIST_PAGE_SIZE: u32 = 50;

/// The cached pods and services (compact: [`CachedPod`], [`CachedService`]), each with its
/// owner index.
pub struct Caches {
    pub pods: Store<CachedPod>,
    pub services: Store<CachedService>,
    pub pod_index: Arc<Mutex<OwnerIndex>>,
    pub service_index: Arc<Mutex<OwnerIndex>>,
    /// The PodGroups, with gang scheduling only.
    pub pod_groups: Option<(Store<PodGroup>, Arc<Mutex<OwnerIndex>>)>,
}

/// What one reconcile sees.
pub struct Observed {
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    /// The PodGroup the job controls (with gang scheduling), with the unseen writes overlaid.
    pub pod_group: Option<PodGroup>,
}

/// A label-selected, reflected watch of the operator's pods or services, slimmed (see
/// [`Slim`]; pods and services are slimmed as they are decoded into their compact cached
/// types), so memory does not grow with unrelated objects, and indexed by owner. It runs
/// on its own task, so the cache keeps filling while every reconcile slot is busy; the
/// controller gets only the owning TFJob's reference of each changed object, through a
/// channel.
///
/// A re-list (after a 410 Gone or an API server restart) updates the store in place
/// ([`InPlace`]: it never holds two copies of the cache), and its one owner index with it:
/// listed objects join it as they come, and what the list no longer shows leaves it when
/// the list is complete. Meanwhile no trigger is sent; then every job whose objects changed
/// (appeared, went away, or have a new version) is triggered once, to be planned against the
/// brought-up-to-date cache. Watch failures are logged at warn and counted in
/// `tfjob_operator_watch_restarts_total{resource}`.
pub fn owned_stream<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    index: Arc<Mutex<OwnerIndex>>,
    metrics: Arc<Metrics>,
    resource: &'static str,
) -> impl Stream<Item = ObjectRef<CachedJob>>
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
    let store = writer.as_reader();
    let mut cache = InPlace::new(writer);
    // Lists come in pages of 50 (kube's default is 500): a page is held whole before it is
    // slimmed, and a pod of a job at the maximum size carries a TF_CONFIG of some 50 KB.
    let cfg = watcher::Config::default()
        .labels(&names::operator_selector())
        .page_size(LIST_PAGE_SIZE)
        .timeout(crate::transport::WATCH_TIMEOUT_SECS);
    let stream = watcher(api, cfg).backoff(WatchBackoff::new()).modify(K::slim);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut lists = Lists::default();
        while let Some(event) = stream.next().await {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    metrics.watch_restarted(resource);
                    warn!(resource, error = %e, "the watch failed; it restarts with backoff");
                    continue;
                }
            };
            let mut triggers = lists.triggers(&event, &store, &index, resource);
            // The store follows once the event is read against what it held; what a re-list
            // removed leaves the owner index too.
            let gone = cache.apply(&event);
            if matches!(event, watcher::Event::InitDone) {
                triggers.extend(lists.complete(&gone, &index));
                if lists.done > 1 {
                    info!(resource, objects = store.len(), "re-list complete");
                }
            }
            for (ns, name) in triggers {
                if tx.unbounded_send(ObjectRef::new(&name).within(&ns)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// An owned watch's lists: how many began, and the owners whose objects the one in progress
/// found changed.
#[derive(Default)]
struct Lists {
    done: u64,
    changed: Option<BTreeSet<Owner>>,
}

impl Lists {
    /// The owners to trigger for `event`, read against the store before it is applied. The
    /// owner index follows in place, also during a list: a listed object is added to it at
    /// once (the store holds it from then on too), and what a re-list no longer shows leaves
    /// it when the list is complete ([`Lists::complete`]). So a re-list keeps one index, never
    /// a second one beside it. During a list nothing is triggered.
    fn triggers<K>(
        &mut self,
        event: &watcher::Event<K>,
        store: &Store<K>,
        index: &Mutex<OwnerIndex>,
        resource: &'static str,
    ) -> Vec<Owner>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        let index = || index.lock().unwrap_or_else(PoisonError::into_inner);
        match event {
            watcher::Event::Init => {
                self.done += 1;
                if self.done > 1 {
                    warn!(
                        resource,
                        "re-listing: the cache is brought up to date in place; triggers wait until the list is complete"
                    );
                }
                self.changed = Some(BTreeSet::new());
                Vec::new()
            }
            watcher::Event::InitApply(o) => {
                index().applied(o.meta());
                // The store still holds what the watch showed of it: a missing or other
                // version is a change the watch did not see.
                let before = store.get(&ObjectRef::from_obj(o)).and_then(|c| c.resource_version());
                if before != o.resource_version()
                    && let Some(owner) = owner_of(o.meta())
                {
                    self.changed.get_or_insert_with(BTreeSet::new).insert(owner);
                }
                Vec::new()
            }
            watcher::Event::InitDone => Vec::new(),
            watcher::Event::Apply(o) => {
                index().applied(o.meta());
                owner_of(o.meta()).into_iter().collect()
            }
            watcher::Event::Delete(o) => {
                index().deleted(o.meta());
                owner_of(o.meta()).into_iter().collect()
            }
        }
    }

    /// A list is complete and the store applied it: drops from the owner index what a re-list
    /// removed from the store (`gone`: deleted while the watch was down) and returns every job
    /// whose objects changed, once: appeared, went away, or have a new version.
    fn complete<K>(&mut self, gone: &[Arc<K>], index: &Mutex<OwnerIndex>) -> Vec<Owner>
    where
        K: Resource<DynamicType = ()>,
    {
        let mut changed = self.changed.take().unwrap_or_default();
        if !gone.is_empty() {
            let mut index = index.lock().unwrap_or_else(PoisonError::into_inner);
            for o in gone {
                index.deleted(o.meta());
                changed.extend(owner_of(o.meta()));
            }
        }
        changed.into_iter().collect()
    }
}

/// The (namespace, name) of the TFJob that controls an object, if one does.
fn owner_of(meta: &ObjectMeta) -> Option<Owner> {
    let owner = names::tfjob_controller(meta)?;
    Some((meta.namespace.clone()?, owner.name.clone()))
}

/// The TFJob watch as the controller's trigger stream: every changed job, and after a re-list
/// every listed job, once the new list is complete (a job created while the watch was down
/// is then found). `books` drops the bookkeeping of each job the watch sees deleted and, once
/// a re-list is complete, of every job it no longer shows (deleted while the watch was down).
/// A job that cannot be decoded ([`JobEvent::Undecodable`]) triggers nothing, but counts as
/// listed: it still exists. Failures are logged at warn and counted. Kubeflow's job counters
/// are moved here, from the changes the watch shows (see [`super::job_counting::JobCounting`]); the past of the
/// jobs in the first list that completes is not counted, also when earlier attempts failed.
/// `fresh` is true while the job cache follows the API server (false from a watch failure or
/// the start of a re-list until the list is complete). Watch failures are not passed on.
pub fn job_triggers(
    stream: impl Stream<Item = Result<JobEvent, watcher::Error>> + Send + 'static,
    store: Store<CachedJob>,
    metrics: Arc<Metrics>,
    counting: Arc<JobCounting>,
    fresh: Arc<AtomicBool>,
    books: impl Forget + Send + 'static,
) -> impl Stream<Item = Result<CachedJob, watcher::Error>> + Send {
    let mut listed: Option<Vec<ObjectRef<CachedJob>>> = None;
    // A list has completed: a later one is a re-list.
    let mut listed_once = false;
    let mut listed_uids = HashSet::new();
    stream.flat_map(move |event| {
        let out: Vec<Result<CachedJob, watcher::Error>> = match event {
            Err(e) => {
                fresh.store(false, Ordering::SeqCst);
                metrics.watch_restarted("tfjobs");
                warn!(resource = "tfjobs", error = %e, "the watch failed; it restarts with backoff");
                // Not passed on: the controller would back its triggers off for up to a minute
                // on top of the watch's own backoff (kube's `trigger_backoff`).
                vec![]
            }
            Ok(JobEvent::Watch(watcher::Event::Init)) => {
                if listed_once {
                    warn!(resource = "tfjobs", "re-listing TFJobs");
                }
                fresh.store(false, Ordering::SeqCst);
                listed = Some(Vec::new());
                listed_uids.clear();
                vec![]
            }
            Ok(JobEvent::Watch(watcher::Event::InitApply(j))) => {
                counting.observed(&j, !listed_once);
                listed_uids.insert(j.uid().unwrap_or_default());
                listed.get_or_insert_with(Vec::new).push(cached_job::key(&j));
                vec![]
            }
            Ok(JobEvent::Undecodable { meta, listed: in_list, .. }) => {
                if in_list {
                    listed_uids.insert(meta.uid.unwrap_or_default());
                } else {
                    fresh.store(true, Ordering::SeqCst);
                }
                vec![]
            }
            Ok(JobEvent::Watch(watcher::Event::InitDone)) => {
                fresh.store(true, Ordering::SeqCst);
                let uids = std::mem::take(&mut listed_uids);
                counting.relisted(&uids);
                books.relisted(&uids);
                if listed_once {
                    info!(resource = "tfjobs", objects = uids.len(), "re-list complete");
                }
                listed_once = true;
                listed
                    .take()
                    .unwrap_or_default()
                    .iter()
                    .filter_map(|r| store.get(r))
                    .map(|j| Ok(CachedJob::clone(&j)))
                    .collect()
            }
            Ok(JobEvent::Watch(watcher::Event::Apply(j))) => {
                fresh.store(true, Ordering::SeqCst);
                counting.observed(&j, false);
                // The copy the job watch stored a moment ago (its body encoded once, there),
                // or the job itself when the store has none.
                let stored = store.get(&cached_job::key(&j)).map(|c| CachedJob::clone(&c));
                vec![Ok(stored.unwrap_or_else(|| CachedJob::new(&j)))]
            }
            Ok(JobEvent::Watch(watcher::Event::Delete(j))) => {
                let uid = j.uid().unwrap_or_default();
                counting.gone(&uid);
                books.deleted(&uid);
                vec![]
            }
        };
        futures::stream::iter(out)
    })
}

/// The cached objects the index lists for `uid` (an entry the store lacks for a moment, while
/// the watch task catches up, is skipped).
fn cached_owned_by<K>(store: &Store<K>, index: &Mutex<OwnerIndex>, uid: &str) -> Vec<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let keys = index.lock().unwrap_or_else(PoisonError::into_inner).owned(uid);
    keys.iter().filter_map(|(ns, name)| store.get(&ObjectRef::new(name).within(ns))).collect()
}

/// The newer of the cached job and the one this process last wrote; `None` for a job this
/// process found gone, which a stale cache still shows.
pub fn job(unseen: &Mutex<UnseenWrites>, cached: Arc<TFJob>, now: Instant) -> Option<Arc<TFJob>> {
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
        .filter(|p| owned(p.meta()))
        .map(|p| Arc::new(p.to_pod()))
        .collect();
    let cached_svcs: Vec<Arc<Service>> = cached_owned_by(&caches.services, &caches.service_index, &uid)
        .into_iter()
        .filter(|s| owned(s.meta()))
        .map(|s| Arc::new(s.to_service()))
        .collect();
    let cached_groups: Vec<Arc<PodGroup>> = match &caches.pod_groups {
        Some((store, index)) => {
            cached_owned_by(store, index, &uid).into_iter().filter(|g| owned(&g.metadata)).collect()
        }
        None => Vec::new(),
    };
    let mut u = unseen.lock().unwrap_or_else(PoisonError::into_inner);
    Observed {
        pods: u.pods.view(&cached_pods, now, |o| owned(&o.metadata)),
        services: u.services.view(&cached_svcs, now, |o| owned(&o.metadata)),
        pod_group: match caches.pod_groups {
            Some(_) => u.pod_groups.view(&cached_groups, now, |o| owned(&o.metadata)).into_iter().next(),
            None => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use watcher::Event::*;

    fn pod(name: &str, job: &str, rv: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("ns".into()),
                resource_version: Some(rv.into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: names::API_VERSION.into(),
                    kind: names::KIND.into(),
                    name: job.into(),
                    uid: format!("uid-{job}"),
                    controller: Some(true),
                    block_owner_deletion: None,
                }]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// One event through the watch task's steps: triggers, the store, the list's end.
    fn step(
        lists: &mut Lists,
        cache: &mut InPlace<Pod>,
        store: &Store<Pod>,
        index: &Mutex<OwnerIndex>,
        event: watcher::Event<Pod>,
    ) -> Vec<String> {
        let mut triggers = lists.triggers(&event, store, index, "pods");
        let gone = cache.apply(&event);
        if matches!(event, InitDone) {
            triggers.extend(lists.complete(&gone, index));
        }
        triggers.into_iter().map(|(_, name)| name).collect()
    }

    fn owned(index: &Mutex<OwnerIndex>, job: &str) -> Vec<String> {
        index.lock().unwrap().owned(&format!("uid-{job}")).into_iter().map(|(_, n)| n).collect()
    }

    #[test]
    fn a_relist_keeps_one_owner_index_and_triggers_each_changed_job_once() {
        let (store, writer) = reflector::store::<Pod>();
        let mut cache = InPlace::new(writer);
        let index = Mutex::new(OwnerIndex::default());
        let mut lists = Lists::default();
        let first = [
            Init,
            InitApply(pod("a-0", "a", "1")),
            InitApply(pod("b-0", "b", "1")),
            InitApply(pod("c-0", "c", "1")),
        ];
        for e in first {
            assert!(
                step(&mut lists, &mut cache, &store, &index, e).is_empty(),
                "nothing is triggered during a list"
            );
        }
        assert_eq!(
            step(&mut lists, &mut cache, &store, &index, InitDone),
            ["a", "b", "c"],
            "the first list triggers every job"
        );
        assert_eq!(step(&mut lists, &mut cache, &store, &index, Apply(pod("a-1", "a", "2"))), ["a"]);
        // Down: b-0 changed, c-0 was deleted, d-0 is new; a is as the watch last showed it.
        assert!(step(&mut lists, &mut cache, &store, &index, Init).is_empty());
        for e in [
            InitApply(pod("a-0", "a", "1")),
            InitApply(pod("a-1", "a", "2")),
            InitApply(pod("b-0", "b", "3")),
            InitApply(pod("d-0", "d", "3")),
        ] {
            assert!(step(&mut lists, &mut cache, &store, &index, e).is_empty());
        }
        assert_eq!(owned(&index, "c"), ["c-0"], "what the list has not shown yet stays until it is complete");
        assert_eq!(owned(&index, "d"), ["d-0"], "a listed object joins the index at once");
        assert_eq!(
            step(&mut lists, &mut cache, &store, &index, InitDone),
            ["b", "c", "d"],
            "each changed job once"
        );
        assert!(owned(&index, "c").is_empty(), "a deleted object leaves the index");
        assert_eq!(owned(&index, "a"), ["a-0", "a-1"]);
        assert_eq!(store.len(), 4);
        assert_eq!(step(&mut lists, &mut cache, &store, &index, Delete(pod("a-0", "a", "4"))), ["a"]);
        assert_eq!(owned(&index, "a"), ["a-1"]);
    }
}
