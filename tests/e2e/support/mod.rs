//! Helpers shared by the e2e tests: the operator process and the identity it runs as
//! (`deploy/`), the suite's RBAC audit, TFJob fixtures, the namespace's objects, waits, and
//! metrics.

pub mod audit;
pub mod deploy;
mod jobs;
mod metrics;
mod objects;
mod operator;
mod wait;

pub use jobs::*;
pub use metrics::*;
pub use objects::*;
pub use operator::*;
pub use wait::*;
