//! Report, pure: from the plan, what apply did and `now`, the follow-up status (a refused
//! create's `ReplicaFailure` condition), the create backoff and
//! when to reconcile again.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::Now;
use super::apply::{Applied, CreateStep};
use super::backoff::{BLOCKED_RETRY, CreateBackoff, CreateBackoffChange, NAMESPACE_GONE_HOLD};
use crate::api::TFJobStatus;
use crate::plan::{self, Plan};

/// What follows from one applied plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// A second status to write: the refusal of a create as a `ReplicaFailure` condition.
    pub follow_up_status: Option<TFJobStatus>,
    /// What happens to the job's create backoff.
    pub create_backoff: CreateBackoffChange,
    /// When to reconcile again if nothing changes; `None` waits for a change.
    pub requeue_after: Option<Duration>,
}

/// How long from `now` until `t`, rounded up to whole milliseconds so a wake-up is never
/// early; zero for an instant already past.
pub fn duration_until(t: Timestamp, now: Timestamp) -> Duration {
    Duration::try_from(t.duration_since(now)).map_or(Duration::ZERO, |d| d + Duration::from_millis(1))
}

/// The report of `plan` as `applied` at `now`; `backoff` is the job's create backoff record
/// before this reconcile.
pub fn report(plan: &Plan, applied: &Applied, backoff: Option<CreateBackoff>, now: Now) -> Report {
    if applied.job_deleted {
        return Report {
            follow_up_status: None,
            create_backoff: CreateBackoffChange::Keep,
            requeue_after: None,
        };
    }
    let mut requeue_after = plan.requeue_at.map(|t| duration_until(t, now.wall));
    let mut soonest = |d: Duration| requeue_after = Some(requeue_after.map_or(d, |r| r.min(d)));
    let (mut follow_up_status, mut create_backoff) = (None, CreateBackoffChange::Keep);
    match &applied.creates {
        CreateStep::NoneNeeded => {}
        CreateStep::NamespaceGone => {
            // Nothing more can be created there; the namespace's deletion takes the job too.
            // Held back without counting as a refusal or being reported, and tried again
            // after the hold-back (should the namespace stay after all).
            let refusals = backoff.map_or(0, |b| b.refusals);
            create_backoff =
                CreateBackoffChange::Set(CreateBackoff { refusals, until: now.mono + NAMESPACE_GONE_HOLD });
            soonest(NAMESPACE_GONE_HOLD);
        }
        CreateStep::Waiting { until } => soonest(until.saturating_duration_since(now.mono)),
        CreateStep::Done => create_backoff = CreateBackoffChange::Clear,
        CreateStep::Blocked => soonest(BLOCKED_RETRY),
        CreateStep::Refused(message) => {
            let next = CreateBackoff::after_refusal(backoff, now.mono);
            soonest(next.until.saturating_duration_since(now.mono));
            create_backoff = CreateBackoffChange::Set(next);
            let current = applied.job.status.clone().unwrap_or_default();
            let status = plan::with_replica_failure(&current, message, now.wall);
            follow_up_status = (status != current).then_some(status);
        }
    }
    if plan.more && matches!(applied.creates, CreateStep::NoneNeeded | CreateStep::Done) {
        // Cut at the per-reconcile bound: the rest follows at once, after the jobs queued.
        soonest(Duration::ZERO);
    }
    Report { follow_up_status, create_backoff, requeue_after }
}

#[cfg(test)]
mod tests;
