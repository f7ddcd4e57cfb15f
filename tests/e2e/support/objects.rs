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

/// The reasons of the events about `name`, oldest first, with how often each happened: a
/// series' count (events.k8s.io `series.count`, or core/v1 `count`), 1 for a single event.
pub async fn events(ctx: &Ctx, name: &str) -> Result<Vec<(String, i32)>> {
    let api: Api<Event> = Api::namespaced(ctx.cluster.client.clone(), &ctx.ns);
    let mut evs: Vec<Event> = api
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .context("listing events")?
        .items;
    evs.sort_by_key(|e| e.metadata.creation_timestamp.clone());
    Ok(evs
        .into_iter()
        .map(|e| {
            let n = e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1);
            (e.reason.unwrap_or_default(), n)
        })
        .collect())
}

/// Waits until no other e2e test's namespace is left (a cluster-wide operator then sees only
/// this test's jobs).
pub async fn other_test_namespaces_gone(ctx: &Ctx) -> Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(ctx.cluster.client.clone());
    crate::support::eventually(Duration::from_secs(120), "the other tests' namespaces to be gone", || async {
        let others: Vec<String> = api
            .list(&ListParams::default().labels("tfjob-e2e=true"))
            .await?
            .items
            .into_iter()
            .filter_map(|n| n.metadata.name)
            .filter(|n| *n != ctx.ns)
            .collect();
        anyhow::ensure!(others.is_empty(), "still there: {others:?}");
        Ok(())
    })
    .await
}

/// The messages of the events about `name` with `reason`.
pub async fn messages_of(ctx: &Ctx, name: &str, reason: &str) -> Result<Vec<String>> {
    let api: Api<Event> = Api::namespaced(ctx.cluster.client.clone(), &ctx.ns);
    let evs = api
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .context("listing events")?
        .items;
    Ok(evs
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .map(|e| e.message.unwrap_or_default())
        .collect())
}

/// How many objects the events about `name` with `reason` announce: `Created pod: a` is one,
/// `Created 3 pods: a, b, c` three (the operator announces a step's objects in one event).
pub async fn announced(ctx: &Ctx, name: &str, reason: &str) -> Result<usize> {
    Ok(messages_of(ctx, name, reason)
        .await?
        .iter()
        .map(|msg| msg.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(1))
        .sum())
}

/// The object names the events about `name` with `reason` announce (`Created pod: a`,
/// `Created 3 pods: a, b, c`; names past the first ten are not listed).
pub async fn announced_names(ctx: &Ctx, name: &str, reason: &str) -> Result<BTreeSet<String>> {
    Ok(messages_of(ctx, name, reason)
        .await?
        .iter()
        .filter_map(|msg| msg.split_once(": ").map(|(_, names)| names))
        .flat_map(|names| names.split(", ").filter(|n| !n.starts_with("and ")).map(str::to_string))
        .collect())
}

/// How many of the events about `name` have `reason`.
pub async fn count_events(ctx: &Ctx, name: &str, reason: &str) -> Result<usize> {
    Ok(events(ctx, name).await?.iter().filter(|(r, _)| r == reason).count())
}

/// Every uid seen per pod name in the namespace, while it lives. The watch must not fail: a
/// watch error ends it and makes [`UidWatch::reused_names`] fail the test, since a blind
/// watch proves nothing. (The fault tests, which break the plane on purpose, have their own.)
pub struct UidWatch {
    seen: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>,
    failed: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl UidWatch {
    pub fn start(ctx: &Ctx) -> UidWatch {
        use futures::StreamExt;
        use kube::runtime::watcher;
        let seen = Arc::new(Mutex::new(BTreeMap::<String, BTreeSet<String>>::new()));
        let failed = Arc::new(Mutex::new(None));
        let (seen2, failed2, api) = (seen.clone(), failed.clone(), pods(ctx));
        let task = tokio::spawn(async move {
            let mut s = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
            while let Some(ev) = s.next().await {
                match ev {
                    Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                        let (name, uid) =
                            (p.metadata.name.unwrap_or_default(), p.metadata.uid.unwrap_or_default());
                        seen2.lock().map(|mut m| m.entry(name).or_default().insert(uid)).ok();
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failed2.lock().map(|mut f| *f = Some(e.to_string())).ok();
                        return;
                    }
                }
            }
        });
        UidWatch { seen, failed, task }
    }

    /// The pod names seen with more than one uid, and how many; an error if the watch failed.
    pub fn reused_names(&self) -> Result<Vec<(String, usize)>> {
        if let Some(e) = self.failed.lock().ok().and_then(|f| f.clone()) {
            anyhow::bail!("the pod uid watch failed, so it proves nothing: {e}");
        }
        let seen = self.seen.lock().map(|m| m.clone()).unwrap_or_default();
        Ok(seen.into_iter().filter(|(_, u)| u.len() > 1).map(|(n, u)| (n, u.len())).collect())
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
