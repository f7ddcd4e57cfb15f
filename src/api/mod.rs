//! The `kubeflow.org/v1` TFJob API: Rust types, defaults, run-policy precedence and the CRD;
//! and the PodGroup type native gang scheduling writes ([`pod_group`]).
//!
//! Nothing here talks to the API server; the CRD's validation rules live in [`rules`].

pub mod contract;
mod crd;
mod enums;
mod indexes;
pub mod pod_group;
mod policy;
mod replica;
pub mod rules;
mod status;
mod types;
mod view;
pub mod workload;

pub use crd::{crd, crd_yaml, validation_policy, validation_policy_yaml};
pub use enums::{CleanPodPolicy, ReplicaType, RestartPolicy, SuccessPolicy};
pub use indexes::IndexSet;
pub use pod_group::PodGroup;
pub use policy::EffectivePolicy;
pub use replica::{Replicas, SpecError};
pub use status::{
    AppliedPolicy, ConditionStatus, ConditionType, JobCondition, PodRestarts, ReplicaStatus, TFJobStatus,
};
pub use types::{ReplicaSpec, RunPolicy, SchedulingPolicy, TFJob, TFJobSpec};
pub use view::JobView;
