//! Which of Kubeflow's job counters a job's change moves, counted from every sighting of the
//! job's status: the TFJob watch's and this process's own writes' (an API server that dies
//! mid-request loses the response of a write that landed; a watch gap hides a whole short
//! job). Pure: [`moved`] compares two observations; [`JobCounter`] remembers the last one per
//! job. Each change is counted once however often the job is
//! reconciled or written, and what happened before a process started watching is not counted
//! again by it (a restarted operator or a new leader).

use std::collections::{HashMap, HashSet};

use crate::api::TFJobStatus;

use super::milestones::{Milestone, reached};
pub use super::seen::Seen;

/// One of Kubeflow's job counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobCount {
    Created = 0,
    Successful = 1,
    Failed = 2,
    Restarted = 3,
    Deleted = 4,
}

impl JobCount {
    pub const ALL: [JobCount; 5] =
        [JobCount::Created, JobCount::Successful, JobCount::Failed, JobCount::Restarted, JobCount::Deleted];

    /// The metric's name without `_total` (the encoder appends it).
    pub fn metric_name(self) -> &'static str {
        match self {
            JobCount::Created => "training_operator_jobs_created",
            JobCount::Successful => "training_operator_jobs_successful",
            JobCount::Failed => "training_operator_jobs_failed",
            JobCount::Restarted => "training_operator_jobs_restarted",
            JobCount::Deleted => "training_operator_jobs_deleted",
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            JobCount::Created => "TFJobs the operator started (their Created condition written)",
            JobCount::Successful => "TFJobs that succeeded",
            JobCount::Failed => "TFJobs that failed",
            JobCount::Restarted => "TFJobs that restarted a replica at least once (each job once)",
            JobCount::Deleted => "TFJobs the operator deleted for ttlSecondsAfterFinished",
        }
    }
}

/// The counters that going from `before` to `after` moves.
pub fn moved(before: Seen, after: Seen) -> Vec<JobCount> {
    [
        (before.created, after.created, JobCount::Created),
        (before.succeeded, after.succeeded, JobCount::Successful),
        (before.failed, after.failed, JobCount::Failed),
        (before.restarted, after.restarted, JobCount::Restarted),
    ]
    .into_iter()
    .filter(|(was, is, _)| *is && !*was)
    .map(|(_, _, count)| count)
    .collect()
}

/// What became of a TTL delete request this process sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteAnswer {
    /// The API server deleted the job.
    Deleted,
    /// The job was not found.
    NotFound,
    /// Refused (the job changed since it was read, or another 4xx): it was not deleted.
    Refused,
    /// No answer (the connection broke, a timeout, a 5xx): the job may or may not be gone.
    NoAnswer,
}

/// This process's TTL deletion of one job, until the job is known gone and counted.
#[derive(Clone, Debug)]
struct Deleting {
    namespace: String,
    /// A request is on its way.
    in_flight: bool,
    /// An earlier request got no answer: it may have deleted the job.
    unanswered: bool,
    /// `training_operator_jobs_deleted` has counted the job.
    counted: bool,
}

/// The last observation of every job, by uid, and the TTL deletions on their way.
#[derive(Debug, Default)]
pub struct JobCounter {
    seen: HashMap<String, Seen>,
    deleting: HashMap<String, Deleting>,
}

impl JobCounter {
    /// A job as the watch shows it; returns the counters its change moves. `first_list`: part
    /// of the process's first list of jobs, whose past is not counted (a restarted operator
    /// or a new leader counts nothing again). A job first seen later (created since, or during
    /// a watch gap) counts from nothing.
    ///
    /// What was seen once stays seen: a status older than one already counted (the watch still
    /// delivering the versions before this process's own write, or a re-list served from a
    /// lagging cache) moves nothing, and does not let the newer status count a second time.
    pub fn observed(&mut self, uid: &str, status: Option<&TFJobStatus>, first_list: bool) -> Vec<JobCount> {
        self.observed_all(uid, status, first_list).0
    }

