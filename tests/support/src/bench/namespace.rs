//! The bench's namespaces: created with their default ServiceAccount in place, deleted and
//! waited for.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};

pub(super) async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    crate::wait(Duration::from_secs(60), "the default ServiceAccount", || async {
        sas.get_opt("default").await.ok().flatten().is_some()
    })
    .await
}

pub(super) async fn delete_namespace(client: &Client, name: &str, timeout: Duration) -> Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
    crate::wait(timeout, &format!("namespace {name} to be gone"), || async {
        api.get_opt(name).await.is_ok_and(|n| n.is_none())
    })
    .await
}
