//! The per-job bookkeeping the controller keeps between reconciles, by job uid, and the one
//! rule that bounds it: a job's entries go when the watch shows it deleted, and, for a job
//! deleted while the watch was down, when a re-list no longer shows it ([`PerJob`],
//! [`Forget`]). Its tests include the job counters' across list failures.

use std::collections::HashSet;

/// A map kept per job (by uid).
pub trait PerJob {
    /// The jobs it holds something for.
    #[cfg(test)]
    fn jobs(&self) -> HashSet<String>;
    /// Drops everything kept for a job not in `listed` (a complete re-list shows no more).
    fn retain_jobs(&mut self, listed: &HashSet<String>);
}

/// Drops the bookkeeping of jobs that are gone (the TFJob watch calls it).
pub trait Forget {
    /// The watch saw the job with this uid deleted.
    fn deleted(&self, uid: &str);
    /// A re-list is complete and shows the jobs `listed` (uids) only.
    fn relisted(&self, listed: &HashSet<String>);
}

impl<T: Forget + ?Sized> Forget for std::sync::Arc<T> {
    fn deleted(&self, uid: &str) {
        T::deleted(self, uid);
    }

    fn relisted(&self, listed: &HashSet<String>) {
        T::relisted(self, listed);
    }
}

/// The create and reconcile backoffs.
impl PerJob for super::backoff::Backoffs {
    #[cfg(test)]
    fn jobs(&self) -> HashSet<String> {
        self.creates.keys().chain(self.errors.keys()).cloned().collect()
    }

    fn retain_jobs(&mut self, listed: &HashSet<String>) {
        self.creates.retain(|uid, _| listed.contains(uid));
        self.errors.retain(|uid, _| listed.contains(uid));
    }
}

/// Kubeflow's job counters: what was seen of each job, and the TTL deletions on their way.
impl PerJob for crate::metrics::jobs::JobCounter {
    #[cfg(test)]
    fn jobs(&self) -> HashSet<String> {
        crate::metrics::jobs::JobCounter::jobs(self)
    }

