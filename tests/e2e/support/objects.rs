//! The test namespace's pods, services and events as the tests read them, and every uid a pod
//! name had.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::{Event, Pod, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use super::eventually;
use crate::Ctx;

pub fn pods(ctx: &Ctx) -> Api<Pod> {
    Api::namespaced(ctx.cluster.client.clone(), &ctx.ns)
}

pub fn services(ctx: &Ctx) -> Api<Service> {
    Api::namespaced(ctx.cluster.client.clone(), &ctx.ns)
}

/// Names of the namespace's objects of a kind that are not being deleted, sorted.
async fn live_names<K>(api: Api<K>) -> Result<Vec<String>>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut names: Vec<String> = api
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|o| o.meta().deletion_timestamp.is_none())
        .filter_map(|o| o.meta().name.clone())
        .collect();
    names.sort();
    Ok(names)
}

/// Names of the namespace's pods (not terminating), sorted.
pub async fn live_pods(ctx: &Ctx) -> Result<Vec<String>> {
    live_names(pods(ctx)).await
}

/// Names of the namespace's services (not terminating), sorted.
pub async fn service_names(ctx: &Ctx) -> Result<Vec<String>> {
    live_names(services(ctx)).await
}

/// Waits until the live pods are exactly `want`.
pub async fn wait_pods(ctx: &Ctx, want: &[&str], timeout: Duration) -> Result<()> {
    eventually(timeout, &format!("pods {want:?}"), || async {
        let got = live_pods(ctx).await?;
        ensure!(got == want, "pods {got:?}");
        Ok(())
    })
    .await
}

/// Waits until the live services are exactly `want`.
pub async fn wait_services(ctx: &Ctx, want: &[&str], timeout: Duration) -> Result<()> {
    eventually(timeout, &format!("services {want:?}"), || async {
        let got = service_names(ctx).await?;
        ensure!(got == want, "services {got:?}");
        Ok(())
    })
    .await
}

/// Adds annotations to a pod (such as a kwok fate).
pub async fn annotate(ctx: &Ctx, pod: &str, annotations: Value) -> Result<()> {
    let patch = json!({"metadata": {"annotations": annotations}});
    pods(ctx).patch(pod, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

/// The reasons of the events about `name`, oldest first, with their counts.
pub async fn events(ctx: &Ctx, name: &str) -> Result<Vec<(String, i32)>> {
    let api: Api<Event> = Api::namespaced(ctx.cluster.client.clone(), &ctx.ns);
    let mut evs: Vec<Event> = api
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .context("listing events")?
        .items;
    evs.sort_by_key(|e| e.metadata.creation_timestamp.clone());
    Ok(evs.into_iter().map(|e| (e.reason.unwrap_or_default(), e.count.unwrap_or(1))).collect())
}

/// How many of the events about `name` have `reason`.
pub async fn count_events(ctx: &Ctx, name: &str, reason: &str) -> Result<usize> {
    Ok(events(ctx, name).await?.iter().filter(|(r, _)| r == reason).count())
}

/// Every uid seen per pod name in the namespace, while it lives.
pub struct UidWatch {
    seen: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl UidWatch {
    pub fn start(ctx: &Ctx) -> UidWatch {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let seen = Arc::new(Mutex::new(BTreeMap::<String, BTreeSet<String>>::new()));
        let (seen2, api) = (seen.clone(), pods(ctx));
        let task = tokio::spawn(async move {
            let mut s = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
            while let Some(Ok(ev)) = s.next().await {
                if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
                    let (name, uid) =
                        (p.metadata.name.unwrap_or_default(), p.metadata.uid.unwrap_or_default());
                    seen2.lock().map(|mut m| m.entry(name).or_default().insert(uid)).ok();
                }
            }
        });
        UidWatch { seen, task }
    }

    /// The pod names seen with more than one uid, and how many.
    pub fn reused_names(&self) -> Vec<(String, usize)> {
        let seen = self.seen.lock().map(|m| m.clone()).unwrap_or_default();
        seen.into_iter().filter(|(_, u)| u.len() > 1).map(|(n, u)| (n, u.len())).collect()
    }

    /// How many pod names were seen.
    pub fn names(&self) -> usize {
        self.seen.lock().map(|m| m.len()).unwrap_or_default()
    }
}

impl Drop for UidWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
