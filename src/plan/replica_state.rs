//! What one replica type's pods say: phases, restarts to count, failures and disruptions.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::api::{PodRestarts, ReplicaStatus, RestartPolicy};
use crate::names::CONTAINER_NAME;

/// A pod or service the plan refers to by name, with the uid it saw (a delete precondition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectKey {
    pub name: String,
    pub uid: String,
}

impl ObjectKey {
    pub fn of(meta: &ObjectMeta) -> ObjectKey {
        ObjectKey { name: meta.name.clone().unwrap_or_default(), uid: meta.uid.clone().unwrap_or_default() }
    }
}

/// How a container ended: its name, exit code, the reason the kubelet gave and its
/// termination message (at most [`TERMINATION_MESSAGE_MAX`] bytes of it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerExit {
    pub name: String,
    pub code: i32,
    pub reason: Option<String>,
    pub message: Option<String>,
}

/// The most of a container's termination message a job's failure message keeps, in bytes.
pub const TERMINATION_MESSAGE_MAX: usize = 512;

/// `text` cut to at most `max` bytes on a character boundary, with `…` when cut, and with
/// surrounding whitespace trimmed.
pub fn bounded(text: &str, max: usize) -> String {
    let text = text.trim();
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

impl ContainerExit {
    /// `pod P container C exited with code N (Reason): message`.
    pub fn describe(&self, pod: &str) -> String {
        format!(
            "pod {pod} container {} exited with code {}{}{}",
            self.name,
            self.code,
            self.reason.as_ref().map_or(String::new(), |r| format!(" ({r})")),
            self.message.as_ref().map_or(String::new(), |m| format!(": {m}"))
        )
    }
}

/// A replica failure that fails the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub pod: String,
    /// The failed container.
    pub container: Option<ContainerExit>,
    /// The pod's own reason, when no container terminated.
    pub pod_reason: Option<String>,
}

/// What one replica type's pods say, before any decision about the job.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub status: ReplicaStatus,
    /// Restarts counted in this observation (not before).
    pub new_restarts: i32,
    /// Failures that fail the job.
    pub failures: Vec<Failure>,
    /// Failed pods to delete so they are re-created: restarts and disruptions.
    pub to_recreate: Vec<ObjectKey>,
    /// Pods whose index is outside `0..replicas`.
    pub out_of_range: Vec<ObjectKey>,
    /// Indexes that have no pod at all and have not succeeded.
    pub missing: Vec<i32>,
    /// A pod's container that exited non-zero (now or before its last restart), with the
    /// pod's name: the failure a backoff-limit message names.
    pub last_exit: Option<(String, ContainerExit)>,
}

/// Whether a failed pod was evicted or otherwise disrupted rather than failing by itself.
pub fn is_disrupted(pod: &Pod) -> bool {
    let Some(s) = &pod.status else { return false };
    s.reason.as_deref() == Some("Evicted")
        || s.conditions.iter().flatten().any(|c| c.type_ == "DisruptionTarget" && c.status == "True")
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending")
}

fn container_statuses(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    let s = pod.status.as_ref();
    s.and_then(|s| s.init_container_statuses.as_ref())
        .into_iter()
        .flatten()
        .chain(s.and_then(|s| s.container_statuses.as_ref()).into_iter().flatten())
}

/// Restarts made in place by the kubelet, over all containers.
fn in_place_restarts(pod: &Pod) -> i32 {
    container_statuses(pod).map(|c| c.restart_count).sum()
}

/// The failed container: the `tensorflow` container if it exited non-zero, else the first
/// container that did.
pub fn failed_container(pod: &Pod) -> Option<ContainerExit> {
    let terminated = |c: &ContainerStatus| {
        let t = c
            .state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .or_else(|| c.last_state.as_ref().and_then(|s| s.terminated.as_ref()))?;
        (t.exit_code != 0).then(|| ContainerExit {
            name: c.name.clone(),
            code: t.exit_code,
            reason: t.reason.clone(),
            message: t
                .message
                .as_deref()
                .filter(|m| !m.trim().is_empty())
                .map(|m| bounded(m, TERMINATION_MESSAGE_MAX)),
        })
    };
    let statuses = || pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).into_iter().flatten();
    statuses()
        .filter(|c| c.name == CONTAINER_NAME)
        .find_map(terminated)
        .or_else(|| statuses().find_map(terminated))
}

