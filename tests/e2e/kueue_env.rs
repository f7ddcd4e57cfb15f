//! The Kueue the queueing tests share: started by the first of them, stopped at the end of
//! the run; its pool of kwok nodes, ResourceFlavor and priority classes; a ClusterQueue and
//! a LocalQueue per test; a timeline of a job's watch events.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::{Namespace, Node};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tfjob_testsupport::kueue::{Kueue, NAMESPACE_LABEL, kueue_dir};
use tokio::sync::OnceCell;

use crate::Ctx;
use crate::support::{Replica, eventually, job};

/// The queue name every test's LocalQueue has.
pub const QUEUE: &str = "queue";
/// The label a queued TFJob carries.
pub const QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
pub const FLAVOR: &str = "tfjob-e2e-pool";
/// Node label and taint (key, value) of the flavor's nodes.
pub const POOL: (&str, &str) = ("tfjob-e2e/pool", "kueue");
pub const POOL_NODES: [&str; 2] = ["kwok-kueue-0", "kwok-kueue-1"];
pub const LOW: &str = "tfjob-e2e-low";
pub const HIGH: &str = "tfjob-e2e-high";

static KUEUE: OnceCell<Mutex<Option<Kueue>>> = OnceCell::const_new();

fn kueue_api(ctx: &Ctx, kind: &str, plural: &str, ns: Option<&str>) -> Api<DynamicObject> {
    kueue_api_on(&ctx.cluster.client, kind, plural, ns)
}

/// Kueue's `kind` (v1beta2) on the plane `client` talks to.
pub fn kueue_api_on(client: &kube::Client, kind: &str, plural: &str, ns: Option<&str>) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kueue.x-k8s.io", "v1beta2", kind);
    let ar = ApiResource::from_gvk_with_plural(&gvk, plural);
    match ns {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    }
}

pub fn workloads(ctx: &Ctx) -> Api<DynamicObject> {
    kueue_api(ctx, "Workload", "workloads", Some(&ctx.ns))
}

/// Server-side apply of a Kueue object.
pub async fn apply(api: &Api<DynamicObject>, obj: Value) -> Result<()> {
    let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let obj: DynamicObject = serde_json::from_value(obj)?;
    api.patch(&name, &PatchParams::apply("tfjob-e2e").force(), &Patch::Apply(&obj))
        .await
        .with_context(|| format!("applying {name}"))?;
    Ok(())
}

fn pool_node(name: &str) -> Result<Node> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"node.alpha.kubernetes.io/ttl": "0", "kwok.x-k8s.io/node": "fake"},
            "labels": {"kubernetes.io/hostname": name, "type": "kwok", POOL.0: POOL.1}
        },
        "spec": {"taints": [
            {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"},
            {"key": POOL.0, "value": POOL.1, "effect": "NoSchedule"}
        ]},
        "status": {
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"}
        }
    }))?)
}

/// The plane's objects every queueing test uses, made once: the pool nodes (tainted, so
/// the other tests' pods never land there), the flavor and two priority classes.
async fn cluster_objects(ctx: &Ctx) -> Result<()> {
    let nodes: Api<Node> = Api::all(ctx.cluster.client.clone());
    for n in POOL_NODES {
        let node = serde_json::to_value(pool_node(n)?)?;
        nodes.patch(n, &PatchParams::apply("tfjob-e2e").force(), &Patch::Apply(&node)).await?;
    }
    tfjob_testsupport::wait(Duration::from_secs(60), "the pool nodes to be Ready", || async {
        let Ok(list) = nodes.list(&ListParams::default().labels(&format!("{}={}", POOL.0, POOL.1))).await
        else {
            return false;
        };
        list.items
            .iter()
            .filter(|n| {
                n.status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
            .count()
            == POOL_NODES.len()
    })
    .await?;
    apply(
        &kueue_api(ctx, "ResourceFlavor", "resourceflavors", None),
        json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": FLAVOR},
            "spec": {"nodeLabels": {POOL.0: POOL.1},
                     "tolerations": [{"key": POOL.0, "operator": "Equal", "value": POOL.1, "effect": "NoSchedule"}]}
        }),
    )
    .await?;
    let classes = kueue_api(ctx, "WorkloadPriorityClass", "workloadpriorityclasses", None);
    for (name, value) in [(LOW, 100), (HIGH, 1000)] {
        apply(
            &classes,
            json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "WorkloadPriorityClass",
                   "metadata": {"name": name}, "value": value}),
        )
        .await?;
    }
    Ok(())
}

