//! The TFJob spec types; their doc comments are the CRD's field descriptions, written for users.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::enums::{CleanPodPolicy, RestartPolicy, SuccessPolicy};
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
        name = "Not-Started",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"PodsNotStarted\")].reason",
        description = "Why a pod has not started (the PodsNotStarted condition's reason)",
        priority = 1
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
    /// have a container named `tensorflow`, and every container an image. Kueue counts a
    /// replica type only when its key is spelled exactly `Chief`, `Master`, `PS`, `Worker`
    /// or `Evaluator`: use these spellings for a job queued by Kueue. Required; cannot be
    /// changed after the job is created, except the pod templates' scheduling directives
    /// while the job is suspended (see `template`). Each pod gets a `TF_CONFIG`; beside
    /// parameter servers an `Evaluator` is TensorFlow's sidecar evaluator (only itself in its
    /// cluster, left out of the others'); the annotation `tfjob.kubeflow.org/tf-config:
    /// kubeflow` gives Kubeflow's exact `TF_CONFIG` instead.
    pub tf_replica_specs: BTreeMap<String, ReplicaSpec>,

    /// When the job counts as succeeded:
    /// - `""` (the default, also when unset): when the `Chief` or `Master` succeeds or, in a
    ///   job without one, when worker 0 succeeds.
    /// - `AllWorkers`: in a job without a `Chief` or `Master`, when every worker has
    ///   succeeded; a `Chief` or `Master` still decides alone.
    ///
    /// Cannot be changed after the job is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_policy: Option<SuccessPolicy>,

    /// When true, a worker's `TF_CONFIG` lists only the parameter servers and that worker
    /// itself, and worker failures do not fail the job, so workers may come and go.
    /// Defaults to false. Cannot be changed after the job is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_dynamic_worker: Option<bool>,

    /// Which pods to delete once the job has finished (succeeded or failed):
    /// - `Running` (the default): the pods still running or pending, such as parameter
    ///   servers and evaluators, which never exit on their own; pods that succeeded or
    ///   failed are kept.
    /// - `All`: every pod.
    /// - `None`: none; pods and services are all kept.
    ///
    /// A pod's headless service is deleted with it and kept while the pod is kept. May be
    /// changed at any time, also after the job has finished: the new value is acted on at
    /// once (changing `None` to `All` deletes what remains). Set here, it wins over
    /// `runPolicy.cleanPodPolicy`; remove it to fall back to that. Kubeflow's
    /// training-operator defaults to `None`; this operator keeps the original tf-operator
    /// default, `Running`, so set `None` to keep every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_pod_policy: Option<CleanPodPolicy>,

    /// Seconds after the job finished (its `status.completionTime`) at which the TFJob is
    /// deleted, together with its pods and services; 0 deletes it as soon as it finishes.
    /// Unset (the default): the TFJob is kept until you delete it. May be changed at any
    /// time, also after the job has finished; the new expiry (`status.expires`) is acted on
    /// at once. Set here, it wins over `runPolicy.ttlSecondsAfterFinished`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// Seconds after the job started (its `status.startTime`) at which a job that is still
    /// running is failed with reason `DeadlineExceeded`, whatever its replicas' restart
    /// policies; at least 1. Unset (the default): no deadline. May be changed while the job
    /// runs, and the new deadline (`status.deadline`) is acted on at once: shortened into
    /// the past, the job fails at once; removed, it never fails for time. Set here, it wins
    /// over `runPolicy.activeDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,

    /// How many restarts the job may make before it is failed with reason
    /// `BackoffLimitExceeded`: `N` allows N restarts (N+1 runs), as in a batch/v1 Job, so 0
    /// fails the job at its first restart. Every restart counts: containers restarted in
    /// place (`OnFailure`, `Always`) and pods re-created (`ExitCode`, or `OnFailure` and
    /// `Always` after the pod itself failed). Pods lost to eviction or deletion by others do
    /// not count. Unset (the default): unlimited. Set here, it wins over
    /// `runPolicy.backoffLimit`. Cannot be changed after the job is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub backoff_limit: Option<i32>,

    /// Kubeflow's run policy, for manifests written for Kubeflow's training-operator. Its
    /// fields mean the same as the fields of the same name directly under `spec`. A field
    /// set directly under `spec` wins over the same field here; both places may be set, and
    /// removing the one under `spec` falls back to the one here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_policy: Option<RunPolicy>,
}

