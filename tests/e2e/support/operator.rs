//! Helpers for controller tests: an operator process per test, job fixtures and waits.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Event, Pod, Service};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use tfjob_operator::api::{ConditionType, TFJob};
use tfjob_testsupport::free_port;
use tfjob_testsupport::process::Proc;

use crate::Ctx;

/// The operator under test, limited to the test's namespace; stopped (SIGTERM) on drop.
pub struct Operator {
    pub proc: Proc,
    pub http_port: u16,
    pub log: PathBuf,
}

impl Operator {
    pub fn start(ctx: &Ctx, extra: &[&str]) -> Result<Operator> {
        Self::start_as(ctx, "tfjob-operator", &ctx.cluster.kubeconfig, extra)
    }

    /// An operator process logging to `<name>.log`, with its own kubeconfig.
    pub fn start_as(ctx: &Ctx, name: &str, kubeconfig: &Path, extra: &[&str]) -> Result<Operator> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("tfjob-e2e-op-{}", ctx.ns));
        std::fs::create_dir_all(&dir)?;
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_tfjob-operator"));
        let mut args = vec![
            format!("--namespace={}", ctx.ns),
            format!("--http-addr=127.0.0.1:{port}"),
            "--log-format=json".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let proc = Proc::spawn_with_env(name, &bin, &args, &dir, &[("KUBECONFIG", kubeconfig.as_os_str())])?;
        Ok(Operator { proc, http_port: port, log: dir.join(format!("{name}.log")) })
    }

    /// The operator's `/metrics` text (empty if it does not answer).
    pub async fn metrics(&self) -> String {
        http_get(self.http_port, "/metrics").await.map(|(_, body)| body).unwrap_or_default()
    }

    /// The operator's log so far (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Signal numbers (Linux) for the operator processes the tests stop.
pub const SIGTERM: i32 = 15;
pub const SIGKILL: i32 = 9;

pub fn jobs(ctx: &Ctx) -> Api<TFJob> {
    Api::namespaced(ctx.cluster.client.clone(), &ctx.ns)
}

pub fn pods(ctx: &Ctx) -> Api<Pod> {
    Api::namespaced(ctx.cluster.client.clone(), &ctx.ns)
}

pub fn services(ctx: &Ctx) -> Api<Service> {
    Api::namespaced(ctx.cluster.client.clone(), &ctx.ns)
}

/// A replica: (type key, replicas, restartPolicy, kwok.test annotations).
pub struct R<'a>(pub &'a str, pub i32, pub Option<&'a str>, pub Value);

/// A TFJob whose pods land on kwok nodes and meet the fate their annotations choose.
pub fn job(name: &str, replicas: &[R<'_>], spec_extra: Value) -> Value {
    let mut specs = serde_json::Map::new();
    for R(key, n, rp, ann) in replicas {
        let mut r = json!({
            "replicas": n,
            "template": {
                "metadata": {"annotations": ann},
                "spec": {
                    "containers": [{"name": "tensorflow", "image": "tensorflow/tensorflow:2.16.1"}],
                    "nodeSelector": {"type": "kwok"},
                    "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
                    "terminationGracePeriodSeconds": 0
                }
            }
        });
        if let Some(rp) = rp {
            r["restartPolicy"] = json!(rp);
        }
        specs.insert(key.to_string(), r);
    }
    let mut spec = json!({"tfReplicaSpecs": specs});
    if let Value::Object(extra) = spec_extra {
        for (k, v) in extra {
            spec[k] = v;
        }
    }
    json!({"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": name}, "spec": spec})
}

pub fn succeed(after: &str) -> Value {
    json!({"kwok.test/outcome": "succeed", "kwok.test/run-for": after})
}

pub fn fail(after: &str, code: i32) -> Value {
    json!({"kwok.test/outcome": "fail", "kwok.test/run-for": after, "kwok.test/exit-code": code.to_string()})
}

pub async fn create(ctx: &Ctx, job: Value) -> Result<TFJob> {
    let job: TFJob = serde_json::from_value(job)?;
    Ok(jobs(ctx).create(&PostParams::default(), &job).await?)
}

/// Polls the job until `pred` holds; the error shows the last status seen.
pub async fn wait_job(
    ctx: &Ctx,
    name: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&TFJob) -> bool,
) -> Result<TFJob> {
    let end = Instant::now() + timeout;
    let mut last = None;
    while Instant::now() < end {
        last = jobs(ctx).get_opt(name).await?;
        if let Some(j) = last.as_ref().filter(|j| pred(j)) {
            return Ok(j.clone());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let prefix = format!("{name}-");
    let its_pods: Vec<String> = pods(ctx)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.name.as_deref().is_some_and(|n| n.starts_with(&prefix)))
        .map(|p| {
            let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
            format!(
                "{} {phase} deleting={}",
                p.metadata.name.unwrap_or_default(),
                p.metadata.deletion_timestamp.is_some()
            )
        })
        .collect();
    bail!(
        "{name}: timed out waiting for {what}; last status: {}; its pods: {its_pods:?}",
        serde_json::to_string(&last.and_then(|j| j.status))?
    )
}

pub fn is(j: &TFJob, c: ConditionType) -> bool {
    j.status.as_ref().is_some_and(|s| s.is_true(c))
}

pub fn last_reason(j: &TFJob) -> Option<String> {
    j.status.as_ref()?.conditions.last()?.reason.clone()
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
    let end = Instant::now() + timeout;
    let mut got = Vec::new();
    while Instant::now() < end {
        got = live_pods(ctx).await?;
        if got == want {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("pods {got:?}, want {want:?}")
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

pub use tfjob_testsupport::http_get;

/// The sum of a metric's samples whose labels include every `labels` item (`key="value"`);
/// 0 when there is none.
pub fn sample(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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
