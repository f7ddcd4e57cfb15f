//! Queueing with real Kueue v0.17.0 (one per run, started by the first of these tests):
//! quota, preemption, the deadline across suspend and resume, `managedBy`, the Kubeflow
//! SDK's queue label and replica keys Kueue does not read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::kueue_env::*;
use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        test!(four_jobs_share_quota_for_two).kueue(),
        test!(preemption_frees_quota_at_once_and_keeps_succeeded_workers).kueue().serial(),
        test!(deadline_counts_from_the_last_admission).kueue().serial(),
        test!(multikueue_managed_job_is_left_alone).kueue(),
        test!(sdk_queue_label_runs_the_same).kueue(),
    ]
}

const T: Duration = Duration::from_secs(90);

pub async fn get(ctx: &Ctx, name: &str) -> Result<Value> {
    Ok(serde_json::to_value(jobs(ctx).get(name).await?)?)
}

pub fn job_of(p: &Pod) -> String {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("training.kubeflow.org/job-name"))
        .cloned()
        .unwrap_or_default()
}

pub fn live(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
    p.metadata.deletion_timestamp.is_none() && (phase == "Pending" || phase == "Running")
}

pub fn on_the_pool(p: &Pod) -> Result<()> {
    let name = p.metadata.name.clone().unwrap_or_default();
    let spec = p.spec.as_ref().context("pod spec")?;
    let selected = spec.node_selector.as_ref().and_then(|s| s.get(POOL.0)).map(String::as_str);
    ensure!(selected == Some(POOL.1), "{name}: nodeSelector {:?} lacks the flavor's", spec.node_selector);
    ensure!(
        spec.tolerations
            .iter()
            .flatten()
            .any(|t| t.key.as_deref() == Some(POOL.0) && t.value.as_deref() == Some(POOL.1)),
        "{name}: tolerations {:?} lack the flavor's",
        spec.tolerations
    );
    if let Some(node) = spec.node_name.as_deref() {
        ensure!(POOL_NODES.contains(&node), "{name} landed on {node}, not on the flavor's nodes");
    }
    Ok(())
}

async fn workloads_finished(ctx: &Ctx, want: usize) -> Result<Vec<Value>> {
    eventually(Duration::from_secs(30), &format!("{want} Finished Workloads"), || async {
        let wls: Vec<Value> =
            workloads(ctx).list(&ListParams::default()).await?.items.into_iter().map(|w| w.data).collect();
        ensure!(
            wls.len() == want && wls.iter().all(|w| condition(w, "Finished")),
            "have {:?}",
            wls.iter().map(|w| &w["status"]["conditions"]).collect::<Vec<_>>()
        );
        Ok(wls)
    })
    .await
}

