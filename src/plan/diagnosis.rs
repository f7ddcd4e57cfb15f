//! Why a job's pods have not started: each pod's reason read from its status (the
//! scheduler's `PodScheduled` condition, the kubelet's container `waiting` state), the grace
//! before a reason counts, and the `PodsNotStarted` condition with its one event per change.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::PlannedEvent;
use super::replica_state::bounded;
use crate::api::{ConditionStatus, ConditionType, ReplicaType, TFJobStatus};
use crate::names;

/// How long a pod may be stuck, counted from its creation, before it is diagnosed: long
/// enough for a scheduler retry and a first image pull, short enough to be read at once.
pub const GRACE: SignedDuration = SignedDuration::from_secs(30);
/// The most of the scheduler's or kubelet's message a diagnosis keeps, in bytes.
pub const MESSAGE_MAX: usize = 512;
/// The event published when the diagnosis changes.
pub const EVENT_REASON: &str = "PodsNotStarted";

/// The kubelet's waiting reasons that mean a container will not start by itself.
const WAITING_REASONS: [&str; 7] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
    "RunContainerError",
];

/// One pod that has not started, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stuck {
    pub rtype: ReplicaType,
    pub index: i32,
    pub pod: String,
    /// The scheduler's (`Unschedulable`) or the kubelet's reason.
    pub reason: String,
    pub message: String,
    /// When the grace ends: the pod's creation plus [`GRACE`].
    pub due: Timestamp,
    /// For a crash-looping container running again: when it has run for [`GRACE`] and the
    /// diagnosis ends.
    pub until: Option<Timestamp>,
}

/// Why a pod has not started: the reason, the message, and (for a crash loop running again)
/// until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Why {
    pub reason: String,
    pub message: String,
    pub until: Option<Timestamp>,
}

impl Why {
    fn new(reason: &str, message: &str) -> Why {
        Why { reason: reason.into(), message: bounded(message, MESSAGE_MAX), until: None }
    }
}

impl Stuck {
    /// `Worker 0 (pod j-worker-0): Unschedulable: 0/4 nodes are available: ...`.
    pub fn describe(&self) -> String {
        let msg = if self.message.is_empty() { String::new() } else { format!(": {}", self.message) };
        format!("{} {} (pod {}): {}{msg}", self.rtype, self.index, self.pod, self.reason)
    }
}

/// The job's pods with a reason not to start, in replica order, due or not.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Diagnosis {
    pub pods: Vec<Stuck>,
}

fn containers(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    let s = pod.status.as_ref();
    s.and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .chain(s.and_then(|s| s.container_statuses.as_ref()).into_iter().flatten())
}

/// A container running again after a failure, for less than [`GRACE`] at `now`: a crash loop
/// between two back-offs, so the diagnosis does not come and go with every restart.
fn running_again(c: &ContainerStatus, now: Timestamp) -> Option<Why> {
    let started = c.state.as_ref()?.running.as_ref()?.started_at.as_ref()?.0;
    let last = c.last_state.as_ref()?.terminated.as_ref()?;
    let until = started.checked_add(GRACE).ok()?;
    (c.restart_count > 0 && last.exit_code != 0 && now < until).then(|| Why {
        until: Some(until),
        ..Why::new(
            "CrashLoopBackOff",
            &format!(
                "container {}: restarted {} time(s), exited with code {} last; running again since {started}",
                c.name, c.restart_count, last.exit_code
            ),
        )
    })
}

/// Why `pod` has not started, if its status says at `now`: a container waiting for a reason of
/// [`WAITING_REASONS`] (with the container's name), a crash-looping container running again
/// for less than the grace, else the scheduler's `Unschedulable`.
pub fn why(pod: &Pod, now: Timestamp) -> Option<Why> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let waiting = containers(pod).find_map(|c| {
        let w = c.state.as_ref()?.waiting.as_ref()?;
        let reason = w.reason.as_deref().filter(|r| WAITING_REASONS.contains(r))?;
        let msg = w.message.as_deref().unwrap_or_default();
        Some(Why::new(reason, &format!("container {}: {msg}", c.name)))
    });
    waiting.or_else(|| containers(pod).find_map(|c| running_again(c, now))).or_else(|| {
        let c = status.conditions.iter().flatten().find(|c| c.type_ == "PodScheduled")?;
        (c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
            .then(|| Why::new("Unschedulable", c.message.as_deref().unwrap_or_default()))
    })
}

