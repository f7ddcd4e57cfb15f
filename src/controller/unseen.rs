//! Unseen writes: what the operator wrote that its caches have not shown yet (created and
//! deleted objects, and the last status it wrote). Overlaid on the caches, so a reconcile that
//! runs before the watch catches up neither creates, deletes nor announces anything twice.
//! Pure: the caller passes the time.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

use k8s_openapi::api::core::v1::{Pod, Service};

use super::books::PerJob;
use crate::api::TFJob;

/// How long an unseen write may wait for the cache before it is dropped anyway.
pub const UNSEEN_WRITE_EXPIRY: Duration = Duration::from_secs(60);

/// Every unseen write of the process.
#[derive(Debug, Default)]
pub struct UnseenWrites {
    pub pods: UnseenObjects<Pod>,
    pub services: UnseenObjects<Service>,
    /// Gang scheduling's PodGroups ([`crate::plan::gang`]).
    pub pod_groups: UnseenObjects<crate::api::PodGroup>,
    pub status: UnseenStatus,
}

/// Objects of one kind created or deleted by the operator.
#[derive(Debug)]
pub struct UnseenObjects<K> {
    created: HashMap<(String, String), (K, Instant)>,
    deleted: HashMap<String, Instant>,
}

impl<K> Default for UnseenObjects<K> {
    fn default() -> Self {
        UnseenObjects { created: HashMap::new(), deleted: HashMap::new() }
    }
}

fn key<K: Resource>(o: &K) -> (String, String) {
    (o.namespace().unwrap_or_default(), o.name_any())
}

impl<K: Resource + Clone> UnseenObjects<K> {
    /// Remembers an object the API server confirmed created (with its uid).
    pub fn created(&mut self, obj: K, now: Instant) {
        self.created.insert(key(&obj), (obj, now));
    }

    /// Remembers that the object with this uid was deleted.
    pub fn deleted(&mut self, uid: &str, now: Instant) {
        self.deleted.insert(uid.to_string(), now);
    }

    /// The cached objects with the unseen writes applied: created objects the cache lacks are
    /// added (replacing a stale cached object of the same name), and deleted objects the cache
    /// still shows as live are shown terminating. Entries the cache has caught up with, or
    /// older than [`UNSEEN_WRITE_EXPIRY`], are forgotten.
    /// `mine` picks the unseen creations that belong with `cached` (the same job's).
    pub fn view(&mut self, cached: &[Arc<K>], now: Instant, mine: impl Fn(&K) -> bool) -> Vec<K> {
        self.created.retain(|_, (_, at)| now.duration_since(*at) < UNSEEN_WRITE_EXPIRY);
        self.deleted.retain(|_, at| now.duration_since(*at) < UNSEEN_WRITE_EXPIRY);
        let mut out: Vec<K> = Vec::with_capacity(cached.len());
        for o in cached {
            let k = key(o.as_ref());
            if let Some((mine, _)) = self.created.get(&k) {
                if mine.uid() == o.uid() {
                    self.created.remove(&k);
                } else {
                    continue; // the cache still shows the object ours replaced
                }
            }
            let mut o = K::clone(o);
            if let Some(uid) = o.uid()
                && self.deleted.contains_key(&uid)
                && o.meta().deletion_timestamp.is_none()
            {
                o.meta_mut().deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
            }
            out.push(o);
        }
        out.extend(self.created.values().map(|(o, _)| o).filter(|o| mine(o)).cloned());
        out
    }
}

/// The last status the operator wrote per job, newer than the cache until it catches up; and
/// the jobs it found gone (deleted for their TTL, or answered 404), which a cache that has not
/// caught up yet must not bring back.
#[derive(Debug, Default)]
pub struct UnseenStatus {
    jobs: HashMap<String, (Arc<TFJob>, Instant)>,
    gone: HashMap<String, Instant>,
}

fn rv(job: &TFJob) -> Option<u64> {
    job.metadata.resource_version.as_deref()?.parse().ok()
}

impl UnseenStatus {
    /// Remembers the object the status write returned.
    pub fn wrote(&mut self, job: TFJob, now: Instant) {
        if let Some(uid) = job.uid() {
            self.jobs.insert(uid, (Arc::new(job), now));
        }
    }

    /// Remembers the job as read from the API server after a write was refused as stale:
    /// planned from until the cache shows it or a newer version, like a written one.
    pub fn read(&mut self, job: TFJob, now: Instant) {
        self.wrote(job, now);
    }

    /// The newer of the cached job and the one last written or read; `None` for a job found
    /// gone.
    pub fn view(&mut self, cached: Arc<TFJob>, now: Instant) -> Option<Arc<TFJob>> {
        self.gone.retain(|_, at| now.duration_since(*at) < UNSEEN_WRITE_EXPIRY);
        let Some(uid) = cached.uid() else { return Some(cached) };
        if self.gone.contains_key(&uid) {
            return None;
        }
        let Some((mine, at)) = self.jobs.get(&uid) else { return Some(cached) };
        match (rv(mine), rv(&cached)) {
            (Some(m), Some(c)) if m > c && now.duration_since(*at) < UNSEEN_WRITE_EXPIRY => {
                Some(mine.clone())
            }
            _ => {
                self.jobs.remove(&uid);
                Some(cached)
            }
        }
    }