/// Quota for two one-cpu jobs, four queued: never more than two run, the other two wait
/// suspended without pods and are admitted as the first ones finish.
async fn four_jobs_share_quota_for_two(ctx: Ctx) -> Result<()> {
    queue(&ctx, "2").await?;
    let op = Operator::start(&ctx, &[])?;
    let names = ["q-a", "q-b", "q-c", "q-d"];
    for n in names {
        let created =
            create(&ctx, queued(n, &[replica("Worker", 1).fate(succeed("4s"))], "1", json!({}))).await?;
        ensure!(
            suspended_in_spec(&serde_json::to_value(&created)?),
            "{n}: Kueue's webhook did not suspend it"
        );
    }
    // (the two seen waiting while two ran, every pod seen)
    let seen: Mutex<(BTreeSet<String>, BTreeSet<String>)> = Mutex::default();
    let seen_pods = until(T, "all four to succeed", || async {
        // Pods first: a pod seen here was created before the job was read below.
        let ps = pods(&ctx).list(&ListParams::default()).await?.items;
        let mut js = BTreeMap::new();
        for n in names {
            js.insert(n, get(&ctx, n).await?);
        }
        let running: BTreeSet<String> = ps.iter().filter(|p| live(p)).map(job_of).collect();
        ensure!(running.len() <= 2, "quota for two, yet {running:?} have running pods");
        let suspended: Vec<&str> = names.iter().copied().filter(|n| suspended_in_spec(&js[n])).collect();
        for n in &suspended {
            ensure!(!ps.iter().any(|p| job_of(p) == *n), "{n} is suspended but has pods");
        }
        let mut seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for p in &ps {
            on_the_pool(p)?;
            seen.1.insert(p.metadata.name.clone().unwrap_or_default());
        }
        if running.len() == 2 && suspended.len() == 2 && seen.0.is_empty() {
            seen.0 = suspended.iter().map(|s| s.to_string()).collect();
        }
        if !names.iter().all(|n| condition(&js[n], "Succeeded")) {
            let states = js.values().map(|j| summary(Some(j))).collect::<Vec<_>>();
            return Ok(Progress::NotYet(format!("{states:?}")));
        }
        let waited = &seen.0;
        ensure!(waited.len() == 2, "never saw two running and two waiting");
        // The waiting ones were admitted (startTime) no earlier than a first one finished.
        let first_done = names
            .iter()
            .filter(|n| !waited.contains(**n))
            .filter_map(|n| js[n]["status"]["completionTime"].as_str().map(String::from))
            .min()
            .context("completionTime")?;
        for n in waited {
            let start = js[n.as_str()]["status"]["startTime"].as_str().unwrap_or_default().to_string();
            ensure!(start >= first_done, "{n} started at {start}, before any job finished ({first_done})");
        }
        Ok(Progress::Done(seen.1.clone()))
    })
    .await
    .with_context(|| op.log_tail())?;
    ensure!(seen_pods.len() == 4, "pods {seen_pods:?}");
    workloads_finished(&ctx, 4).await?;
    drop_queue(&ctx).await;
    Ok(())
}

