//! The pure planner: what to do for a job, given its observed pods and services and the time.
//!
//! No client, no clock, no async. [`reconcile::plan`] is a reconcile's whole plan step;
//! [`plan_with`], the planner in it, returns a [`Plan`] whose parts are applied in
//! order: status (a job that finishes is marked finished, with `completionTime`, before any
//! of its pods is touched; a job that is suspended records what its pods did before they go),
//! then events, then deletes (a suspended job shows `active: 0` once every pod has a delete
//! accepted), then creates, then the TTL deletion of the job.

mod active;
mod cleanup;
pub mod coalesce;
mod conditions;
pub mod diagnosis;
pub mod gang;
#[cfg(test)]
mod gang_tests;
pub mod reconcile;
mod replica_state;
pub mod startup;
#[cfg(test)]
mod stuck_tests;
mod suspend;
#[cfg(test)]
mod tests;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::api::{
    AppliedPolicy, CleanPodPolicy, ConditionType, EffectivePolicy, JobView, ReplicaType, TFJob, TFJobStatus,
};
use crate::names::controlled_by;
use active::ActivePlanner;
pub use conditions::*;
pub use replica_state::{ContainerExit, Failure, ObjectKey, is_disrupted, is_retryable};

/// Whether an event reports normal progress or something a user should look at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    /// The Event's `type` field.
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

/// An event to publish about the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    pub type_: EventType,
    pub reason: String,
    pub note: String,
}

impl PlannedEvent {
    pub fn normal(reason: &str, note: impl Into<String>) -> PlannedEvent {
        PlannedEvent { type_: EventType::Normal, reason: reason.into(), note: note.into() }
    }

    pub fn warning(reason: &str, note: impl Into<String>) -> PlannedEvent {
        PlannedEvent { type_: EventType::Warning, reason: reason.into(), note: note.into() }
    }
}

/// What to do now, in the order the fields are listed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The new status, when it differs from the stored one. Written first.
    pub status: Option<TFJobStatus>,
    /// Events for what this plan decides (condition transitions, policy changes).
    pub events: Vec<PlannedEvent>,
    /// Pods to delete (with the uid seen, as a precondition).
    pub delete_pods: Vec<ObjectKey>,
    /// A second status, written once every pod delete of the plan is accepted: a suspended
    /// job's `active: 0`, which releases its quota in Kueue (only when the plan deletes every
    /// pod the job still has).
    pub status_after_pod_deletes: Option<TFJobStatus>,
    /// Services to delete (with the uid seen, as a precondition).
    pub delete_services: Vec<ObjectKey>,
    /// Replicas whose service to create.
    pub create_services: Vec<ReplicaId>,
    /// Replicas whose pod to create. Pods are built only when they are sent
    /// ([`crate::objects::Builder`]), batch by batch: a plan holds no pod objects.
    pub create_pods: Vec<ReplicaId>,
    /// The plan was cut at [`MAX_WRITES_PER_RECONCILE`] creates or deletes: plan again as
    /// soon as these are done.
    pub more: bool,
    /// The TTL has expired: delete the TFJob itself (last).
    pub delete_job: bool,
    /// When to plan again even if nothing changes: the next deadline or TTL expiry.
    pub requeue_at: Option<Timestamp>,
    /// Gang scheduling: the job's PodGroup to create (before any pod) or delete (after the
    /// pods). Decided after this planner by [`gang::decide`].
    pub gang: gang::GangPlan,
    /// A status that only moved replica counts was held back ([`coalesce`]); `requeue_at`
    /// wakes the job when the hold ends.
    pub status_held: bool,
    /// A finished job's cleanup by `cleanPodPolicy`: `delete_pods` and `delete_services` are
    /// then sent as one delete of a collection each (by the job's labels), not one per object.
    pub cleanup: Option<Cleanup>,
}

impl Plan {
    /// Every event the plan publishes: its events, then the outcome its cleanup publishes once
    /// the deletes are accepted.
    pub fn all_events(&self) -> impl Iterator<Item = &PlannedEvent> {
        self.events.iter().chain(self.cleanup.as_ref().and_then(|c| c.outcome.as_ref()))
    }
}

