//! The API server's side: a plane without the PodGroup API, `deploy/`'s RBAC, the CRD's
//! rules on `schedulingPolicy`, and its priority class on the pods.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use tfjob_operator::api::ConditionType;
use tfjob_testsupport::{ControlPlane, PlaneOptions};

use super::{NATIVE, foreign_pod_group, pod_groups};
use crate::Ctx;
use crate::support::*;

/// A plane without the gates and the API: `--gang-scheduling=native` exits at start, saying
/// how to enable them.
pub(super) async fn gang_native_exits_at_start_without_the_api(ctx: Ctx) -> Result<()> {
    let plane = ctx.cluster.plane.as_ref().context("needs the local plane")?;
    let opts = PlaneOptions {
        bin_dir: plane.bin_dir.clone(),
        nodes: 0,
        gang_scheduling: false,
        ..Default::default()
    };
    let bare = ControlPlane::start(&opts).await?;
    let mut op = Operator::start_as(&ctx, "tfjob-operator-no-gang", &bare.pki.kubeconfig, &[NATIVE])?;
    let status = tokio::task::block_in_place(|| op.proc.wait_exit(Duration::from_secs(60)))
        .context("still running after 60s without the PodGroup API")?;
    ensure!(!status.success(), "exited with {status}");
    let log = op.log_text();
    ensure!(
        log.contains("does not serve scheduling.k8s.io/v1alpha2 PodGroups")
            && log.contains("--runtime-config=scheduling.k8s.io/v1alpha2=true"),
        "{log}"
    );
    // The same flag on the shared plane, which serves the API: it runs.
    let op = Operator::start(&ctx, &[NATIVE])?;
    eventually(WAIT, "the operator ready", || async {
        ensure!(op.http_status("/readyz").await == Some(200), "not ready");
        Ok(())
    })
    .await
}

/// Under exactly `deploy/`'s RBAC (a TokenRequest token of its ServiceAccount): a job's
/// PodGroup is listed, watched, created and deleted, and a foreign one is read after the 409,
/// with no request refused.
pub(super) async fn gang_under_deploy_rbac(ctx: Ctx) -> Result<()> {
    let (_, kubeconfig) = crate::install::as_deploy_service_account(&ctx).await?;
    let foreign = foreign_pod_group("taken");
    pod_groups(&ctx).create(&PostParams::default(), &foreign).await?;
    let op = Operator::start_as(&ctx, "tfjob-operator-sa", &kubeconfig, &[NATIVE])?;
    let extra = json!({"runPolicy": {"cleanPodPolicy": "None"}});
    create(&ctx, job("ok", &[replica("Worker", 2).fate(succeed("2s"))], extra)).await?;
    create(&ctx, job("taken", &[replica("Worker", 1)], json!({}))).await?;
    wait_for(&pod_groups(&ctx), "ok", WAIT, "the PodGroup", |g| g.metadata.owner_references.is_some())
        .await
        .with_context(|| op.log_tail())?;
    wait_job(&ctx, "ok", WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded)).await?;
    wait_gone(&pod_groups(&ctx), "ok", WAIT).await?;
    wait_job(&ctx, "taken", WAIT, "ReplicaFailure", |j| has_condition(j, ConditionType::ReplicaFailure))
        .await?;
    let m = op.metrics().await?;
    ensure!(metric_sum(&m, "tfjob_operator_api_requests_total", &["code=\"403\""]) == 0.0, "403s:\n{m}");
    Ok(())
}

/// The API server enforces the CRD's rules on `schedulingPolicy`: what native gang
/// scheduling reads is accepted, other backends' fields and a gang larger than the job are
/// refused with their message, and the policy cannot be changed.
pub(super) async fn gang_scheduling_policy_rules_on_the_api_server(ctx: Ctx) -> Result<()> {
    let with_policy = |name: &str, policy: Value| {
        job(
            name,
            &[replica("PS", 1), replica("Worker", 3)],
            json!({"runPolicy": {"schedulingPolicy": policy}}),
        )
    };
    let refused = |e: anyhow::Error| match e.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(s)) if s.code == 422 => s.message.clone(),
        _ => format!("not refused with 422: {e:#}"),
    };
    for (policy, want) in [
        (json!({"queue": "default"}), "schedulingPolicy.queue is read only by Volcano's gang scheduler"),
        (
            json!({"minResources": {"cpu": "1"}}),
            "schedulingPolicy.minResources is read only by Volcano's and scheduler-plugins'",
        ),
        (
            json!({"scheduleTimeoutSeconds": 30}),
            "schedulingPolicy.scheduleTimeoutSeconds is read only by scheduler-plugins'",
        ),
        (json!({"minAvailable": 5}), "schedulingPolicy.minAvailable cannot be more than the job's replicas"),
        (json!({"minAvailable": 0}), "should be greater than or equal to 1"),
    ] {
        let msg = match create(&ctx, with_policy("refused", policy.clone())).await {
            Ok(_) => bail!("{policy} was accepted"),
            Err(e) => refused(e),
        };
        ensure!(msg.contains(want), "{policy}: {msg}");
    }
    create(&ctx, with_policy("ok", json!({"minAvailable": 4, "priorityClass": "high"}))).await?;
    let msg = match merge_patch_job(
        &ctx,
        "ok",
        json!({"spec": {"runPolicy": {"schedulingPolicy": {"minAvailable": 2}}}}),
    )
    .await
    {
        Ok(_) => bail!("the scheduling policy was changed"),
        Err(e) => e.chain().map(ToString::to_string).collect::<Vec<_>>().join(": "),
    };
    ensure!(msg.contains("spec.runPolicy.schedulingPolicy cannot be changed"), "{msg}");
    Ok(())
}

/// `priorityClass`: the pods whose template names none get it (and its priority); the
/// PodGroup's `priorityClassName` is kept only with kube's `WorkloadAwarePreemption` gate,
/// off on this plane, so the API server drops it.
pub(super) async fn gang_priority_class_reaches_the_pods(ctx: Ctx) -> Result<()> {
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    let classes: Api<PriorityClass> = Api::all(ctx.cluster.client.clone());
    let class = format!("gang-{}", ctx.ns);
    let pc = PriorityClass {
        metadata: kube::api::ObjectMeta { name: Some(class.clone()), ..Default::default() },
        value: Some(1000),
        ..Default::default()
    };
    classes.create(&PostParams::default(), &pc).await?;
    let r = async {
        let op = Operator::start(&ctx, &[NATIVE])?;
        let mut j = job(
            "p",
            &[replica("Worker", 2)],
            json!({"runPolicy": {"schedulingPolicy": {"priorityClass": class}}}),
        );
        j["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["priorityClassName"] = Value::Null;
        create(&ctx, j).await?;
        wait_pods(&ctx, &["p-worker-0", "p-worker-1"], WAIT).await.with_context(|| op.log_tail())?;
        for name in ["p-worker-0", "p-worker-1"] {
            let spec = pods(&ctx).get(name).await?.spec.context("no spec")?;
            ensure!(
                spec.priority_class_name.as_deref() == Some(class.as_str()) && spec.priority == Some(1000),
                "{name}: {:?} {:?}",
                spec.priority_class_name,
                spec.priority
            );
        }
        let g = pod_groups(&ctx).get("p").await?;
        ensure!(g.spec.priority_class_name.is_none(), "kept without WorkloadAwarePreemption: {g:?}");
        Ok(())
    }
    .await;
    let _ = classes.delete(&class, &DeleteParams::default()).await;
    r
}
