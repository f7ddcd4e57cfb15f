//! Which of Kubeflow's job counters a status write moves: a pure comparison of the status
//! before and after, so each job is counted once however often it is reconciled, and a new
//! leader or a restarted operator, which reads the stored status, never counts it again.

use crate::api::{ConditionType, TFJobStatus};

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

fn restarts(st: &TFJobStatus) -> i64 {
    st.replica_statuses.values().map(|r| i64::from(r.restarts)).sum()
}

/// The counters that writing `after` over `before` moves.
pub fn counts(before: Option<&TFJobStatus>, after: &TFJobStatus) -> Vec<JobCount> {
    let was = |t: ConditionType| before.is_some_and(|b| b.is_true(t));
    let mut out = Vec::new();
    for (t, count) in [
        (ConditionType::Created, JobCount::Created),
        (ConditionType::Succeeded, JobCount::Successful),
        (ConditionType::Failed, JobCount::Failed),
    ] {
        if after.is_true(t) && !was(t) {
            out.push(count);
        }
    }
    if restarts(after) > 0 && before.is_none_or(|b| restarts(b) == 0) {
        out.push(JobCount::Restarted);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ReplicaStatus, ReplicaType};
    use crate::plan::{self as conditions, REASON_CREATED, REASON_FAILED, REASON_RUNNING, REASON_SUCCEEDED};
    use k8s_openapi::jiff::Timestamp;

    fn status(conds: &[ConditionType], restarts: i32) -> TFJobStatus {
        let mut st = TFJobStatus::default();
        for t in conds {
            let reason = match t {
                ConditionType::Created => REASON_CREATED,
                ConditionType::Running => REASON_RUNNING,
                ConditionType::Succeeded => REASON_SUCCEEDED,
                _ => REASON_FAILED,
            };
            conditions::set(&mut st, *t, reason, String::new(), Timestamp::UNIX_EPOCH);
        }
        if restarts > 0 {
            st.replica_statuses.insert(ReplicaType::Worker, ReplicaStatus { restarts, ..Default::default() });
        }
        st
    }

    #[test]
    fn each_job_is_counted_once() {
        use ConditionType::*;
        use JobCount as J;
        let cases: Vec<(&str, Option<TFJobStatus>, TFJobStatus, Vec<JobCount>)> = vec![
            ("first write", None, status(&[Created], 0), vec![J::Created]),
            ("rewritten", Some(status(&[Created], 0)), status(&[Created], 0), vec![]),
            ("running", Some(status(&[Created], 0)), status(&[Created, Running], 0), vec![]),
            (
                "succeeds",
                Some(status(&[Created, Running], 0)),
                status(&[Created, Running, Succeeded], 0),
                vec![J::Successful],
            ),
            (
                "success rewritten",
                Some(status(&[Created, Succeeded], 0)),
                status(&[Created, Succeeded], 0),
                vec![],
            ),
            ("fails at once", None, status(&[Created, Failed], 0), vec![J::Created, J::Failed]),
            (
                "first restart",
                Some(status(&[Created, Running], 0)),
                status(&[Created, Restarting], 1),
                vec![J::Restarted],
            ),
            (
                "second restart",
                Some(status(&[Created, Running], 1)),
                status(&[Created, Restarting], 2),
                vec![],
            ),
            (
                "fails after restarts",
                Some(status(&[Created, Restarting], 2)),
                status(&[Created, Failed], 3),
                vec![J::Failed],
            ),
        ];
        for (name, before, after, want) in cases {
            assert_eq!(counts(before.as_ref(), &after), want, "{name}");
        }
    }
}
