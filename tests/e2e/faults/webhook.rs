//! A failure that is not the user's reaches the user: a validating admission webhook for pod
//! CREATE in the test's namespace, `failurePolicy: Fail`, pointing at a dead loopback port, so
//! the API server answers every pod create 500 ("failed calling webhook"). The job shows the
//! cluster's failure (a `CreateRetrying` Warning and `ReplicaFailure` condition naming the
//! webhook and the refused connection), never a refusal of its template; once the webhook is
//! removed it runs to success with nothing lost.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use tfjob_operator::api::{ConditionType, TFJob};

use crate::Ctx;
use crate::support::*;

/// The job's name.
const JOB: &str = "wh";
/// The webhook's name, which the API server's message (and so the job's) carries.
const HOOK: &str = "pods.webhook-down.tfjob.test";
/// The event and condition reason of creates failing for a reason not the job's.
const RETRYING: &str = "CreateRetrying";
/// How long the operator lets such failures last before it reports them (30 s), less a margin
/// for the first failure coming after the job's creation.
const NOT_BEFORE: Duration = Duration::from_secs(29);

/// The webhook configuration: pod CREATE in `ns` only, failing closed, at a port nothing
/// listens on.
fn webhook_down(ctx: &Ctx, name: &str, port: u16) -> Result<ValidatingWebhookConfiguration> {
    let mut hook: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": HOOK,
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/")},
            "rules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                "resources": ["pods"], "scope": "Namespaced"
            }],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ctx.ns}},
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "timeoutSeconds": 5
        }]
    }))?;
    if let Some(plane) = &ctx.cluster.plane {
        let ca = std::fs::read(&plane.pki.ca_cert).context("reading the plane's CA")?;
        for w in hook.webhooks.iter_mut().flatten() {
            w.client_config.ca_bundle = Some(ByteString(ca.clone()));
        }
    }
    Ok(hook)
}

/// The (reason, type, message) of every event about the job.
async fn job_events(ctx: &Ctx) -> Result<Vec<(String, String, String)>> {
    let api: Api<Event> = Api::namespaced(ctx.cluster.client.clone(), &ctx.ns);
    let evs = api.list(&ListParams::default().fields(&format!("involvedObject.name={JOB}"))).await?;
    Ok(evs
        .items
        .into_iter()
        .map(|e| (e.reason.unwrap_or_default(), e.type_.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect())
}

/// Whether `text` names the cause: the webhook and the refused connection to it.
fn names_the_cause(text: &str, port: u16) -> bool {
    text.contains("failed calling webhook")
        && text.contains(HOOK)
        && text.contains(&format!("127.0.0.1:{port}"))
        && text.contains("connection refused")
}

/// The job's `ReplicaFailure` condition: (reason, message).
fn replica_failure(j: &TFJob) -> Option<(String, String)> {
    let c = j.status.as_ref()?.condition(ConditionType::ReplicaFailure)?;
    Some((c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default()))
}

/// The operator under `deploy/`'s ServiceAccount; the webhook is deleted at the end, whatever
/// the outcome (it is cluster-scoped).
pub async fn a_webhook_down_is_the_clusters_failure_and_nothing_is_lost(ctx: Ctx) -> Result<()> {
    let name = format!("{}-pods-down", ctx.ns);
    let hooks: Api<ValidatingWebhookConfiguration> = Api::all(ctx.cluster.client.clone());
    let port = tfjob_testsupport::free_port()?;
    hooks.create(&PostParams::default(), &webhook_down(&ctx, &name, port)?).await?;
    let result = webhook_down_then_removed(&ctx, &hooks, &name, port).await;
    let cleanup = hooks.delete(&name, &DeleteParams::default()).await;
    match (result, cleanup) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(kube::Error::Api(s))) if s.code == 404 => Ok(()),
        (Ok(()), other) => other.map(|_| ()).context("deleting the webhook configuration"),
    }
}

/// Waits until the API server calls the webhook (it loads configurations asynchronously): a
/// dry-run pod create fails with its message.
async fn webhook_loaded(ctx: &Ctx, port: u16) -> Result<()> {
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "c", "image": "x"}]}
    }))?;
    let dry = PostParams { dry_run: true, ..Default::default() };
    eventually(WAIT, "the webhook to fail pod creates", || async {
        match pods(ctx).create(&dry, &probe).await {
            Err(kube::Error::Api(s)) if s.code == 500 && names_the_cause(&s.message, port) => Ok(()),
            other => anyhow::bail!("the dry-run create came to {other:?}"),
        }
    })
    .await?;
    Ok(())
}