/// Whether the shared Kueue runs with its TFJob integration (false once a test switched it off).
static TFJOB_INTEGRATION: AtomicBool = AtomicBool::new(true);

/// Starts a Kueue for the run's plane, its TFJob integration on or off, and records it for
/// `hack/check-plane-stopped.sh`.
async fn start_kueue(ctx: &Ctx, tfjob_integration: bool) -> Result<Kueue> {
    let plane = ctx.cluster.plane.as_ref().context("Kueue runs on the local plane only")?;
    let dir = kueue_dir()?;
    let work = plane.dir.join(if tfjob_integration { "kueue" } else { "kueue-no-tfjob" });
    let kueue =
        Kueue::start_with(&ctx.cluster.client, &ctx.cluster.kubeconfig, &dir, &work, tfjob_integration)
            .await?;
    if let Some(path) = std::env::var_os("TFJOB_E2E_STATE") {
        // hack/check-plane-stopped.sh checks Kueue too once the suite has exited.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().append(true).open(path)?;
        writeln!(f, "pids {}\nports {} {}", kueue.pid(), kueue.webhook_port, kueue.health_port)?;
    }
    eprintln!(
        "e2e: Kueue (TFJob integration {}) ready in {:.1}s (logs in {})",
        if tfjob_integration { "on" } else { "off" },
        kueue.started_in.as_secs_f64(),
        kueue.dir.display()
    );
    Ok(kueue)
}

/// Starts the shared Kueue (once per run), then gives the test's namespace Kueue's label, a
/// ClusterQueue named after it with `cpu` of the flavor (preempting lower priorities) and
/// the LocalQueue [`QUEUE`]; waits until the LocalQueue is Active.
pub async fn queue(ctx: &Ctx, cpu: &str) -> Result<()> {
    KUEUE
        .get_or_try_init(|| async {
            let kueue = start_kueue(ctx, TFJOB_INTEGRATION.load(Ordering::SeqCst)).await?;
            cluster_objects(ctx).await?;
            Ok::<_, anyhow::Error>(Mutex::new(Some(kueue)))
        })
        .await?;
    let label = json!({"metadata": {"labels": {NAMESPACE_LABEL.0: NAMESPACE_LABEL.1}}});
    Api::<Namespace>::all(ctx.cluster.client.clone())
        .patch(&ctx.ns, &PatchParams::default(), &Patch::Merge(&label))
        .await?;
    apply(
        &kueue_api(ctx, "ClusterQueue", "clusterqueues", None),
        json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue", "metadata": {"name": ctx.ns},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ctx.ns}},
                "preemption": {"withinClusterQueue": "LowerPriority"},
                "resourceGroups": [{"coveredResources": ["cpu"],
                    "flavors": [{"name": FLAVOR, "resources": [{"name": "cpu", "nominalQuota": cpu}]}]}]
            }
        }),
    )
    .await?;
    let lqs = kueue_api(ctx, "LocalQueue", "localqueues", Some(&ctx.ns));
    apply(
        &lqs,
        json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
               "metadata": {"name": QUEUE, "namespace": ctx.ns}, "spec": {"clusterQueue": ctx.ns}}),
    )
    .await?;
    tfjob_testsupport::wait(Duration::from_secs(30), "the LocalQueue to be Active", || async {
        lqs.get(QUEUE).await.ok().is_some_and(|q| condition(&q.data, "Active"))
    })
    .await
}

/// Sets the LocalQueue [`QUEUE`]'s `stopPolicy`: `"Hold"` stops Kueue admitting its
/// Workloads (so a test sees a job waiting however fast Kueue would admit it), `"None"` lets
/// it admit again.
pub async fn local_queue_stop_policy(ctx: &Ctx, policy: &str) -> Result<()> {
    kueue_api(ctx, "LocalQueue", "localqueues", Some(&ctx.ns))
        .patch(QUEUE, &PatchParams::default(), &Patch::Merge(&json!({"spec": {"stopPolicy": policy}})))
        .await?;
    Ok(())
}

/// Switches the shared Kueue to one with its `kubeflow.org/tfjob` integration switched off,
/// for the rest of the run (the tests that call it are serial and run after every test of
/// Kueue's own integration), then does what [`queue`] does.
pub async fn queue_without_tfjob_integration(ctx: &Ctx, cpu: &str) -> Result<()> {
    if TFJOB_INTEGRATION.swap(false, Ordering::SeqCst) {
        let running = KUEUE.get().and_then(|m| m.lock().ok()?.take());
        if let Some(k) = running {
            k.stop().await?;
            let fresh = start_kueue(ctx, false).await?;
            if let Some(m) = KUEUE.get() {
                m.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.replace(fresh);
            }
        }
    }
    queue(ctx, cpu).await
}

