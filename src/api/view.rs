//! The validated view of a TFJob: what the planner and the builders act on, resolved once per
//! reconcile (replica types with defaults, the effective run policy, who holds the master role).

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::enums::ReplicaType;
use super::replica::{Replicas, SpecError};
use super::{EffectivePolicy, TFJob};

/// A TFJob with its spec resolved: the raw object is kept only for its metadata (name,
/// namespace, uid, owner references); configuration is read from the resolved fields.
#[derive(Clone, Debug)]
pub struct JobView<'a> {
    pub job: &'a TFJob,
    pub name: String,
    pub namespace: String,
    /// The replica types with `replicas` and `restartPolicy` defaulted.
    pub replicas: BTreeMap<ReplicaType, Replicas<'a>>,
    /// The run policy after precedence (`spec` over `spec.runPolicy`) and defaults.
    pub policy: EffectivePolicy,
    /// Whether the job has a Chief or a Master, which then decides the outcome.
    pub has_chief: bool,
    /// Replicas of every type together.
    pub total_replicas: i64,
}

impl<'a> JobView<'a> {
    /// Resolves `job`'s spec; an error names a replica key the CRD's rules would refuse.
    pub fn new(job: &'a TFJob) -> Result<JobView<'a>, SpecError> {
        let replicas = job.spec.replicas()?;
        Ok(JobView {
            job,
            name: job.name_any(),
            namespace: job.namespace().unwrap_or_default(),
            has_chief: replicas.keys().any(|t| t.is_chief()),
            total_replicas: replicas.values().map(|r| i64::from(r.count)).sum(),
            policy: job.spec.effective_policy(),
            replicas,
        })
    }

    /// The replica type that decides success: the Chief or Master, else the Workers.
    pub fn deciding_type(&self) -> ReplicaType {
        self.replicas.keys().copied().find(|t| t.is_chief()).unwrap_or(ReplicaType::Worker)
    }

    /// Whether replica `rtype`/`index` carries the `job-role: master` label: the chief or
    /// master, or worker 0 of a job without one.
    pub fn is_master_role(&self, rtype: ReplicaType, index: i32) -> bool {
        rtype.is_chief() || (!self.has_chief && rtype == ReplicaType::Worker && index == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ReplicaSpec, TFJobSpec};

    fn job(types: &[(&str, i32)]) -> TFJob {
        let mut spec = TFJobSpec::default();
        for (k, n) in types {
            spec.tf_replica_specs
                .insert(k.to_string(), ReplicaSpec { replicas: Some(*n), ..Default::default() });
        }
        let mut j = TFJob::new("j", spec);
        j.metadata.namespace = Some("ns".into());
        j
    }

    #[test]
    fn resolves_once() {
        let j = job(&[("Ps", 2), ("worker", 3)]);
        let v = JobView::new(&j).unwrap();
        assert_eq!((v.name.as_str(), v.namespace.as_str()), ("j", "ns"));
        assert_eq!(v.total_replicas, 5);
        assert!(!v.has_chief);
        assert_eq!(v.deciding_type(), ReplicaType::Worker);
        assert!(v.is_master_role(ReplicaType::Worker, 0));
        assert!(!v.is_master_role(ReplicaType::Worker, 1));
        assert!(!v.is_master_role(ReplicaType::PS, 0));

        let j = job(&[("Chief", 1), ("Worker", 2)]);
        let v = JobView::new(&j).unwrap();
        assert!(v.has_chief);
        assert_eq!(v.deciding_type(), ReplicaType::Chief);
        assert!(v.is_master_role(ReplicaType::Chief, 0));
        assert!(!v.is_master_role(ReplicaType::Worker, 0));

        let j = job(&[("Master", 1)]);
        assert_eq!(JobView::new(&j).unwrap().deciding_type(), ReplicaType::Master);
        assert!(JobView::new(&job(&[("Launcher", 1)])).is_err());
    }
}