/// Marks a running pod to succeed now (kwok's stage reads the annotations).
pub async fn finish_pod(ctx: &Ctx, name: &str) -> Result<()> {
    wait_for(&pods(ctx), name, T, "Running", |p| {
        live(p) && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await?;
    let ann =
        json!({"metadata": {"annotations": {"kwok.test/outcome": "succeed", "kwok.test/run-for": "0s"}}});
    pods(ctx).patch(name, &PatchParams::default(), &Patch::Merge(&ann)).await?;
    Ok(())
}

fn with_priority(mut j: Value, class: &str) -> Value {
    j["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] = json!(class);
    j
}

/// A low-priority job with one of two workers done is preempted by a high one: its pods go
/// and `active` is 0 at once; it comes back afterwards and does not run the done worker again.
async fn preemption_frees_quota_at_once_and_keeps_succeeded_workers(ctx: Ctx) -> Result<()> {
    queue(&ctx, "2").await?;
    let op = Operator::start(&ctx, &[])?;
    let uids = UidWatch::start(&ctx);
    let timeline = Timeline::start(&ctx, "low");
    create(&ctx, with_priority(queued("low", &[replica("Worker", 2)], "1", json!({})), LOW)).await?;
    wait_job(&ctx, "low", T, "both workers active", |j| {
        serde_json::to_value(j).is_ok_and(|v| workers(&v, "active") == 2)
    })
    .await
    .with_context(|| op.log_tail())?;
    finish_pod(&ctx, "low-worker-1").await?;
    wait_job(&ctx, "low", T, "worker 1 succeeded", |j| {
        serde_json::to_value(j).is_ok_and(|v| workers(&v, "succeeded") == 1)
    })
    .await?;

    let t_high = Instant::now();
    create(
        &ctx,
        with_priority(queued("high", &[replica("Worker", 1).fate(succeed("3s"))], "1", json!({})), HIGH),
    )
    .await?;
    let (t_suspend, _) = timeline.wait(t_high, T, "Kueue's suspend patch", suspended_in_spec).await?;
    let (t_zero, j) = timeline
        .wait(t_suspend, Duration::from_secs(10), "active 0 after the suspend", |j| {
            suspended_in_spec(j) && no_active(j)
        })
        .await
        .with_context(|| op.log_tail())?;
    let took = t_zero.duration_since(t_suspend);
    eprintln!("e2e: kueue preemption: suspend patch to active 0 in {:.0} ms", took.as_secs_f64() * 1000.0);
    ensure!(
        took < Duration::from_secs(2),
        "active 0 only {took:?} after the suspend patch: {}",
        summary(Some(&j))
    );
    ensure!(
        condition(&j, "Suspended") && !condition(&j, "Running"),
        "conditions: {}",
        j["status"]["conditions"]
    );
    wait_pods_of(&ctx, "low", Duration::from_secs(5)).await?;

    wait_job(&ctx, "high", T, "high Succeeded", |j| {
        has_condition(j, tfjob_operator::api::ConditionType::Succeeded)
    })
    .await?;
    let (_, j) = timeline.wait(t_zero, T, "low re-admitted", |j| !suspended_in_spec(j)).await?;
    ensure!(workers(&j, "succeeded") == 1, "the done worker was forgotten: {}", summary(Some(&j)));
    finish_pod(&ctx, "low-worker-0").await?;
    let j = wait_job(&ctx, "low", T, "low Succeeded", |j| {
        has_condition(j, tfjob_operator::api::ConditionType::Succeeded)
    })
    .await?;
    let j = serde_json::to_value(&j)?;
    ensure!(workers(&j, "succeeded") == 2, "{}", summary(Some(&j)));
    let reused = uids.reused_names()?;
    ensure!(reused == [("low-worker-0".to_string(), 2)], "pods created again: {reused:?}");
    workloads_finished(&ctx, 2).await?;
    drop_queue(&ctx).await;
    Ok(())
}

/// Waits until the job has no live pods.
async fn wait_pods_of(ctx: &Ctx, job: &str, timeout: Duration) -> Result<()> {
    eventually(timeout, &format!("{job}: no live pods"), || async {
        let left: Vec<String> = pods(ctx)
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|p| job_of(p) == job && live(p))
            .filter_map(|p| p.metadata.name)
            .collect();
        ensure!(left.is_empty(), "pods {left:?} still there");
        Ok(())
    })
    .await
}

/// `activeDeadlineSeconds` stops while the job is suspended and counts from the last admission.
async fn deadline_counts_from_the_last_admission(ctx: Ctx) -> Result<()> {
    const DEADLINE: u64 = 8;
    queue(&ctx, "1").await?;
    let op = Operator::start(&ctx, &[])?;
    let timeline = Timeline::start(&ctx, "slow");
    let t0 = Instant::now();
    let spec = json!({"runPolicy": {"activeDeadlineSeconds": DEADLINE}});
    create(&ctx, with_priority(queued("slow", &[replica("Worker", 1)], "1", spec), LOW)).await?;
    let (t_first, _) = timeline.wait(t0, T, "the first admission", |j| !suspended_in_spec(j)).await?;
    wait_job(&ctx, "slow", T, "Running", |j| has_condition(j, tfjob_operator::api::ConditionType::Running))
        .await?;
    // Not an assertion: slow runs 2 s on its deadline before it is preempted, on purpose.
    tokio::time::sleep(Duration::from_secs(2)).await;
    create(
        &ctx,
        with_priority(queued("urgent", &[replica("Worker", 1).fate(succeed("9s"))], "1", json!({})), HIGH),
    )
    .await?;
    let (t_susp, _) = timeline
        .wait(t_first, T, "the preemption", suspended_in_spec)
        .await
        .with_context(|| op.log_tail())?;
    let (t_again, _) = timeline.wait(t_susp, T, "the second admission", |j| !suspended_in_spec(j)).await?;
    ensure!(
        t_again.duration_since(t_first) > Duration::from_secs(DEADLINE),
        "re-admitted {:?} after the first admission: too early to tell the two apart",
        t_again.duration_since(t_first)
    );
    ensure!(
        timeline.first(t_first, |j| condition(j, "Failed")).is_none_or(|(at, _)| at > t_again),
        "failed while suspended"
    );
    let (t_fail, j) = timeline.wait(t_again, T, "DeadlineExceeded", |j| condition(j, "Failed")).await?;
    let after = t_fail.duration_since(t_again).as_secs_f64();
    eprintln!("e2e: kueue deadline: failed {after:.1}s after the second admission (deadline {DEADLINE}s)");
    ensure!(
        (DEADLINE as f64 - 1.0..DEADLINE as f64 + 3.0).contains(&after),
        "failed {after:.1}s after the last admission, want {DEADLINE}s: {}",
        summary(Some(&j))
    );
    let reason = j["status"]["conditions"].as_array().and_then(|c| c.last()).map(|c| c["reason"].clone());
    ensure!(reason == Some(json!("DeadlineExceeded")), "reason {reason:?}");
    drop_queue(&ctx).await;
    Ok(())
}

/// A job another controller runs (`managedBy: kueue.x-k8s.io/multikueue`) gets nothing from us.
async fn multikueue_managed_job_is_left_alone(ctx: Ctx) -> Result<()> {
    queue(&ctx, "1").await?;
    let op = Operator::start(&ctx, &[])?;
    let spec = json!({"runPolicy": {"managedBy": "kueue.x-k8s.io/multikueue"}});
    create(&ctx, queued("elsewhere", &[replica("Worker", 1).fate(succeed("1s"))], "1", spec)).await?;
    assert_stays(Duration::from_secs(8), "elsewhere left alone", || async {
        let j = get(&ctx, "elsewhere").await?;
        ensure!(j["status"].is_null() || j["status"] == json!({}), "status written: {}", j["status"]);
        let managers: Vec<&str> = j["metadata"]["managedFields"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["manager"].as_str())
            .collect();
        ensure!(!managers.iter().any(|m| m.contains("tfjob-operator")), "written by us: {managers:?}");
        ensure!(
            live_pods(&ctx).await?.is_empty() && service_names(&ctx).await?.is_empty(),
            "pods or services made"
        );
        let evs = events(&ctx, "elsewhere").await?;
        ensure!(evs.iter().all(|(r, _)| !r.starts_with("TFJob")), "our events: {evs:?}");
        Ok(())
    })
    .await?;
    ensure!(!op.log_tail().contains("\"level\":\"ERROR\""), "{}", op.log_tail());
    drop_queue(&ctx).await;
    Ok(())
}

/// The Kubeflow SDK queues a TFJob with the queue-name label and nothing else: PS and
/// workers each become a Workload PodSet and the job runs like any other.
async fn sdk_queue_label_runs_the_same(ctx: Ctx) -> Result<()> {
    queue(&ctx, "2").await?;
    let op = Operator::start(&ctx, &[])?;
    let mut j =
        queued("sdk", &[replica("PS", 1), replica("Worker", 2).fate(succeed("3s"))], "500m", json!({}));
    j["spec"]["runPolicy"] = json!({"cleanPodPolicy": "Running"});
    let created = serde_json::to_value(create(&ctx, j).await?)?;
    ensure!(suspended_in_spec(&created), "not suspended by Kueue's webhook: {}", created["spec"]);
    wait_job(&ctx, "sdk", T, "Succeeded", |j| {
        has_condition(j, tfjob_operator::api::ConditionType::Succeeded)
    })
    .await
    .with_context(|| op.log_tail())?;
    let wls = workloads_finished(&ctx, 1).await?;
    let podsets: Vec<(String, i64)> = wls[0]["spec"]["podSets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| (p["name"].as_str().unwrap_or_default().to_string(), p["count"].as_i64().unwrap_or(0)))
        .collect();
    ensure!(podsets == [("ps".to_string(), 1), ("worker".to_string(), 2)], "podSets {podsets:?}");
    let ps = pods(&ctx).list(&ListParams::default()).await?.items;
    for p in &ps {
        on_the_pool(p)?;
        let set = p.metadata.labels.as_ref().and_then(|l| l.get("kueue.x-k8s.io/podset")).cloned();
        let rtype =
            p.metadata.labels.as_ref().and_then(|l| l.get("training.kubeflow.org/replica-type")).cloned();
        ensure!(set.is_some() && set == rtype, "{:?}: podset {set:?}, type {rtype:?}", p.metadata.name);
    }
    drop_queue(&ctx).await;
    Ok(())
}