    fn retain_jobs(&mut self, listed: &HashSet<String>) {
        crate::metrics::jobs::JobCounter::retain_jobs(self, listed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use futures::StreamExt;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use k8s_openapi::jiff::Timestamp;
    use kube::ResourceExt;
    use kube::runtime::{reflector, watcher};

    use super::*;
    use crate::api::{ConditionType, TFJob, TFJobStatus};
    use crate::controller::backoff::{Backoffs, CreateBackoff, CreateBackoffChange};
    use crate::controller::decode::JobEvent;
    use crate::controller::job_counting::JobCounting;
    use crate::controller::observe::job_triggers;
    use crate::controller::status_writes::StatusWrites;
    use crate::controller::unseen::UnseenStatus;
    use crate::leader::Gate;
    use crate::metrics::Metrics;
    use crate::metrics::jobs::JobCounter;

    fn set(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn job(uid: &str) -> TFJob {
        let mut j = TFJob::new(uid, Default::default());
        j.metadata.uid = Some(uid.into());
        j.metadata.resource_version = Some("5".into());
        j
    }

    /// Every per-job map of the controller, each holding entries for jobs a, b and c; a
    /// re-list that shows only a leaves a in each, and nothing of b or c.
    #[test]
    fn a_relist_drops_every_map_entry_of_the_jobs_it_no_longer_shows() {
        let t0 = Instant::now();
        let mut unseen = UnseenStatus::default();
        let mut backoffs = Backoffs::default();
        let mut status_writes = StatusWrites::default();
        let mut counter = JobCounter::default();
        let mut created = TFJobStatus::default();
        crate::plan::set(
            &mut created,
            ConditionType::Created,
            "TFJobCreated",
            String::new(),
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        );
        for uid in ["a", "b", "c"] {
            unseen.wrote(job(uid), t0);
            backoffs.change_create(uid, CreateBackoffChange::Set(CreateBackoff::after_refusal(None, t0)));
            status_writes.wrote(uid, t0);
            counter.observed(uid, Some(&created), false);
        }
        // b only failed a reconcile, and c was found gone by a request.
        backoffs.change_create("b", CreateBackoffChange::Clear);
        backoffs.failed("b");
        unseen.gone("c", t0);
        let maps: [(&str, &mut dyn PerJob); 4] = [
            ("UnseenStatus", &mut unseen),
            ("Backoffs", &mut backoffs),
            ("StatusWrites", &mut status_writes),
            ("JobCounter", &mut counter),
        ];
        for (name, map) in maps {
            assert_eq!(map.jobs(), set(&["a", "b", "c"]), "{name} before");
            map.retain_jobs(&set(&["a"]));
            assert_eq!(map.jobs(), set(&["a"]), "{name} after the re-list");
            map.retain_jobs(&set(&[]));
            assert_eq!(map.jobs(), set(&[]), "{name} after a re-list that shows nothing");
        }
    }

    /// A job whose status shows it created.
    fn created(uid: &str) -> TFJob {
        let mut j = job(uid);
        let mut st = TFJobStatus::default();
        crate::plan::set(
            &mut st,
            ConditionType::Created,
            "TFJobCreated",
            String::new(),
            Timestamp::UNIX_EPOCH,
        );
        j.status = Some(st);
        j
    }

    fn created_total(m: &Metrics) -> f64 {
        m.encode()
            .lines()
            .filter(|l| l.starts_with("training_operator_jobs_created_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// What the watch asked `books` to forget.
    #[derive(Clone, Default)]
    struct Recorded(Arc<Mutex<Vec<String>>>);

    impl Forget for Recorded {
        fn deleted(&self, uid: &str) {
            self.0.lock().unwrap().push(format!("deleted {uid}"));
        }

        fn relisted(&self, listed: &HashSet<String>) {
            let mut l: Vec<&str> = listed.iter().map(String::as_str).collect();
            l.sort();
            self.0.lock().unwrap().push(format!("relisted {}", l.join(",")));
        }
    }

    /// Runs `events` through [`job_triggers`] with counters open; returns the metrics, what
    /// was forgotten and the triggered job names.
    fn run_triggers(
        events: Vec<Result<JobEvent, watcher::Error>>,
    ) -> (Arc<Metrics>, Vec<String>, Vec<String>) {
        let gate = Gate::always_open();
        let metrics = Arc::new(Metrics::new(&gate));
        let counting = Arc::new(JobCounting::new(gate, metrics.clone()));
        let (store, _writer) = reflector::store::<crate::controller::cached_job::CachedJob>();
        let books = Recorded::default();
        let stream = job_triggers(
            futures::stream::iter(events),
            store,
            metrics.clone(),
            counting,
            Arc::default(),
            books.clone(),
        );
        let out: Vec<String> = futures::executor::block_on(stream.collect::<Vec<_>>())
            .into_iter()
            .map(|r| r.map_or_else(|e| format!("error {e}"), |j| j.name_any()))
            .collect();
        let forgotten = books.0.lock().unwrap().clone();
        (metrics, forgotten, out)
    }

    fn succeeded(uid: &str) -> TFJob {
        let mut j = created(uid);
        if let Some(st) = j.status.as_mut() {
            crate::plan::set(
                st,
                ConditionType::Succeeded,
                "TFJobSucceeded",
                "done".into(),
                Timestamp::UNIX_EPOCH,
            );
        }
        j
    }

    /// A new leader whose first TFJob list fails (a 429): kube's watcher starts the list again
    /// with `Init`. The jobs of the list that completes were counted by the leader before.
    #[test]
    fn a_failed_first_list_counts_nothing_twice() {
        use watcher::Event::*;
        let refused = kube::Error::Api(
            kube::core::Status::failure("slow down", "TooManyRequests").with_code(429).boxed(),
        );
        let events = vec![
            Ok(JobEvent::Watch(Init)),
            Err(watcher::Error::InitialListFailed(refused)),
            Ok(JobEvent::Watch(Init)),
            Ok(JobEvent::Watch(InitApply(succeeded("done")))),
            Ok(JobEvent::Watch(InitDone)),
        ];
        let (metrics, _, triggered) = run_triggers(events);
        assert!(triggered.is_empty(), "the failure is not passed on to the controller: {triggered:?}");
        let text = metrics.encode();
        for name in ["training_operator_jobs_created_total{", "training_operator_jobs_successful_total{"] {
            assert!(!text.contains(name), "{name} counted:\n{text}");
        }
    }

    /// A reconcile found the job gone (404); the watch then still delivers an older change of
    /// it: nothing is counted again.
    #[test]
    fn a_change_delivered_after_the_job_was_found_gone_counts_nothing() {
        let gate = Gate::always_open();
        let metrics = Arc::new(Metrics::new(&gate));
        let counting = JobCounting::new(gate, metrics.clone());
        let j = created("a");
        counting.observed(&j, false);
        assert_eq!(created_total(&metrics), 1.0);
        counting.found_gone("a");
        counting.observed(&j, false);
        assert_eq!(created_total(&metrics), 1.0, "the stale change counted again");
        // The watch then shows it deleted: it is forgotten, and a new job of that name counts.
        counting.gone("a");
        counting.observed(&created("a2"), false);
        assert_eq!(created_total(&metrics), 2.0);
    }

    /// Jobs deleted while the watch was down are forgotten once the re-list is complete; a
    /// job that cannot be decoded still exists and keeps its bookkeeping; the watch's deletes
    /// are forgotten at once.
    #[test]
    fn a_relist_forgets_the_jobs_it_no_longer_shows() {
        use watcher::Event::*;
        let bad = |listed| {
            let meta = ObjectMeta { uid: Some("c".into()), name: Some("c".into()), ..Default::default() };
            Ok(JobEvent::Undecodable { meta, error: "invalid value".into(), listed })
        };
        let events = vec![
            Ok(JobEvent::Watch(Init)),
            Ok(JobEvent::Watch(InitApply(created("a")))),
            Ok(JobEvent::Watch(InitApply(created("b")))),
            bad(true),
            Ok(JobEvent::Watch(InitDone)),
            Ok(JobEvent::Watch(Apply(created("b")))),
            bad(false),
            Ok(JobEvent::Watch(Init)),
            Ok(JobEvent::Watch(InitApply(created("a")))),
            bad(true),
            Ok(JobEvent::Watch(InitDone)),
            Ok(JobEvent::Watch(Delete(created("a")))),
        ];
        let (_, forgotten, triggered) = run_triggers(events);
        assert_eq!(forgotten, ["relisted a,b,c", "relisted a,c", "deleted a"]);
        assert_eq!(triggered, ["b"], "an undecodable job triggers nothing");
    }
}
