//! One bad object cannot stall the rest: a TFJob the operator's types cannot decode is named
//! and left alone while every other job runs, and `/readyz` turns 503 when a watch cannot
//! sync (here the TFJob list, refused by RBAC) for longer than 60 s. Both under
//! `deploy/namespaced`'s ServiceAccount. The undecodable job is stored raw in etcd (the API server validates int32
//! ranges on write, not on read), so that test needs the local plane.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams};
use serde_json::{Value, json};
use tfjob_operator::api::{ConditionType, TFJob};

use crate::support::deploy::{Install, deploy_identity, kind, render};
use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        Test {
            local_only: Some("it writes a TFJob into etcd directly: local plane only"),
            ..test!(an_undecodable_tfjob_is_named_and_every_other_job_runs)
        },
        test!(readyz_is_503_while_the_job_watch_cannot_list_for_over_60s),
    ]
}

/// How long a watch may stay unsynced before `/readyz` answers 503 (the operator's
/// `UNSYNCED_LIMIT`).
const UNSYNCED_LIMIT: Duration = Duration::from_secs(60);

/// An `i32` cannot hold it (`spec.ttlSecondsAfterFinished` is one).
const OUT_OF_RANGE: i64 = 3_000_000_000;

fn succeeded(j: &TFJob) -> bool {
    has_condition(j, ConditionType::Succeeded)
}

/// The namespace's TFJobs, untyped.
fn untyped(ctx: &Ctx) -> Api<DynamicObject> {
    Api::namespaced_with(ctx.cluster.client.clone(), &ctx.ns, &ApiResource::erase::<TFJob>(&()))
}

/// Stores job `name` with `spec.ttlSecondsAfterFinished: ttl` straight into etcd, past the API
/// server's validation (which refuses an int32 out of range), and waits until the API server
/// serves it.
async fn store_raw(ctx: &Ctx, name: &str, ttl: i64) -> Result<()> {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let plane = ctx.cluster.plane.as_ref().context("needs the local plane")?;
    let mut obj = serde_json::to_value(untyped(ctx).get(name).await?)?;
    obj["spec"]["ttlSecondsAfterFinished"] = json!(ttl);
    if let Some(meta) = obj["metadata"].as_object_mut() {
        meta.remove("resourceVersion");
    }
    let key = format!("/registry/kubeflow.org/tfjobs/{}/{name}", ctx.ns);
    plane.etcd_post("/v3/kv/put", json!({"key": b64(&key), "value": b64(&obj.to_string())})).await?;
    eventually(Duration::from_secs(10), &format!("{name} served with ttl {ttl}"), || async {
        let served = serde_json::to_value(untyped(ctx).get(name).await?)?;
        ensure!(served["spec"]["ttlSecondsAfterFinished"] == json!(ttl), "{}", served["spec"]);
        Ok(())
    })
    .await
}

/// Sets the job's `spec.ttlSecondsAfterFinished` through the API server.
async fn set_ttl(ctx: &Ctx, name: &str, ttl: i64) -> Result<()> {
    let patch = Patch::Merge(json!({"spec": {"ttlSecondsAfterFinished": ttl}}));
    untyped(ctx)
        .patch(name, &PatchParams::default(), &patch)
        .await
        .with_context(|| format!("patching {name}"))?;
    Ok(())
}

/// The operator's warn line naming `job` as undecodable, with the value in the error.
fn names_undecodable(log: &str, ns: &str, job: &str) -> bool {
    log.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).any(|l| {
        l["level"] == "WARN"
            && l["message"].as_str().is_some_and(|m| m.contains("cannot be decoded"))
            && l["namespace"] == ns
            && l["job"] == job
            && l["error"].as_str().is_some_and(|e| e.contains(&OUT_OF_RANGE.to_string()))
    })
}

/// Waits until the live pods include `pod`.
async fn wait_pod(ctx: &Ctx, pod: &str, timeout: Duration) -> Result<()> {
    eventually(timeout, &format!("pod {pod}"), || async {
        let live = live_pods(ctx).await?;
        ensure!(live.iter().any(|p| p == pod), "pods {live:?}");
        Ok(())
    })
    .await
}

