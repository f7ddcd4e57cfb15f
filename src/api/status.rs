//! The TFJob status types, written only by the operator through the status subresource.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::replica::ReplicaType;
use super::types::CleanPodPolicy;

/// What the operator observed and decided for a TFJob.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TFJobStatus {
    /// The job's conditions, oldest first: `Created`, then `Running` or `Restarting`, then
    /// `Succeeded` or `Failed`, which are final and exclusive.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<JobCondition>,

    /// Per replica type (always the canonical key: `PS`, `Worker`, `Chief`, `Master`,
    /// `Evaluator`), the pods by phase and the restarts made. After the job finishes they keep
    /// the counts of that moment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 5))]
    pub replica_statuses: BTreeMap<ReplicaType, ReplicaStatus>,

    /// When the operator first acted on the job; `activeDeadlineSeconds` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// When the job succeeded or failed; `ttlSecondsAfterFinished` counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,

    /// When the operator last changed this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reconcile_time: Option<Time>,

    /// The run policy the operator last acted on, after precedence (`spec` over
    /// `spec.runPolicy`) and defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_policy: Option<AppliedPolicy>,

    /// When the job fails for `activeDeadlineSeconds` if it is still running then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<Time>,

    /// When the finished job is deleted for `ttlSecondsAfterFinished`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<Time>,
}

/// The effective values of the updatable run-policy fields.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AppliedPolicy {
    /// The effective `cleanPodPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_pod_policy: Option<CleanPodPolicy>,
    /// The effective `ttlSecondsAfterFinished`; absent when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds_after_finished: Option<i32>,
    /// The effective `activeDeadlineSeconds`; absent when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
}

/// The pods of one replica type.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaStatus {
    /// Pods running (and not being deleted). Always written, so the entry is never empty.
    #[serde(default)]
    pub active: i32,
    /// Replicas that have succeeded, including those whose pods are gone since.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub succeeded: i32,
    /// Pods that failed and will not be restarted.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed: i32,
    /// Restarts counted against `backoffLimit`: containers restarted in place and pods
    /// re-created after a failure.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub restarts: i32,
    /// The replica indexes that have succeeded; they are not run again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub succeeded_indexes: Vec<i32>,
    /// Bookkeeping for `restarts`: per live pod, the restarts already counted, so no restart
    /// is counted twice across reconciles or operator restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counted_restarts: Vec<PodRestarts>,
}

/// Restarts already counted for one pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodRestarts {
    /// The pod's uid.
    pub uid: String,
    /// Restarts counted for it: its containers' restarts, plus one if it was re-created.
    pub count: i32,
}

/// A condition of the job.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobCondition {
    /// The condition type.
    #[serde(rename = "type")]
    pub type_: ConditionType,
    /// `True`, `False` or `Unknown`.
    pub status: ConditionStatus,
    /// A machine-readable reason, such as `TFJobRunning` or `DeadlineExceeded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A human-readable message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the condition was last written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    /// When the condition last changed status.
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
    /// The job is suspended (not supported yet).
    Suspended,
    /// Pods or services cannot be created; cleared once creation succeeds.
    ReplicaFailure,
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