/// Deletes the test's ClusterQueue (cluster-scoped; the namespace takes the rest).
pub async fn drop_queue(ctx: &Ctx) {
    let _ = kueue_api(ctx, "ClusterQueue", "clusterqueues", None)
        .delete(&ctx.ns, &DeleteParams::background())
        .await;
}

/// Stops the shared Kueue if a test started it: its webhooks go first.
pub async fn shutdown() -> Result<()> {
    let kueue = KUEUE.get().and_then(|m| m.lock().ok()?.take());
    match kueue {
        Some(k) => k.stop().await,
        None => Ok(()),
    }
}

/// Whether `obj.status.conditions` has `type` with status True.
pub fn condition(obj: &Value, type_: &str) -> bool {
    obj.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == type_ && c["status"] == "True"))
}

/// A queued TFJob: [`job`] with the queue label and `cpu` requested by every pod.
pub fn queued(name: &str, replicas: &[Replica], cpu: &str, spec_extra: Value) -> Value {
    let mut j = job(name, replicas, spec_extra);
    j["metadata"]["labels"] = json!({QUEUE_LABEL: QUEUE});
    if let Some(specs) = j["spec"]["tfReplicaSpecs"].as_object_mut() {
        for r in specs.values_mut() {
            r["template"]["spec"]["containers"][0]["resources"] = json!({"requests": {"cpu": cpu}});
        }
    }
    j
}

/// Every watch event of one TFJob, with the moment it arrived.
pub struct Timeline {
    events: Arc<Mutex<Vec<(Instant, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Timeline {
    pub fn start(ctx: &Ctx, name: &str) -> Timeline {
        use futures::StreamExt;
        let gvk = GroupVersionKind::gvk("kubeflow.org", "v1", "TFJob");
        let api: Api<DynamicObject> =
            Api::namespaced_with(ctx.cluster.client.clone(), &ctx.ns, &ApiResource::from_gvk(&gvk));
        let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            let mut s = std::pin::pin!(watcher::watcher(api, cfg));
            while let Some(Ok(ev)) = s.next().await {
                if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = ev {
                    let at = Instant::now();
                    if let Ok(v) = serde_json::to_value(&o) {
                        sink.lock().map(|mut e| e.push((at, v))).ok();
                    }
                }
            }
        });
        Timeline { events, task }
    }

    /// The first event at or after `after` for which `pred` holds.
    pub fn first(&self, after: Instant, pred: impl Fn(&Value) -> bool) -> Option<(Instant, Value)> {
        let evs = self.events.lock().ok()?;
        evs.iter().find(|(at, v)| *at >= after && pred(v)).cloned()
    }

    /// Waits up to `timeout` for [`Timeline::first`].
    pub async fn wait(
        &self,
        after: Instant,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<(Instant, Value)> {
        // The moments are the watch's; polling only finds them.
        eventually(timeout, what, || async {
            self.first(after, &pred).with_context(|| {
                let last = self.events.lock().ok().and_then(|e| e.last().map(|(_, v)| v.clone()));
                format!("last seen: {}", summary(last.as_ref()))
            })
        })
        .await
    }
}

impl Drop for Timeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A job's suspend flag and status, for messages.
pub fn summary(j: Option<&Value>) -> String {
    j.map_or_else(
        || "nothing".to_string(),
        |j| {
            format!(
                "suspend={} status={}",
                j.pointer("/spec/runPolicy/suspend").unwrap_or(&Value::Null),
                j["status"]
            )
        },
    )
}

pub fn suspended_in_spec(j: &Value) -> bool {
    j.pointer("/spec/runPolicy/suspend") == Some(&Value::Bool(true))
}

/// A count of the job's Worker replicas in its status (`active`, `succeeded`, ...); 0 when unset.
pub fn workers(j: &Value, field: &str) -> i64 {
    j.pointer(&format!("/status/replicaStatuses/Worker/{field}")).and_then(Value::as_i64).unwrap_or(0)
}

/// Every replica type's `active` is 0 (or the status has none).
pub fn no_active(j: &Value) -> bool {
    j.pointer("/status/replicaStatuses")
        .and_then(Value::as_object)
        .is_none_or(|m| m.values().all(|r| r["active"].as_i64().unwrap_or(0) == 0))
}
