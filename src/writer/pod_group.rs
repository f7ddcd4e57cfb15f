//! The writes of gang scheduling: a job's PodGroup created (a 404 for the resource, not the
//! namespace, means the cluster does not serve the API: a refusal the user sees) and deleted
//! with the uid seen as a precondition; and the check at start that the API is served.

use kube::Client;
use kube::api::Api;

use super::{Created, Writer, is_status, with_uid};
use crate::error::Error;
use crate::gang::{self, PodGroup};
use crate::plan::ObjectKey;

/// Whether the failed request was answered by an API server that does not serve the
/// resource (as opposed to a missing namespace or object).
fn not_served(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404
        && s.details.as_ref().is_none_or(|d| d.kind != "namespaces" && d.name.is_empty()))
}

impl Writer {
    /// Creates the job's PodGroup (job uid `owner`): as [`Writer::create`], and a cluster that
    /// does not serve the API refuses it with [`gang::NOT_SERVED`].
    pub async fn create_pod_group(&self, owner: &str, group: &PodGroup) -> Result<Created<PodGroup>, Error> {
        match self.create(owner, group).await {
            Err(Error::Create { source, .. }) if not_served(&source) => {
                Ok(Created::Refused(gang::NOT_SERVED.to_string()))
            }
            other => other,
        }
    }

    /// Deletes the job's PodGroup, only if it still has the uid the plan saw; returns whether
    /// this call deleted it (gone already is success too). kube-controller-manager keeps it,
    /// terminating, until its running pods go.
    pub async fn delete_pod_group(&self, namespace: &str, group: &ObjectKey) -> Result<bool, Error> {
        self.gate.check()?;
        let api: Api<PodGroup> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(&group.name, &with_uid(&group.uid)).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => Ok(false),
            Err(source) => Err(Error::DeletePodGroup { name: group.name.clone(), source }),
        }
    }
}

/// Checks at start that the cluster serves `scheduling.k8s.io/v1alpha2` PodGroups; the error
/// says how to enable them.
pub async fn check_pod_groups_served(client: &Client) -> Result<(), Error> {
    let served = match client.list_api_group_resources(gang::API_VERSION).await {
        Ok(list) => list.resources.iter().any(|r| r.name == gang::PLURAL),
        Err(e) if is_status(&e, 404) => false,
        Err(source) => return Err(Error::Discovery { api: gang::API_VERSION, source }),
    };
    if served { Ok(()) } else { Err(Error::GangApiMissing(gang::NOT_SERVED)) }
}
