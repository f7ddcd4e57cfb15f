//! Failures and disruptions: exit codes under each restartPolicy, the backoff limit, pods
//! deleted or evicted, a deleted TFJob, and a pod template the API server refuses.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use tfjob_operator::api::{ConditionType, ReplicaType, TFJob};

use super::one_worker_done_job_still_running;
use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        test!(exit_code_1_under_restart_never_fails_the_job),
        test!(exit_code_1_under_restart_exit_code_is_permanent),
        test!(exit_code_137_recreates_the_pod_until_the_backoff_limit),
        test!(on_failure_restarts_in_place_until_the_backoff_limit),
        test!(deleted_running_pod_is_recreated_without_cost),
        test!(evicted_pod_is_recreated_without_cost),
        test!(on_failure_deleted_pod_is_recreated_without_cost),
        test!(succeeded_worker_deleted_while_running_is_not_run_again),
        test!(deleted_tfjob_takes_its_pods_and_services),
        test!(refused_pod_template_gets_replica_failure_and_backs_off),
    ]
}

fn failed(j: &TFJob) -> bool {
    has_condition(j, ConditionType::Failed)
}

async fn exit_code_1_under_restart_never_fails_the_job(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    create(&ctx, job("never", &[replica("Worker", 1).fate(fail("1s", 1))], json!({}))).await?;
    let j = wait_job(&ctx, "never", WAIT, "Failed", failed).await.with_context(|| op.log_tail())?;
    let msg = j.status.as_ref().and_then(|s| s.conditions.last()?.message.clone()).unwrap_or_default();
    ensure!(msg.contains("pod never-worker-0") && msg.contains("exited with code 1"), "message {msg:?}");
    ensure!(last_reason(&j).as_deref() == Some("TFJobFailed"), "reason {:?}", last_reason(&j));
    Ok(())
}

async fn exit_code_1_under_restart_exit_code_is_permanent(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    let worker = replica("Worker", 1).restart("ExitCode").fate(fail("1s", 1));
    create(&ctx, job("exit1", &[worker], json!({}))).await?;
    let j = wait_job(&ctx, "exit1", WAIT, "Failed", failed).await.with_context(|| op.log_tail())?;
    ensure!(last_reason(&j).as_deref() == Some("TFJobFailed"), "ExitCode 1 is permanent: {:?}", j.status);
    Ok(())
}

/// ExitCode 137: re-created with new uids; the third failure exceeds backoffLimit 2.
async fn exit_code_137_recreates_the_pod_until_the_backoff_limit(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &["--announce-creates"])?;
    let worker = replica("Worker", 1).restart("ExitCode").fate(fail("2s", 137));
    create(&ctx, job("exit137", &[worker], json!({"backoffLimit": 2}))).await?;
    let j = wait_job(&ctx, "exit137", Duration::from_secs(90), "BackoffLimitExceeded", failed)
        .await
        .with_context(|| op.log_tail())?;
    let show = serde_json::to_string(&j.status)?;
    ensure!(
        last_reason(&j).as_deref() == Some("BackoffLimitExceeded"),
        "reason {:?}: {show}",
        last_reason(&j)
    );
    let restarts =
        j.status.as_ref().and_then(|s| s.replica_statuses.get(&ReplicaType::Worker)).map(|r| r.restarts);
    ensure!(restarts == Some(3), "{show}");
    let created = count_events(&ctx, "exit137", "SuccessfulCreatePod").await?;
    ensure!(
        created == 3,
        "three runs of the pod (two re-creations): {:?} {show}",
        events(&ctx, "exit137").await?
    );
    Ok(())
}