async fn readyz(op: &Operator) -> Result<(u16, String)> {
    http_get(op.http_port, "/readyz").await.context("/readyz does not answer")
}

/// Stored before the operator starts, the bad job would fail a typed list of every TFJob; it
/// is named (warn line, Warning event) and the others run. A good job made undecodable by a
/// patch is dropped (a deleted pod of it is not re-created) and picked up again once
/// decodable; so is the bad one. `/readyz` stays 200 past the unsynced limit.
async fn an_undecodable_tfjob_is_named_and_every_other_job_runs(ctx: Ctx) -> Result<()> {
    let done = || [replica("Worker", 1).fate(succeed("2s"))];
    for name in ["bad", "good-1", "good-2"] {
        create(&ctx, job(name, &done(), json!({}))).await?;
    }
    store_raw(&ctx, "bad", OUT_OF_RANGE).await?;
    create(&ctx, job("flip", &[replica("Worker", 1)], json!({}))).await?;
    let started = Instant::now();
    let op = Operator::start(&ctx, &[])?;
    for name in ["good-1", "good-2"] {
        wait_job(&ctx, name, WAIT, "Succeeded", succeeded).await.with_context(|| op.log_tail())?;
    }
    eventually(Duration::from_secs(10), "a warn line naming bad", || async {
        ensure!(names_undecodable(&op.log_text(), &ctx.ns, "bad"), "{}", op.log_tail());
        Ok(())
    })
    .await?;
    eventually(Duration::from_secs(10), "a Warning event on bad", || async {
        ensure!(
            count_events(&ctx, "bad", "UndecodableTFJob").await? == 1,
            "{:?}",
            events(&ctx, "bad").await?
        );
        Ok(())
    })
    .await?;
    let bad = jobs(&ctx).list(&Default::default()).await;
    ensure!(bad.is_err(), "a typed list of the namespace's TFJobs decodes the bad one: {bad:?}");

    // A job that becomes undecodable is dropped: its deleted pod is not re-created.
    wait_pod(&ctx, "flip-worker-0", WAIT).await?;
    store_raw(&ctx, "flip", OUT_OF_RANGE).await?;
    eventually(Duration::from_secs(10), "a warn line naming flip", || async {
        ensure!(names_undecodable(&op.log_text(), &ctx.ns, "flip"), "{}", op.log_tail());
        Ok(())
    })
    .await?;
    pods(&ctx).delete("flip-worker-0", &DeleteParams::default().grace_period(0)).await?;
    assert_stays(Duration::from_secs(5), "flip's pod not re-created while flip is undecodable", || async {
        let live = live_pods(&ctx).await?;
        ensure!(!live.iter().any(|p| p.starts_with("flip-")), "pods {live:?}");
        Ok(())
    })
    .await?;
    // Decodable again: picked up at once.
    set_ttl(&ctx, "flip", 60).await?;
    wait_pod(&ctx, "flip-worker-0", Duration::from_secs(10)).await.with_context(|| op.log_tail())?;
    set_ttl(&ctx, "bad", 60).await?;
    wait_job(&ctx, "bad", WAIT, "Succeeded once decodable", succeeded)
        .await
        .with_context(|| op.log_tail())?;

    // Ready throughout, past the unsynced limit from the start.
    let until =
        (started + UNSYNCED_LIMIT + Duration::from_secs(10)).saturating_duration_since(Instant::now());
    assert_stays(until, "/readyz 200", || async {
        let (code, body) = readyz(&op).await?;
        ensure!(code == 200, "/readyz {code}: {body}");
        Ok(())
    })
    .await?;
    Ok(())
}

/// The rules with `verb` removed from the `tfjobs` rule.
fn without_verb(rules: &Value, verb: &str) -> Value {
    let mut rules = rules.clone();
    for rule in rules.as_array_mut().into_iter().flatten() {
        if rule["resources"] == json!(["tfjobs"])
            && let Some(verbs) = rule["verbs"].as_array_mut()
        {
            verbs.retain(|v| v != verb);
        }
    }
    rules
}

