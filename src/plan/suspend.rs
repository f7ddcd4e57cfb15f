//! Suspension (`runPolicy.suspend`): what a suspended job gives up and records, its resume,
//! and the warnings for a job queued by Kueue.

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::conditions::{self, REASON_RESUMED, REASON_SUSPENDED};
use super::replica_state::ObjectKey;
use super::{Plan, PlannedEvent};
use crate::api::{ConditionType, JobView, ReplicaType, TFJob, TFJobStatus};
use crate::names;

/// Plans an unfinished job whose spec says `suspend: true`: every pod and service of the job
/// is deleted, whatever `cleanPodPolicy` says, and the status written before the deletes
/// turns `Running` False and `Suspended` True and stops the deadline. Succeeded replica
/// indexes (also of pods seen for the first time now) are kept in it, so a resume does not
/// run them again. Its `active` counts each type's pods still holding a place (pending or
/// running, not yet deleted); [`inactive`] is the status written once their deletes are
/// accepted. Nothing here counts as a failure or a restart.
pub(super) fn plan_suspended(
    job: &JobView,
    st: &mut TFJobStatus,
    p: &mut Plan,
    (pods, services): (&[&Pod], &[&Service]),
    why: &Why,
    now: Timestamp,
) {
    for (&t, r) in &job.replicas {
        let entry = st.replica_statuses.entry(t).or_default();
        let mut done = entry.completed_indexes.clone();
        done.extend(pods.iter().filter(|pod| succeeded(pod)).filter_map(|pod| {
            names::replica_of(&pod.metadata)
                .filter(|&(pt, i)| pt == t && (0..r.count).contains(&i))
                .map(|(_, i)| i)
        }));
        entry.succeeded = i32::try_from(done.len()).unwrap_or(i32::MAX);
        entry.completed_indexes = done;
    }
    for r in st.replica_statuses.values_mut() {
        r.active = 0;
    }
    for pod in pods.iter().filter(|pod| holds_place(pod)) {
        if let Some(r) = names::replica_of(&pod.metadata).and_then(|(t, _)| st.replica_statuses.get_mut(&t)) {
            r.active += 1;
        }
    }
    let (reason, msg) = (why.reason, why.message.clone());
    for c in [ConditionType::Running, ConditionType::Restarting] {
        conditions::set_false(st, c, reason, msg.clone(), now);
    }
    if conditions::set(st, ConditionType::Suspended, reason, msg.clone(), now) {
        p.events.push(PlannedEvent::normal(reason, msg));
    }
    st.conditions.retain(|c| c.type_ != ConditionType::ReplicaFailure);
    st.deadline = None;
    p.delete_pods.extend(
        pods.iter().filter(|o| o.metadata.deletion_timestamp.is_none()).map(|o| ObjectKey::of(&o.metadata)),
    );
    p.delete_services.extend(
        services
            .iter()
            .filter(|o| o.metadata.deletion_timestamp.is_none())
            .map(|o| ObjectKey::of(&o.metadata)),
    );
}

/// Why a job is held without pods: its `runPolicy.suspend`, or (with the operator's own
/// Workloads) a Kueue queue that has not admitted it.
pub(super) struct Why {
    pub reason: &'static str,
    pub message: String,
}

impl Why {
    pub fn of(job: &JobView, queue: Option<&str>) -> Why {
        match (queue, job.job.metadata.uid.as_deref()) {
            (Some(queue), Some(uid)) => Why {
                reason: crate::queue::REASON_QUEUED,
                message: format!(
                    "TFJob {} waits in Kueue's LocalQueue {queue} until Kueue admits its Workload {}.",
                    job.name,
                    crate::queue::workload_name(&job.name, uid)
                ),
            },
            _ => Why { reason: REASON_SUSPENDED, message: format!("TFJob {} is suspended.", job.name) },
        }
    }
}

fn succeeded(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
}

/// A pod not yet deleted that has not finished: it runs, or may be bound and run any moment.
fn holds_place(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// A suspended job's status once every pod has a delete accepted: `active: 0` everywhere.
pub(super) fn inactive(st: &TFJobStatus) -> TFJobStatus {
    let mut st = st.clone();
    for r in st.replica_statuses.values_mut() {
        r.active = 0;
    }
    st
}

/// Resumes a job whose `Suspended` condition holds while its spec no longer suspends it:
/// `Suspended` turns False and `startTime` becomes now, so the deadline counts from the
/// resume (as in batch/v1 Job and Kubeflow). The caller then plans the job as usual.
pub(super) fn resume(name: &str, st: &mut TFJobStatus, p: &mut Plan, now: Timestamp) {
    let msg = format!("TFJob {name} is resumed.");
    if conditions::set_false(st, ConditionType::Suspended, REASON_RESUMED, msg.clone(), now) {
        st.start_time = Some(Time(now));
        p.events.push(PlannedEvent::normal(REASON_RESUMED, msg));
    }
}

/// Warnings for a new job queued by Kueue (its `kueue.x-k8s.io/queue-name` label) or handed
/// to MultiKueue: replica keys Kueue does not see, and run-policy fields directly under
/// `spec`, which MultiKueue's copy of the job loses.
/// The operator's own Workload reads every key's type, whatever its case: no warning then.
pub(super) fn kueue_warnings(job: &TFJob, workloads: crate::queue::WorkloadsBy) -> Vec<PlannedEvent> {
    let queue = job.labels().get(names::KUEUE_QUEUE_LABEL);
    let multikueue = job.spec.managed_elsewhere().is_some();
    let mut out = Vec::new();
    if let Some(queue) = queue.filter(|_| workloads == crate::queue::WorkloadsBy::Kueue) {
        let odd: Vec<&str> = job
            .spec
            .tf_replica_specs
            .keys()
            .filter(|k| ReplicaType::parse(k).is_some_and(|t| t.as_str() != k.as_str()))
            .map(String::as_str)
            .collect();
        if !odd.is_empty() {
            out.push(PlannedEvent::warning(
                "ReplicaKeyNotSeenByKueue",
                format!(
                    "Kueue reads replica types only under the keys Chief, Master, PS, Worker and Evaluator: \
                     the pods of {} are not counted against the quota of queue {queue} and get none of its \
                     flavor's node selectors or tolerations; spell the keys exactly so",
                    odd.join(", ")
                ),
            ));
        }
    }
    let flat = job.spec.seed_shaped_fields();
    if (queue.is_some() || multikueue) && !flat.is_empty() {
        out.push(PlannedEvent::warning(
            "FieldsLostByMultiKueue",
            format!(
                "{} {} set directly under spec: if Kueue's MultiKueue runs this job in another cluster, its copy \
                 keeps only Kubeflow's fields and drops these; set them under spec.runPolicy instead",
                flat.iter().map(|f| format!("spec.{f}")).collect::<Vec<_>>().join(", "),
                if flat.len() == 1 { "is" } else { "are" }
            ),
        ));
    }
    out
}