/// How a finished job's pods and services go ([`Plan::cleanup`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Cleanup {
    /// Which of the job's pods the one delete selects.
    pub pods: PodSelection,
    /// The job's outcome event (`TFJobSucceeded`, `TFJobFailed`, ...) when the job finished in
    /// this plan: published once the deletes are accepted, naming what they deleted, in place
    /// of separate `SuccessfulDeletePod` and `SuccessfulDeleteService` events.
    pub outcome: Option<PlannedEvent>,
}

/// The pods a cleanup deletes: what `cleanPodPolicy` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodSelection {
    /// `Running`: pods not yet Succeeded or Failed (Pending ones included, as in Kubeflow).
    Unfinished,
    /// `All`: every pod.
    All,
}

/// At most this many creates, and this many deletes, in one reconcile (Kubernetes' Job
/// controller has the same bound); a bigger job is done over several reconciles, and other
/// jobs' reconciles run in between.
pub const MAX_WRITES_PER_RECONCILE: usize = 500;

/// One replica of the job, whose pod or service the plan creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId {
    pub rtype: ReplicaType,
    pub index: i32,
}

/// Keeps at most `max` of `first` and `second` together (`first` before `second`); returns
/// whether any was dropped.
fn cap<T>(first: &mut Vec<T>, second: &mut Vec<T>, max: usize) -> bool {
    let cut = first.len() + second.len() > max;
    first.truncate(max);
    second.truncate(max - first.len());
    cut
}

/// Status times have whole seconds; planning with the same precision keeps plans stable.
fn whole_seconds(now: Timestamp) -> Timestamp {
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

fn after(t: &Time, secs: i64) -> Option<Timestamp> {
    t.0.checked_add(SignedDuration::from_secs(secs)).ok()
}

fn secs(v: Option<i64>) -> String {
    v.map_or_else(|| "unset".to_string(), |s| format!("{s}s"))
}

/// Records the effective run policy in status; a changed value (after the first recording)
/// gets one Normal event naming the old and new values.
fn record_policy(st: &mut TFJobStatus, policy: &EffectivePolicy, events: &mut Vec<PlannedEvent>) {
    let applied = AppliedPolicy {
        clean_pod_policy: Some(policy.clean_pod_policy),
        ttl_seconds_after_finished: policy.ttl_seconds_after_finished,
        active_deadline_seconds: policy.active_deadline_seconds,
        startup_deadline_seconds: None,
    };
    if let Some(prev) = &st.applied_policy {
        if prev.active_deadline_seconds != applied.active_deadline_seconds {
            events.push(PlannedEvent::normal(
                "DeadlineUpdated",
                format!(
                    "activeDeadlineSeconds changed from {} to {}",
                    secs(prev.active_deadline_seconds),
                    secs(applied.active_deadline_seconds)
                ),
            ));
        }
        if prev.ttl_seconds_after_finished != applied.ttl_seconds_after_finished {
            events.push(PlannedEvent::normal(
                "TTLUpdated",
                format!(
                    "ttlSecondsAfterFinished changed from {} to {}",
                    secs(prev.ttl_seconds_after_finished.map(i64::from)),
                    secs(applied.ttl_seconds_after_finished.map(i64::from))
                ),
            ));
        }
        if prev.clean_pod_policy != applied.clean_pod_policy {
            let show = |p: Option<CleanPodPolicy>| p.map_or("unset".to_string(), |p| p.to_string());
            events.push(PlannedEvent::normal(
                "CleanPodPolicyUpdated",
                format!(
                    "cleanPodPolicy changed from {} to {}",
                    show(prev.clean_pod_policy),
                    show(applied.clean_pod_policy)
                ),
            ));
        }
    }
    st.applied_policy = Some(applied);
}

/// The Warning for a new job with a `Master` replica type, which still runs as before:
/// TensorFlow 2's strategies refuse a cluster with a `master` job (an Estimator-era role).
fn master_warning(job: &TFJob) -> Option<PlannedEvent> {
    let key =
        job.spec.tf_replica_specs.keys().find(|k| ReplicaType::parse(k) == Some(ReplicaType::Master))?;
    Some(PlannedEvent::warning(
        "MasterReplicaType",
        format!(
            "replica type {key} runs as before, but TensorFlow 2's distribution strategies refuse a cluster \
             with a \"master\" job (\"Disallowed task type\"): Chief is the replacement"
        ),
    ))
}

/// The operator's settings the planner follows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// The startup deadline of jobs without the annotation (`--startup-deadline-seconds`).
    pub startup_deadline_seconds: Option<i64>,
    /// Gang scheduling (`--gang-scheduling`).
    pub gang: gang::GangScheduling,
    /// Who writes the Kueue Workload of a queued job (`--kueue-workloads`): with the
    /// operator, a queued job not started on an admission is held without pods.
    pub workloads: crate::queue::WorkloadsBy,
}

