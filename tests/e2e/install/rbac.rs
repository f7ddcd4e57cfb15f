//! The operator under exactly `deploy/`'s RBAC, with a token from the TokenRequest API: the
//! job lifecycle, and a leader that loses access to its lease.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use tfjob_operator::api::ConditionType;

use super::{apply, find, kind, render, token_kubeconfig};
use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        test!(operator_under_deploy_rbac_runs_the_lifecycle).serial(),
        test!(leader_that_cannot_renew_its_lease_stops_within_the_renew_deadline),
    ]
}

/// The jobs of "The controller" lifecycle, created at once.
async fn lifecycle_jobs(ctx: &Ctx) -> Result<()> {
    // Succeeds; the running PS is cleaned up; deleted 3 s after finishing.
    let ok = [replica("PS", 1), replica("Worker", 1).fate(succeed("2s"))];
    let policy = json!({"runPolicy": {"cleanPodPolicy": "Running", "ttlSecondsAfterFinished": 3}});
    create(ctx, job("ok", &ok, policy)).await?;
    create(ctx, job("bad", &[replica("Worker", 1).fate(fail("1s", 1))], json!({}))).await?;
    let late = json!({"runPolicy": {"activeDeadlineSeconds": 3}});
    create(ctx, job("late", &[replica("Worker", 1)], late)).await?;
    Ok(())
}

async fn wait_event(ctx: &Ctx, job: &str, reason: &str) -> Result<()> {
    eventually(Duration::from_secs(10), &format!("{job}: event {reason}"), || async {
        let n = count_events(ctx, job, reason).await?;
        ensure!(n >= 1, "events {:?}", events(ctx, job).await?);
        Ok(())
    })
    .await
}

/// `deploy/`'s RBAC applied, and a kubeconfig with a token of its ServiceAccount. Returns the
/// rendered documents and the kubeconfig.
pub async fn as_deploy_service_account(ctx: &Ctx) -> Result<(Vec<Value>, PathBuf)> {
    let (docs, _) = render(ctx, "deploy")?;
    let rbac: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            matches!(
                kind(d),
                "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
            )
        })
        .collect();
    apply(ctx, &rbac)?;
    let sa = find(&docs, "ServiceAccount")?["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(ctx.cluster.client.clone(), &ctx.ns)
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .context("TokenRequest")?
        .status
        .context("TokenRequest has no status")?
        .token
        .context("TokenRequest has no token")?;
    let kubeconfig = token_kubeconfig(ctx, &token)?;
    // The identity really is the ServiceAccount's: it may not read what deploy/ does not grant.
    let as_sa = tfjob_testsupport::client_for(&kubeconfig).await?;
    match Api::<k8s_openapi::api::core::v1::Secret>::namespaced(as_sa, &ctx.ns)
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => bail!("the ServiceAccount may list secrets: {other:?}"),
    }
    Ok((docs, kubeconfig))
}

/// The operator with `deploy/`'s identity, electing its leader with a lease in the namespace.
fn start_as_service_account(ctx: &Ctx, kubeconfig: &Path) -> Result<Operator> {
    let ns_flag = format!("--leader-election-namespace={}", ctx.ns);
    Operator::start_as(ctx, "tfjob-operator-sa", kubeconfig, &["--leader-elect", &ns_flag])
}

/// The holder of the operator's lease (empty while there is none).
async fn lease_holder(ctx: &Ctx) -> Result<String> {
    let lease =
        Api::<Lease>::namespaced(ctx.cluster.client.clone(), &ctx.ns).get_opt("tfjob-operator").await?;
    Ok(lease.and_then(|l| l.spec?.holder_identity).unwrap_or_default())
}

