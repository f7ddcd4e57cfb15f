//! The TFJob status types, written only by the operator through the status subresource.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::enums::{CleanPodPolicy, ReplicaType};
use super::indexes::IndexSet;

/// What the operator observed and decided for a TFJob. Written only by the operator, through
/// the status subresource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TFJobStatus {
    /// The job's conditions, in the order they were added. A job gets `Created`, then
    /// `Running` or `Restarting` (each replaces the other), then `Succeeded` or `Failed`,
    /// which are final and exclusive; when the job finishes, `Running` or `Restarting` turns
    /// `False`. `ReplicaFailure` is present while pods or services cannot be created.
    /// `Suspended` is `True` while the job is suspended (`Running` is then `False`) and turns
    /// `False` when it is resumed. `PodsNotStarted` and `InvalidStartupDeadline` are this
    /// operator's own diagnoses: they are kept first in the list, so the last condition is
    /// always one of Kubeflow's (the `State` column), and clients that read only Kubeflow's
    /// types are not affected. `type` lists what each type means.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<JobCondition>,

    /// Per replica type, the pods by phase and the restarts made, under the canonical key
    /// (`PS`, `Worker`, `Chief`, `Master` or `Evaluator`, whatever the letter case in
    /// `spec.tfReplicaSpecs`). Updated while the job runs; once it has finished they keep the
    /// counts of that moment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 5))]
    pub replica_statuses: BTreeMap<ReplicaType, ReplicaStatus>,

    /// When the operator first acted on the job, or when it was last resumed after being
    /// suspended; `activeDeadlineSeconds` counts from here. Absent while a job created
    /// suspended waits for its first resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the job succeeded or failed; `ttlSecondsAfterFinished` counts from here. Absent
    /// while the job runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// When the operator last changed this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconcile_time: Option<Time>,

    /// The run policy the operator acts on: the updatable run-policy fields after precedence
    /// (a field directly under `spec` wins over the same field under `spec.runPolicy`) and
    /// defaults. A change of an effective value gets one Normal event: `CleanPodPolicyUpdated`,
    /// `TTLUpdated` or `DeadlineUpdated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_policy: Option<AppliedPolicy>,

    /// When the job fails with reason `DeadlineExceeded` if it is still running then:
    /// `startTime` plus the effective `activeDeadlineSeconds`. Absent when there is no
    /// deadline and while the job is suspended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,

    /// When the finished TFJob is deleted: `completionTime` plus the effective
    /// `ttlSecondsAfterFinished`. Absent while the job runs and when there is no TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,

    /// When the job fails with reason `StartupDeadlineExceeded` unless every pod has started
    /// running by then: the job's creation (or its last resume) plus the effective startup
    /// deadline (the `tfjob.kubeflow.org/startup-deadline-seconds` annotation, else the
    /// operator's `--startup-deadline-seconds`). Absent when there is none, and once every
    /// pod has started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_deadline: Option<Time>,

    /// When every pod of the job had started (running, or already finished) since the job's
    /// creation or its last resume: the latest container start among them (when the operator
    /// saw them all started, if the pods do not say). The startup deadline no longer applies
    /// after. Without a pending startup deadline it waits, as replica counts do, up to 10 s
    /// for the job's next status change (its `Succeeded`, for instance) instead of a write of
    /// its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_started_time: Option<Time>,
}

/// The effective values of the updatable run-policy fields.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedPolicy {
    /// The effective `cleanPodPolicy`: `Running` (the default, when neither
    /// `spec.cleanPodPolicy` nor `spec.runPolicy.cleanPodPolicy` is set), `All` or `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_pod_policy: Option<CleanPodPolicy>,
    /// The effective `ttlSecondsAfterFinished`; absent when unset (the default: the finished
    /// TFJob is kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i32>,
    /// The effective `activeDeadlineSeconds`; absent when unset (the default: no deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    /// The effective startup deadline in seconds: the job's
    /// `tfjob.kubeflow.org/startup-deadline-seconds` annotation when it is a valid value,
    /// else the operator's `--startup-deadline-seconds`; absent when neither is set (the
    /// default: no startup deadline). A change gets a Normal `StartupDeadlineUpdated` event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_deadline_seconds: Option<i64>,
}

