//! The run policy while the job lives: cleanPodPolicy after finish and patched, the update
//! contract through `kubectl patch`, and a clean stop on SIGTERM.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use tfjob_operator::api::{ConditionType, ReplicaType, TFJob};

use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        test!(clean_pod_policy_after_finish_and_patched),
        test!(sigterm_finishes_in_flight_work_and_exits_zero),
        test!(kubectl_patches_of_the_seed_shape_take_effect_with_one_event),
        test!(kubectl_patches_of_the_kubeflow_shape_take_effect_with_one_event),
        test!(kubectl_patch_shadowed_by_the_seed_shape_changes_nothing),
        test!(refused_kubectl_patches_change_nothing),
    ]
}

async fn clean_pod_policy_after_finish_and_patched(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    let reps = |w: Value| [replica("PS", 1), replica("Worker", 1).fate(w)];
    create(&ctx, job("all", &reps(succeed("1s")), json!({"cleanPodPolicy": "All"}))).await?;
    create(&ctx, job("none", &reps(succeed("1s")), json!({"runPolicy": {"cleanPodPolicy": "None"}}))).await?;
    create(&ctx, job("fail", &reps(fail("1s", 1)), json!({}))).await?;
    for name in ["all", "none", "fail"] {
        wait_job(&ctx, name, WAIT, "finished", |j| j.status.as_ref().is_some_and(|s| s.is_finished()))
            .await
            .with_context(|| op.log_tail())?;
    }
    wait_pods(&ctx, &["fail-worker-0", "none-ps-0", "none-worker-0"], WAIT).await?;
    // None -> All on the finished job: the rest goes, within 2 s.
    let t0 = std::time::Instant::now();
    merge_patch_job(&ctx, "none", json!({"spec": {"cleanPodPolicy": "All"}})).await?;
    wait_pods(&ctx, &["fail-worker-0"], Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    ensure!(took < Duration::from_secs(3), "cleanup took {took:?}");
    // One event, published from the operator's queue (it may land just after the deletes).
    eventually(Duration::from_secs(5), "one CleanPodPolicyUpdated event", || async {
        let evs = events(&ctx, "none").await?;
        ensure!(evs.iter().filter(|(r, _)| r == "CleanPodPolicyUpdated").count() == 1, "{evs:?}");
        Ok(())
    })
    .await?;
    // All -> None after cleanup: nothing comes back.
    merge_patch_job(&ctx, "none", json!({"spec": {"cleanPodPolicy": "None"}})).await?;
    assert_stays(Duration::from_secs(5), "nothing re-created", || async {
        let pods = live_pods(&ctx).await?;
        ensure!(pods == ["fail-worker-0"], "pods {pods:?}");
        Ok(())
    })
    .await?;
    // `Running` keeps a finished job's services until the job goes; `All` took the rest.
    wait_services(&ctx, &["fail-ps-0", "fail-worker-0"], Duration::ZERO).await
}

async fn sigterm_finishes_in_flight_work_and_exits_zero(ctx: Ctx) -> Result<()> {
    let mut op = Operator::start(&ctx, &["--announce-creates"])?;
    eventually(WAIT, "/healthz to answer", || async {
        let code = op.http_status("/healthz").await;
        ensure!(code == Some(200), "/healthz: {code:?}");
        Ok(())
    })
    .await?;
    // 100 pods in slow-start batches (up to 16 at once), so SIGTERM at the first pod lands mid-way.
    create(&ctx, job("t", &[replica("Worker", 100)], json!({}))).await?;
    eventually(WAIT, "the first pod", || async {
        let n = live_pods(&ctx).await?.len();
        ensure!(n >= 1, "{n} pods");
        Ok(())
    })
    .await
    .with_context(|| op.log_tail())?;
    op.proc.signal(SIGTERM);
    let in_flight = 100 - live_pods(&ctx).await?.len();
    let status = tokio::task::block_in_place(|| op.proc.wait_exit(Duration::from_secs(20)))
        .context("still running 20 s after SIGTERM")?;
    ensure!(status.success(), "exit status {status}: {}", op.log_tail());
    ensure!(in_flight > 0, "SIGTERM landed after every create: nothing was in flight");
    // The reconcile in flight finished its creates, and their queued events went out before
    // the process exited.
    let pods = live_pods(&ctx).await?;
    ensure!(
        pods.len() == 100,
        "{} pods after exit, want 40 ({in_flight} were still to create at SIGTERM)",
        pods.len()
    );
    let created = announced(&ctx, "t", "SuccessfulCreatePod").await?;
    ensure!(created == 100, "{created} pods announced by SuccessfulCreatePod events before exit, want 100");
    println!(
        "    SIGTERM with {in_flight} of 100 creates still to go: all created and announced before exit 0"
    );
    Ok(())
}

/// `kubectl -n <ns> patch tfjob <name> --type merge -p <patch> -o json`: (success, stdout, stderr).
fn kubectl_patch(ctx: &Ctx, name: &str, patch: &Value) -> Result<(bool, Value, String)> {
    let out = ctx
        .cluster
        .kubectl()
        .args(["-n", &ctx.ns, "patch", "tfjob", name, "--type", "merge", "-o", "json", "-p"])
        .arg(patch.to_string())
        .output()?;
    let body = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Ok((out.status.success(), body, String::from_utf8_lossy(&out.stderr).into_owned()))
}

fn applied_policy(j: &TFJob) -> Value {
    j.status.as_ref().and_then(|s| serde_json::to_value(&s.applied_policy).ok()).unwrap_or(Value::Null)
}

/// `examples/<file>` named `name`, created and Running with both replicas active.
async fn running_example(ctx: &Ctx, op: &Operator, file: &str, name: &str) -> Result<TFJob> {
    create(ctx, example_on_kwok(file, name)?).await?;
    wait_job(ctx, name, WAIT, "Running with both replicas active", |j| {
        has_condition(j, ConditionType::Running)
            && j.status.as_ref().is_some_and(|s| {
                [ReplicaType::PS, ReplicaType::Worker]
                    .iter()
                    .all(|t| s.replica_statuses.get(t).is_some_and(|r| r.active == 1))
            })
    })
    .await
    .with_context(|| op.log_tail())
}

/// `kubectl patch` of an allowed field in `place` (None: directly under spec): the whole
/// object comes back, the new value takes effect, and one `event` follows.
async fn kubectl_patch_takes_effect(
    ctx: &Ctx,
    name: &str,
    place: Option<&str>,
    field: &str,
    value: Value,
    event: &str,
) -> Result<()> {
    let patch = match place {
        None => json!({"spec": {field: value}}),
        Some(p) => json!({"spec": {p: {field: value}}}),
    };
    let (ok, body, err) = kubectl_patch(ctx, name, &patch)?;
    ensure!(ok, "{name}: patch {field} refused: {err}");
    ensure!(
        body["kind"] == "TFJob" && body["spec"]["tfReplicaSpecs"].is_object(),
        "{name}: the whole object comes back"
    );
    wait_job(ctx, name, Duration::from_secs(5), &format!("{field} {value} in effect"), |j| {
        applied_policy(j)[field] == value
    })
    .await?;
    // The event follows the status write that records the new value.
    eventually(Duration::from_secs(5), event, || async {
        let n = count_events(ctx, name, event).await?;
        ensure!(n >= 1, "no {event} yet");
        Ok(())
    })
    .await?;
    let n = count_events(ctx, name, event).await?;
    ensure!(n == 1, "{name}: {n} {event}: {:?}", events(ctx, name).await?);
    Ok(())
}

/// Each allowed field, in the shape's own place: the whole object back, and in effect.
async fn allowed_kubectl_patches(ctx: Ctx, file: &str, place: Option<&str>) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    running_example(&ctx, &op, file, "j").await?;
    for (field, value, event) in [
        ("activeDeadlineSeconds", json!(900), "DeadlineUpdated"),
        ("ttlSecondsAfterFinished", json!(120), "TTLUpdated"),
        ("cleanPodPolicy", json!("All"), "CleanPodPolicyUpdated"),
    ] {
        kubectl_patch_takes_effect(&ctx, "j", place, field, value, event)
            .await
            .with_context(|| op.log_tail())?;
    }
    Ok(())
}