/// OnFailure: restarts in place; the third restart exceeds the limit.
async fn on_failure_restarts_in_place_until_the_backoff_limit(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &["--announce-creates"])?;
    let worker = replica("Worker", 1).restart("OnFailure").fate(fail("2s", 3));
    create(&ctx, job("crash", &[worker], json!({"runPolicy": {"backoffLimit": 2}}))).await?;
    let j = wait_job(&ctx, "crash", Duration::from_secs(90), "BackoffLimitExceeded", failed)
        .await
        .with_context(|| op.log_tail())?;
    ensure!(last_reason(&j).as_deref() == Some("BackoffLimitExceeded"), "reason {:?}", last_reason(&j));
    let evs = events(&ctx, "crash").await?;
    ensure!(
        evs.iter().filter(|(r, _)| r == "SuccessfulCreatePod").count() == 1,
        "restarted in place, never re-created: {evs:?}"
    );
    ensure!(evs.iter().any(|(r, _)| r == "TFJobRestarting"), "Restarting announced: {evs:?}");
    Ok(())
}

/// The pod's uid now; after a disruption, [`wait_recreated`] waits for another.
async fn uid(ctx: &Ctx, pod: &str) -> Result<Option<String>> {
    Ok(pods(ctx).get(pod).await?.metadata.uid)
}

/// Waits until pod `name` exists again, live, with a uid other than `old`.
async fn wait_recreated(ctx: &Ctx, name: &str, old: Option<String>) -> Result<Pod> {
    wait_for(&pods(ctx), name, WAIT, "re-created", |p| {
        p.metadata.uid != old && p.metadata.deletion_timestamp.is_none()
    })
    .await
}

/// A disruption is neither a failure nor a restart: the job has not failed, no backoff spent.
async fn no_cost(ctx: &Ctx, name: &str) -> Result<()> {
    let j = jobs(ctx).get(name).await?;
    ensure!(!failed(&j), "a disruption is not a failure: {:?}", j.status);
    let restarts: i32 =
        j.status.as_ref().map(|s| s.replica_statuses.values().map(|r| r.restarts).sum()).unwrap_or(0);
    ensure!(restarts == 0, "no backoff spent: {:?}", j.status);
    Ok(())
}

/// A running job with a PS and two workers, and no backoff to spend.
async fn running_job(ctx: &Ctx, op: &Operator, name: &str) -> Result<()> {
    create(ctx, job(name, &[replica("PS", 1), replica("Worker", 2)], json!({"backoffLimit": 0}))).await?;
    wait_job(ctx, name, WAIT, "Running", |j| has_condition(j, ConditionType::Running))
        .await
        .with_context(|| op.log_tail())?;
    let want = [format!("{name}-ps-0"), format!("{name}-worker-0"), format!("{name}-worker-1")];
    wait_pods(ctx, &want.each_ref().map(String::as_str), WAIT).await
}

async fn deleted_running_pod_is_recreated_without_cost(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    running_job(&ctx, &op, "d").await?;
    let old = uid(&ctx, "d-worker-1").await?;
    pods(&ctx).delete("d-worker-1", &DeleteParams::default()).await?;
    wait_recreated(&ctx, "d-worker-1", old).await.with_context(|| op.log_tail())?;
    no_cost(&ctx, "d").await
}