/// Kubeflow's run policy. Each field has the same meaning as the field of the same name
/// directly under `spec`, which wins when both are set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunPolicy {
    /// Which pods to delete once the job has finished (succeeded or failed):
    /// - `Running` (the default): the pods still running or pending, such as parameter
    ///   servers and evaluators, which never exit on their own; pods that succeeded or
    ///   failed are kept.
    /// - `All`: every pod.
    /// - `None`: none; pods and services are all kept.
    ///
    /// A pod's headless service is deleted with it and kept while the pod is kept. May be
    /// changed at any time, also after the job has finished: the new value is acted on at
    /// once. `spec.cleanPodPolicy` wins when set. Kubeflow's training-operator defaults to
    /// `None`; this operator keeps the original tf-operator default, `Running`, so set
    /// `None` to keep every pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_pod_policy: Option<CleanPodPolicy>,

    /// Seconds after the job finished (its `status.completionTime`) at which the TFJob is
    /// deleted, together with its pods and services; 0 deletes it as soon as it finishes.
    /// Unset (the default): the TFJob is kept until you delete it. May be changed at any
    /// time, also after the job has finished; the new expiry is acted on at once.
    /// `spec.ttlSecondsAfterFinished` wins when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i32>,

    /// Seconds after the job started (its `status.startTime`) at which a job that is still
    /// running is failed with reason `DeadlineExceeded`; at least 1. Unset (the default): no
    /// deadline. May be changed while the job runs, and the new deadline is acted on at
    /// once. `spec.activeDeadlineSeconds` wins when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,

    /// How many restarts the job may make before it is failed with reason
    /// `BackoffLimitExceeded`: `N` allows N restarts (N+1 runs), so 0 fails the job at its
    /// first restart. Containers restarted in place and pods re-created after a failure
    /// count; pods lost to eviction or deletion by others do not. Unset (the default):
    /// unlimited. `spec.backoffLimit` wins when set. Cannot be changed after the job is
    /// created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub backoff_limit: Option<i32>,

    /// Gang scheduling: all of the job's pods start together, or none. Read only when the
    /// operator runs with `--gang-scheduling=native`, where every TFJob (with or without this
    /// field) gets a Kubernetes PodGroup (`scheduling.k8s.io/v1alpha2`) named after it, and
    /// kube-scheduler binds none of its pods until `minAvailable` of them fit at once; unset
    /// (the default), the gang is all the job's pods. Ignored without gang scheduling. Cannot
    /// be changed after the job is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduling_policy: Option<SchedulingPolicy>,

    /// Whether the job is suspended; `false` by default (also when unset). A job created
    /// suspended gets no pods and no services, only the conditions `Created` and `Suspended`,
    /// and no `startTime`. Setting it to `true` on a running job deletes all its pods and
    /// services (whatever `cleanPodPolicy` says; these deletions are not failures and do not
    /// count against `backoffLimit`), sets every `replicaStatuses[*].active` to 0 and
    /// `Running` to `False`, and stops the deadline. Setting it back to `false` resumes the
    /// job: `startTime` becomes the time of the resume, so `activeDeadlineSeconds` counts from
    /// there, and pods are created from the pod templates as they are then; replicas that
    /// already succeeded are not run again. May be changed at any time (Kueue does so to
    /// admit and preempt the job); on a finished job it changes nothing. While the job is
    /// suspended, the templates' labels, annotations, `nodeSelector`, `tolerations` and
    /// `schedulingGates` may be changed too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,

    /// The controller that runs this job:
    /// - `kubeflow.org/training-operator`, or empty (the default, also when unset): this
    ///   operator.
    /// - `kueue.x-k8s.io/multikueue`: Kueue's MultiKueue runs the job in another cluster and
    ///   copies its status back; this operator leaves the job entirely alone (no pods, status,
    ///   events, metrics or TTL). Kueue's copy keeps only Kubeflow's fields, so the run-policy
    ///   fields written directly under `spec` are lost there: write them under `runPolicy`.
    ///
    /// The API server refuses any other value. Cannot be changed after the job is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
}