/// The `tensorflow` container's exit code, when it has terminated.
fn tensorflow_exit_code(pod: &Pod) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == CONTAINER_NAME)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
        .map(|t| t.exit_code)
}

/// Exit codes 128 and above (killed by a signal) are retried under `ExitCode`.
pub fn is_retryable(exit_code: i32) -> bool {
    exit_code >= 128
}

/// Whether the pod's deletion was requested at or before `t`: its `deletionTimestamp` minus
/// its grace period.
fn deleted_by(pod: &Pod, t: Timestamp) -> bool {
    let Some(at) = &pod.metadata.deletion_timestamp else { return false };
    let grace = pod.metadata.deletion_grace_period_seconds.unwrap_or(0);
    at.0.checked_sub(SignedDuration::from_secs(grace)).is_ok_and(|requested| requested <= t)
}

/// Observes the pods (all of this type, controlled by the job) of a replica type.
/// `tolerate_failures` is `enableDynamicWorker` for workers: failed workers do not fail the job.
/// `run_start` is the job's `startTime`: a pod whose deletion was requested by then belongs
/// to a run that a suspend ended, and its end (often Failed, killed by the deletion) is
/// neither a failure nor a restart.
pub fn observe(
    count: i32,
    restart: RestartPolicy,
    tolerate_failures: bool,
    pods: &[(&Pod, i32)],
    old: &ReplicaStatus,
    run_start: Timestamp,
) -> Observed {
    let ledger: BTreeMap<&str, i32> =
        old.counted_restarts.iter().map(|p| (PodRestarts::key(&p.uid), p.count)).collect();
    let mut succeeded = old.completed_indexes.clone();
    let mut out = Observed::default();
    let mut counted = Vec::new();
    let mut present = BTreeSet::new();
    for &(pod, index) in pods {
        let pref = ObjectKey::of(&pod.metadata);
        if index < 0 || index >= count {
            out.out_of_range.push(pref);
            continue;
        }
        present.insert(index);
        let terminating = pod.metadata.deletion_timestamp.is_some();
        if out.last_exit.is_none() {
            out.last_exit = failed_container(pod).map(|c| (pref.name.clone(), c));
        }
        let mut due = in_place_restarts(pod);
        match phase(pod) {
            "Succeeded" => {
                succeeded.insert(index);
            }
            "Failed" if is_disrupted(pod) && !terminating => out.to_recreate.push(pref.clone()),
            "Failed" if is_disrupted(pod) || deleted_by(pod, run_start) => {}
            "Failed" => {
                let retry = match restart {
                    RestartPolicy::Never => false,
                    RestartPolicy::ExitCode => tensorflow_exit_code(pod).is_some_and(is_retryable),
                    RestartPolicy::OnFailure | RestartPolicy::Always => true,
                };
                if retry {
                    due += 1;
                    if !terminating {
                        out.to_recreate.push(pref.clone());
                    }
                } else {
                    out.status.failed += 1;
                    if !tolerate_failures {
                        out.failures.push(Failure {
                            pod: pref.name.clone(),
                            container: failed_container(pod),
                            pod_reason: pod.status.as_ref().and_then(|s| s.reason.clone()),
                        });
                    }
                }
            }
            "Running" if !terminating => out.status.active += 1,
            _ => {}
        }
        let key = PodRestarts::key(&pref.uid);
        let before = ledger.get(key).copied().unwrap_or(0);
        out.new_restarts += (due - before).max(0);
        if due.max(before) > 0 {
            counted.push(PodRestarts { uid: key.to_string(), count: due.max(before) });
        }
    }
    out.missing = (0..count).filter(|&i| !present.contains(&i) && !succeeded.contains(i)).collect();
    out.status.restarts = old.restarts + out.new_restarts;
    out.status.succeeded = i32::try_from(succeeded.len()).unwrap_or(i32::MAX);
    out.status.completed_indexes = succeeded;
    counted.sort_by(|a, b| a.uid.cmp(&b.uid));
    out.status.counted_restarts = counted;
    out
}