async fn evicted_pod_is_recreated_without_cost(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    running_job(&ctx, &op, "e").await?;
    // The status says Failed with a DisruptionTarget condition, as the eviction path writes.
    let old = uid(&ctx, "e-ps-0").await?;
    let status = json!({"status": {"phase": "Failed", "reason": "Evicted", "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "message": "evicted"}]}});
    pods(&ctx).patch_status("e-ps-0", &PatchParams::default(), &Patch::Merge(status)).await?;
    wait_recreated(&ctx, "e-ps-0", old).await.with_context(|| op.log_tail())?;
    no_cost(&ctx, "e").await
}

/// Under OnFailure as under Never: a deleted running pod comes back at no cost.
async fn on_failure_deleted_pod_is_recreated_without_cost(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    let worker = replica("Worker", 1).restart("OnFailure");
    create(&ctx, job("o", &[worker], json!({"backoffLimit": 0}))).await?;
    wait_job(&ctx, "o", WAIT, "Running", |j| has_condition(j, ConditionType::Running))
        .await
        .with_context(|| op.log_tail())?;
    let old = uid(&ctx, "o-worker-0").await?;
    pods(&ctx).delete("o-worker-0", &DeleteParams::default()).await?;
    wait_recreated(&ctx, "o-worker-0", old).await?;
    no_cost(&ctx, "o").await.context("OnFailure")
}

/// A succeeded worker's pod deleted while the job runs is not run again.
async fn succeeded_worker_deleted_while_running_is_not_run_again(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    create(&ctx, job("s", &[replica("Worker", 2)], json!({"successPolicy": "AllWorkers"}))).await?;
    wait_job(&ctx, "s", WAIT, "Running", |j| has_condition(j, ConditionType::Running))
        .await
        .with_context(|| op.log_tail())?;
    annotate(&ctx, "s-worker-0", succeed("0s")).await?;
    one_worker_done_job_still_running(&ctx, "s").await?;
    pods(&ctx).delete("s-worker-0", &DeleteParams::default()).await?;
    wait_gone(&pods(&ctx), "s-worker-0", Duration::from_secs(4)).await?;
    assert_stays(Duration::from_secs(4), "the succeeded replica is not run again", || async {
        ensure!(pods(&ctx).get_opt("s-worker-0").await?.is_none(), "s-worker-0 is back");
        let j = jobs(&ctx).get("s").await?;
        let done = j
            .status
            .as_ref()
            .and_then(|s| s.replica_statuses.get(&ReplicaType::Worker))
            .map(|r| r.completed_indexes.to_string());
        ensure!(
            done.as_deref() == Some("0") && !has_condition(&j, ConditionType::Succeeded),
            "{:?}",
            j.status
        );
        Ok(())
    })
    .await
}

/// A deleted TFJob takes its pods and services with it (the garbage collector).
async fn deleted_tfjob_takes_its_pods_and_services(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    running_job(&ctx, &op, "g").await?;
    wait_services(&ctx, &["g-ps-0", "g-worker-0", "g-worker-1"], WAIT).await?;
    jobs(&ctx).delete("g", &DeleteParams::background()).await?;
    wait_pods(&ctx, &[], Duration::from_secs(120)).await.context("garbage collection of the pods")?;
    wait_services(&ctx, &[], Duration::from_secs(60)).await.context("garbage collection of the services")?;
    Ok(())
}

async fn refused_pod_template_gets_replica_failure_and_backs_off(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    // The schema accepts it; the API server refuses the pod (an invalid volume reference).
    let mut j = job("bad", &[replica("Worker", 1)], json!({}));
    j["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "missing", "mountPath": "/data"}]);
    create(&ctx, j).await?;
    let j = wait_job(&ctx, "bad", WAIT, "ReplicaFailure", |j| {
        j.status.as_ref().and_then(|s| s.condition(ConditionType::ReplicaFailure)).is_some()
    })
    .await
    .with_context(|| op.log_tail())?;
    let c =
        j.status.as_ref().and_then(|s| s.condition(ConditionType::ReplicaFailure)).context("condition")?;
    ensure!(c.reason.as_deref() == Some("FailedCreatePod"), "{c:?}");
    ensure!(c.message.as_deref().is_some_and(|m| m.contains("missing")), "the API server's message: {c:?}");
    ensure!(!j.status.as_ref().is_some_and(|s| s.is_finished()), "not terminal");
    // Poke it: label patches trigger reconciles, but creates back off. The pauses pace the
    // pokes; they assert nothing.
    for i in 0..10 {
        merge_patch_job(&ctx, "bad", json!({"metadata": {"labels": {"poke": i.to_string()}}})).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let attempts = || async {
        let evs = events(&ctx, "bad").await?;
        let n: i32 = evs.iter().filter(|(r, _)| r == "FailedCreatePod").map(|(_, n)| *n).sum();
        anyhow::Ok((n, evs))
    };
    assert_stays(Duration::from_secs(2), "at most 3 create attempts", || async {
        let (n, evs) = attempts().await?;
        ensure!(n <= 3, "create attempts: {n} ({evs:?})");
        Ok(())
    })
    .await?;
    let (n, evs) = attempts().await?;
    ensure!((1..=3).contains(&n), "create attempts in ~6 s: {n} ({evs:?})");
    Ok(())
}
