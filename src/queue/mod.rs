//! Queueing by the operator's own Kueue Workload (`--kueue-workloads=operator`), pure: which
//! jobs wait for admission, the Workload built for a job, and the steps that keep the job and
//! its Workload in step (create it, start the job on admission, stop it on eviction and hand
//! the quota back, mark it finished). The watches and writes are in `controller::workloads`.

mod build;
mod decide;
#[cfg(test)]
mod tests;

pub use build::{start_patch, stop_patch, workload_for};
pub use decide::{Observed, Priority, Step, decide};

use kube::ResourceExt;

use crate::api::TFJob;
use crate::names;

/// Which controller writes the Kueue Workload of a job labelled `kueue.x-k8s.io/queue-name`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WorkloadsBy {
    /// Kueue's built-in `kubeflow.org/tfjob` integration: Kueue suspends, admits and
    /// evicts the job by patching `runPolicy.suspend` and the templates; the operator follows.
    #[default]
    Kueue,
    /// This operator: it creates the Workload, holds the job without pods until Kueue admits
    /// it, starts and stops it, and marks the Workload finished. For Kueue with its
    /// `kubeflow.org/tfjob` integration switched off.
    Operator,
}

/// Label Kueue's admission puts on each pod template: the pod set it belongs to. A template
/// of a queued job carries it only while the job runs on an admission.
pub const PODSET_LABEL: &str = "kueue.x-k8s.io/podset";
/// Labels Kueue's admission puts on each pod template: the LocalQueue and the ClusterQueue.
pub const LOCAL_QUEUE_LABEL: &str = "kueue.x-k8s.io/local-queue-name";
pub const CLUSTER_QUEUE_LABEL: &str = "kueue.x-k8s.io/cluster-queue-name";
/// Label naming the job's WorkloadPriorityClass.
pub const PRIORITY_CLASS_LABEL: &str = "kueue.x-k8s.io/priority-class";
/// Label Kueue reads on a Workload: the uid of the job it stands for.
pub const JOB_UID_LABEL: &str = "kueue.x-k8s.io/job-uid";
/// The Suspended condition's reason while a queued job waits for Kueue.
pub const REASON_QUEUED: &str = "WaitingInQueue";

/// The queue a job waits in, when it is labelled for Kueue and not running on an admission
/// (its templates do not all carry [`PODSET_LABEL`], which only the admission's patch adds
/// and a stop removes). With [`WorkloadsBy::Operator`] such a job gets no pods, whatever its
/// `runPolicy.suspend` says.
pub fn waiting_in(job: &TFJob) -> Option<&str> {
    let queue = job.labels().get(names::KUEUE_QUEUE_LABEL)?;
    let started = !job.spec.tf_replica_specs.is_empty()
        && job.spec.tf_replica_specs.values().all(|r| {
            r.template
                .metadata
                .as_ref()
                .and_then(|m| m.labels.as_ref())
                .is_some_and(|l| l.contains_key(PODSET_LABEL))
        });
    (!started).then_some(queue.as_str())
}

/// The Workload's name: `tfjob-<job>-<5 hex digits of the job's uid>` (a new job of the same
/// name gets another), cut to fit the 253 characters of a name.
pub fn workload_name(job: &str, uid: &str) -> String {
    // FNV-1a: stable across builds and processes (std's hasher is not).
    let hash = uid.bytes().fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193));
    let job: String = job.chars().take(240).collect();
    format!("tfjob-{job}-{:05x}", hash & 0xf_ffff)
}
