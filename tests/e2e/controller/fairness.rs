//! No job holds another: while eight 500-replica jobs wait for room to create, a deadline, a
//! TTL and a worker's success are acted on within 1 s, with fewer reconcile slots than jobs
//! creating (a reconcile that waited for room would hold every slot).

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;
use tfjob_operator::api::ConditionType;
use tfjob_testsupport::bench::stats::lateness;

use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![test!(deadlines_ttls_and_successes_do_not_wait_behind_creates).serial()]
}

const BIG_JOBS: usize = 8;
const BIG_REPLICAS: i32 = 500;

fn succeeded_pod(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded")
}

async fn deadlines_ttls_and_successes_do_not_wait_behind_creates(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &["--concurrency=4"])?;
    // Before the load: a job that finishes (its TTL is set during the load), and a job whose
    // worker succeeds 12 s after it starts, during the load.
    let finishes = [replica("PS", 1), replica("Worker", 1).fate(succeed("1s"))];
    create(&ctx, job("done", &finishes, json!({}))).await?;
    wait_job(&ctx, "done", WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded))
        .await
        .with_context(|| op.log_tail())?;
    create(&ctx, job("quick", &[replica("Worker", 1).fate(succeed("12s"))], json!({}))).await?;
    wait_for(&pods(&ctx), "quick-worker-0", WAIT, "Running", |p: &Pod| {
        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
    })
    .await
    .with_context(|| op.log_tail())?;

    // The load: 8000 pods and services to create, 16 at a time.
    for i in 0..BIG_JOBS {
        create(&ctx, job(&format!("big-{i}"), &[replica("Worker", BIG_REPLICAS)], json!({}))).await?;
    }
    // Younger than the load, so its creates queue behind it; its deadline needs none.
    create(&ctx, job("late", &[replica("Worker", 1)], json!({"activeDeadlineSeconds": 5}))).await?;
    let (deadline, ttl, success) =
        tokio::join!(deadline_lateness(&ctx), ttl_lateness(&ctx), success_lateness(&ctx));
    let (deadline, ttl, success) = (
        deadline.with_context(|| op.log_tail())?,
        ttl.with_context(|| op.log_tail())?,
        success.with_context(|| op.log_tail())?,
    );

    // The load was there all along: jobs still queued for room, most of their pods not yet made.
    let queued = metric_sum(&op.metrics().await?, "tfjob_operator_jobs_queued_to_create", &[]);
    let made = live_pods(&ctx).await?.len();
    println!(
        "    under load ({made} pods made, {queued} jobs queued to create): deadline {deadline:.3} s, \
         TTL {ttl:.3} s, success {success:.3} s late"
    );
    ensure!(queued >= 1.0, "no job was queued for room: the load did not land");
    ensure!(made < BIG_JOBS * BIG_REPLICAS as usize / 2, "{made} pods made: the load was nearly over");
    for (what, late) in [("deadline", deadline), ("TTL", ttl), ("success", success)] {
        ensure!((0.0..=1.0).contains(&late), "{what} acted on {late:.3} s late, want within 1 s");
    }
    Ok(())
}

/// From the published deadline to `Failed` on the watch.
async fn deadline_lateness(ctx: &Ctx) -> Result<f64> {
    let (at, j) = watch_until(&jobs(ctx), "late", Duration::from_secs(30), "Failed", |j| {
        has_condition(j, ConditionType::Failed)
    })
    .await?;
    let deadline = status_time(&j, |s| s.deadline.as_ref()).context("the published deadline")?;
    Ok(lateness(at, deadline))
}

/// From the moment the finished job's TTL of 1 s is patched in (its expiry, a second after
/// completion, is long past) to its deletion on the watch.
async fn ttl_lateness(ctx: &Ctx) -> Result<f64> {
    // Not an assertion: the TTL is patched in 3 s into the load, on purpose.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let j = merge_patch_job(ctx, "done", json!({"spec": {"ttlSecondsAfterFinished": 1}})).await?;
    let patched = Timestamp::now();
    let done = status_time(&j, |s| s.completion_time.as_ref()).context("completionTime")?;
    ensure!(done < patched, "done finished at {done}, after the patch");
    let gone = wait_job_gone(ctx, "done", Duration::from_secs(30)).await?;
    Ok(lateness(gone, patched))
}

/// From the worker pod's success on the watch to the job's `Succeeded` on the watch.
async fn success_lateness(ctx: &Ctx) -> Result<f64> {
    let (pod_api, job_api) = (pods(ctx), jobs(ctx));
    let pod = watch_until(&pod_api, "quick-worker-0", Duration::from_secs(40), "Succeeded", succeeded_pod);
    let job = watch_until(&job_api, "quick", Duration::from_secs(40), "Succeeded", |j| {
        has_condition(j, ConditionType::Succeeded)
    });
    let ((pod_at, _), (job_at, _)) = tokio::try_join!(pod, job)?;
    Ok(lateness(job_at, pod_at))
}
