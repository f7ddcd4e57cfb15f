//! What a queued job and its Workload need next, decided from what was observed: a pure
//! function of (job, Workload, priority class, flavors, now), as the planner is.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::build::{spec_for, start_patch, stop_patch, workload_for};
use super::{waiting_in, workload_name};
use crate::api::workload::{
    ADMITTED, EVICTED, FINISHED, FlavorSpec, PodSet, QUOTA_RESERVED, REQUEUED, Workload, WorkloadSpec,
};
use crate::api::{ConditionType, TFJob};
use crate::plan::PlannedEvent;

/// A WorkloadPriorityClass named by the job's label, and its value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Priority {
    pub name: String,
    pub value: i32,
}

/// What a decision reads.
pub struct Observed<'a> {
    pub job: &'a TFJob,
    /// The job's Workload (by its fixed name), if it exists.
    pub workload: Option<&'a Workload>,
    /// The priority class of the job's label: `Ok(None)` without the label, `Err` when it
    /// could not be read (the message says why).
    pub priority: Result<Option<Priority>, String>,
    /// The ResourceFlavors the Workload's admission names (read only while it waits to start).
    pub flavors: &'a BTreeMap<String, FlavorSpec>,
    pub now: Timestamp,
}

/// One write, in the order given.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// A merge patch of the job (suspend and templates), fenced by its resourceVersion.
    PatchJob(Value),
    CreateWorkload(Box<Workload>),
    /// A merge patch of the Workload's spec, fenced by its resourceVersion.
    PatchWorkload(Value),
    /// A merge patch of the Workload's status, fenced by its resourceVersion.
    PatchWorkloadStatus(Value),
    /// An event on the job.
    Event(PlannedEvent),
}

/// The steps for a job labelled `kueue.x-k8s.io/queue-name` (none for any other job):
/// - finished: its Workload marked `Finished` (Kueue releases the quota at once);
/// - no Workload: the job suspended if it is not, then the Workload created;
/// - admitted: the job started with the assignment merged into its templates;
/// - evicted, deactivated or not admitted while it runs: the job stopped (suspended, its
///   templates restored); once no replica is `active`, the quota reservation cleared, as
///   Kueue's job controllers do, so Kueue hands the quota on and requeues the Workload;
/// - waiting: the Workload's spec kept in step with the job's pod sets, queue and priority.
pub fn decide(o: &Observed<'_>) -> Vec<Step> {
    let job = o.job;
    let Some(queue) = job.labels().get(crate::names::KUEUE_QUEUE_LABEL) else { return vec![] };
    let Some(uid) = job.metadata.uid.as_deref() else { return vec![] };
    if job.metadata.deletion_timestamp.is_some() {
        return vec![];
    }
    let started = waiting_in(job).is_none();
    let suspended = job.spec.is_suspended();
    let status = job.status.clone().unwrap_or_default();
    let name = workload_name(&job.name_any(), uid);
    let wl = o
        .workload
        .filter(|w| w.owner_references().iter().any(|r| r.controller == Some(true) && r.uid == uid));
    if o.workload.is_some() && wl.is_none() {
        return vec![Step::Event(PlannedEvent::warning(
            "WorkloadNotOwned",
            format!("Workload {name} exists and is not controlled by this TFJob; the job waits without pods"),
        ))];
    }
    if status.is_finished() {
        return match wl {
            Some(wl) if !wl.is(FINISHED) => vec![Step::PatchWorkloadStatus(finish_patch(job, wl, o.now))],
            _ => vec![],
        };
    }
    // A class that cannot be read now leaves an existing Workload's priority as it is.
    let priority = match (&o.priority, wl) {
        (Ok(p), _) => p.clone(),
        (Err(why), None) => {
            return vec![Step::Event(PlannedEvent::warning("WorkloadPriorityClassNotFound", why.clone()))];
        }
        (Err(_), Some(w)) => w
            .spec
            .priority_class_ref
            .as_ref()
            .zip(w.spec.priority)
            .map(|(r, value)| Priority { name: r.name.clone(), value }),
    };
    let priority = priority.as_ref();
    let Some(wl) = wl else {
        let mut steps = Vec::new();
        if started || !suspended {
            steps.push(Step::PatchJob(stop_patch(job, None)));
        }
        if let Some(new) = workload_for(job, queue, priority) {
            steps.push(Step::CreateWorkload(Box::new(new)));
        }
        return steps;
    };
    if wl.metadata.deletion_timestamp.is_some() {
        // It goes (a user deleted it): stop the job, then create a new one once it is gone.
        return if started || !suspended { vec![Step::PatchJob(stop_patch(job, Some(wl)))] } else { vec![] };
    }
    let runnable = wl.admission().is_some() && !wl.is(EVICTED) && wl.spec.active != Some(false);
    if runnable {
        if started && !suspended {
            return priority_in_step(wl, priority).into_iter().collect();
        }
        if !suspended {
            // Created unsuspended and admitted before it was suspended: templates change
            // only on a suspended job, so suspend it first.
            return vec![Step::PatchJob(stop_patch(job, Some(wl)))];
        }
        return match start_patch(job, wl, o.flavors) {
            Ok(patch) => {
                let cq =
                    wl.status.as_ref().and_then(|s| s.admission.as_ref()).map(|a| a.cluster_queue.as_str());
                let note =
                    format!("Admitted by ClusterQueue {} (Workload {name}): starting", cq.unwrap_or("?"));
                vec![Step::PatchJob(patch), Step::Event(PlannedEvent::normal("Admitted", note))]
            }
            Err(why) => vec![Step::Event(PlannedEvent::warning(
                "FailedToStart",
                format!("Workload {name} is admitted, but the job cannot start on it: {why}"),
            ))],
        };
    }
    if started || !suspended {
        let why = wl.condition(EVICTED).filter(|c| c.status == "True").map_or_else(
            || "its Workload is not admitted".to_string(),
            |c| format!("{}: {}", c.reason, c.message),
        );
        let note = format!("Stopped by Kueue (Workload {name}): {why}");
        return vec![
            Step::PatchJob(stop_patch(job, Some(wl))),
            Step::Event(PlannedEvent::normal("Stopped", note)),
        ];
    }
    let inactive = status.replica_statuses.values().all(|r| r.active == 0);
    if wl.is(QUOTA_RESERVED) {
        if wl.is(EVICTED) && inactive {
            return vec![Step::PatchWorkloadStatus(release_patch(wl, o.now))];
        }
        return vec![];
    }
    let want = spec_for(job, queue, priority);
    if !same_spec(&wl.spec, &want) {
        return vec![Step::PatchWorkload(spec_patch(wl, &want))];
    }
    vec![]
}

