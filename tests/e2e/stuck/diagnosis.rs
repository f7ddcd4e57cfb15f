//! The `PodsNotStarted` diagnosis on the real plane: an unschedulable pod (cleared once a node
//! matches), an image that cannot be pulled (cleared once it can), a crash loop (turned into
//! failure by the backoff limit), and failure details that survive cleanPodPolicy `All`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tfjob_operator::api::ConditionType;
use tfjob_testsupport::{KWOK_TAINT, kwok_node};

use super::*;
use crate::test;

pub fn tests() -> Vec<Test> {
    vec![
        test!(unschedulable_job_is_diagnosed_and_runs_once_a_node_matches),
        test!(image_pull_failure_is_diagnosed_and_clears_when_the_image_arrives),
        test!(crash_loop_is_diagnosed_then_fails_at_the_backoff_limit),
        test!(failure_details_survive_clean_pod_policy_all),
    ]
}

/// A node only this test's pods may use (its own taint), so other tests are not disturbed.
async fn dedicated_node(ctx: &Ctx, name: &str) -> Result<Api<Node>> {
    let nodes: Api<Node> = Api::all(ctx.cluster.client.clone());
    let node = kwok_node(name, &[], &[KWOK_TAINT, ("tfjob.test/dedicated", ctx.ns.as_str())])?;
    nodes.create(&PostParams::default(), &node).await?;
    wait_for(&nodes, name, WAIT, "the node Ready", |n: &Node| {
        n.status
            .iter()
            .flat_map(|s| s.conditions.iter().flatten())
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
    .await?;
    Ok(nodes)
}

async fn unschedulable_job_is_diagnosed_and_runs_once_a_node_matches(ctx: Ctx) -> Result<()> {
    let node = format!("stuck-{}", ctx.ns);
    let nodes = dedicated_node(&ctx, &node).await?;
    let result = unschedulable_then_labelled(&ctx, &nodes, &node).await;
    nodes.delete(&node, &DeleteParams::default()).await?;
    result
}

async fn unschedulable_then_labelled(ctx: &Ctx, nodes: &Api<Node>, node: &str) -> Result<()> {
    let _op = Operator::start(ctx, &[])?;
    let mut j =
        select_nodes(one_worker("unsched", "Never", json!({}), json!({})), "tfjob.test/pool", &ctx.ns);
    if let Some(t) = j["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["tolerations"].as_array_mut() {
        t.push(json!({"key": "tfjob.test/dedicated", "operator": "Exists", "effect": "NoSchedule"}));
    }
    create(ctx, j).await?;
    let pod = wait_for(&pods(ctx), "unsched-worker-0", WAIT, "the pod", |_| true).await?;
    let (at, j) = wait_diagnosis(ctx, "unsched", "Unschedulable", GRACE * 2).await?;
    let after = secs_between(created(&pod.metadata)?, at);
    // Creation times are whole seconds (rounded down), so the grace may look up to 1 s short.
    ensure!(
        (GRACE.as_secs_f64() - 1.0..=GRACE.as_secs_f64() + 2.0).contains(&after),
        "diagnosed {after:.1}s after the pod's creation, want the grace (30 s) plus at most 2 s"
    );
    let c = condition(&j, ConditionType::PodsNotStarted).context("PodsNotStarted")?;
    let msg = c.message.unwrap_or_default();
    ensure!(
        msg.starts_with("Worker 0 (pod unsched-worker-0): Unschedulable: ")
            && msg.contains("didn't match Pod's node affinity/selector"),
        "the scheduler's message: {msg}"
    );
    ensure!(state(&j) == Some(ConditionType::Created), "the State column stays Kubeflow's: {:?}", j.status);
    wait_events(ctx, "unsched", "PodsNotStarted", 1).await?;

    // A node gets the label: the pod is scheduled there and starts; the diagnosis clears.
    let label = json!({"metadata": {"labels": {"tfjob.test/pool": ctx.ns}}});
    nodes.patch(node, &PatchParams::default(), &Patch::Merge(label)).await?;
    let j = wait_job(ctx, "unsched", WAIT, "Running without a diagnosis", |j| {
        has_condition(j, ConditionType::Running) && condition(j, ConditionType::PodsNotStarted).is_none()
    })
    .await?;
    ensure!(
        j.status.as_ref().is_some_and(|s| s.pods_started_time.is_some()),
        "podsStartedTime: {:?}",
        j.status
    );
    let pod = pods(ctx).get("unsched-worker-0").await?;
    ensure!(pod.spec.and_then(|s| s.node_name).as_deref() == Some(node), "runs on the labelled node");
    wait_events(ctx, "unsched", "PodsNotStarted", 1).await
}

async fn image_pull_failure_is_diagnosed_and_clears_when_the_image_arrives(ctx: Ctx) -> Result<()> {
    let _op = Operator::start(&ctx, &[])?;
    let fate = json!({"kwok.test/start": "image-pull-error", "kwok.test/stuck-for": "40s"});
    create(&ctx, one_worker("pull", "Never", fate, json!({}))).await?;
    let (_, j) = wait_diagnosis(&ctx, "pull", "ImagePullBackOff", GRACE + Duration::from_secs(5)).await?;
    let msg = condition(&j, ConditionType::PodsNotStarted).and_then(|c| c.message).unwrap_or_default();
    ensure!(
        msg == "Worker 0 (pod pull-worker-0): ImagePullBackOff: container tensorflow: Back-off pulling image \"tensorflow/tensorflow:2.16.1\"",
        "message: {msg}"
    );
    ensure!(state(&j) == Some(ConditionType::Created), "State: {:?}", j.status);
    // ErrImagePull and ImagePullBackOff are one diagnosis: one event.
    wait_events(&ctx, "pull", "PodsNotStarted", 1).await?;
    wait_job(&ctx, "pull", WAIT, "Running without a diagnosis", |j| {
        has_condition(j, ConditionType::Running) && condition(j, ConditionType::PodsNotStarted).is_none()
    })
    .await?;
    wait_events(&ctx, "pull", "PodsNotStarted", 1).await
}

async fn crash_loop_is_diagnosed_then_fails_at_the_backoff_limit(ctx: Ctx) -> Result<()> {
    let _op = Operator::start(&ctx, &[])?;
    // Crashes 1 s after each start, then backs off 40 s; the second crash is over the limit.
    let fate = json!({
        "kwok.test/outcome": "crash-loop", "kwok.test/run-for": "1s", "kwok.test/crash-backoff": "40s",
        "kwok.test/exit-code": "3", "kwok.test/message": "CUDA error: out of memory"
    });
    create(&ctx, one_worker("crash", "OnFailure", fate, json!({"backoffLimit": 1}))).await?;
    let (_, j) = wait_diagnosis(&ctx, "crash", "CrashLoopBackOff", GRACE + Duration::from_secs(5)).await?;
    let msg = condition(&j, ConditionType::PodsNotStarted).and_then(|c| c.message).unwrap_or_default();
    ensure!(
        msg.starts_with("Worker 0 (pod crash-worker-0): CrashLoopBackOff: container tensorflow: back-off 40s restarting failed container=tensorflow"),
        "message: {msg}"
    );
    let (_, failed) = wait_failed(&ctx, "crash", WAIT).await?;
    let msg = failed.message.unwrap_or_default();
    ensure!(failed.reason.as_deref() == Some("BackoffLimitExceeded"), "reason: {:?}", failed.reason);
    ensure!(
        msg.ends_with("The last failure: pod crash-worker-0 container tensorflow exited with code 3 (Error): CUDA error: out of memory."),
        "message: {msg}"
    );
    let j = jobs(&ctx).get("crash").await?;
    ensure!(
        condition(&j, ConditionType::PodsNotStarted).is_none(),
        "a finished job has no diagnosis: {:?}",
        j.status
    );
    Ok(())
}

async fn failure_details_survive_clean_pod_policy_all(ctx: Ctx) -> Result<()> {
    let _op = Operator::start(&ctx, &[])?;
    let fate = json!({
        "kwok.test/outcome": "fail", "kwok.test/run-for": "1s", "kwok.test/exit-code": "42",
        "kwok.test/message": "loss is NaN at step 1200"
    });
    create(&ctx, one_worker("nan", "Never", fate, json!({"cleanPodPolicy": "All"}))).await?;
    wait_failed(&ctx, "nan", WAIT).await?;
    wait_pods(&ctx, &[], WAIT).await?;
    let j = jobs(&ctx).get("nan").await?;
    let c = condition(&j, ConditionType::Failed).context("Failed")?;
    let msg = c.message.unwrap_or_default();
    ensure!(
        msg == format!(
            "TFJob {}/nan has failed because 1 Worker replica(s) failed: pod nan-worker-0 container tensorflow exited with code 42 (Error): loss is NaN at step 1200.",
            ctx.ns
        ),
        "after the pods are gone, the message: {msg}"
    );
    Ok(())
}
