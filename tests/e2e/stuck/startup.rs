//! The startup deadline on the real plane: by annotation at creation, patched shorter on a
//! stuck job (fails at once), patched away (never fails), malformed (a Warning and a condition
//! only), the operator's default, and never for a job whose pods started.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::jiff::SignedDuration;
use serde_json::json;
use tfjob_operator::api::ConditionType;

use super::*;
use crate::test;

pub fn tests() -> Vec<Test> {
    vec![
        test!(missing_secret_fails_at_the_startup_deadline_with_the_diagnosis),
        test!(startup_deadline_patched_shorter_away_and_malformed),
        test!(cluster_default_fails_stuck_jobs_only),
    ]
}

/// A job whose worker can never be scheduled (no node has the label).
fn unschedulable(name: &str) -> Value {
    select_nodes(one_worker(name, "Never", json!({}), json!({})), "tfjob.test/pool", "nowhere")
}

fn published_deadline(j: &TFJob) -> Option<Timestamp> {
    status_time(j, |s| s.startup_deadline.as_ref())
}

fn applied_seconds(j: &TFJob) -> Option<i64> {
    j.status.as_ref()?.applied_policy.as_ref()?.startup_deadline_seconds
}

async fn missing_secret_fails_at_the_startup_deadline_with_the_diagnosis(ctx: Ctx) -> Result<()> {
    let _op = Operator::start(&ctx, &[])?;
    let fate =
        json!({"kwok.test/start": "create-container-error", "kwok.test/missing-secret": "db-password"});
    let j = create(&ctx, startup_deadline(one_worker("secret", "Never", fate, json!({})), "40")).await?;
    let created = created(&j.metadata)?;
    let (_, j) =
        wait_diagnosis(&ctx, "secret", "CreateContainerConfigError", GRACE + Duration::from_secs(5)).await?;
    let diagnosis = "Worker 0 (pod secret-worker-0): CreateContainerConfigError: container tensorflow: secret \"db-password\" not found";
    let msg = condition(&j, ConditionType::PodsNotStarted).and_then(|c| c.message).unwrap_or_default();
    ensure!(msg == diagnosis, "message: {msg}");
    ensure!(
        published_deadline(&j) == created.checked_add(SignedDuration::from_secs(40)).ok(),
        "status.startupDeadline is creation + 40 s: {:?}",
        j.status
    );
    ensure!(applied_seconds(&j) == Some(40), "appliedPolicy: {:?}", j.status);
    let (at, failed) = wait_failed(&ctx, "secret", WAIT).await?;
    let after = secs_between(created, at);
    ensure!((39.0..=42.0).contains(&after), "failed {after:.1}s after creation, want 40 s");
    ensure!(failed.reason.as_deref() == Some("StartupDeadlineExceeded"), "reason: {:?}", failed.reason);
    let want = format!(
        "TFJob {}/secret has failed because its pods did not all start within the startup deadline of 40s: {diagnosis}.",
        ctx.ns
    );
    ensure!(failed.message.as_deref() == Some(want.as_str()), "message: {:?}", failed.message);
    // cleanPodPolicy Running (the default) deletes the pod that never ran.
    wait_pods(&ctx, &[], WAIT).await
}

