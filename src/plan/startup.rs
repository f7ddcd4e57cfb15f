//! The opt-in startup deadline: its effective value (the job's annotation, else the
//! operator's default), the instant it falls, whether every pod has started, and the failure
//! when it passes first.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::diagnosis::{self, Diagnosis};
use super::replica_state::{Observed, bounded};
use super::{PlannedEvent, after, secs};
use crate::api::{ConditionStatus, ConditionType, ReplicaType, Replicas, TFJob, TFJobStatus};
use crate::names::{self, ANNOTATION_STARTUP_DEADLINE};

/// The reason of the `Failed` condition when the startup deadline passes.
pub const REASON_EXCEEDED: &str = "StartupDeadlineExceeded";
/// The reason of the `InvalidStartupDeadline` condition and its event.
pub const REASON_INVALID: &str = "InvalidAnnotation";
/// The event when the effective startup deadline changes.
pub const REASON_UPDATED: &str = "StartupDeadlineUpdated";

/// The annotation's value: `Ok(None)` when absent, an error text when it is not a whole
/// number of seconds from 1 on.
pub fn annotation(job: &TFJob) -> Result<Option<i64>, String> {
    let Some(raw) = job.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_STARTUP_DEADLINE)) else {
        return Ok(None);
    };
    match raw.trim().parse::<i64>() {
        Ok(n) if n >= 1 => Ok(Some(n)),
        _ => Err(format!(
            "annotation {ANNOTATION_STARTUP_DEADLINE} is {:?}: it must be a whole number of seconds from 1 on; it is ignored",
            bounded(raw, 64)
        )),
    }
}

/// Records the effective startup deadline in `status.appliedPolicy` (after the other run-policy
/// values were recorded), with a Normal event when it changed, and the `InvalidStartupDeadline`
/// condition with one Warning event per new complaint. Returns the effective value: the valid
/// annotation, else `default`.
pub fn record_policy(
    st: &mut TFJobStatus,
    old: &TFJobStatus,
    job: &TFJob,
    default: Option<i64>,
    now: Timestamp,
    events: &mut Vec<PlannedEvent>,
) -> Option<i64> {
    let (effective, invalid) = match annotation(job) {
        Ok(v) => (v.or(default), None),
        Err(e) => (default, Some(e)),
    };
    match invalid {
        Some(msg) => {
            if diagnosis::set_first(
                st,
                ConditionType::InvalidStartupDeadline,
                REASON_INVALID,
                msg.clone(),
                now,
            ) {
                events.push(PlannedEvent::warning("InvalidStartupDeadline", msg));
            }
        }
        None => st.conditions.retain(|c| c.type_ != ConditionType::InvalidStartupDeadline),
    }
    if let Some(prev) = &old.applied_policy
        && prev.startup_deadline_seconds != effective
    {
        events.push(PlannedEvent::normal(
            REASON_UPDATED,
            format!(
                "the startup deadline changed from {} to {}",
                secs(prev.startup_deadline_seconds),
                secs(effective)
            ),
        ));
    }
    if let Some(applied) = st.applied_policy.as_mut() {
        applied.startup_deadline_seconds = effective;
    }
    effective
}

/// Where the startup deadline counts from: the last resume (the `Suspended` condition turned
/// `False`), else the job's creation. `None` while the job is suspended.
///
/// Note for suspend/resume: this reads the `Suspended` condition's `lastTransitionTime` when
/// its status is `False`, as Kubeflow writes it on resume (reason `TFJobResumed`).
pub fn base(job: &TFJob, st: &TFJobStatus) -> Option<Timestamp> {
    match st.condition(ConditionType::Suspended) {
        Some(c) if c.status == ConditionStatus::True => None,
        Some(c) if c.status == ConditionStatus::False => c.last_transition_time.as_ref().map(|t| t.0),
        _ => job.metadata.creation_timestamp.as_ref().map(|t| t.0).or(st.start_time.as_ref().map(|t| t.0)),
    }
}

/// Whether a pod has started: running, or already finished.
fn started(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Running" | "Succeeded" | "Failed")
        )
}

/// When a started pod started: its containers' latest start (running or since finished), else
/// when its node took it, else `None`.
fn started_at(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref()?;
    let containers = status.container_statuses.iter().flatten().filter_map(|c| {
        let state = c.state.as_ref()?;
        let running = state.running.as_ref().and_then(|r| r.started_at.as_ref());
        running.or(state.terminated.as_ref().and_then(|t| t.started_at.as_ref())).map(|t| t.0)
    });
    containers.max().or(status.start_time.as_ref().map(|t| t.0))
}

/// How many replicas that have not succeeded have no started pod, and when the last of the
/// started ones started (from the pods, so every plan finds the same instant).
pub fn unstarted(
    replicas: &BTreeMap<ReplicaType, Replicas<'_>>,
    observed: &BTreeMap<ReplicaType, Observed>,
    pods: &[&Pod],
) -> (usize, Option<Timestamp>) {
    let mut n = 0;
    let mut last = None;
    for (t, r) in replicas {
        let done = observed.get(t).map(|o| &o.status.completed_indexes);
        for i in (0..r.count).filter(|&i| !done.is_some_and(|d| d.contains(i))) {
            let up = pods.iter().find(|p| names::replica_of(&p.metadata) == Some((*t, i)) && started(p));
            match up {
                Some(p) => last = last.max(started_at(p)),
                None => n += 1,
            }
        }
    }
    (n, last)
}

/// Updates `startupDeadline` and `podsStartedTime`: once every pod has started (since `base`),
/// the deadline no longer applies. `unstarted`: from [`unstarted`]; `podsStartedTime` is the
/// last pod's start when the pods tell it (not before `base`), else `now`.
pub fn track(
    st: &mut TFJobStatus,
    seconds: Option<i64>,
    base: Option<Timestamp>,
    (unstarted, last_start): (usize, Option<Timestamp>),
    now: Timestamp,
) {
    let Some(base) = base else {
        st.startup_deadline = None;
        return;
    };
    if st.pods_started_time.as_ref().is_some_and(|t| t.0 >= base) {
        st.startup_deadline = None;
        return;
    }
    if unstarted == 0 {
        let at = last_start.filter(|t| *t >= base && *t <= now).unwrap_or(now);
        st.pods_started_time = Some(Time(Timestamp::from_second(at.as_second()).unwrap_or(at)));
        st.startup_deadline = None;
        return;
    }
    st.pods_started_time = None;
    st.startup_deadline = seconds.and_then(|s| after(&Time(base), s)).map(Time);
}

/// The `Failed` condition's reason and message when the startup deadline has passed.
pub fn exceeded(
    st: &TFJobStatus,
    full_name: &str,
    seconds: Option<i64>,
    unstarted: usize,
    d: &Diagnosis,
    now: Timestamp,
) -> Option<(&'static str, String)> {
    let deadline = st.startup_deadline.as_ref()?;
    if now < deadline.0 {
        return None;
    }
    let why = d.pods.first().map_or_else(
        || format!("{unstarted} replica(s) have no running pod"),
        |s| match d.pods.len() {
            1 => s.describe(),
            n => format!("{}; {} more pod(s) have not started", s.describe(), n - 1),
        },
    );
    Some((
        REASON_EXCEEDED,
        format!(
            "TFJob {full_name} has failed because its pods did not all start within the startup deadline of {}: {why}.",
            secs(seconds)
        ),
    ))
}