/// Cluster-wide, as `deploy/` installs it (so it runs alone, once the other tests' namespaces
/// are gone).
async fn operator_under_deploy_rbac_runs_the_lifecycle(ctx: Ctx) -> Result<()> {
    let (_, kubeconfig) = as_deploy_service_account(&ctx).await?;
    other_test_namespaces_gone(&ctx).await?;
    let ns_flag = format!("--leader-election-namespace={}", ctx.ns);
    let op =
        Operator::launch(&ctx, "tfjob-operator-sa", &kubeconfig, None, &["--leader-elect", &ns_flag], &[])?;
    lifecycle_jobs(&ctx).await?;
    let bad = wait_job(&ctx, "bad", WAIT, "Failed", |j| has_condition(j, ConditionType::Failed))
        .await
        .with_context(|| op.log_tail())?;
    ensure!(last_reason(&bad).as_deref() == Some("TFJobFailed"), "bad: {:?}", last_reason(&bad));
    let late = wait_job(&ctx, "late", WAIT, "Failed", |j| has_condition(j, ConditionType::Failed)).await?;
    ensure!(last_reason(&late).as_deref() == Some("DeadlineExceeded"), "late: {:?}", last_reason(&late));
    // Succeeded (seen, or inferred from its deletion), the PS cleaned up, then the TTL deletion.
    wait_job_gone(&ctx, "ok", WAIT).await.context("ok deleted for its TTL").with_context(|| op.log_tail())?;
    // One event per outcome, naming what its cleanup deleted (a collection delete, which
    // deploy/'s RBAC allows); no announcement of creates or deletes by default.
    for (job, reason, cleaned) in [
        ("ok", "TFJobSucceeded", Some("cleanPodPolicy Running deleted the pods ok-ps-0 still running.")),
        ("bad", "TFJobFailed", None),
        (
            "late",
            "DeadlineExceeded",
            Some("cleanPodPolicy Running deleted the pods late-worker-0 still running."),
        ),
    ] {
        wait_event(&ctx, job, reason).await?;
        let said = messages_of(&ctx, job, reason).await?;
        ensure!(said.len() == 1, "{job}: {reason} events {said:?}, want one");
        if let Some(end) = cleaned {
            ensure!(said[0].ends_with(end), "{job}: {reason} says {said:?}, want it to end {end:?}");
        }
        let evs = events(&ctx, job).await?;
        let announced = ["SuccessfulCreatePod", "SuccessfulCreateService", "SuccessfulDeletePod"];
        ensure!(!evs.iter().any(|(r, _)| announced.contains(&r.as_str())), "{job}: {evs:?}");
    }
    eventually(Duration::from_secs(10), "late's running pod to be removed", || async {
        let pods = live_pods(&ctx).await?;
        ensure!(!pods.iter().any(|n| n.starts_with("late-")), "pods {pods:?}");
        Ok(())
    })
    .await?;

    // Nothing was refused, nothing failed, every job counted once; the lease is this process's.
    let m = op.metrics().await?;
    ensure!(metric_sum(&m, "tfjob_operator_api_requests_total", &["code=\"403\""]) == 0.0, "403s:\n{m}");
    ensure!(metric_sum(&m, "tfjob_operator_reconcile_errors_total", &[]) == 0.0, "reconcile errors:\n{m}");
    let pods = |verb: &str| {
        metric_sum(
            &m,
            "tfjob_operator_api_requests_total",
            &[&format!("verb=\"{verb}\""), "resource=\"pods\""],
        )
    };
    ensure!(pods("deletecollection") == 2.0 && pods("delete") == 0.0, "cleanups: one request per job:\n{m}");
    let ns = format!("job_namespace=\"{}\"", ctx.ns);
    for (name, want) in [
        ("training_operator_jobs_created_total", 3.0),
        ("training_operator_jobs_successful_total", 1.0),
        ("training_operator_jobs_failed_total", 2.0),
        ("training_operator_jobs_deleted_total", 1.0),
    ] {
        ensure!(metric_sum(&m, name, &[&ns]) == want, "{name} != {want}:\n{m}");
    }
    let holder = lease_holder(&ctx).await?;
    ensure!(holder.ends_with(&format!("_{}", op.proc.pid())), "lease holder {holder:?}");
    Ok(())
}

async fn leader_that_cannot_renew_its_lease_stops_within_the_renew_deadline(ctx: Ctx) -> Result<()> {
    let (docs, kubeconfig) = as_deploy_service_account(&ctx).await?;
    let mut op = start_as_service_account(&ctx, &kubeconfig)?;
    op.expect_refusals("its lease RoleBinding is removed on purpose");
    let me = format!("_{}", op.proc.pid());
    eventually(WAIT, "the operator to hold its lease", || async {
        let holder = lease_holder(&ctx).await?;
        ensure!(holder.ends_with(&me), "lease holder {holder:?}");
        Ok(())
    })
    .await
    .with_context(|| op.log_tail())?;

    // A leader that cannot renew (its lease RoleBinding removed) stops within the renew
    // deadline (10 s from its last renewal, at most 2 s before the removal) and exits non-zero.
    let binding = docs
        .iter()
        .find(|d| kind(d) == "RoleBinding")
        .and_then(|d| d["metadata"]["name"].as_str())
        .context("no lease RoleBinding")?
        .to_string();
    let removed = Instant::now();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(ctx.cluster.client.clone(), &ctx.ns)
        .delete(&binding, &Default::default())
        .await?;
    let status = tokio::task::block_in_place(|| op.proc.wait_exit(Duration::from_secs(20)))
        .context("still running 20 s after losing access to its lease")?;
    let took = removed.elapsed();
    ensure!(!status.success(), "exit status {status} after losing the lease");
    ensure!(
        took >= Duration::from_secs(7) && took <= Duration::from_secs(12),
        "stopped {took:?} after the lease became unrenewable (renew deadline 10 s)"
    );
    let log = std::fs::read_to_string(&op.log)?;
    ensure!(log.contains("could not renew the lease before the renew deadline"), "{}", op.log_tail());
    Ok(())
}
