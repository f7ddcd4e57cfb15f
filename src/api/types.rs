//! The TFJob spec types; their doc comments are the CRD's field descriptions, written for users.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::status::TFJobStatus;

/// A distributed TensorFlow training job: one pod and one headless service per replica,
/// with `TF_CONFIG` describing the cluster to every TensorFlow process.
///
/// Only `metadata.labels`, `metadata.annotations`, `activeDeadlineSeconds`,
/// `ttlSecondsAfterFinished` and `cleanPodPolicy` (directly under `spec` or under
/// `spec.runPolicy`) may be changed once the TFJob exists; any other change to `spec`
/// is refused by the API server.
// Several printcolumns repeat `type_`, which clippy mistakes for duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubeflow.org",
    version = "v1",
    kind = "TFJob",
    plural = "tfjobs",
    singular = "tfjob",
    shortname = "tfj",
    category = "kubeflow",
    namespaced,
    status = "TFJobStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "TFJob runs a distributed TensorFlow training job: one pod and one headless service per replica.",
    printcolumn(
        name = "State",
        type_ = "string",
        json_path = ".status.conditions[-1:].type",
        description = "The type of the job's latest condition"
    ),
    printcolumn(
        name = "Deadline",
        type_ = "string",
        json_path = ".status.deadline",
        description = "When activeDeadlineSeconds fails the job, if it is still running then"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.expires",
        description = "When ttlSecondsAfterFinished deletes the finished job"
    ),
    printcolumn(
        name = "Workers",
        type_ = "integer",
        json_path = ".status.replicaStatuses.Worker.active",
        description = "Running Worker replicas",
        priority = 1
    ),
    printcolumn(
        name = "PS",
        type_ = "integer",
        json_path = ".status.replicaStatuses.PS.active",
        description = "Running PS replicas",
        priority = 1
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct TFJobSpec {
    /// The replicas of the job by type: `PS`, `Worker`, `Chief`, `Master` or `Evaluator`,
    /// each written in any letter case (`Ps` and `PS` are the same type, and naming one type
    /// twice is refused). The job needs a `Chief` or a `Master` (at most one of them, with
    /// exactly 1 replica), or a `Worker` with at least one replica. Every pod template must
    /// have a container named `tensorflow`, and every container an image.
    /// Cannot be changed after the job is created.
    pub tf_replica_specs: BTreeMap<String, ReplicaSpec>,

    /// When the job counts as succeeded. Empty (the default): when the `Chief` or `Master`
    /// succeeds, or, without one, when worker 0 succeeds. `AllWorkers`: when every worker
    /// has succeeded. Cannot be changed after the job is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_policy: Option<SuccessPolicy>,

    /// When true, a worker's TF_CONFIG lists only the parameter servers and that worker
    /// itself, and worker failures do not fail the job, so workers may come and go.
    /// Defaults to false. Cannot be changed after the job is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_dynamic_worker: Option<bool>,

    /// Which pods to delete once the job has finished: `Running` (the default) deletes
    /// pods still running or pending (parameter servers and evaluators never exit on their
    /// own), `All` deletes every pod, `None` keeps them all. Each deleted pod's service goes
    /// with it. May be changed at any time, also after the job has finished; the new value
    /// is acted on at once. Set here it wins over `runPolicy.cleanPodPolicy`; remove it to
    /// fall back to that. Kubeflow's training-operator defaults to `None`; this operator
    /// keeps the original tf-operator default, `Running`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_pod_policy: Option<CleanPodPolicy>,

    /// Seconds after the job finished (its `status.completionTime`) at which the TFJob is
    /// deleted, together with its pods and services. Unset (the default) keeps it forever.
    /// May be changed at any time, also after the job has finished; the new expiry is
    /// acted on at once. Set here it wins over `runPolicy.ttlSecondsAfterFinished`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// Seconds after the job started (its `status.startTime`) at which a job that is still
    /// running is failed with reason `DeadlineExceeded`, whatever its replicas' restart
    /// policies. Unset (the default): no deadline. May be changed while the job runs:
    /// shortened into the past, the job fails at once; removed, it never fails for time.
    /// Set here it wins over `runPolicy.activeDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,

    /// How many restarts the job may make before it is failed with reason
    /// `BackoffLimitExceeded`: `N` allows N restarts (N+1 runs), as in a batch/v1 Job.
    /// Every restart counts: containers restarted in place (`OnFailure`, `Always`) and pods
    /// re-created (`ExitCode`, or `OnFailure` after the pod itself failed). Pods lost to
    /// eviction or deletion by others do not count. Unset (the default): unlimited.
    /// Set here it wins over `runPolicy.backoffLimit`. Cannot be changed after the job is
    /// created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub backoff_limit: Option<i32>,

    /// Kubeflow's run policy, for manifests written for Kubeflow's training-operator. A
    /// field set directly under `spec` wins over the same field here; both places may be
    /// set, and removing the one under `spec` falls back to the one here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_policy: Option<RunPolicy>,
}

/// Kubeflow's run policy. Each field has the same meaning as the field of the same name
/// directly under `spec`, which wins when both are set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunPolicy {
    /// Which pods to delete once the job has finished: `Running` (the default), `All` or
    /// `None`. May be changed at any time. `spec.cleanPodPolicy` wins when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_pod_policy: Option<CleanPodPolicy>,

    /// Seconds after the job finished at which the TFJob is deleted. Unset: never.
    /// May be changed at any time. `spec.ttlSecondsAfterFinished` wins when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// Seconds after the job started at which a running job is failed with reason
    /// `DeadlineExceeded`. Unset: no deadline. May be changed while the job runs.
    /// `spec.activeDeadlineSeconds` wins when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,

    /// How many restarts the job may make before it fails (`N` allows N restarts).
    /// Unset: unlimited. `spec.backoffLimit` wins when set. Cannot be changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub backoff_limit: Option<i32>,

    /// Gang scheduling. Not supported yet by this operator: a job that sets it is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_policy: Option<SchedulingPolicy>,

    /// Suspends the job. Not supported yet by this operator: `true` is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,

    /// The controller that runs this job. Empty or `kubeflow.org/training-operator` mean this
    /// operator; any other value is not supported yet and is refused. Cannot be changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
}

