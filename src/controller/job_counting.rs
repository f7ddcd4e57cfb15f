//! Kubeflow's job counters (`training_operator_jobs_*_total`) and milestones, counted once
//! per change of a job from the watch and from this process's own status writes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kube::ResourceExt;

use crate::api::{TFJob, TFJobStatus};
use crate::leader::Gate;
use crate::metrics::JobCount;
use crate::metrics::Metrics;
use crate::metrics::jobs::{DeleteAnswer, JobCounter};

/// Kubeflow's job counters, moved while this process leads by each change of a job, whether
/// the watch shows it or this process's own status write does (whichever comes first: a write
/// whose answer was lost is still seen by the watch, and a job whose whole life fell in a
/// watch gap is still seen by its writes). The counter remembers the last of either per job,
/// so nothing is counted twice.
pub struct JobCounting {
    counter: Mutex<JobCounter>,
    gate: Gate,
    metrics: Arc<Metrics>,
}

impl JobCounting {
    pub fn new(gate: Gate, metrics: Arc<Metrics>) -> JobCounting {
        JobCounting { counter: Mutex::default(), gate, metrics }
    }

    /// Counts what the job's status shows; a job another controller runs (MultiKueue copies
    /// its status here from the worker cluster) is not this operator's to count.
    pub fn observed(&self, job: &TFJob, first_list: bool) {
        self.count(job, job.status.as_ref(), first_list);
    }

    /// Counts a status this process has just written for `job`.
    pub fn wrote(&self, job: &TFJob, status: &TFJobStatus) {
        self.count(job, Some(status), false);
    }

    fn count(&self, job: &TFJob, status: Option<&TFJobStatus>, first_list: bool) {
        if job.spec.managed_elsewhere().is_some() {
            return;
        }
        let uid = job.uid().unwrap_or_default();
        let (moved, reached) = self
            .counter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observed_all(&uid, status, first_list);
        if self.gate.is_open() {
            let ns = job.namespace().unwrap_or_default();
            for c in moved {
                self.metrics.job(&ns, c);
            }
            let created = job.metadata.creation_timestamp.as_ref();
            for (m, seconds) in reached.into_iter().filter_map(|m| Some((m, m.seconds(created, status?)?))) {
                self.metrics.reached(&ns, m, seconds);
            }
        }
    }

    fn counter(&self) -> MutexGuard<'_, JobCounter> {
        self.counter.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn count_deleted(&self, namespace: Option<String>) {
        if let Some(ns) = namespace
            && self.gate.is_open()
        {
            self.metrics.job(&ns, JobCount::Deleted);
        }
    }

    /// This process sends the TTL delete of `job`.
    pub fn delete_sent(&self, job: &TFJob) {
        self.counter().delete_sent(&job.uid().unwrap_or_default(), &job.namespace().unwrap_or_default());
    }

    /// The answer to the TTL delete of `job`; a deletion counts once, also when its answer
    /// was lost and the job's disappearance tells instead.
    pub fn delete_answered(&self, job: &TFJob, answer: DeleteAnswer) {
        let ns = self.counter().delete_answered(&job.uid().unwrap_or_default(), answer);
        self.count_deleted(ns);
    }

    /// The watch saw the job deleted.
    pub fn gone(&self, uid: &str) {
        let ns = self.counter().gone(uid);
        self.count_deleted(ns);
    }

    /// A request found the job missing: what was seen of it stays until the watch shows it
    /// deleted, so an older change the watch still delivers counts nothing again.
    pub fn found_gone(&self, uid: &str) {
        let ns = self.counter().found_gone(uid);
        self.count_deleted(ns);
    }

    /// A re-list is complete and shows the jobs with the uids `listed`.
    pub fn relisted(&self, listed: &HashSet<String>) {
        let gone = self.counter().relisted(listed);
        for ns in gone {
            self.count_deleted(Some(ns));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConditionType, RunPolicy, TFJobSpec};
    use crate::plan::{self, REASON_CREATED};

    fn job(uid: &str, managed_by: Option<&str>) -> TFJob {
        let spec = TFJobSpec {
            run_policy: Some(RunPolicy { managed_by: managed_by.map(String::from), ..Default::default() }),
            ..Default::default()
        };
        let mut j = TFJob::new(uid, spec);
        j.metadata.namespace = Some("ns".into());
        j.metadata.uid = Some(uid.into());
        let mut st = TFJobStatus::default();
        plan::set(
            &mut st,
            ConditionType::Created,
            REASON_CREATED,
            "c".into(),
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        );
        j.status = Some(st);
        j
    }

    #[test]
    fn jobs_run_elsewhere_are_not_counted() {
        let gate = Gate::always_open();
        let metrics = Arc::new(Metrics::new(&gate));
        let counting = JobCounting::new(gate, metrics.clone());
        counting.observed(&job("remote", Some("kueue.x-k8s.io/multikueue")), false);
        assert!(!metrics.encode().contains("training_operator_jobs_created_total{"), "{}", metrics.encode());
        counting.observed(&job("local", Some("kubeflow.org/training-operator")), false);
        assert!(metrics.encode().contains("training_operator_jobs_created_total{"), "{}", metrics.encode());
    }

    #[test]
    fn a_change_seen_by_the_watch_and_written_is_counted_once() {
        let gate = Gate::always_open();
        let metrics = Arc::new(Metrics::new(&gate));
        let counting = JobCounting::new(gate, metrics.clone());
        let created = |m: &Metrics| {
            m.encode()
                .lines()
                .filter(|l| l.starts_with("training_operator_jobs_created_total{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
        };
        let fresh = job("a", None);
        let mut bare = fresh.clone();
        bare.status = None;
        counting.observed(&bare, false);
        counting.wrote(&bare, fresh.status.as_ref().unwrap());
        counting.observed(&fresh, false);
        assert_eq!(created(&metrics), 1.0, "the write, then the watch: once");
        // A job whose whole life fell in a watch gap: only its writes are seen.
        let gap = job("b", None);
        counting.wrote(&gap, gap.status.as_ref().unwrap());
        assert_eq!(created(&metrics), 2.0);
        // A write whose answer was lost: only the watch sees it.
        let lost = job("c", None);
        let mut lost_bare = lost.clone();
        lost_bare.status = None;
        counting.observed(&lost_bare, false);
        counting.observed(&lost, false);
        assert_eq!(created(&metrics), 3.0);
    }
}
