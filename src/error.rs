//! The crate's one error type: each variant names the operation that failed.

/// An operator error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serializing the CRD: {0}")]
    CrdSerialize(#[source] serde_json::Error),
    #[error("building the CRD schema: {0}")]
    CrdSchema(String),
}