/// The TFJob list refused (403) by the operator's RBAC (`deploy/namespaced`'s Role without
/// `list` on tfjobs): pods and services sync, so `/readyz` is 200 at first, then 503 once the
/// job watch has been unsynced for 60 s, naming it; no job is reconciled meanwhile. With
/// `list` granted again, 200 within seconds (watches retry at least once a second) and the job
/// runs.
async fn readyz_is_503_while_the_job_watch_cannot_list_for_over_60s(ctx: Ctx) -> Result<()> {
    let kubeconfig = deploy_identity(&ctx, Install::Namespaced)?;
    let (docs, _) = render(&ctx, "deploy/namespaced")?;
    let role = docs
        .iter()
        .find(|d| {
            kind(d) == "Role"
                && d["rules"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|r| r["resources"] == json!(["tfjobs"])))
        })
        .context("no Role for tfjobs rendered")?;
    let name = role["metadata"]["name"].as_str().context("the Role has no name")?;
    let roles: Api<Role> = Api::namespaced(ctx.cluster.client.clone(), &ctx.ns);
    let rules = |r: Value| Patch::Merge(json!({"rules": r}));
    roles.patch(name, &PatchParams::default(), &rules(without_verb(&role["rules"], "list"))).await?;
    create(&ctx, job("waiting", &[replica("Worker", 1).fate(succeed("2s"))], json!({}))).await?;
    let launched = Instant::now();
    let mut op = Operator::start_as(&ctx, "tfjob-operator", &kubeconfig, &[])?;
    op.expect_refusals("its TFJob list is refused on purpose, to see /readyz turn 503");

    eventually(WAIT, "/readyz 200 once pods and services synced", || async {
        let (code, body) = readyz(&op).await?;
        ensure!(code == 200, "/readyz {code}: {body}");
        Ok(())
    })
    .await
    .with_context(|| op.log_tail())?;
    // The job watch registers once pods and services synced, after the launch: not before
    // 60 s from the launch (5 s of margin for the probe).
    let quiet =
        (launched + UNSYNCED_LIMIT - Duration::from_secs(5)).saturating_duration_since(Instant::now());
    assert_stays(quiet, "/readyz 200 within the unsynced limit", || async {
        let (code, body) = readyz(&op).await?;
        ensure!(code == 200, "/readyz {code}: {body}");
        Ok(())
    })
    .await?;
    eventually(Duration::from_secs(25), "/readyz 503 naming the tfjobs watch", || async {
        let (code, body) = readyz(&op).await?;
        ensure!(code == 503 && body.contains("tfjobs"), "/readyz {code}: {body}");
        Ok(())
    })
    .await
    .with_context(|| op.log_tail())?;
    let took = launched.elapsed();
    ensure!(took >= UNSYNCED_LIMIT, "503 after {took:?}, before the unsynced limit");
    let live = live_pods(&ctx).await?;
    ensure!(live.is_empty(), "a job was reconciled without a job list: pods {live:?}");
    ensure!(
        op.log_text().contains("the watch failed"),
        "no warn line for the refused list: {}",
        op.log_tail()
    );

    roles.patch(name, &PatchParams::default(), &rules(role["rules"].clone())).await?;
    let restored = Instant::now();
    eventually(Duration::from_secs(15), "/readyz 200 again", || async {
        let (code, body) = readyz(&op).await?;
        ensure!(code == 200, "/readyz {code}: {body}");
        Ok(())
    })
    .await
    .with_context(|| op.log_tail())?;
    let back = restored.elapsed();
    wait_job(&ctx, "waiting", WAIT, "Succeeded", succeeded).await.with_context(|| op.log_tail())?;
    println!(
        "    job list refused: /readyz 503 {:.1} s after the launch; 200 again {:.1} s after list was granted",
        took.as_secs_f64(),
        back.as_secs_f64()
    );
    Ok(())
}
