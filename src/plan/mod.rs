//! The pure planner: what to do for a job, given its observed pods and services and the time.
//!
//! No client, no clock, no async. [`plan`] returns a [`Plan`] whose parts are applied in
//! order: status (a job that finishes is marked finished, with `completionTime`, before any
//! of its pods is touched), then deletes, then creates, then the TTL deletion of the job.

mod cleanup;
mod conditions;
mod replicas;
#[cfg(test)]
mod tests;

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

use crate::api::{
    AppliedPolicy, CleanPodPolicy, ConditionType, EffectivePolicy, ReplicaType, Replicas, SuccessPolicy,
    TFJob, TFJobStatus,
};
use crate::build::{pod_for, service_for};
use crate::names::{self, controlled_by};
pub use conditions::*;
pub use replicas::{Failure, PodRef, is_disrupted, is_retryable};

/// An event to publish about the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedEvent {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// What to do now, in the order the fields are listed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The new status, when it differs from the stored one. Written first.
    pub status: Option<TFJobStatus>,
    /// Events for what this plan decides (condition transitions, policy changes).
    pub events: Vec<PlannedEvent>,
    /// Pods to delete (with the uid seen, as a precondition).
    pub delete_pods: Vec<PodRef>,
    /// Services to delete.
    pub delete_services: Vec<String>,
    /// Services to create.
    pub create_services: Vec<Service>,
    /// Pods to create.
    pub create_pods: Vec<Pod>,
    /// The TTL has expired: delete the TFJob itself (last).
    pub delete_job: bool,
    /// When to plan again even if nothing changes: the next deadline or TTL expiry.
    pub requeue_at: Option<Timestamp>,
}