async fn startup_deadline_patched_shorter_away_and_malformed(ctx: Ctx) -> Result<()> {
    let _op = Operator::start(&ctx, &[])?;
    create(&ctx, startup_deadline(unschedulable("shorter"), "600")).await?;
    create(&ctx, startup_deadline(unschedulable("away"), "8")).await?;
    create(&ctx, startup_deadline(unschedulable("malformed"), "ten")).await?;
    for name in ["shorter", "away"] {
        wait_job(&ctx, name, WAIT, "status.startupDeadline", |j| published_deadline(j).is_some()).await?;
    }
    // Patched away before it falls: no deadline, one event, and no failure past it.
    let ann =
        |v: Value| json!({"metadata": {"annotations": {"tfjob.kubeflow.org/startup-deadline-seconds": v}}});
    merge_patch_job(&ctx, "away", ann(Value::Null)).await?;
    wait_job(&ctx, "away", WAIT, "no startup deadline", |j| {
        published_deadline(j).is_none() && applied_seconds(j).is_none()
    })
    .await?;
    wait_events(&ctx, "away", "StartupDeadlineUpdated", 1).await?;

    // Patched shorter than the time the job has waited: it fails at once.
    // Not an assertion: shorter waits 3 s, longer than the 2 s deadline patched in next.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let patched = merge_patch_job(&ctx, "shorter", ann(json!("2"))).await?;
    let sent = Timestamp::now();
    let (at, failed) = wait_failed(&ctx, "shorter", WAIT).await?;
    ensure!(secs_between(sent, at) < 3.0, "failed {:.1}s after the patch", secs_between(sent, at));
    ensure!(failed.reason.as_deref() == Some("StartupDeadlineExceeded"), "reason: {:?}", failed.reason);
    let msg = failed.message.unwrap_or_default();
    ensure!(
        msg.contains("within the startup deadline of 2s: Worker 0 (pod shorter-worker-0): Unschedulable: 0/"),
        "the scheduler's message in the failure: {msg}"
    );
    ensure!(patched.metadata.generation == Some(1), "an annotation patch is no spec change");
    wait_events(&ctx, "shorter", "StartupDeadlineUpdated", 1).await?;

    // Malformed: a Warning and a condition, nothing else.
    let j = wait_job(&ctx, "malformed", WAIT, "InvalidStartupDeadline", |j| {
        condition(j, ConditionType::InvalidStartupDeadline).is_some()
    })
    .await?;
    let c = condition(&j, ConditionType::InvalidStartupDeadline).context("condition")?;
    ensure!(c.reason.as_deref() == Some("InvalidAnnotation"), "reason: {:?}", c.reason);
    ensure!(c.message.as_deref().is_some_and(|m| m.contains("\"ten\"")), "message: {:?}", c.message);
    ensure!(state(&j) == Some(ConditionType::Created), "State: {:?}", j.status);
    ensure!(published_deadline(&j).is_none(), "no deadline: {:?}", j.status);
    wait_events(&ctx, "malformed", "InvalidStartupDeadline", 1).await?;

    // Past the 8 s "away" had, neither it nor the malformed one fails.
    assert_stays(Duration::from_secs(6), "away and malformed not Failed", || async {
        for name in ["away", "malformed"] {
            let j = jobs(&ctx).get(name).await?;
            ensure!(!has_condition(&j, ConditionType::Failed), "{name} failed: {:?}", j.status);
        }
        Ok(())
    })
    .await?;
    wait_events(&ctx, "malformed", "InvalidStartupDeadline", 1).await
}

async fn cluster_default_fails_stuck_jobs_only(ctx: Ctx) -> Result<()> {
    let _op = Operator::start(&ctx, &["--startup-deadline-seconds=6"])?;
    let stuck = create(&ctx, unschedulable("stuck")).await?;
    create(&ctx, one_worker("runs", "Never", json!({}), json!({}))).await?;
    let j = wait_job(&ctx, "runs", WAIT, "podsStartedTime", |j| {
        j.status.as_ref().is_some_and(|s| s.pods_started_time.is_some())
    })
    .await?;
    ensure!(published_deadline(&j).is_none() && applied_seconds(&j) == Some(6), "status: {:?}", j.status);
    let (at, failed) = wait_failed(&ctx, "stuck", WAIT).await?;
    let after = secs_between(created(&stuck.metadata)?, at);
    ensure!((5.0..=8.0).contains(&after), "failed {after:.1}s after creation, want 6 s");
    ensure!(failed.reason.as_deref() == Some("StartupDeadlineExceeded"), "reason: {:?}", failed.reason);
    // The started job is never failed by it.
    assert_stays(Duration::from_secs(4), "runs stays Running", || async {
        let j = jobs(&ctx).get("runs").await?;
        ensure!(
            has_condition(&j, ConditionType::Running) && !has_condition(&j, ConditionType::Failed),
            "runs: {:?}",
            j.status
        );
        Ok(())
    })
    .await
}