/// [`plan_with`] with the default settings (the planner's table tests).
#[cfg(test)]
pub fn plan(job: &TFJob, pods: &[Pod], services: &[Service], now: Timestamp) -> Plan {
    plan_with(job, pods, services, now, Settings::default())
}

/// Plans one reconcile of `job`. `pods` and `services` may include objects of other jobs:
/// only those whose controller owner has this job's uid count.
pub fn plan_with(
    job: &TFJob,
    pods: &[Pod],
    services: &[Service],
    now: Timestamp,
    settings: Settings,
) -> Plan {
    let mut p = Plan::default();
    let Some(uid) = job.metadata.uid.as_deref() else { return p };
    let now = whole_seconds(now);
    let pods: Vec<&Pod> = pods.iter().filter(|o| controlled_by(&o.metadata, uid)).collect();
    let services: Vec<&Service> = services.iter().filter(|o| controlled_by(&o.metadata, uid)).collect();
    let old = job.status.clone().unwrap_or_default().upgraded();
    let mut st = old.clone();
    let policy = job.spec.effective_policy();
    record_policy(&mut st, &policy, &mut p.events);
    let startup_secs =
        startup::record_policy(&mut st, &old, job, settings.startup_deadline_seconds, now, &mut p.events);
    if st.condition(ConditionType::Created).is_none() {
        created(job, &mut st, &mut p.events, (settings.workloads, now));
    }
    let queued = (settings.workloads == crate::queue::WorkloadsBy::Operator)
        .then(|| crate::queue::waiting_in(job))
        .flatten();
    let suspending = !old.is_finished()
        && unfinished(job, (startup_secs, queued), &mut st, &mut p, (&pods, &services), now);
    if st.is_finished() {
        finished(&policy, (old.is_finished(), &mut st), &mut p, (&pods, &services), now);
    } else {
        let deadlines = [&st.deadline, &st.startup_deadline].into_iter().flatten().map(|t| t.0);
        p.requeue_at = p.requeue_at.into_iter().chain(deadlines).min();
    }

    // A suspended job's pods stay `active` until each has a delete accepted: the status after
    // the deletes shows 0 when this plan deletes every pod left (none cut at the bound).
    let inactive = (suspending && p.delete_pods.len() <= MAX_WRITES_PER_RECONCILE)
        .then(|| suspend::inactive(&st))
        .filter(|s| *s != st);
    p.more = cap(&mut p.delete_pods, &mut p.delete_services, MAX_WRITES_PER_RECONCILE)
        | cap(&mut p.create_services, &mut p.create_pods, MAX_WRITES_PER_RECONCILE);

    if st != old {
        st.last_reconcile_time = Some(Time(now));
        p.status = Some(st);
    }
    p.status_after_pod_deletes = inactive.map(|mut s| {
        s.last_reconcile_time = Some(Time(now));
        s
    });
    p
}

/// A new job: the `Created` condition, and the Warnings about what its spec does not do as
/// written (a pod template's restart policy, Kueue, a `Master` replica type).
fn created(
    job: &TFJob,
    st: &mut TFJobStatus,
    events: &mut Vec<PlannedEvent>,
    (workloads, now): (crate::queue::WorkloadsBy, Timestamp),
) {
    let msg = format!("TFJob {} is created.", job.name_any());
    // The condition says it; Kubeflow emits no event for it (one write less per job).
    conditions::set(st, ConditionType::Created, REASON_CREATED, msg, now);
    let overridden: Vec<String> = job
        .spec
        .tf_replica_specs
        .iter()
        .filter_map(|(key, r)| {
            Some(format!("{key} ({})", r.template.spec.as_ref()?.restart_policy.as_deref()?))
        })
        .collect();
    if !overridden.is_empty() {
        events.push(PlannedEvent::warning(
            "SetPodTemplateRestartPolicy",
            format!(
                "The restart policy in the pod template of {} is replaced by the replica's restartPolicy",
                overridden.join(", ")
            ),
        ));
    }
    events.extend(suspend::kueue_warnings(job, workloads));
    events.extend(master_warning(job));
}

