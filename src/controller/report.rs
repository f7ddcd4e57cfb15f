//! Report, pure: from the plan, what apply did and `now`, the follow-up status (the
//! `ReplicaFailure` condition of a refused create, or of creates failing for a reason not the
//! job's once that has lasted), the events that go with it, the create backoff and when to
//! reconcile again.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::Now;
use super::apply::{Applied, CreateStep};
use super::backoff::{
    BLOCKED_RETRY, CreateBackoff, CreateBackoffChange, NAMESPACE_GONE_HOLD, QUEUED_RECHECK,
};
use crate::api::TFJobStatus;
use crate::plan::{
    self, Plan, PlannedEvent, REASON_CREATE_RETRYING, with_create_retrying, without_create_retrying,
};

/// What follows from one applied plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// A second status to write: the refusal of a create, or creates failing for a reason not
    /// the job's, as a `ReplicaFailure` condition; or that condition gone once creates went
    /// through.
    pub follow_up_status: Option<TFJobStatus>,
    /// Events to publish: the Warning when creates have failed long enough to be reported.
    pub events: Vec<PlannedEvent>,
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
            events: Vec::new(),
            create_backoff: CreateBackoffChange::Keep,
            requeue_after: None,
        };
    }
    let mut requeue_after = plan.requeue_at.map(|t| duration_until(t, now.wall));
    let mut soonest = |d: Duration| requeue_after = Some(requeue_after.map_or(d, |r| r.min(d)));
    let (mut follow_up_status, mut create_backoff) = (None, CreateBackoffChange::Keep);
    let mut events = Vec::new();
    let current = applied.job.status.clone().unwrap_or_default();
    let changed = |status: TFJobStatus| (status != current).then_some(status);
    match &applied.creates {
        CreateStep::NoneNeeded => {}
        CreateStep::NamespaceGone => {
            // Nothing more can be created there; the namespace's deletion takes the job too.
            // Held back without counting as a refusal or being reported, and tried again
            // after the hold-back (should the namespace stay after all).
            let refusals = backoff.map_or(0, |b| b.refusals);
            let until = now.mono + NAMESPACE_GONE_HOLD;
            create_backoff = CreateBackoffChange::Set(CreateBackoff { refusals, until, failing: None });
            soonest(NAMESPACE_GONE_HOLD);
        }
        CreateStep::Waiting { until } => soonest(until.saturating_duration_since(now.mono)),
        CreateStep::Done => {
            // Creates go through: a run of failures not the job's is over, and its condition
            // goes at once (a refusal's is the plan's, once nothing is left to create).
            create_backoff = CreateBackoffChange::Clear;
            follow_up_status = changed(without_create_retrying(&current, now.wall));
        }
        CreateStep::Blocked => soonest(BLOCKED_RETRY),
        // Woken when room is set aside for it; looked at again meanwhile all the same.
        CreateStep::Queued => soonest(QUEUED_RECHECK),
        CreateStep::Refused(message) => {
            let next = CreateBackoff::after_refusal(backoff, now.mono);
            soonest(next.until.saturating_duration_since(now.mono));
            create_backoff = CreateBackoffChange::Set(next);
            follow_up_status = changed(plan::with_replica_failure(&current, message, now.wall));
        }
        CreateStep::Transient(message) => {
            let mut next = CreateBackoff::after_transient(backoff, now.mono);
            soonest(next.until.saturating_duration_since(now.mono));
            if let Some(failing) = next.failing.as_mut().filter(|f| f.due()) {
                let condition = format!("{message}. {NOT_THE_JOBS}");
                follow_up_status = changed(with_create_retrying(&current, &condition, now.wall));
                if !failing.reported {
                    failing.reported = true;
                    let secs = failing.lasted().as_secs();
                    let note = format!("Creates have failed for {secs} s. {message}. {NOT_THE_JOBS}");
                    events.push(PlannedEvent::warning(REASON_CREATE_RETRYING, note));
                }
            }
            create_backoff = CreateBackoffChange::Set(next);
        }
    }
    if plan.more && matches!(applied.creates, CreateStep::NoneNeeded | CreateStep::Done) {
        // Cut at the per-reconcile bound: the rest follows at once, after the jobs queued.
        soonest(Duration::ZERO);
    }
    Report { follow_up_status, events, create_backoff, requeue_after }
}

/// Said of creates failing for a reason not the job's, in the condition and the event.
pub const NOT_THE_JOBS: &str =
    "The cluster failed the request, not the TFJob's spec; creates are retried until they go through";

#[cfg(test)]
mod tests;
