//! cleanPodPolicy: which pods and services a finished job gives up.

use k8s_openapi::api::core::v1::{Pod, Service};

use super::PodSelection;
use super::replica_state::ObjectKey;
use crate::api::CleanPodPolicy;

fn is_done(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// The pods and services to delete for a finished job. `Running` deletes the pods not yet
/// Succeeded or Failed and keeps every service until the job is deleted (a finished job's
/// services select no ready pod; Kubeflow keeps those of its finished pods too); `All`
/// deletes every pod and service; `None` nothing. Objects already being deleted are left
/// alone, so nothing is deleted twice.
pub fn to_delete(
    policy: CleanPodPolicy,
    pods: &[&Pod],
    services: &[&Service],
) -> (Vec<ObjectKey>, Vec<ObjectKey>) {
    let live =
        |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| m.deletion_timestamp.is_none();
    let pods_out = pods
        .iter()
        .filter(|p| live(&p.metadata))
        .filter(|p| match policy {
            CleanPodPolicy::All => true,
            CleanPodPolicy::Running => !is_done(p),
            CleanPodPolicy::None => false,
        })
        .map(|p| ObjectKey::of(&p.metadata))
        .collect();
    let services_out = match policy {
        CleanPodPolicy::All => {
            services.iter().filter(|s| live(&s.metadata)).map(|s| ObjectKey::of(&s.metadata)).collect()
        }
        CleanPodPolicy::Running | CleanPodPolicy::None => Vec::new(),
    };
    (pods_out, services_out)
}

/// The pods the policy's one collection delete selects; `None` deletes nothing.
pub fn selection(policy: CleanPodPolicy) -> Option<PodSelection> {
    match policy {
        CleanPodPolicy::Running => Some(PodSelection::Unfinished),
        CleanPodPolicy::All => Some(PodSelection::All),
        CleanPodPolicy::None => None,
    }
}
