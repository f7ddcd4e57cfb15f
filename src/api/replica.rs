//! The job's replica list: each replica type with its defaults, and the specs refused.

use std::collections::BTreeMap;

use super::enums::{ReplicaType, RestartPolicy};
use super::types::{ReplicaSpec, TFJobSpec};

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
