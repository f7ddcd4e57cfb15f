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
    #[error("building the status patch of TFJob {job}: {source}")]
    StatusPatch { job: String, source: serde_json::Error },
    #[error("not writing the status of TFJob {job}: it changed since it was read; planning again")]
    StaleStatus { job: String },
    #[error("reading TFJob {job}: {source}")]
    ReadJob { job: String, source: kube::Error },
    #[error("TFJob {job} is gone")]
    JobGone { job: String },
    #[error("creating {kind} {name} (will be retried): {source}")]
    Create { kind: String, name: String, source: kube::Error },
    #[error("deleting pod {name}: {source}")]
    DeletePod { name: String, source: kube::Error },
    #[error("deleting service {name}: {source}")]
    DeleteService { name: String, source: kube::Error },
    #[error("deleting the pods of TFJob {job} (cleanPodPolicy): {source}")]
    DeletePodsOf { job: String, source: kube::Error },
    #[error("deleting the services of TFJob {job} (cleanPodPolicy): {source}")]
    DeleteServicesOf { job: String, source: kube::Error },
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
    #[error("decoding TFJob {job} from the job cache: {source}")]
    CachedJob { job: String, source: serde_json::Error },
    #[error("patching TFJob {job} for its Kueue Workload: {source}")]
    PatchJob { job: String, source: kube::Error },
    #[error("writing Kueue Workload {name}: {source}")]
    PatchWorkload { name: String, source: kube::Error },
    #[error("reading Kueue's {kind} {name}: {source}")]
    ReadKueue { kind: &'static str, name: String, source: kube::Error },
}

impl Error {
    /// How long the API server asked to wait before trying again: a 429 with
    /// `details.retryAfterSeconds` (an API server whose storage is still initializing after
    /// a restart answers 429 with 1 s).
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        let source = match self {
            Error::PatchStatus { source, .. }
            | Error::ReadJob { source, .. }
            | Error::Create { source, .. }
            | Error::DeletePod { source, .. }
            | Error::DeleteService { source, .. }
            | Error::DeletePodsOf { source, .. }
            | Error::DeleteServicesOf { source, .. }
            | Error::DeleteJob { source, .. }
            | Error::DeletePodGroup { source, .. }
            | Error::PatchJob { source, .. }
            | Error::PatchWorkload { source, .. }
            | Error::ReadKueue { source, .. } => source,
            _ => return None,
        };
        let kube::Error::Api(status) = source else { return None };
        let seconds = status.details.as_ref()?.retry_after_seconds;
        (status.code == 429 && seconds > 0).then(|| std::time::Duration::from_secs(u64::from(seconds)))
    }

    /// A bounded label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::CrdSerialize(_) | Error::CrdSchema(_) => "crd",
            Error::PatchStatus { .. } | Error::StatusPatch { .. } => "patch_status",
            Error::StaleStatus { .. } => "stale_status",
            Error::Create { .. } => "create",
            Error::JobGone { .. } => "job_gone",
            Error::ReadJob { .. } => "read_job",
            Error::DeletePod { .. } => "delete_pod",
            Error::DeleteService { .. } => "delete_service",
            Error::DeletePodsOf { .. } => "delete_pods_of",
            Error::DeleteServicesOf { .. } => "delete_services_of",
            Error::DeleteJob { .. } => "delete_job",
            Error::DeletePodGroup { .. } => "delete_pod_group",
            Error::GangApiMissing(_) | Error::Discovery { .. } => "gang_api",
            Error::MissingField(_) => "missing_field",
            Error::CachedJob { .. } => "cached_job",
            Error::BuildObjects { .. } => "build_objects",
            Error::NotLeader => "not_leader",
            Error::PatchJob { .. } => "patch_job",
            Error::PatchWorkload { .. } => "patch_workload",
            Error::ReadKueue { .. } => "read_kueue",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use kube::core::response::StatusDetails;

    fn api(code: u16, retry: Option<u32>) -> kube::Error {
        let mut s = Status::failure("storage is (re)initializing", "TooManyRequests").with_code(code);
        s.details = retry.map(|r| StatusDetails {
            name: String::new(),
            group: String::new(),
            kind: String::new(),
            uid: String::new(),
            causes: Vec::new(),
            retry_after_seconds: r,
        });
        kube::Error::Api(Box::new(s))
    }

    #[test]
    fn only_a_429_with_retry_after_asks_for_a_wait() {
        let job = || "j".to_string();
        let cases = [
            (Error::ReadJob { job: job(), source: api(429, Some(1)) }, Some(1)),
            (Error::PatchStatus { job: job(), source: api(429, Some(3)) }, Some(3)),
            (Error::PatchStatus { job: job(), source: api(429, None) }, None),
            (Error::PatchStatus { job: job(), source: api(429, Some(0)) }, None),
            (Error::ReadJob { job: job(), source: api(503, Some(1)) }, None),
            (Error::JobGone { job: job() }, None),
        ];
        for (err, want) in cases {
            assert_eq!(err.retry_after(), want.map(std::time::Duration::from_secs), "{err}");
        }
    }
}
