//! Planning for a job that had not finished when observed: replica states, the outcome,
//! restarts, and the pods and services to create or remove.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::conditions::{self, *};
use super::replica_state::{self, ObjectKey};
use super::{Plan, PlannedEvent, ReplicaId, after};
use super::{diagnosis, startup};
use crate::api::{ConditionType, JobView, ReplicaType, SuccessPolicy, TFJobStatus};
use crate::names;

/// Plans a job that had not finished when observed, from its validated view.
pub(super) struct ActivePlanner<'a> {
    pub job: &'a JobView<'a>,
    pub full_name: &'a str,
    pub now: Timestamp,
    /// The effective startup deadline in seconds, and the instant it counts from.
    pub startup: (Option<i64>, Option<Timestamp>),
}

impl ActivePlanner<'_> {
    pub fn plan(&self, st: &mut TFJobStatus, p: &mut Plan, pods: &[&Pod], services: &[&Service]) {
        let now = self.now;
        let start = st.start_time.get_or_insert(Time(now)).clone();
        st.deadline = self.job.policy.active_deadline_seconds.and_then(|ads| after(&start, ads)).map(Time);
        let observed = self.observe(st, pods, start.0);
        st.replica_statuses = observed.iter().map(|(t, o)| (*t, o.status.clone())).collect();

        let stuck = diagnosis::diagnose(pods, now);
        let unstarted = startup::unstarted(&self.job.replicas, &observed, pods);
        startup::track(st, self.startup.0, self.startup.1, unstarted, now);
        let outcome = self.outcome(st, &observed).or_else(|| {
            let (reason, msg) =
                startup::exceeded(st, self.full_name, self.startup.0, unstarted.0, &stuck, now)?;
            Some((ConditionType::Failed, reason, msg))
        });
        if let Some((type_, reason, msg)) = outcome {
            conditions::set(st, type_, reason, msg.clone(), now);
            st.completion_time = Some(Time(now));
            p.events.push(if type_ == ConditionType::Failed {
                PlannedEvent::warning(reason, msg)
            } else {
                PlannedEvent::normal(reason, msg)
            });
            return;
        }
        diagnosis::record(st, &stuck, now, &mut p.events);
        p.requeue_at = stuck.next_due(now);
        self.progress(st, p, &observed);
        self.objects(p, &observed, pods, services);
        if p.create_pods.is_empty() && p.create_services.is_empty() {
            st.conditions.retain(|c| c.type_ != ConditionType::ReplicaFailure);
        }
    }

    /// Each replica type's pods as observed against its status so far (`start`: the job's
    /// start time).
    fn observe(
        &self,
        st: &TFJobStatus,
        pods: &[&Pod],
        start: Timestamp,
    ) -> BTreeMap<ReplicaType, replica_state::Observed> {
        let mut observed = BTreeMap::new();
        for (&t, r) in &self.job.replicas {
            let of_type: Vec<(&Pod, i32)> = pods
                .iter()
                .filter_map(|pod| match names::replica_of(&pod.metadata) {
                    Some((pt, i)) if pt == t => Some((*pod, i)),
                    _ => None,
                })
                .collect();
            let old = st.replica_statuses.get(&t).cloned().unwrap_or_default();
            let tolerate = self.job.policy.dynamic_worker && t == ReplicaType::Worker;
            observed.insert(
                t,
                replica_state::observe(r.count, r.restart_policy, tolerate, &of_type, &old, start),
            );
        }
        observed
    }

    /// The `Restarting` condition (and its Warning) when replicas restart now, else `Running`
    /// once the deciding type has an active pod.
    fn progress(
        &self,
        st: &mut TFJobStatus,
        p: &mut Plan,
        observed: &BTreeMap<ReplicaType, replica_state::Observed>,
    ) {
        let now = self.now;
        let new_restarts: i32 = observed.values().map(|o| o.new_restarts).sum();
        let deciding = self.job.deciding_type();
        if new_restarts > 0 {
            let which: Vec<String> = observed
                .iter()
                .filter(|(_, o)| o.new_restarts > 0)
                .map(|(t, o)| format!("{} {t}", o.new_restarts))
                .collect();
            let msg = format!(
                "TFJob {} is restarting because {} replica(s) failed.",
                self.job.name,
                which.join(" and ")
            );
            conditions::set(st, ConditionType::Restarting, REASON_RESTARTING, msg.clone(), now);
            p.events.push(PlannedEvent::warning(REASON_RESTARTING, msg));
        } else if observed.get(&deciding).is_some_and(|o| o.status.active > 0) {
            // The condition says it; Kubeflow emits no event for it (one write less per job).
            let msg = format!("TFJob {} is running.", self.job.name);
            conditions::set(st, ConditionType::Running, REASON_RUNNING, msg, now);
        }
    }

    /// The pods and services to delete (to be re-created, out of range, of no replica of the
    /// spec) and to create (missing).
    fn objects(
        &self,
        p: &mut Plan,
        observed: &BTreeMap<ReplicaType, replica_state::Observed>,
        pods: &[&Pod],
        services: &[&Service],
    ) {
        let replicas = &self.job.replicas;
        for (&t, o) in observed {
            p.delete_pods.extend(o.to_recreate.iter().cloned());
            p.delete_pods.extend(o.out_of_range.iter().cloned());
            p.create_pods.extend(o.missing.iter().map(|&index| ReplicaId { rtype: t, index }));
        }
        // Pods and services of this job that stand for no replica of the spec.
        let wanted: BTreeSet<String> = replicas
            .iter()
            .flat_map(|(&t, r)| (0..r.count).map(move |i| names::replica_name(&self.job.name, t, i)))
            .collect();
        p.delete_pods.extend(
            pods.iter()
                .filter(|pod| {
                    names::replica_of(&pod.metadata).is_none_or(|(t, _)| !replicas.contains_key(&t))
                })
                .map(|pod| ObjectKey::of(&pod.metadata)),
        );
        p.delete_services.extend(
            services
                .iter()
                .filter(|s| s.metadata.deletion_timestamp.is_none() && !wanted.contains(&s.name_any()))
                .map(|s| ObjectKey::of(&s.metadata)),
        );
        let existing: BTreeSet<String> = services.iter().map(|s| s.name_any()).collect();
        for (&t, r) in replicas {
            for i in 0..r.count {
                if !existing.contains(&names::replica_name(&self.job.name, t, i)) {
                    p.create_services.push(ReplicaId { rtype: t, index: i });
                }
            }
        }
    }

    /// Whether the job finishes now, in this order: success of the deciding replicas, a
    /// replica failure that will not be restarted, the backoff limit, the deadline.
    fn outcome(
        &self,
        st: &TFJobStatus,
        observed: &BTreeMap<ReplicaType, replica_state::Observed>,
    ) -> Option<(ConditionType, &'static str, String)> {
        let (replicas, policy) = (&self.job.replicas, &self.job.policy);
        let done = |t: ReplicaType| observed.get(&t).map(|o| &o.status.completed_indexes);
        let all_done = |t: ReplicaType| {
            let count = replicas.get(&t).map_or(0, |r| r.count);
            count > 0 && done(t).is_some_and(|d| (0..count).all(|i| d.contains(i)))
        };
        let succeeded = match replicas.keys().copied().find(|t| t.is_chief()) {
            Some(chief) => all_done(chief),
            None => {
                all_done(ReplicaType::Worker)
                    || (policy.success_policy != SuccessPolicy::AllWorkers
                        && done(ReplicaType::Worker).is_some_and(|d| d.contains(0)))
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
                Some(exit) => exit.describe(&f.pod),
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
        if let Some(limit) = policy.backoff_limit.filter(|&l| restarts > l) {
            let last = observed
                .values()
                .find_map(|o| o.last_exit.as_ref())
                .map_or(String::new(), |(pod, exit)| format!(" The last failure: {}.", exit.describe(pod)));
            let msg = format!(
                "TFJob {} has failed because it has reached the specified backoff limit: {restarts} restarts needed, backoffLimit is {limit}.{last}",
                self.full_name
            );
            return Some((ConditionType::Failed, REASON_BACKOFF, msg));
        }
        if let (Some(deadline), Some(ads)) = (&st.deadline, policy.active_deadline_seconds)
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
