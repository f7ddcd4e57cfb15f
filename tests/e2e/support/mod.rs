//! Helpers shared by the e2e tests: the operator process, TFJob fixtures, the namespace's
//! objects, waits, and metrics.

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