/// Gang-scheduling settings, as Kubeflow defines them; this operator reads `minAvailable`
/// and `priorityClass`, and refuses the fields only Volcano or scheduler-plugins read.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingPolicy {
    /// How many of the job's pods must fit at once for any of them to be scheduled (the
    /// PodGroup's `gang.minCount`). Defaults to the replicas of all types together; at least 1
    /// and at most that sum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_available: Option<i32>,
    /// Volcano's queue for the job. Refused: native gang scheduling has no queues (Kueue
    /// queues TFJobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<String>,
    /// The least resources (by resource name, such as `cpu` or `nvidia.com/gpu`) that Volcano
    /// or scheduler-plugins wait for before scheduling the gang. Refused: native gang
    /// scheduling has no such setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_resources: Option<BTreeMap<String, Quantity>>,
    /// The name of a PriorityClass for the gang: the PodGroup's `priorityClassName` (used by
    /// kube-scheduler only with its `WorkloadAwarePreemption` feature gate) and the
    /// `priorityClassName` of every pod whose template names none. Unset by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class: Option<String>,
    /// How many seconds scheduler-plugins waits for the whole gang. Refused: kube-scheduler's
    /// gang scheduling waits a fixed 5 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_timeout_seconds: Option<i32>,
}

/// One replica type: how many pods, their template, and how failed pods are restarted.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaSpec {
    /// How many pods of this type to run, with indexes 0 to replicas-1 (pod and service
    /// `<job>-<type>-<index>`). Defaults to 1; 0 runs none. A `Chief` or `Master` must have
    /// exactly 1. Cannot be changed after the job is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,

    /// The pod template of this replica type. It needs a container named `tensorflow`,
    /// which gets the `TF_CONFIG` environment variable (unless the job has a single replica
    /// in all) and, when it has none, a port `tfjob-port` (2222); every container needs an
    /// image. The pod's own `restartPolicy` is replaced as this replica's `restartPolicy`
    /// says. Cannot be changed after the job is created, except while the job is suspended
    /// (`runPolicy.suspend` true before or after the update): then its `metadata.labels`,
    /// `metadata.annotations`, `spec.nodeSelector`, `spec.tolerations` and
    /// `spec.schedulingGates` may be changed, added or removed, as Kueue does when it admits
    /// the job to a flavor; pods created after the resume carry them.
    pub template: Box<PodTemplateSpec>,

    /// What to do when a pod of this type fails:
    /// - `Never` (the default): the job fails.
    /// - `OnFailure`: the kubelet restarts a failed container in place, and a pod that fails
    ///   as a whole is re-created.
    /// - `Always`: the kubelet restarts the container in place whenever it exits, even
    ///   successfully, so the replica never succeeds; a pod that fails as a whole is
    ///   re-created.
    /// - `ExitCode`: the pod is re-created when the `tensorflow` container's exit code is
    ///   128 or more (killed by a signal, such as 137 for SIGKILL or out of memory); any
    ///   other failure, such as exit codes 1 to 127, fails the job.
    ///
    /// Every restart, in place or by re-creation, counts against `backoffLimit`. Pods
    /// evicted, preempted or deleted by others are re-created under every policy and do not
    /// count. The pod's own `restartPolicy` becomes `Always` or `OnFailure` for those two,
    /// `Never` for `Never` and `ExitCode`. Cannot be changed after the job is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart_policy: Option<RestartPolicy>,
}