/// A job not finished when observed: suspended, running (or resumed), or failed for an
/// invalid spec. Returns whether it is suspended.
fn unfinished(
    job: &TFJob,
    (startup_secs, queued): (Option<i64>, Option<&str>),
    st: &mut TFJobStatus,
    p: &mut Plan,
    (pods, services): (&[&Pod], &[&Service]),
    now: Timestamp,
) -> bool {
    let full_name = format!("{}/{}", job.namespace().unwrap_or_default(), job.name_any());
    match JobView::new(job) {
        Ok(view) if job.spec.is_suspended() || queued.is_some() => {
            let why = suspend::Why::of(&view, queued);
            suspend::plan_suspended(&view, st, p, (pods, services), &why, now);
            // No pods while suspended: nothing to diagnose, no startup deadline running.
            diagnosis::clear(st);
            st.startup_deadline = None;
            true
        }
        Ok(view) => {
            suspend::resume(&view.name, st, p, now);
            let startup = (startup_secs, startup::base(job, st));
            let planner = ActivePlanner { job: &view, full_name: &full_name, now, startup };
            planner.plan(st, p, pods, services);
            false
        }
        Err(e) => {
            let msg = format!("TFJob {full_name} has an invalid spec: {e}");
            conditions::set(st, ConditionType::Failed, REASON_INVALID, msg.clone(), now);
            st.completion_time = Some(Time(now));
            p.events.push(PlannedEvent::warning(REASON_INVALID, msg));
            false
        }
    }
}

/// A finished job: its pods and services to delete by `cleanPodPolicy`, and its TTL (the job
/// deleted once it has expired, a requeue at its expiry before). `was_finished`: the job was
/// finished before this plan (else the plan's events end with its outcome).
fn finished(
    policy: &EffectivePolicy,
    (was_finished, st): (bool, &mut TFJobStatus),
    p: &mut Plan,
    (pods, services): (&[&Pod], &[&Service]),
    now: Timestamp,
) {
    diagnosis::clear(st);
    st.startup_deadline = None;
    let (dp, ds) = cleanup::to_delete(policy.clean_pod_policy, pods, services);
    p.delete_pods.extend(dp);
    p.delete_services.extend(ds);
    p.cleanup = cleanup::selection(policy.clean_pod_policy)
        .filter(|_| !p.delete_pods.is_empty() || !p.delete_services.is_empty())
        .map(|pods| Cleanup { pods, outcome: if was_finished { None } else { outcome_event(st, p) } });
    st.expires = match (&st.completion_time, policy.ttl_seconds_after_finished) {
        (Some(done), Some(ttl)) => after(done, i64::from(ttl)).map(Time),
        _ => None,
    };
    if let Some(expires) = &st.expires {
        if now >= expires.0 {
            p.delete_job = true;
        } else {
            p.requeue_at = Some(expires.0);
        }
    }
}

/// Takes the outcome event of a job that finished in this plan out of its events: the one
/// whose reason is the finishing condition's.
fn outcome_event(st: &TFJobStatus, p: &mut Plan) -> Option<PlannedEvent> {
    let reason = [ConditionType::Succeeded, ConditionType::Failed]
        .into_iter()
        .find_map(|t| st.condition(t).filter(|c| c.status == crate::api::ConditionStatus::True))?
        .reason
        .clone()?;
    let at = p.events.iter().rposition(|e| e.reason == reason)?;
    Some(p.events.remove(at))
}

/// The status with a `ReplicaFailure` condition (reason `FailedCreatePod`) carrying the API
/// server's refusal; the plan clears it once nothing is left to create.
pub fn with_replica_failure(status: &TFJobStatus, message: &str, now: Timestamp) -> TFJobStatus {
    let now = whole_seconds(now);
    let mut st = status.clone();
    if conditions::set(&mut st, ConditionType::ReplicaFailure, REASON_FAILED_CREATE, message.to_string(), now)
    {
        st.last_reconcile_time = Some(Time(now));
    }
    st
}
