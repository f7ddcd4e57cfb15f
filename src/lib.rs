//! tfjob-operator: runs Kubeflow TFJobs (`kubeflow.org/v1`) on Kubernetes.
//!
//! The pure core (no client, no clock, no async): [`api`] (types, CRD and its rules),
//! [`names`] (names, labels, owner references), [`tf_config`], [`build`] (pods and services)
//! and [`plan`] (what to do for a job at an instant). Around it: [`controller`] (watches,
//! observe, plan, apply), [`apply`] (every API write), [`leader`] (the Lease), [`http`] and
//! [`metrics`] (health and Prometheus) and [`cli`] (flags).

pub mod api;
pub mod apply;
pub mod build;
pub mod cli;
pub mod controller;
pub mod error;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod names;
pub mod plan;
pub mod tf_config;

pub use error::Error;
