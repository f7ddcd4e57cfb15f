//! Queueing with the operator's own Workload (`--kueue-workloads=operator`) and real Kueue
//! v0.17.0 with its `kubeflow.org/tfjob` integration switched off: held without pods until
//! admitted, the Workload kept in step, admission, preemption, re-admission without running
//! a succeeded worker again, finish with the quota released, deletion.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

use crate::kueue::{finish_pod, get, job_of, live, on_the_pool};
use crate::kueue_env::*;
use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![test!(own_workload_queues_preempts_and_finishes_without_kueues_tfjob_code).kueue().serial()]
}

const T: Duration = Duration::from_secs(60);
const PRIORITY_LABEL: &str = "kueue.x-k8s.io/priority-class";

/// When each pod of the namespace was first seen, with the resourceVersion it was created at.
struct PodAdds {
    seen: Arc<Mutex<Vec<(Instant, String, u64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodAdds {
    fn start(ctx: &Ctx) -> PodAdds {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (sink, api) = (seen.clone(), pods(ctx));
        let task = tokio::spawn(async move {
            let mut s = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
            let mut known = std::collections::BTreeSet::new();
            while let Some(Ok(ev)) = s.next().await {
                if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
                    let uid = p.metadata.uid.clone().unwrap_or_default();
                    if known.insert(uid) {
                        let rv =
                            p.metadata.resource_version.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0);
                        sink.lock().map(|mut v| v.push((Instant::now(), job_of(&p), rv))).ok();
                    }
                }
            }
        });
        PodAdds { seen, task }
    }

    /// The first pod of `job` seen: when, and its creation resourceVersion.
    fn first(&self, job: &str) -> Option<(Instant, u64)> {
        let seen = self.seen.lock().ok()?;
        seen.iter().find(|(_, j, _)| j == job).map(|(at, _, rv)| (*at, *rv))
    }
}

