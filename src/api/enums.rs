//! The API's leaf enums (they import nothing else of [`super`]): replica types with their
//! canonical names and case-insensitive keys, and the restart, clean-pod and success policies.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A TensorFlow replica type. The order is upstream's status order: Chief, Evaluator,
/// Master, PS, Worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReplicaType {
    Chief,
    Evaluator,
    Master,
    PS,
    Worker,
}

impl ReplicaType {
    /// Every type, in status order.
    pub const ALL: [ReplicaType; 5] = [Self::Chief, Self::Evaluator, Self::Master, Self::PS, Self::Worker];

    /// The canonical key used in `status.replicaStatuses` (`PS`, `Worker`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chief => "Chief",
            Self::Evaluator => "Evaluator",
            Self::Master => "Master",
            Self::PS => "PS",
            Self::Worker => "Worker",
        }
    }

    /// The lowercase form used in names, labels and `TF_CONFIG` (`ps`, `worker`, ...).
    pub fn lower(self) -> &'static str {
        match self {
            Self::Chief => "chief",
            Self::Evaluator => "evaluator",
            Self::Master => "master",
            Self::PS => "ps",
            Self::Worker => "worker",
        }
    }

    /// Reads a `tfReplicaSpecs` key in any letter case (`Ps`, `PS`, `ps`).
    pub fn parse(key: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.lower().eq_ignore_ascii_case(key))
    }

    /// Chief and Master decide the job's outcome when present.
    pub fn is_chief(self) -> bool {
        matches!(self, Self::Chief | Self::Master)
    }
}

impl fmt::Display for ReplicaType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl schemars::JsonSchema for ReplicaType {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ReplicaType".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "enum": ["Chief", "Evaluator", "Master", "PS", "Worker"] })
    }
}

impl Serialize for ReplicaType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ReplicaType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let key = String::deserialize(d)?;
        Self::parse(&key).ok_or_else(|| serde::de::Error::custom(format!("unknown replica type {key:?}")))
    }
}

// The three enums below have no doc comment on purpose: for an optional enum field, kube puts
// the enum's own description over the field's, so the values are documented on each field.

// What to do when a replica's pod fails (`ReplicaSpec::restart_policy`).
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

// Which pods to delete once the job has finished (`TFJobSpec::clean_pod_policy`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum CleanPodPolicy {
    /// Delete every pod.
    All,
    /// Delete pods still running or pending.
    Running,
    /// Keep every pod.
    None,
}

// When a job without a chief counts as succeeded (`TFJobSpec::success_policy`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_in_any_case() {
        let cases = [
            ("Ps", Some(ReplicaType::PS)),
            ("PS", Some(ReplicaType::PS)),
            ("ps", Some(ReplicaType::PS)),
            ("WORKER", Some(ReplicaType::Worker)),
            ("chief", Some(ReplicaType::Chief)),
            ("Master", Some(ReplicaType::Master)),
            ("evaluator", Some(ReplicaType::Evaluator)),
            ("Launcher", None),
            ("", None),
        ];
        for (key, want) in cases {
            assert_eq!(ReplicaType::parse(key), want, "{key}");
        }
    }

    #[test]
    fn canonical_and_lower_names() {
        let names: Vec<_> = ReplicaType::ALL.iter().map(|t| (t.as_str(), t.lower())).collect();
        assert_eq!(
            names,
            [
                ("Chief", "chief"),
                ("Evaluator", "evaluator"),
                ("Master", "master"),
                ("PS", "ps"),
                ("Worker", "worker")
            ]
        );
        assert!(ReplicaType::Chief.is_chief() && ReplicaType::Master.is_chief());
        assert!(!ReplicaType::Worker.is_chief() && !ReplicaType::PS.is_chief());
    }

    #[test]
    fn status_keys_serialize_canonically_and_read_any_case() {
        let t: ReplicaType = serde_json::from_str("\"Ps\"").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"PS\"");
        assert!(serde_json::from_str::<ReplicaType>("\"Launcher\"").is_err());
    }
}