fn event(warning: bool, reason: &str, note: impl Into<String>) -> PlannedEvent {
    PlannedEvent { warning, reason: reason.into(), note: note.into() }
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
    };
    if let Some(prev) = &st.applied_policy {
        if prev.active_deadline_seconds != applied.active_deadline_seconds {
            events.push(event(
                false,
                "DeadlineUpdated",
                format!(
                    "activeDeadlineSeconds changed from {} to {}",
                    secs(prev.active_deadline_seconds),
                    secs(applied.active_deadline_seconds)
                ),
            ));
        }
        if prev.ttl_seconds_after_finished != applied.ttl_seconds_after_finished {
            events.push(event(
                false,
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
            events.push(event(
                false,
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

/// Plans one reconcile of `job`. `pods` and `services` may include objects of other jobs:
/// only those whose controller owner has this job's uid count. `cluster_domain` is appended
/// to TF_CONFIG addresses when set.
pub fn plan(
    job: &TFJob,
    pods: &[Pod],
    services: &[Service],
    now: Timestamp,
    cluster_domain: Option<&str>,
) -> Plan {
    let mut p = Plan::default();
    let Some(uid) = job.metadata.uid.as_deref() else { return p };
    // Status times have whole seconds; planning with the same precision keeps plans stable.
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let pods: Vec<&Pod> =
        pods.iter().map(Borrow::borrow).filter(|o| controlled_by(&o.metadata, uid)).collect();
    let services: Vec<&Service> =
        services.iter().map(Borrow::borrow).filter(|o| controlled_by(&o.metadata, uid)).collect();
    let old = job.status.clone().unwrap_or_default();
    let mut st = old.clone();
    let policy = job.spec.effective_policy();
    record_policy(&mut st, &policy, &mut p.events);

    let name = job.name_any();
    let full_name = format!("{}/{name}", job.namespace().unwrap_or_default());
    if st.condition(ConditionType::Created).is_none() {
        let msg = format!("TFJob {name} is created.");
        conditions::set(&mut st, ConditionType::Created, REASON_CREATED, msg.clone(), now);
        p.events.push(event(false, REASON_CREATED, msg));
        let overridden: Vec<String> = job
            .spec
            .tf_replica_specs
            .iter()
            .filter_map(|(key, r)| {
                Some(format!("{key} ({})", r.template.spec.as_ref()?.restart_policy.as_deref()?))
            })
            .collect();
        if !overridden.is_empty() {
            p.events.push(event(
                true,
                "SetPodTemplateRestartPolicy",
                format!(
                    "The restart policy in the pod template of {} is replaced by the replica's restartPolicy",
                    overridden.join(", ")
                ),
            ));
        }
    }

    if !old.is_finished() {
        match job.spec.replicas() {
            Ok(replicas) => {
                let ctx =
                    Running { job, name: &name, full_name: &full_name, policy: &policy, now, cluster_domain };
                ctx.plan(&mut st, &mut p, &replicas, &pods, &services);
            }
            Err(e) => {
                let msg = format!("TFJob {full_name} has an invalid spec: {e}");
                conditions::set(&mut st, ConditionType::Failed, REASON_INVALID, msg.clone(), now);
                st.completion_time = Some(Time(now));
                p.events.push(event(true, REASON_INVALID, msg));
            }
        }
    }

    if st.is_finished() {
        let (dp, ds) = cleanup::deletes(policy.clean_pod_policy, &pods, &services);
        p.delete_pods.extend(dp);
        p.delete_services.extend(ds);
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
    } else if let Some(deadline) = &st.deadline {
        p.requeue_at = Some(deadline.0);
    }

    if st != old {
        st.last_reconcile_time = Some(Time(now));
        p.status = Some(st);
    }
    p
}

/// The status with a `ReplicaFailure` condition (reason `FailedCreatePod`) carrying the API
/// server's refusal; the plan clears it once nothing is left to create.
pub fn with_replica_failure(status: &TFJobStatus, message: &str, now: Timestamp) -> TFJobStatus {
    let now = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let mut st = status.clone();
    if conditions::set(&mut st, ConditionType::ReplicaFailure, REASON_FAILED_CREATE, message.to_string(), now)
    {
        st.last_reconcile_time = Some(Time(now));
    }
    st
}

/// Planning for a job that had not finished when observed.
struct Running<'a> {
    job: &'a TFJob,
    name: &'a str,
    full_name: &'a str,
    policy: &'a EffectivePolicy,
    now: Timestamp,
    cluster_domain: Option<&'a str>,
}

impl Running<'_> {
    fn plan(
        &self,
        st: &mut TFJobStatus,
        p: &mut Plan,
        replicas: &BTreeMap<ReplicaType, Replicas<'_>>,
        pods: &[&Pod],
        services: &[&Service],
    ) {
        let now = self.now;
        let start = st.start_time.get_or_insert(Time(now)).clone();
        st.deadline = self.policy.active_deadline_seconds.and_then(|ads| after(&start, ads)).map(Time);

        let mut observed = BTreeMap::new();
        for (&t, r) in replicas {
            let of_type: Vec<(&Pod, i32)> = pods
                .iter()
                .filter_map(|pod| match names::replica_of(&pod.metadata) {
                    Some((pt, i)) if pt == t => Some((*pod, i)),
                    _ => None,
                })
                .collect();
            let old = st.replica_statuses.get(&t).cloned().unwrap_or_default();
            let tolerate = self.policy.dynamic_worker && t == ReplicaType::Worker;
            observed.insert(t, replicas::observe(r.count, r.restart_policy, tolerate, &of_type, &old));
        }
        st.replica_statuses = observed.iter().map(|(t, o)| (*t, o.status.clone())).collect();

        if let Some((type_, reason, msg)) = self.outcome(st, replicas, &observed) {
            conditions::set(st, type_, reason, msg.clone(), now);
            st.completion_time = Some(Time(now));
            p.events.push(event(type_ == ConditionType::Failed, reason, msg));
            return;
        }

        let new_restarts: i32 = observed.values().map(|o| o.new_restarts).sum();
        let deciding = replicas.keys().copied().find(|t| t.is_chief()).unwrap_or(ReplicaType::Worker);
        if new_restarts > 0 {
            let which: Vec<String> = observed
                .iter()
                .filter(|(_, o)| o.new_restarts > 0)
                .map(|(t, o)| format!("{} {t}", o.new_restarts))
                .collect();
            let msg = format!(
                "TFJob {} is restarting because {} replica(s) failed.",
                self.name,
                which.join(" and ")
            );
            conditions::set(st, ConditionType::Restarting, REASON_RESTARTING, msg.clone(), now);
            p.events.push(event(true, REASON_RESTARTING, msg));
        } else if observed.get(&deciding).is_some_and(|o| o.status.active > 0) {
            let msg = format!("TFJob {} is running.", self.name);
            if conditions::set(st, ConditionType::Running, REASON_RUNNING, msg.clone(), now) {
                p.events.push(event(false, REASON_RUNNING, msg));
            }
        }

        for (&t, o) in &observed {
            p.delete_pods.extend(o.to_recreate.iter().cloned());
            p.delete_pods.extend(o.out_of_range.iter().cloned());
            p.create_pods
                .extend(o.missing.iter().filter_map(|&i| pod_for(self.job, t, i, self.cluster_domain)));
        }
        // Pods and services of this job that stand for no replica of the spec.
        let wanted: BTreeSet<String> = replicas
            .iter()
            .flat_map(|(&t, r)| (0..r.count).map(move |i| names::replica_name(self.name, t, i)))
            .collect();
        p.delete_pods.extend(
            pods.iter()
                .filter(|pod| {
                    names::replica_of(&pod.metadata).is_none_or(|(t, _)| !replicas.contains_key(&t))
                })
                .map(|pod| PodRef {
                    name: pod.name_any(),
                    uid: pod.metadata.uid.clone().unwrap_or_default(),
                }),
        );
        p.delete_services.extend(
            services
                .iter()
                .filter(|s| s.metadata.deletion_timestamp.is_none() && !wanted.contains(&s.name_any()))
                .map(|s| s.name_any()),
        );
        let existing: BTreeSet<String> = services.iter().map(|s| s.name_any()).collect();
        for (&t, r) in replicas {
            for i in 0..r.count {
                if !existing.contains(&names::replica_name(self.name, t, i)) {
                    p.create_services.extend(service_for(self.job, t, i));
                }
            }
        }
        if p.create_pods.is_empty() && p.create_services.is_empty() {
            st.conditions.retain(|c| c.type_ != ConditionType::ReplicaFailure);
        }
    }

    /// Whether the job finishes now, in this order: success of the deciding replicas, a
    /// replica failure that will not be restarted, the backoff limit, the deadline.
    fn outcome(
        &self,
        st: &TFJobStatus,
        replicas: &BTreeMap<ReplicaType, Replicas<'_>>,
        observed: &BTreeMap<ReplicaType, replicas::Observed>,
    ) -> Option<(ConditionType, &'static str, String)> {
        let done = |t: ReplicaType| observed.get(&t).map(|o| &o.status.succeeded_indexes);
        let all_done = |t: ReplicaType| {
            let count = replicas.get(&t).map_or(0, |r| r.count);
            count > 0 && done(t).is_some_and(|d| (0..count).all(|i| d.contains(&i)))
        };
        let succeeded = match replicas.keys().copied().find(|t| t.is_chief()) {
            Some(chief) => all_done(chief),
            None => {
                all_done(ReplicaType::Worker)
                    || (self.policy.success_policy != SuccessPolicy::AllWorkers
                        && done(ReplicaType::Worker).is_some_and(|d| d.contains(&0)))
            }
        };
        if succeeded {
            return Some((
                ConditionType::Succeeded,
                REASON_SUCCEEDED,
                format!("TFJob {} successfully completed.", self.full_name),
            ));
        }
        if let Some((t, o)) = observed.iter().find(|(_, o)| !o.failures.is_empty()) {
            let f = &o.failures[0];
            let detail = match &f.container {
                Some((c, code, reason)) => format!(
                    "pod {} container {c} exited with code {code}{}",
                    f.pod,
                    reason.as_ref().map_or(String::new(), |r| format!(" ({r})"))
                ),
                None => format!(
                    "pod {} failed{}",
                    f.pod,
                    f.pod_reason.as_ref().map_or(String::new(), |r| format!(" ({r})"))
                ),
            };
            let msg = format!(
                "TFJob {} has failed because {} {t} replica(s) failed: {detail}.",
                self.full_name,
                o.failures.len()
            );
            return Some((ConditionType::Failed, REASON_FAILED, msg));
        }
        let restarts: i32 = st.replica_statuses.values().map(|r| r.restarts).sum();
        if let Some(limit) = self.policy.backoff_limit.filter(|&l| restarts > l) {
            let msg = format!(
                "TFJob {} has failed because it has reached the specified backoff limit: {restarts} restarts needed, backoffLimit is {limit}.",
                self.full_name
            );
            return Some((ConditionType::Failed, REASON_BACKOFF, msg));
        }
        if let (Some(deadline), Some(ads)) = (&st.deadline, self.policy.active_deadline_seconds)
            && self.now >= deadline.0
        {
            let msg = format!(
                "TFJob {} has failed because it was active longer than the specified deadline of {ads}s.",
                self.full_name
            );
            return Some((ConditionType::Failed, REASON_DEADLINE, msg));
        }
        None
    }
}