    /// [`JobCounter::observed`], with the [`Milestone`]s the job reached, by the same rules.
    pub fn observed_all(
        &mut self,
        uid: &str,
        status: Option<&TFJobStatus>,
        first_list: bool,
    ) -> (Vec<JobCount>, Vec<Milestone>) {
        let now = Seen::of(status);
        let before = match self.seen.get_mut(uid) {
            Some(before) => std::mem::replace(before, before.with(now)),
            None => {
                self.seen.insert(uid.to_string(), now);
                if first_list { now } else { Seen::default() }
            }
        };
        (moved(before, now), reached(before, now))
    }

    /// This process sends a TTL delete of the job.
    pub fn delete_sent(&mut self, uid: &str, namespace: &str) {
        let d = self.deleting.entry(uid.to_string()).or_insert_with(|| Deleting {
            namespace: namespace.to_string(),
            in_flight: false,
            unanswered: false,
            counted: false,
        });
        d.in_flight = true;
    }

    /// The answer to the TTL delete sent for the job: the namespace to count it deleted in,
    /// if it is to be counted now. A job is counted deleted once, when this process's delete
    /// is known to have removed it: answered, or an unanswered one followed by a "not found"
    /// or by the job's disappearance ([`JobCounter::gone`]).
    pub fn delete_answered(&mut self, uid: &str, answer: DeleteAnswer) -> Option<String> {
        let d = self.deleting.get_mut(uid)?;
        d.in_flight = false;
        let count = match answer {
            DeleteAnswer::Deleted => !d.counted,
            DeleteAnswer::NotFound => d.unanswered && !d.counted,
            DeleteAnswer::Refused | DeleteAnswer::NoAnswer if d.counted => false,
            // An earlier request may still have been the one: the job's disappearance decides.
            DeleteAnswer::Refused if d.unanswered => return None,
            DeleteAnswer::Refused => false,
            DeleteAnswer::NoAnswer => {
                d.unanswered = true;
                return None;
            }
        };
        let d = self.deleting.remove(uid)?;
        count.then_some(d.namespace)
    }

    /// The job is gone (the watch saw it deleted, or a re-list no longer shows it): the
    /// namespace to count it deleted in, when a delete of this process is on its way or went
    /// unanswered. What was seen of it is forgotten: the watch shows no more of it.
    pub fn gone(&mut self, uid: &str) -> Option<String> {
        self.seen.remove(uid);
        self.found_gone(uid)
    }

    /// A request found the job missing: its deletion is settled as by [`JobCounter::gone`],
    /// but what was seen of it is kept until the watch shows it deleted, so a change the watch
    /// still delivers from before is not counted again.
    pub fn found_gone(&mut self, uid: &str) -> Option<String> {
        let d = self.deleting.get_mut(uid)?;
        let count = (d.in_flight || d.unanswered) && !d.counted;
        let namespace = d.namespace.clone();
        if d.in_flight {
            // Its answer is still to come; it must not count the job again.
            d.counted |= count;
        } else {
            self.deleting.remove(uid);
        }
        count.then_some(namespace)
    }

    /// A re-list is complete and shows the jobs `listed` (uids): the deletions on their way
    /// for jobs it no longer shows are settled as by [`JobCounter::gone`], and nothing is
    /// kept of those jobs any more.
    pub fn relisted(&mut self, listed: &HashSet<String>) -> Vec<String> {
        let missing: Vec<String> =
            self.deleting.keys().filter(|uid| !listed.contains(*uid)).cloned().collect();
        let counted = missing.iter().filter_map(|uid| self.gone(uid)).collect();
        self.retain_jobs(listed);
        counted
    }

    /// The jobs (uids) something is kept for.
    pub fn jobs(&self) -> HashSet<String> {
        self.seen.keys().chain(self.deleting.keys()).cloned().collect()
    }

    /// Keeps nothing of the jobs not in `listed` (a deletion still counted when its answer
    /// comes is one already counted: [`JobCounter::gone`] marks it).
    pub fn retain_jobs(&mut self, listed: &HashSet<String>) {
        self.seen.retain(|uid, _| listed.contains(uid));
        self.deleting.retain(|uid, _| listed.contains(uid));
    }
}

#[cfg(test)]
#[path = "jobs_tests.rs"]
mod tests;