async fn kubectl_patches_of_the_seed_shape_take_effect_with_one_event(ctx: Ctx) -> Result<()> {
    allowed_kubectl_patches(ctx, "tfjob-seed.yaml", None).await
}

async fn kubectl_patches_of_the_kubeflow_shape_take_effect_with_one_event(ctx: Ctx) -> Result<()> {
    allowed_kubectl_patches(ctx, "tfjob-kubeflow.yaml", Some("runPolicy")).await
}

/// A runPolicy value shadowed by the seed's own (under spec): accepted, nothing effective
/// changes, no event.
async fn kubectl_patch_shadowed_by_the_seed_shape_changes_nothing(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    running_example(&ctx, &op, "tfjob-seed.yaml", "seed").await?;
    kubectl_patch_takes_effect(&ctx, "seed", None, "activeDeadlineSeconds", json!(900), "DeadlineUpdated")
        .await?;
    let before = applied_policy(&jobs(&ctx).get("seed").await?);
    let (ok, _, err) =
        kubectl_patch(&ctx, "seed", &json!({"spec": {"runPolicy": {"activeDeadlineSeconds": 5}}}))?;
    ensure!(ok, "shadowed patch refused: {err}");
    assert_stays(Duration::from_secs(2), "the shadowed value is not acted on", || async {
        let after = jobs(&ctx).get("seed").await?;
        ensure!(
            applied_policy(&after) == before && !has_condition(&after, ConditionType::Failed),
            "shadowed value acted on: {:?}",
            after.status
        );
        let n = count_events(&ctx, "seed", "DeadlineUpdated").await?;
        ensure!(n == 1, "an event for a shadowed change: {n} DeadlineUpdated");
        Ok(())
    })
    .await
}

/// Refused patches change nothing, and the operator writes nothing in response.
async fn refused_kubectl_patches_change_nothing(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    let rv = running_example(&ctx, &op, "tfjob-kubeflow.yaml", "kf").await?.metadata.resource_version;
    for patch in [
        json!({"spec": {"tfReplicaSpecs": {"Worker": {"replicas": 3}}}}),
        json!({"spec": {"runPolicy": {"backoffLimit": 1}}}),
        json!({"spec": {"successPolicy": "AllWorkers"}}),
    ] {
        let (ok, _, err) = kubectl_patch(&ctx, "kf", &patch)?;
        ensure!(!ok && err.contains("cannot be changed"), "{patch} accepted or unclear: {err}");
    }
    assert_stays(Duration::from_secs(2), "no write after refused patches", || async {
        let now = jobs(&ctx).get("kf").await?.metadata.resource_version;
        ensure!(now == rv, "a refused patch led to a write: {rv:?} -> {now:?}");
        Ok(())
    })
    .await
}