/// Diagnoses the job's pods at `now`. A pod without a creation time is not diagnosed.
pub fn diagnose(pods: &[&Pod], now: Timestamp) -> Diagnosis {
    let mut out: Vec<Stuck> = pods
        .iter()
        .filter_map(|pod| {
            let (rtype, index) = names::replica_of(&pod.metadata)?;
            let created = pod.metadata.creation_timestamp.as_ref()?.0;
            let Why { reason, message, until } = why(pod, now)?;
            Some(Stuck {
                rtype,
                index,
                pod: pod.metadata.name.clone().unwrap_or_default(),
                reason,
                message,
                due: created.checked_add(GRACE).ok()?,
                until,
            })
        })
        .collect();
    out.sort_by(|a, b| (a.rtype, a.index, &a.pod).cmp(&(b.rtype, b.index, &b.pod)));
    Diagnosis { pods: out }
}

impl Diagnosis {
    /// The pods stuck past their grace at `now`.
    pub fn due(&self, now: Timestamp) -> impl Iterator<Item = &Stuck> {
        self.pods.iter().filter(move |s| s.due <= now)
    }

    /// The next instant the diagnosis changes by time alone, after `now`: a pod's grace ends,
    /// or a crash-looping container has run long enough.
    pub fn next_due(&self, now: Timestamp) -> Option<Timestamp> {
        self.pods.iter().flat_map(|s| [Some(s.due), s.until]).flatten().filter(|&d| d > now).min()
    }

    /// The condition message: the first stuck pod, and how many more there are.
    fn message(first: &Stuck, more: usize) -> String {
        match more {
            0 => first.describe(),
            n => format!("{}; {n} more pod(s) have not started", first.describe()),
        }
    }
}

/// Image-pull reasons alternate while the kubelet backs off: one diagnosis for both.
fn family(reason: &str) -> &str {
    match reason {
        "ErrImagePull" | "ImagePullBackOff" => "ImagePull",
        "CrashLoopBackOff" | "RunContainerError" => "Crash",
        r => r,
    }
}

/// What identifies a diagnosis for its event: the reason's family and the pod, read back from
/// a condition's message (`Worker 0 (pod NAME): ...`).
fn identity<'a>(reason: &'a str, message: &'a str) -> (&'a str, &'a str) {
    (family(reason), message.split_once("): ").map_or(message, |(head, _)| head))
}

/// Sets, updates or removes `PodsNotStarted` from the pods stuck at `now`; a new or changed
/// diagnosis (another pod, another kind of reason) gets one Warning event.
pub fn record(st: &mut TFJobStatus, d: &Diagnosis, now: Timestamp, events: &mut Vec<PlannedEvent>) {
    let mut due = d.due(now);
    let Some(first) = due.next() else {
        clear(st);
        return;
    };
    let msg = Diagnosis::message(first, due.count());
    let before = st
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::PodsNotStarted && c.status == ConditionStatus::True)
        .map(|c| {
            let (r, m) = (c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default());
            let (f, p) = identity(&r, &m);
            (f.to_string(), p.to_string())
        });
    let changed =
        before.as_ref().is_none_or(|(f, p)| identity(&first.reason, &msg) != (f.as_str(), p.as_str()));
    set_first(st, ConditionType::PodsNotStarted, &first.reason, msg.clone(), now);
    if changed {
        events.push(PlannedEvent::warning(EVENT_REASON, msg));
    }
}

/// Removes `PodsNotStarted`.
pub fn clear(st: &mut TFJobStatus) {
    st.conditions.retain(|c| c.type_ != ConditionType::PodsNotStarted);
}

/// Sets one of the operator's own conditions, kept before Kubeflow's so the last condition
/// stays one of theirs: unchanged when it holds with the same reason and message, updated in
/// place (keeping its transition time) when either differs, else added first. Returns
/// whether anything changed.
pub fn set_first(
    st: &mut TFJobStatus,
    type_: ConditionType,
    reason: &str,
    message: String,
    now: Timestamp,
) -> bool {
    let message = match super::conditions::update_held(st, type_, reason, message, now) {
        Ok(changed) => return changed,
        Err(message) => message,
    };
    st.conditions.retain(|c| c.type_ != type_);
    let at = st.conditions.iter().take_while(|c| !is_kubeflow(c.type_)).count();
    st.conditions.insert(at, super::conditions::holding(type_, reason, message, now));
    true
}

/// Whether a condition type is one of Kubeflow's (the others are this operator's own).
fn is_kubeflow(t: ConditionType) -> bool {
    !matches!(t, ConditionType::PodsNotStarted | ConditionType::InvalidStartupDeadline)
}