/// The priority of a running job's Workload, kept in step with the label's class (Kueue
/// lets a WorkloadPriorityClass's name and value change while the quota is reserved).
fn priority_in_step(wl: &Workload, priority: Option<&Priority>) -> Option<Step> {
    let p = priority?;
    let same = wl.spec.priority == Some(p.value)
        && wl.spec.priority_class_ref.as_ref().is_some_and(|r| r.name == p.name);
    (!same && wl.spec.priority_class_ref.is_some()).then(|| {
        Step::PatchWorkload(json!({
            "metadata": {"resourceVersion": wl.resource_version()},
            "spec": {"priorityClassRef": {"name": p.name}, "priority": p.value}
        }))
    })
}

/// What may differ between the Workload and the job while it waits: pod set names and
/// counts, each template's scheduling directives and metadata (the fields a suspended job's
/// templates may change), the queue and the priority.
fn same_spec(have: &WorkloadSpec, want: &WorkloadSpec) -> bool {
    fn key(s: &PodSet) -> impl PartialEq + '_ {
        let spec = s.template.spec.as_ref();
        (
            (&s.name, s.count),
            s.template.metadata.as_ref().map(|m| (&m.labels, &m.annotations)),
            spec.map(|p| (&p.node_selector, &p.tolerations, &p.scheduling_gates)),
        )
    }
    have.queue_name == want.queue_name
        && have.priority == want.priority
        && have.priority_class_ref == want.priority_class_ref
        && have.pod_sets.len() == want.pod_sets.len()
        && have.pod_sets.iter().zip(&want.pod_sets).all(|(a, b)| key(a) == key(b))
}

fn spec_patch(wl: &Workload, want: &WorkloadSpec) -> Value {
    json!({
        "metadata": {"resourceVersion": wl.resource_version()},
        "spec": {
            "podSets": want.pod_sets,
            "queueName": want.queue_name,
            "priorityClassRef": want.priority_class_ref,
            "priority": want.priority,
        }
    })
}

/// `conditions` with `c` set: a condition of its type replaced (its transition time kept
/// when the status does not change), else added.
fn with_condition(conditions: &[Condition], c: Condition) -> Vec<Condition> {
    let mut out: Vec<Condition> = conditions.to_vec();
    match out.iter_mut().find(|x| x.type_ == c.type_) {
        Some(x) => {
            let kept = (x.status == c.status).then(|| x.last_transition_time.clone());
            *x = c;
            if let Some(t) = kept {
                x.last_transition_time = t;
            }
        }
        None => out.push(c),
    }
    out
}

fn condition(
    wl: &Workload,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: if status { "True" } else { "False" }.to_string(),
        reason: reason.to_string(),
        message: message.to_string(),
        last_transition_time: Time(now),
        observed_generation: wl.metadata.generation,
    }
}

fn conditions(wl: &Workload) -> &[Condition] {
    wl.status.as_ref().map_or(&[], |s| s.conditions.as_slice())
}

/// The job finished: `Finished` True, reason `Succeeded` or `Failed`, the job's message.
fn finish_patch(job: &TFJob, wl: &Workload, now: Timestamp) -> Value {
    let st = job.status.clone().unwrap_or_default();
    let (reason, c) = if st.is_true(ConditionType::Failed) {
        ("Failed", st.condition(ConditionType::Failed))
    } else {
        ("Succeeded", st.condition(ConditionType::Succeeded))
    };
    let message = c.and_then(|c| c.message.clone()).unwrap_or_default();
    let cs = with_condition(conditions(wl), condition(wl, FINISHED, true, reason, &message, now));
    json!({"metadata": {"resourceVersion": wl.resource_version()}, "status": {"conditions": cs}})
}

/// An evicted Workload whose job has no replica active: the quota reservation cleared
/// (`QuotaReserved` and `Admitted` False, `admission` removed) and `Requeued` set as Kueue's
/// own job controllers set it (True after a preemption or a node failure; otherwise Kueue
/// sets it once its backoff ends).
fn release_patch(wl: &Workload, now: Timestamp) -> Value {
    let (reason, message) =
        wl.condition(EVICTED).map(|c| (c.reason.clone(), c.message.clone())).unwrap_or_default();
    let requeued = matches!(reason.as_str(), "Preempted" | "NodeFailures");
    let mut cs = conditions(wl).to_vec();
    for c in [
        condition(wl, QUOTA_RESERVED, false, "Pending", &message, now),
        condition(wl, ADMITTED, false, "NoReservation", "The workload has no reservation", now),
        condition(wl, REQUEUED, requeued, &reason, &message, now),
    ] {
        cs = with_condition(&cs, c);
    }
    json!({
        "metadata": {"resourceVersion": wl.resource_version()},
        "status": {"conditions": cs, "admission": null}
    })
}