impl Drop for PodAdds {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every watch event of one Workload (by the job's uid label), with when it arrived.
struct WorkloadTimeline {
    events: Arc<Mutex<Vec<(Instant, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WorkloadTimeline {
    fn start(ctx: &Ctx) -> WorkloadTimeline {
        let events = Arc::new(Mutex::new(Vec::new()));
        let (sink, api) = (events.clone(), workloads(ctx));
        let task = tokio::spawn(async move {
            let mut s = std::pin::pin!(watcher::watcher(api, watcher::Config::default()));
            while let Some(Ok(ev)) = s.next().await {
                if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = ev
                    && let Ok(v) = serde_json::to_value(&o)
                {
                    sink.lock().map(|mut e| e.push((Instant::now(), v))).ok();
                }
            }
        });
        WorkloadTimeline { events, task }
    }

    /// The first event of the Workload of job `uid` at or after `after` for which `pred` holds.
    async fn wait(
        &self,
        uid: &str,
        after: Instant,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<(Instant, Value)> {
        eventually(T, what, || async {
            let evs = self.events.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
            let mine = |v: &Value| {
                v.pointer("/metadata/labels/kueue.x-k8s.io~1job-uid").and_then(Value::as_str) == Some(uid)
            };
            evs.iter().find(|(at, v)| *at >= after && mine(v) && pred(v)).cloned().with_context(|| {
                let last = evs.iter().rev().find(|(_, v)| mine(v)).map(|(_, v)| v["status"].clone());
                format!("last seen: {last:?}")
            })
        })
        .await
    }
}

impl Drop for WorkloadTimeline {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reason_of(j: &Value, type_: &str) -> (String, String) {
    j.pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_ && c["status"] == "True"))
        .map(|c| {
            (
                c["reason"].as_str().unwrap_or_default().into(),
                c["message"].as_str().unwrap_or_default().into(),
            )
        })
        .unwrap_or_default()
}

fn started(j: &Value) -> bool {
    !suspended_in_spec(j)
        && j.pointer("/spec/tfReplicaSpecs").and_then(Value::as_object).is_some_and(|m| {
            m.values().all(|r| r.pointer("/template/metadata/labels/kueue.x-k8s.io~1podset").is_some())
        })
}

fn uid_of(j: &Value) -> String {
    j.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string()
}

async fn live_pods_of(ctx: &Ctx, job: &str) -> Result<Vec<Pod>> {
    Ok(pods(ctx)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| job_of(p) == job && live(p))
        .collect())
}

/// `low` (two workers, all the quota) is created unsuspended and runs once admitted; `high`
/// waits without pods in the queue (same priority), is raised to the high class by a label
/// patch (its Workload follows), preempts `low` (pods gone, `active: 0`, quota released),
/// runs and finishes (its Workload `Finished`); `low` comes back without running its
/// succeeded worker again, finishes, and its Workload goes with it when it is deleted.
async fn own_workload_queues_preempts_and_finishes_without_kueues_tfjob_code(ctx: Ctx) -> Result<()> {
    queue_without_tfjob_integration(&ctx, "2").await?;
    let op =
        Operator::start_cluster_wide(&ctx, "tfjob-operator-own-workloads", &["--kueue-workloads=operator"])?;
    let adds = PodAdds::start(&ctx);
    let wls = WorkloadTimeline::start(&ctx);
    let uids = UidWatch::start(&ctx);
    let low_tl = Timeline::start(&ctx, "low");
    let high_tl = Timeline::start(&ctx, "high");

    // 1. Created without runPolicy.suspend: held, then admitted and started. The LocalQueue
    // holds until the job shows it waits: Kueue admits faster than a status write lands.
    local_queue_stop_policy(&ctx, "Hold").await?;
    let t0 = Instant::now();
    create(&ctx, with_class(queued("low", &[replica("Worker", 2)], "1", json!({})), LOW)).await?;
    let (_, held) = low_tl
        .wait(t0, T, "low held in the queue", |j| reason_of(j, "Suspended").0 == "WaitingInQueue")
        .await
        .with_context(|| op.log_tail())?;
    let msg = reason_of(&held, "Suspended").1;
    ensure!(msg.contains(QUEUE), "the Suspended message does not name the queue: {msg}");
    let low_uid = uid_of(&held);
    let (_, wl) = wls.wait(&low_uid, t0, "low's Workload", |_| true).await.with_context(|| op.log_tail())?;
    check_workload(&wl, &low_uid, "low", 2, 100)?;
    ensure!(adds.first("low").is_none(), "low got pods while its queue held");
    local_queue_stop_policy(&ctx, "None").await?;
    let (t_admit, _) = wls.wait(&low_uid, t0, "low admitted", |w| condition(w, "Admitted")).await?;
    let (_, start) = low_tl.wait(t0, T, "low started", started).await.with_context(|| op.log_tail())?;
    let start_rv: u64 =
        start.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("0").parse()?;
    let (t_pod, pod_rv) =
        eventually(T, "low's first pod", || async { adds.first("low").context("no pod yet") }).await?;
    ensure!(
        pod_rv > start_rv,
        "a pod of low was created at rv {pod_rv}, before the start patch at rv {start_rv}"
    );
    eprintln!(
        "e2e: own workload: Kueue's admission to the first pod in {:.0} ms",
        t_pod.duration_since(t_admit).as_secs_f64() * 1000.0
    );
    wait_job(&ctx, "low", T, "both workers active", |j| {
        serde_json::to_value(j).is_ok_and(|v| workers(&v, "active") == 2)
    })
    .await?;
    for p in live_pods_of(&ctx, "low").await? {
        on_the_pool(&p)?;
        let labels = p.metadata.labels.clone().unwrap_or_default();
        let label = |k: &str| labels.get(k).map(String::as_str);
        ensure!(
            label("kueue.x-k8s.io/podset") == Some("worker")
                && label("kueue.x-k8s.io/local-queue-name") == Some(QUEUE)
                && label("kueue.x-k8s.io/cluster-queue-name") == Some(ctx.ns.as_str()),
            "the admission's labels are not on the pod: {labels:?}"
        );
    }
    finish_pod(&ctx, "low-worker-1").await?;
    wait_job(&ctx, "low", T, "worker 1 succeeded", |j| {
        serde_json::to_value(j).is_ok_and(|v| workers(&v, "succeeded") == 1)
    })
    .await?;

    // 2. Created suspended, same priority: it waits, with a Workload and no pods.
    let t1 = Instant::now();
    let spec = json!({"runPolicy": {"suspend": true}});
    create(&ctx, with_class(queued("high", &[replica("Worker", 1).fate(succeed("3s"))], "1", spec), LOW))
        .await?;
    let (_, h) =
        high_tl.wait(t1, T, "high held", |j| reason_of(j, "Suspended").0 == "WaitingInQueue").await?;
    let high_uid = uid_of(&h);
    let (_, wl) = wls.wait(&high_uid, t1, "high's Workload", |_| true).await?;
    check_workload(&wl, &high_uid, "high", 1, 100)?;
    tokio::time::sleep(Duration::from_secs(3)).await; // not an assertion: time for a wrong admission
    ensure!(adds.first("high").is_none(), "high got pods while its queue had no room");
    ensure!(!condition(&get(&ctx, "high").await?, "Running"), "high runs without an admission");

    // 3. Raised to the high class: its Workload follows, Kueue preempts low.
    let t2 = Instant::now();
    let raise = json!({"metadata": {"labels": {PRIORITY_LABEL: HIGH}}});
    jobs(&ctx).patch("high", &PatchParams::default(), &Patch::Merge(&raise)).await?;
    wls.wait(&high_uid, t2, "high's Workload at priority 1000", |w| w["spec"]["priority"] == 1000)
        .await
        .with_context(|| op.log_tail())?;
    let (t_evict, _) = wls.wait(&low_uid, t2, "low evicted", |w| condition(w, "Evicted")).await?;
    let (t_zero, j) = low_tl
        .wait(t2, T, "low suspended with active 0", |j| suspended_in_spec(j) && no_active(j))
        .await
        .with_context(|| op.log_tail())?;
    let took = t_zero.saturating_duration_since(t_evict);
    eprintln!("e2e: own workload: eviction to active 0 in {:.0} ms", took.as_secs_f64() * 1000.0);
    ensure!(
        took < Duration::from_secs(5),
        "active 0 only {took:?} after the eviction: {}",
        summary(Some(&j))
    );
    ensure!(live_pods_of(&ctx, "low").await?.is_empty(), "low has live pods after active 0");
    wls.wait(&low_uid, t_zero, "low's quota released", |w| {
        !condition(w, "QuotaReserved") && w.pointer("/status/admission").is_none()
    })
    .await?;

    // 4. high runs and finishes: its Workload is Finished.
    let h = wait_job(&ctx, "high", T, "high Succeeded", |j| {
        has_condition(j, tfjob_operator::api::ConditionType::Succeeded)
    })
    .await
    .with_context(|| op.log_tail())?;
    ensure!(started(&serde_json::to_value(&h)?), "high succeeded without being started on an admission");
    wls.wait(&high_uid, t2, "high's Workload Finished", |w| condition(w, "Finished")).await?;
    // Kueue made none of its own: every Workload is the operator's, one per job.
    let all = workloads(&ctx).list(&ListParams::default()).await?.items;
    let ours = |w: &kube::api::DynamicObject| {
        w.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("training.kubeflow.org/operator-name"))
            .map(String::as_str)
            == Some("tfjob-controller")
    };
    ensure!(
        all.len() == 2 && all.iter().all(ours),
        "Workloads {:?}",
        all.iter().map(|w| (w.metadata.name.clone(), w.metadata.labels.clone())).collect::<Vec<_>>()
    );

    // 5. low is admitted again and does not run its succeeded worker again.
    let (_, j) = low_tl.wait(t_zero, T, "low re-admitted", started).await.with_context(|| op.log_tail())?;
    ensure!(workers(&j, "succeeded") == 1, "the done worker was forgotten: {}", summary(Some(&j)));
    finish_pod(&ctx, "low-worker-0").await?;
    wait_job(&ctx, "low", T, "low Succeeded", |j| {
        has_condition(j, tfjob_operator::api::ConditionType::Succeeded)
    })
    .await?;
    wls.wait(&low_uid, t_zero, "low's Workload Finished", |w| condition(w, "Finished")).await?;
    let reused = uids.reused_names()?;
    ensure!(reused == [("low-worker-0".to_string(), 2)], "pods created again: {reused:?}");

    // 6. The Workload goes with its job.
    jobs(&ctx).delete("low", &DeleteParams::background()).await?;
    eventually(T, "low's Workload gone", || async {
        let left = workloads(&ctx)
            .list(&ListParams::default().labels(&format!("kueue.x-k8s.io/job-uid={low_uid}")))
            .await?;
        ensure!(left.items.is_empty(), "{} left", left.items.len());
        Ok(())
    })
    .await?;
    drop_queue(&ctx).await;
    Ok(())
}

fn with_class(mut j: Value, class: &str) -> Value {
    j["metadata"]["labels"][PRIORITY_LABEL] = json!(class);
    j
}

/// The Workload the operator made for a job: owned by it, one `worker` pod set with the
/// count and the cpu request, the queue, the class's priority.
fn check_workload(wl: &Value, uid: &str, job: &str, count: i64, priority: i64) -> Result<()> {
    let owner = wl.pointer("/metadata/ownerReferences/0").context("no owner")?;
    ensure!(
        owner["uid"] == uid && owner["controller"] == true && owner["kind"] == "TFJob",
        "{job}: owner {owner}"
    );
    let sets = wl.pointer("/spec/podSets").and_then(Value::as_array).context("no podSets")?;
    ensure!(
        sets.len() == 1 && sets[0]["name"] == "worker" && sets[0]["count"] == count,
        "{job}: podSets {sets:?}"
    );
    let cpu = sets[0].pointer("/template/spec/containers/0/resources/requests/cpu");
    ensure!(cpu == Some(&json!("1")), "{job}: the pod set's cpu request is {cpu:?}");
    ensure!(
        wl["spec"]["queueName"] == QUEUE && wl["spec"]["priority"] == priority,
        "{job}: spec {}",
        wl["spec"]
    );
    Ok(())
}
