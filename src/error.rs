//! The crate's one error type: each variant names the operation that failed.

/// An operator error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serializing the CRD: {0}")]
    CrdSerialize(#[source] serde_json::Error),
    #[error("building the CRD schema: {0}")]
    CrdSchema(String),
    #[error("writing the status of TFJob {job}: {source}")]
    PatchStatus { job: String, source: kube::Error },
    #[error("not writing the status of TFJob {job}: it changed since it was read; planning again")]
    StaleStatus { job: String },
    #[error("reading TFJob {job}: {source}")]
    ReadJob { job: String, source: kube::Error },
    #[error("the reconcile took longer than {0:?} and was abandoned")]
    ReconcileTimeout(std::time::Duration),
    #[error("TFJob {job} is gone")]
    JobGone { job: String },
    #[error("creating {kind} {name} (will be retried): {source}")]
    Create { kind: String, name: String, source: kube::Error },
    #[error("deleting pod {name}: {source}")]
    DeletePod { name: String, source: kube::Error },
    #[error("deleting service {name}: {source}")]
    DeleteService { name: String, source: kube::Error },
    #[error("deleting TFJob {job} (ttlSecondsAfterFinished): {source}")]
    DeleteJob { job: String, source: kube::Error },
    #[error("deleting PodGroup {name}: {source}")]
    DeletePodGroup { name: String, source: kube::Error },
    #[error("--gang-scheduling=native: {0}")]
    GangApiMissing(&'static str),
    #[error("reading the API server's resources of {api}: {source}")]
    Discovery { api: &'static str, source: kube::Error },
    #[error("not writing: this process no longer holds the leader lease")]
    NotLeader,
    #[error("building the pods and services of TFJob {job}: {message}")]
    BuildObjects { job: String, message: String },
    #[error("TFJob has no {0}")]
    MissingField(&'static str),
}

impl Error {
    /// A bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::CrdSerialize(_) | Error::CrdSchema(_) => "crd",
            Error::PatchStatus { .. } => "patch_status",
            Error::StaleStatus { .. } => "stale_status",
            Error::Create { .. } => "create",
            Error::JobGone { .. } => "job_gone",
            Error::ReadJob { .. } => "read_job",
            Error::ReconcileTimeout(_) => "reconcile_timeout",
            Error::DeletePod { .. } => "delete_pod",
            Error::DeleteService { .. } => "delete_service",
            Error::DeleteJob { .. } => "delete_job",
            Error::DeletePodGroup { .. } => "delete_pod_group",
            Error::GangApiMissing(_) | Error::Discovery { .. } => "gang_api",
            Error::MissingField(_) => "missing_field",
            Error::BuildObjects { .. } => "build_objects",
            Error::NotLeader => "not_leader",
        }
    }
}