    /// Forgets a job's last write (it is being deleted).
    pub fn forget(&mut self, uid: &str) {
        self.jobs.remove(uid);
    }

    /// Records that the job is gone: a stale cache shows it no more.
    pub fn gone(&mut self, uid: &str, now: Instant) {
        self.jobs.remove(uid);
        self.gone.insert(uid.to_string(), now);
    }

    /// Whether the job was found gone (deleted by its TTL, answered 404, or seen deleted).
    pub fn is_gone(&self, uid: &str) -> bool {
        self.gone.contains_key(uid)
    }
}

impl PerJob for UnseenStatus {
    #[cfg(test)]
    fn jobs(&self) -> HashSet<String> {
        self.jobs.keys().chain(self.gone.keys()).cloned().collect()
    }

    fn retain_jobs(&mut self, listed: &HashSet<String>) {
        self.jobs.retain(|uid, _| listed.contains(uid));
        self.gone.retain(|uid, _| listed.contains(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some(name.into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some(uid.into());
        p
    }

    fn names(v: &[Pod]) -> Vec<(String, String, bool)> {
        let mut out: Vec<_> = v
            .iter()
            .map(|p| (p.name_any(), p.uid().unwrap(), p.metadata.deletion_timestamp.is_some()))
            .collect();
        out.sort();
        out
    }

    #[test]
    fn created_objects_show_until_the_cache_has_them() {
        let t0 = Instant::now();
        let mut p = UnseenObjects::default();
        p.created(pod("a", "u1"), t0);
        assert_eq!(names(&p.view(&[], t0, |_| true)), [("a".into(), "u1".into(), false)]);
        // The cache shows an older pod of that name (being replaced): ours wins.
        let stale = Arc::new(pod("a", "old"));
        assert_eq!(
            names(&p.view(std::slice::from_ref(&stale), t0, |_| true)),
            [("a".into(), "u1".into(), false)]
        );
        // The cache catches up: the entry is dropped.
        let fresh = Arc::new(pod("a", "u1"));
        assert_eq!(
            names(&p.view(std::slice::from_ref(&fresh), t0, |_| true)),
            [("a".into(), "u1".into(), false)]
        );
        assert_eq!(names(&p.view(&[], t0, |_| true)), [], "forgotten once seen");
    }

    #[test]
    fn deleted_objects_show_terminating_and_entries_expire() {
        let t0 = Instant::now();
        let mut p = UnseenObjects::default();
        p.deleted("u1", t0);
        let cached = [Arc::new(pod("a", "u1")), Arc::new(pod("b", "u2"))];
        assert_eq!(
            names(&p.view(&cached, t0, |_| true)),
            [("a".into(), "u1".into(), true), ("b".into(), "u2".into(), false)]
        );
        let later = t0 + UNSEEN_WRITE_EXPIRY + Duration::from_secs(1);
        assert_eq!(
            names(&p.view(&cached, later, |_| true)),
            [("a".into(), "u1".into(), false), ("b".into(), "u2".into(), false)]
        );
        p.created(pod("c", "u3"), t0);
        assert_eq!(names(&p.view(&[], t0, |o| o.name_any() != "c")), [], "only the job's own creations");
        assert_eq!(names(&p.view(&[], later, |_| true)), [], "an unseen creation expires too");
    }

    #[test]
    fn written_status_wins_until_the_cache_is_as_new() {
        let t0 = Instant::now();
        let mut w = UnseenStatus::default();
        let mut cached = TFJob::new("j", Default::default());
        cached.metadata.uid = Some("u".into());
        cached.metadata.resource_version = Some("10".into());
        let mut mine = cached.clone();
        mine.metadata.resource_version = Some("12".into());
        w.wrote(mine, t0);
        let rv_of = |j: Option<Arc<TFJob>>| j.and_then(|j| j.metadata.resource_version.clone());
        assert_eq!(rv_of(w.view(Arc::new(cached.clone()), t0)).as_deref(), Some("12"));
        cached.metadata.resource_version = Some("12".into());
        assert_eq!(rv_of(w.view(Arc::new(cached.clone()), t0)).as_deref(), Some("12"));
        cached.metadata.resource_version = Some("11".into());
        assert_eq!(
            rv_of(w.view(Arc::new(cached.clone()), t0)).as_deref(),
            Some("11"),
            "forgotten once caught up"
        );
        // Gone: the cache's copy is not shown again until the record expires.
        w.gone("u", t0);
        assert!(w.is_gone("u") && !w.is_gone("v"));
        assert!(w.view(Arc::new(cached.clone()), t0 + Duration::from_secs(1)).is_none());
        assert!(w.view(Arc::new(cached), t0 + UNSEEN_WRITE_EXPIRY).is_some(), "a record expires");
    }
}
