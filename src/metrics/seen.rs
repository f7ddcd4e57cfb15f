//! What a job's status shows of the changes Kubeflow's job counters and the milestones count:
//! one observation, compared by [`super::jobs`] and [`super::milestones`].

use crate::api::{ConditionType, TFJobStatus};

/// Which counted changes a job's status shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub(super) created: bool,
    pub(super) succeeded: bool,
    pub(super) failed: bool,
    pub(super) restarted: bool,
    /// Its `Running` condition was True (once; not a count, a [`super::milestones::Milestone`]).
    pub(super) running: bool,
}

impl Seen {
    pub fn of(st: Option<&TFJobStatus>) -> Seen {
        let is = |t: ConditionType| st.is_some_and(|s| s.is_true(t));
        Seen {
            created: is(ConditionType::Created),
            succeeded: is(ConditionType::Succeeded),
            failed: is(ConditionType::Failed),
            restarted: st.is_some_and(|s| s.replica_statuses.values().any(|r| r.restarts > 0)),
            running: is(ConditionType::Running),
        }
    }
}

impl Seen {
    /// Everything either observation shows.
    pub(super) fn with(self, other: Seen) -> Seen {
        Seen {
            created: self.created || other.created,
            succeeded: self.succeeded || other.succeeded,
            failed: self.failed || other.failed,
            restarted: self.restarted || other.restarted,
            running: self.running || other.running,
        }
    }
}
