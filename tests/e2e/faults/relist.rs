//! After an API server restart, as deployed: the operator, under `deploy/`'s ServiceAccount,
//! re-creates a pod deleted once the API server answers again, at once, while its TFJob
//! watch is still catching up.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use kube::api::DeleteParams;
use serde_json::json;
use tfjob_operator::api::ConditionType;

use super::{api_back, plane};
use crate::Ctx;
use crate::support::*;

/// Jobs running steadily when the API server restarts (nothing about them changes, so no
/// TFJob event arrives to refresh the job cache).
const JOBS: usize = 20;
/// How soon after the API server answers the deleted pod must be back.
const RECREATED_WITHIN: Duration = Duration::from_secs(10);

/// 20 jobs running (PS + worker) under the cluster-wide ServiceAccount; kube-apiserver
/// SIGKILLed for 5 s and restarted; once it answers, a running PS pod is deleted: the operator
/// re-creates it within 10 s and every job finishes, with no request refused. Before `deploy/`
/// granted `get` on `tfjobs`, the re-create first read the job (its cache was not yet known
/// fresh after the watch failed) and got 403 until a TFJob changed.
pub async fn api_server_restarted_then_a_deleted_pod_is_recreated_at_once(ctx: Ctx) -> Result<()> {
    other_test_namespaces_gone(&ctx).await?;
    let plane = plane(&ctx)?;
    let mut op = Operator::start_cluster_wide(&ctx, "tfjob-operator", &[])?;
    for i in 0..JOBS {
        let replicas = [replica("PS", 1), replica("Worker", 1).fate(succeed("75s"))];
        create(&ctx, job(&format!("r{i}"), &replicas, json!({}))).await?;
    }
    for i in 0..JOBS {
        wait_job(&ctx, &format!("r{i}"), WAIT, "Running", |j| has_condition(j, ConditionType::Running))
            .await
            .with_context(|| op.log_tail())?;
    }
    let victim = "r7-ps-0";
    let old_uid = pods(&ctx).get(victim).await?.metadata.uid.context("no uid")?;

    plane.kill("kube-apiserver")?;
    // The outage itself: the API server stays down 5 s on purpose.
    tokio::time::sleep(Duration::from_secs(5)).await;
    plane.restart("kube-apiserver")?;
    let back = api_back(&ctx).await?;
    op.forgive_refusals_so_far().await?;
    let refusals = |m: &str| metric_sum(m, "tfjob_operator_api_requests_total", &["code=\"403\""]);
    let refused_at_back = refusals(&op.metrics().await?);
    pods(&ctx).delete(victim, &DeleteParams::default().grace_period(0)).await?;
    let deleted = Instant::now();
    let recreated = eventually(RECREATED_WITHIN.saturating_sub(back.elapsed()), "the re-create", || async {
        let uid = pods(&ctx).get_opt(victim).await?.and_then(|p| p.metadata.uid);
        ensure!(uid.as_ref().is_some_and(|u| *u != old_uid), "{victim}: uid {uid:?}");
        Ok(Instant::now())
    })
    .await;
    let refused = refusals(&op.metrics().await?) - refused_at_back;
    let recreated = recreated.map_err(|e| {
        anyhow::anyhow!(
            "{victim} not re-created within {RECREATED_WITHIN:?} of the API server answering again \
         (deleted {:.1} s after it answered; 403s since {refused}): {e:#}\n{}",
            deleted.duration_since(back).as_secs_f64(),
            op.log_tail()
        )
    })?;
    ensure!(
        refused == 0.0,
        "{refused} requests refused (403) after the API server answered again:\n{}",
        op.log_tail()
    );
    // kwok drops a pod stage whose status patch failed while the API server was away.
    let _supervisor = super::nudge_kwok_after_outage(&ctx).await?;
    // Every job finishes: the workers succeed 75 s after starting.
    for i in 0..JOBS {
        let name = format!("r{i}");
        wait_job(&ctx, &name, Duration::from_secs(150), "Succeeded", |j| {
            has_condition(j, ConditionType::Succeeded)
        })
        .await
        .with_context(|| op.log_tail())?;
    }
    println!(
        "    {victim} re-created {:.1} s after the API server answered again ({:.1} s after its deletion)",
        recreated.duration_since(back).as_secs_f64(),
        recreated.duration_since(deleted).as_secs_f64()
    );
    Ok(())
}
