//! cleanPodPolicy: which pods and services a finished job gives up.

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;

use super::replica_state::ObjectKey;
use crate::api::CleanPodPolicy;

fn is_done(pod: &Pod) -> bool {
    matches!(pod.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
}

/// The pods and services to delete for a finished job. `Running` deletes pods not yet
/// Succeeded or Failed, `All` every pod, `None` nothing; a service goes unless a pod of its
/// name is kept. Objects already being deleted are left alone, so nothing is deleted twice.
pub fn to_delete(
    policy: CleanPodPolicy,
    pods: &[&Pod],
    services: &[&Service],
) -> (Vec<ObjectKey>, Vec<ObjectKey>) {
    if policy == CleanPodPolicy::None {
        return (Vec::new(), Vec::new());
    }
    let (gone, kept): (Vec<&Pod>, Vec<&Pod>) = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .partition(|p| policy == CleanPodPolicy::All || !is_done(p));
    let pods_out = gone.iter().map(|p| ObjectKey::of(&p.metadata)).collect();
    let kept: std::collections::BTreeSet<String> = kept.iter().map(|p| p.name_any()).collect();
    let services_out = services
        .iter()
        .filter(|s| s.metadata.deletion_timestamp.is_none() && !kept.contains(&s.name_any()))
        .map(|s| ObjectKey::of(&s.metadata))
        .collect();
    (pods_out, services_out)
}
