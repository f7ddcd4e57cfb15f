//! Replica types: their canonical names, case-insensitive keys and the job's replica list.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::types::{ReplicaSpec, RestartPolicy, TFJobSpec};

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

/// A spec the API server should have refused (the CRD's rules were bypassed or older).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "spec.tfReplicaSpecs has an unknown replica type {0:?}: use PS, Worker, Chief, Master or Evaluator"
    )]
    UnknownType(String),
    #[error("spec.tfReplicaSpecs names replica type {0} twice")]
    DuplicateType(ReplicaType),
}

/// One replica type of a job with its defaults applied.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Replicas<'a> {
    pub rtype: ReplicaType,
    /// `replicas`, defaulted to 1.
    pub count: i32,
    /// `restartPolicy`, defaulted to Never.
    pub restart_policy: RestartPolicy,
    pub spec: &'a ReplicaSpec,
}

impl TFJobSpec {
    /// The replica types by canonical type, with defaults applied; an error names a key the
    /// CRD's rules would have refused.
    pub fn replicas(&self) -> Result<BTreeMap<ReplicaType, Replicas<'_>>, SpecError> {
        let mut out = BTreeMap::new();
        for (key, spec) in &self.tf_replica_specs {
            let rtype = ReplicaType::parse(key).ok_or_else(|| SpecError::UnknownType(key.clone()))?;
            let replicas = Replicas {
                rtype,
                count: spec.replicas.unwrap_or(1).max(0),
                restart_policy: spec.restart_policy.unwrap_or(RestartPolicy::Never),
                spec,
            };
            if out.insert(rtype, replicas).is_some() {
                return Err(SpecError::DuplicateType(rtype));
            }
        }
        Ok(out)
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

    #[test]
    fn replicas_defaults_and_refusals() {
        let mut spec = TFJobSpec::default();
        spec.tf_replica_specs.insert("Ps".into(), ReplicaSpec::default());
        spec.tf_replica_specs.insert(
            "Worker".into(),
            ReplicaSpec {
                replicas: Some(3),
                restart_policy: Some(RestartPolicy::ExitCode),
                ..Default::default()
            },
        );
        let r = spec.replicas().unwrap();
        assert_eq!(r[&ReplicaType::PS].count, 1);
        assert_eq!(r[&ReplicaType::PS].restart_policy, RestartPolicy::Never);
        assert_eq!(r[&ReplicaType::Worker].count, 3);
        assert_eq!(r[&ReplicaType::Worker].restart_policy, RestartPolicy::ExitCode);

        spec.tf_replica_specs.insert("PS".into(), ReplicaSpec::default());
        assert_eq!(spec.replicas(), Err(SpecError::DuplicateType(ReplicaType::PS)));
        spec.tf_replica_specs.clear();
        spec.tf_replica_specs.insert("Launcher".into(), ReplicaSpec::default());
        assert_eq!(spec.replicas(), Err(SpecError::UnknownType("Launcher".into())));
    }
}