/// Gang-scheduling settings, as Kubeflow defines them. Not supported yet by this operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingPolicy {
    /// The least number of pods that must be schedulable together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<i32>,
    /// The scheduler queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The least resources the gang needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_resources: Option<BTreeMap<String, Quantity>>,
    /// The priority class of the gang.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class: Option<String>,
    /// How long to wait for the gang to be scheduled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_timeout_seconds: Option<i32>,
}

/// One replica type: how many pods, their template, and how failed pods are restarted.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSpec {
    /// How many pods of this type to run. Defaults to 1; 0 runs none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,

    /// The pod template. It needs a container named `tensorflow`, which gets the `TF_CONFIG`
    /// environment variable and, when it has none, a port `tfjob-port` (2222). The pod's
    /// own `restartPolicy` is replaced by this replica's `restartPolicy`.
    pub template: PodTemplateSpec,

    /// What to do when a pod of this type fails. `Never` (the default): the job fails.
    /// `OnFailure` and `Always`: the container restarts in place, and a pod that fails as a
    /// whole is re-created. `ExitCode`: the pod is re-created when the `tensorflow`
    /// container's exit code is 128 or more (killed by a signal, such as 137 for SIGKILL or
    /// OOM), and the job fails on codes 1 to 127. Restarts count against `backoffLimit`.
    /// Pods evicted or deleted by others are re-created under every policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
}

/// What to do when a replica's pod fails.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RestartPolicy {
    /// Restart the container in place, whatever its exit status.
    Always,
    /// Restart the container in place when it fails.
    OnFailure,
    /// Never restart: a failed pod fails the job.
    Never,
    /// Re-create the pod when the exit code is retryable (128 or more).
    ExitCode,
}

/// Which pods to delete once the job has finished.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CleanPodPolicy {
    /// Delete every pod.
    All,
    /// Delete pods still running or pending.
    Running,
    /// Keep every pod.
    None,
}

/// When a job without a chief counts as succeeded.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum SuccessPolicy {
    /// When worker 0 succeeds.
    #[default]
    #[serde(rename = "")]
    Default,
    /// When every worker has succeeded.
    AllWorkers,
}

impl std::fmt::Display for CleanPodPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CleanPodPolicy::All => "All",
            CleanPodPolicy::Running => "Running",
            CleanPodPolicy::None => "None",
        })
    }
}
