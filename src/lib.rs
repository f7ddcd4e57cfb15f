//! tfjob-operator: runs Kubeflow TFJobs (`kubeflow.org/v1`) on Kubernetes.
//!
//! The pure core (no client, no clock, no async): [`api`] (types, CRD and its rules, the
//! validated view of a job), [`names`] (names, labels, owner references), [`tf_config`],
//! [`objects`] (pods and services) and [`plan`] (what to do for a job at an instant). Around
//! it: [`controller`] (the reconcile pipeline: observe, plan, apply, report), [`writer`]
//! (every API write of the controller, behind the leadership gate), [`leader`] (the Lease and
//! the gate), [`transport`] (the client's deadline and gate layers), [`fence`] (the
//! controller's connections, shut once the lease is lost), [`http`] and [`metrics`]
//! (health and Prometheus) and [`cli`] (flags).
//! `ARCHITECTURE.md` walks through it.

pub mod api;
pub mod cli;
pub mod controller;
pub mod error;
pub mod fault_point;
pub mod fence;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod objects;
pub mod plan;
pub mod queue;
pub mod tf_config;
pub mod transport;
pub mod writer;

pub use error::Error;