/// The pods of this replica type: how many run, have succeeded and have failed, and the
/// restarts made.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Pods running (in phase Running and not being deleted). Always written, 0 included, so
    /// the entry is never empty; 0 for every type from the moment the job is suspended.
    #[serde(default)]
    pub active: i32,
    /// Replicas that have succeeded, including those whose pods are gone since. Absent
    /// when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub succeeded: i32,
    /// Pods that failed and are not re-created (`restartPolicy` `Never`, or `ExitCode` with
    /// a failure that is not retried). Absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed: i32,
    /// Restarts counted against `backoffLimit`: containers restarted in place and pods
    /// re-created after a failure. Absent when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: i32,
    /// The replica indexes that have succeeded, in the form of batch/v1 Job's
    /// `completedIndexes`: ascending, comma-separated, three or more consecutive indexes as
    /// `first-last` (`"0-3,7"`). They are not run again, even when their pods are gone.
    #[serde(default, skip_serializing_if = "IndexSet::is_empty")]
    pub completed_indexes: IndexSet,
    /// Earlier versions of the operator kept the succeeded indexes here, as a list. Still
    /// read, never written: the operator's next status write replaces it with
    /// `completedIndexes`.
    #[serde(default, skip_serializing)]
    pub succeeded_indexes: Vec<i32>,
    /// Bookkeeping for `restarts`: per live pod that has restarted, the restarts already
    /// counted, so that no restart is counted twice across reconciles or operator restarts.
    /// At most one entry per replica of the type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counted_restarts: Vec<PodRestarts>,
}

impl ReplicaStatus {
    /// The status with what earlier versions wrote in their own form read into today's:
    /// `succeededIndexes` into `completedIndexes`, full pod uids in `countedRestarts`
    /// shortened to their [`PodRestarts::key`].
    pub fn upgraded(mut self) -> ReplicaStatus {
        let legacy = std::mem::take(&mut self.succeeded_indexes);
        self.completed_indexes.extend(legacy);
        for p in &mut self.counted_restarts {
            p.uid = PodRestarts::key(&p.uid).to_string();
        }
        self
    }
}

/// Restarts already counted for one pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodRestarts {
    /// The start of the pod's uid (its first 13 characters: 48 random bits), which tells the
    /// pods of one job apart.
    pub uid: String,
    /// Restarts counted for it: its containers' restarts in place, plus one if it failed and
    /// is re-created.
    pub count: i32,
}

impl PodRestarts {
    /// Characters of a pod's uid kept in `countedRestarts`.
    pub const KEY_LEN: usize = 13;

    /// The part of a pod's uid that `countedRestarts` keeps.
    pub fn key(uid: &str) -> &str {
        uid.get(..Self::KEY_LEN).unwrap_or(uid)
    }
}

