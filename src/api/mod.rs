//! The `kubeflow.org/v1` TFJob API: Rust types, defaults, run-policy precedence and the CRD.
//!
//! Nothing here talks to the API server; the CRD's validation rules live in [`rules`].

pub mod contract;
mod crd;
mod indexes;
mod policy;
mod replica;
pub mod rules;
mod scheduling;
mod status;
mod types;
mod view;

pub use crd::{crd, crd_yaml};
pub use indexes::IndexSet;
pub use policy::EffectivePolicy;
pub use replica::{ReplicaType, Replicas, SpecError};
pub use status::{
    AppliedPolicy, ConditionStatus, ConditionType, JobCondition, PodRestarts, ReplicaStatus, TFJobStatus,
};
pub use types::{
    CleanPodPolicy, ReplicaSpec, RestartPolicy, RunPolicy, SchedulingPolicy, SuccessPolicy, TFJob, TFJobSpec,
};
pub use view::JobView;