async fn webhook_down_then_removed(
    ctx: &Ctx,
    hooks: &Api<ValidatingWebhookConfiguration>,
    name: &str,
    port: u16,
) -> Result<()> {
    webhook_loaded(ctx, port).await?;
    let (_, kubeconfig) = crate::install::as_deploy_service_account(ctx).await?;
    let op =
        Operator::launch(ctx, "tfjob-operator", &kubeconfig, Some(&ctx.ns), &["--announce-creates"], &[])?;
    let uids = UidWatch::start(ctx);
    create(ctx, job(JOB, &[replica("PS", 1), replica("Worker", 2).fate(succeed("2s"))], json!({}))).await?;
    let created = Instant::now();

    // Within 60 s: the Warning and the condition name the cause, as the cluster's failure.
    eventually(WAIT, "a CreateRetrying Warning and condition naming the webhook", || async {
        let evs = job_events(ctx).await?;
        let warned = evs.iter().any(|(r, t, m)| r == RETRYING && t == "Warning" && names_the_cause(m, port));
        ensure!(warned, "events {evs:?}");
        let j: TFJob = jobs(ctx).get(JOB).await?;
        let condition = replica_failure(&j);
        ensure!(
            condition.as_ref().is_some_and(|(r, m)| r == RETRYING && names_the_cause(m, port)),
            "ReplicaFailure {condition:?}"
        );
        Ok(())
    })
    .await
    .with_context(|| op.log_tail())?;
    let reported = created.elapsed();
    ensure!(
        reported >= NOT_BEFORE,
        "reported {reported:?} after the job's creation: before 30 s of failures"
    );
    let m = op.metrics().await?;
    let transient = metric_sum(&m, "tfjob_operator_create_failures_total", &["cause=\"transient\""]);
    let refused = metric_sum(&m, "tfjob_operator_create_failures_total", &["cause=\"refused\""]);
    ensure!(transient >= 1.0 && refused == 0.0, "create failures: {transient} transient, {refused} refused");
    ensure!(live_pods(ctx).await?.is_empty(), "no pod passed the webhook");

    // The webhook removed: the job runs to success with every pod, each name with one uid.
    hooks.delete(name, &DeleteParams::default()).await?;
    let removed = Instant::now();
    let j = wait_job(ctx, JOB, Duration::from_secs(90), "Succeeded", |j| {
        has_condition(j, ConditionType::Succeeded)
    })
    .await
    .with_context(|| op.log_tail())?;
    let succeeded = removed.elapsed();
    ensure!(
        replica_failure(&j).is_none(),
        "the condition still claims the failure: {:?}",
        replica_failure(&j)
    );
    let warnings = nothing_lost_nothing_refused(ctx, &uids).await?;
    let m = op.metrics().await?;
    let refused = metric_sum(&m, "tfjob_operator_create_failures_total", &["cause=\"refused\""]);
    ensure!(refused == 0.0, "refused creates counted: {refused}");
    println!(
        "    webhook down: reported {:.1} s after the job's creation ({warnings} Warning); \
         Succeeded {:.1} s after the webhook was removed",
        reported.as_secs_f64(),
        succeeded.as_secs_f64()
    );
    Ok(())
}

/// Every pod of the job was created once (each name with one uid), and no event called the
/// cluster's failure a refusal; returns the number of `CreateRetrying` Warnings.
async fn nothing_lost_nothing_refused(ctx: &Ctx, uids: &UidWatch) -> Result<usize> {
    let want = ["wh-ps-0", "wh-worker-0", "wh-worker-1"];
    let created_pods = announced_names(ctx, JOB, "SuccessfulCreatePod").await?;
    ensure!(created_pods.iter().eq(want.iter()), "pods announced created: {created_pods:?}, want {want:?}");
    ensure!(uids.names() == want.len(), "pod names seen: {}, want {}", uids.names(), want.len());
    let reused = uids.reused_names()?;
    ensure!(reused.is_empty(), "pod names with more than one uid: {reused:?}");
    let evs = job_events(ctx).await?;
    let refusals: Vec<_> = evs.iter().filter(|(r, _, _)| r.starts_with("FailedCreate")).collect();
    ensure!(refusals.is_empty(), "a failure of the cluster reported as a refusal: {refusals:?}");
    let warnings = evs.iter().filter(|(r, _, _)| r == RETRYING).count();
    ensure!(
        warnings == 1,
        "{warnings} CreateRetrying Warnings, want one for the one run of failures: {evs:?}"
    );
    Ok(warnings)
}
