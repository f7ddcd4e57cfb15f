//! Huge jobs: a 300-replica job created in slow-start batches and run to success with a
//! compact status, a 200-replica job whose template the API server refuses (one create and
//! one Warning per backoff period, no hot loop), and jobs over the maximum size refused by
//! the API server with the reason.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kube::api::PostParams;
use serde_json::json;
use tfjob_operator::api::rules::MAX_TOTAL_REPLICAS;
use tfjob_operator::api::{ConditionType, ReplicaType, TFJob};

use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        test!(a_300_replica_job_is_created_in_slow_start_batches_and_succeeds).serial(),
        test!(a_refused_200_replica_template_costs_one_create_per_backoff_period),
        test!(jobs_over_the_maximum_size_are_refused_with_the_reason),
    ]
}

/// The operator's `tfjob_operator_create_batches_total`, by batch size.
fn batches(metrics: &str) -> BTreeMap<usize, usize> {
    let mut out = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with("tfjob_operator_create_batches_total{")) {
        let size = line.split("size=\"").nth(1).and_then(|s| s.split('"').next()?.parse().ok());
        let n = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if let (Some(size), Some(n)) = (size, n) {
            *out.entry(size).or_default() += n as usize;
        }
    }
    out
}

async fn a_300_replica_job_is_created_in_slow_start_batches_and_succeeds(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    let started = Instant::now();
    // Every worker must succeed (AllWorkers), so every pod is created; the PS runs until the
    // job finishes.
    let spec = json!({"successPolicy": "AllWorkers"});
    create(&ctx, job("big", &[replica("PS", 1), replica("Worker", 299).fate(succeed("5s"))], spec)).await?;
    let j = wait_job(&ctx, "big", Duration::from_secs(200), "Succeeded", |j| {
        has_condition(j, ConditionType::Succeeded)
    })
    .await
    .with_context(|| op.log_tail())?;
    let took = started.elapsed();

    // 600 objects: the first reconcile creates the 500 allowed (300 services, then 200 pods:
    // one object per template first, then doubling to 16), the next the last 100 pods.
    let sizes = batches(&op.metrics().await?);
    let sent: usize = sizes.iter().map(|(size, n)| size * n).sum();
    let want = BTreeMap::from([(1, 1), (2, 1), (4, 2), (5, 1), (8, 3), (16, 35)]);
    ensure!(sent == 600, "creates sent: {sent}, want 600 (each object once): {sizes:?}");
    ensure!(sizes == want, "batch sizes (size: batches) {sizes:?}, want {want:?}");

    let st = j.status.as_ref().context("status")?;
    let workers = st.replica_statuses.get(&ReplicaType::Worker).context("Worker status")?;
    ensure!(
        workers.succeeded == 299 && workers.completed_indexes.to_string() == "0-298",
        "workers: {workers:?}"
    );
    let bytes = serde_json::to_vec(st)?.len();
    ensure!(bytes < 4096, "the status of a 300-replica job takes {bytes} bytes");
    println!("    300 replicas: Succeeded {:.1} s after creation; status {bytes} bytes", took.as_secs_f64());
    Ok(())
}

async fn a_refused_200_replica_template_costs_one_create_per_backoff_period(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    // The schema accepts it; the API server refuses the pod (an invalid volume reference).
    let mut j = job("refused", &[replica("Worker", 200)], json!({}));
    j["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "missing", "mountPath": "/data"}]);
    create(&ctx, j).await?;
    wait_job(&ctx, "refused", WAIT, "ReplicaFailure", |j| {
        j.status.as_ref().and_then(|s| s.condition(ConditionType::ReplicaFailure)).is_some()
    })
    .await
    .with_context(|| op.log_tail())?;
    let first = Instant::now();
    // Pokes trigger reconciles; the backoff holds the creates (5 s, then 10 s, then 20 s). The
    // pauses pace the pokes; they assert nothing.
    for i in 0..20 {
        merge_patch_job(&ctx, "refused", json!({"metadata": {"labels": {"poke": i.to_string()}}})).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pod_creates = |m: &str| {
        metric_sum(m, "tfjob_operator_api_requests_total", &[r#"verb="create""#, r#"resource="pods""#])
    };
    // Attempts at about 0, 5 and 15 s after the first; the fourth is due at 35 s.
    let window = Duration::from_secs(25).saturating_sub(first.elapsed());
    assert_stays(window, "at most 3 pod creates in 25 s", || async {
        let n = pod_creates(&op.metrics().await?);
        ensure!(n <= 3.0, "pod creates sent: {n}");
        Ok(())
    })
    .await?;
    let metrics = op.metrics().await?;
    let pod_creates = pod_creates(&metrics);
    let evs = events(&ctx, "refused").await?;
    let warnings: i32 = evs.iter().filter(|(r, _)| r == "FailedCreatePod").map(|(_, n)| *n).sum();
    let reconciles = metric_sum(&metrics, "tfjob_operator_reconciles_total", &[]);
    ensure!(pod_creates == 3.0, "pod creates sent in 25 s: {pod_creates}, want 3 (at 0, 5 and 15 s)");
    ensure!(warnings == 3, "FailedCreatePod warnings in 25 s: {warnings}, want 3 ({evs:?})");
    ensure!(reconciles < 60.0, "{reconciles} reconciles in 25 s: a hot loop");
    let j: TFJob = jobs(&ctx).get("refused").await?;
    ensure!(!j.status.as_ref().is_some_and(|s| s.is_finished()), "a refused template is not terminal");
    println!(
        "    refused 200-replica template: {pod_creates} pod creates, {warnings} warnings, {reconciles} reconciles in 25 s"
    );
    Ok(())
}

async fn jobs_over_the_maximum_size_are_refused_with_the_reason(ctx: Ctx) -> Result<()> {
    let over = MAX_TOTAL_REPLICAS + 1;
    let half = MAX_TOTAL_REPLICAS / 2;
    let cases = [
        ("one-type", vec![replica("Worker", over)], format!("less than or equal to {MAX_TOTAL_REPLICAS}")),
        (
            "in-all",
            vec![replica("PS", half), replica("Worker", MAX_TOTAL_REPLICAS - half + 1)],
            format!("at most {MAX_TOTAL_REPLICAS} replicas in all"),
        ),
    ];
    for (name, replicas, want) in cases {
        let j: TFJob = serde_json::from_value(job(name, &replicas, json!({})))?;
        match jobs(&ctx).create(&PostParams::default(), &j).await {
            Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains(&want) => {}
            Err(e) => bail!("{name}: refused, but not for its size: {e}"),
            Ok(_) => bail!("{name}: a job over {MAX_TOTAL_REPLICAS} replicas was accepted"),
        }
    }
    // At the maximum: accepted.
    let at_max = [replica("PS", half), replica("Worker", MAX_TOTAL_REPLICAS - half)];
    let mut j = job("at-max", &at_max, json!({}));
    j["spec"]["runPolicy"] = json!({"suspend": true});
    create(&ctx, j).await.context("a job of exactly the maximum size")?;
    Ok(())
}