/// A condition of the job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobCondition {
    /// The condition type; every condition has one (there is no default):
    /// - `Created`: the operator has accepted the job.
    /// - `Running`: the `Chief` or `Master` (or, without one, at least one worker) is
    ///   running.
    /// - `Restarting`: failed replicas are being restarted; `Running` replaces it once they
    ///   run again.
    /// - `Succeeded`: the job has succeeded (final).
    /// - `Failed`: the job has failed (final); the reason says why.
    /// - `ReplicaFailure`: pods or services cannot be created: reason `FailedCreatePod` when
    ///   the API server refuses the template (fix the TFJob), `CreateRetrying` when the
    ///   cluster has failed the creates for 30 s for a reason not the job's (an admission
    ///   webhook that cannot be called, a 5xx or 429, no answer; they are retried); with the
    ///   API server's message. Removed once the creates go through.
    /// - `Suspended`: `True` (reason `TFJobSuspended`) while `runPolicy.suspend` holds the
    ///   job without pods; `False` (reason `TFJobResumed`) once it is resumed.
    /// - `PodsNotStarted`: a pod has not started for longer than the grace (30 s) because it
    ///   cannot be scheduled, its image cannot be pulled, its container cannot be created, or
    ///   it is in a crash loop; the reason is the scheduler's or the kubelet's
    ///   (`Unschedulable`, `ErrImagePull`, `ImagePullBackOff`, `InvalidImageName`,
    ///   `CreateContainerConfigError`, `CreateContainerError`, `CrashLoopBackOff`) and the
    ///   message names the replica, the pod and what it was told. Removed once no pod is
    ///   stuck, and when the job finishes.
    /// - `InvalidStartupDeadline`: the `tfjob.kubeflow.org/startup-deadline-seconds`
    ///   annotation is not a whole number of seconds from 1 on (reason `InvalidAnnotation`);
    ///   it is ignored until fixed. Removed once it is valid or gone.
    #[serde(rename = "type")]
    pub type_: ConditionType,
    /// Whether the condition holds: `True` or `False`. Kubernetes conditions may also be
    /// `Unknown`, which this operator never writes.
    pub status: ConditionStatus,
    /// A machine-readable reason: `TFJobCreated`, `TFJobRunning`, `TFJobRestarting`,
    /// `TFJobSucceeded`, `TFJobFailed` (a replica failed), `BackoffLimitExceeded`,
    /// `DeadlineExceeded`, `StartupDeadlineExceeded`, `InvalidTFJobSpec`, `FailedCreatePod`,
    /// `CreateRetrying`, `TFJobSuspended` or `TFJobResumed`; for `PodsNotStarted` and `InvalidStartupDeadline`,
    /// see `type`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human-readable message, such as `TFJob mnist is running.`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the condition was last written: added, or its status, reason or message changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    /// When the condition last changed status: it was added, or turned `False`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}

/// The condition types of a TFJob.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ConditionType {
    /// The operator has accepted the job.
    Created,
    /// The deciding replicas (chief, or workers) are running.
    Running,
    /// Replicas are being restarted after failures.
    Restarting,
    /// The job has succeeded (final).
    Succeeded,
    /// The job has failed (final).
    Failed,
    /// The job is suspended: it has no pods until it is resumed.
    Suspended,
    /// Pods or services cannot be created; cleared once creation succeeds.
    ReplicaFailure,
    /// A pod has not started for longer than the grace; the reason says why.
    PodsNotStarted,
    /// The startup-deadline annotation is malformed and ignored.
    InvalidStartupDeadline,
}

/// A condition's status. Stored as the strings `True`, `False` and `Unknown`; any other stored
/// string reads as `Unknown`, so an unexpected value never makes the job unreadable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl Serialize for ConditionStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ConditionStatus {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match String::deserialize(d)?.as_str() {
            "True" => ConditionStatus::True,
            "False" => ConditionStatus::False,
            _ => ConditionStatus::Unknown,
        })
    }
}

impl JsonSchema for ConditionStatus {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ConditionStatus".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        // A plain string, as Kubeflow's CRD has it.
        schemars::json_schema!({ "type": "string" })
    }
}

impl TFJobStatus {
    /// The condition of this type, if present.
    pub fn condition(&self, t: ConditionType) -> Option<&JobCondition> {
        self.conditions.iter().find(|c| c.type_ == t)
    }

    /// Whether a condition of this type is present with status True.
    pub fn is_true(&self, t: ConditionType) -> bool {
        self.condition(t).is_some_and(|c| c.status == ConditionStatus::True)
    }

    /// The status with every replica status [`ReplicaStatus::upgraded`].
    pub fn upgraded(mut self) -> TFJobStatus {
        for r in self.replica_statuses.values_mut() {
            *r = std::mem::take(r).upgraded();
        }
        self
    }

    /// Whether the job has succeeded or failed.
    pub fn is_finished(&self) -> bool {
        self.is_true(ConditionType::Succeeded) || self.is_true(ConditionType::Failed)
    }
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_status_round_trips_and_tolerates_unknown_strings() {
        for (text, want) in [
            ("\"True\"", ConditionStatus::True),
            ("\"False\"", ConditionStatus::False),
            ("\"Unknown\"", ConditionStatus::Unknown),
            ("\"maybe\"", ConditionStatus::Unknown),
        ] {
            let got: ConditionStatus = serde_json::from_str(text).unwrap();
            assert_eq!(got, want, "{text}");
        }
        assert_eq!(serde_json::to_string(&ConditionStatus::False).unwrap(), "\"False\"");
    }
}
