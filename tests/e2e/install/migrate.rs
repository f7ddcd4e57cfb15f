//! README's "Migrating from Kubeflow's training-operator", step by step, with jobs running:
//! Kubeflow's training-operator v1.9.2 (its CRD and its `tfjobs` webhook with
//! `failurePolicy: Fail`) runs a job, a job whose worker 1 already succeeded, a job left to a
//! deadline and a finished job; it is stopped, and with its webhook still registered a TFJob
//! patch is refused; the webhook is removed, our CRD applied over its CRD as README says, and
//! this operator started as `deploy/` installs it. Then: no pod or service is re-created, the
//! succeeded worker is not run again once its pod is deleted, the running jobs finish (with
//! this operator's default `cleanPodPolicy: Running`), and a deadline and a TTL patched onto
//! inherited jobs act at their instants. On a plane of its own (the CRD is swapped).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, PostParams};
use serde_json::json;
use tfjob_operator::api::{ConditionType, ReplicaType, TFJob};
use tfjob_testsupport::bench::stats::lateness;
use tfjob_testsupport::repo_root;

use super::kubeflow::{
    TFJOB_WEBHOOK, TrainingOperator, WEBHOOK_CONFIG, kubectl, own_plane, training_operator_dir,
};
use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    let mut t = test!(migrate_from_kubeflow_with_jobs_running).serial();
    t.local_only = Some("starts a plane of its own: local plane only");
    vec![t]
}

/// Every live pod and service of the namespace, by kind and name, with its uid.
async fn uids(ctx: &Ctx) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for p in pods(ctx).list(&Default::default()).await?.items {
        if p.metadata.deletion_timestamp.is_none() {
            out.insert(
                format!("pod/{}", p.metadata.name.unwrap_or_default()),
                p.metadata.uid.unwrap_or_default(),
            );
        }
    }
    for s in services(ctx).list(&Default::default()).await?.items {
        if s.metadata.deletion_timestamp.is_none() {
            out.insert(
                format!("svc/{}", s.metadata.name.unwrap_or_default()),
                s.metadata.uid.unwrap_or_default(),
            );
        }
    }
    Ok(out)
}

fn worker_status(j: &TFJob) -> Option<&tfjob_operator::api::ReplicaStatus> {
    j.status.as_ref()?.replica_statuses.get(&ReplicaType::Worker)
}

fn running(j: &TFJob) -> bool {
    has_condition(j, ConditionType::Running)
}

fn finished(j: &TFJob) -> bool {
    has_condition(j, ConditionType::Succeeded) || has_condition(j, ConditionType::Failed)
}

async fn migrate_from_kubeflow_with_jobs_running(ctx: Ctx) -> Result<()> {
    let dir = training_operator_dir()?;
    let own = own_plane(&ctx).await?;
    let mut kf = TrainingOperator::install_and_start(&own, &dir).await?;
    let kf_jobs = kubeflow_runs_the_jobs(&own).await.with_context(|| kf.log_tail())?;
    let before = uids(&own).await?;
    let watch = UidWatch::start(&own);

    // 1. Stop it. Its webhook, still registered, now refuses every TFJob write.
    kf.stop();
    let label = json!({"metadata": {"labels": {"migrated": "true"}}});
    let refused = merge_patch_job(&own, "late", label.clone()).await;
    let err = format!("{:#}", refused.err().context("a TFJob patch passed Kubeflow's dead webhook")?);
    ensure!(err.contains("failed calling webhook") && err.contains(TFJOB_WEBHOOK), "{err}");
    // 2. Remove its webhook: the same patch passes.
    kubectl(&own, &["delete", "validatingwebhookconfiguration", WEBHOOK_CONFIG])?;
    merge_patch_job(&own, "late", label).await.context("the patch once the webhook is gone")?;
    // 3. Our CRD over its CRD, as README says; its schema is served once a job only ours
    // refuses (replicas -1) is refused.
    let crds = repo_root().join("crds");
    kubectl(&own, &["apply", "--server-side", "-k", &crds.to_string_lossy()])?;
    eventually(Duration::from_secs(30), "our CRD's schema served", || async {
        let mut bad = job("bad", &[replica("Worker", -1)], json!({}));
        bad["metadata"]["namespace"] = json!(own.ns);
        let bad: TFJob = serde_json::from_value(bad)?;
        let pp = PostParams { dry_run: true, ..Default::default() };
        ensure!(jobs(&own).create(&pp, &bad).await.is_err(), "replicas: -1 accepted");
        Ok(())
    })
    .await?;
    // 4. Ours, as deploy/ installs it.
    let op = Operator::start_cluster_wide(&own, "tfjob-operator-migrated", &[])?;
    inherited(&own, &kf_jobs, &before).await.with_context(|| op.log_tail())?;
    let reused = watch.reused_names()?;
    ensure!(reused.is_empty(), "pod names re-created: {reused:?}");
    let m = op.metrics().await?;
    ensure!(metric_sum(&m, "tfjob_operator_reconcile_errors_total", &[]) == 0.0, "reconcile errors:\n{m}");
    drop(op);
    Ok(())
}

/// What Kubeflow's operator left: the finished job as it saw it.
struct KubeflowJobs {
    done: TFJob,
    late_start: Timestamp,
}

/// Under Kubeflow's operator (its webhook live): `run` (a PS and a worker) and `late` (a
/// worker) running, `half` (two workers) running with worker 1 succeeded, `done` succeeded.
async fn kubeflow_runs_the_jobs(own: &Ctx) -> Result<KubeflowJobs> {
    let mut invalid = job("invalid", &[replica("Worker", 1)], json!({}));
    invalid["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["name"] = json!("main");
    let err = format!(
        "{:#}",
        create(own, invalid)
            .await
            .err()
            .context("its webhook let a job without a tensorflow container in")?
    );
    ensure!(err.contains("must have at least one container with name tensorflow"), "{err}");

    create(own, job("run", &[replica("PS", 1), replica("Worker", 1)], json!({}))).await?;
    create(own, job("half", &[replica("Worker", 2)], json!({}))).await?;
    create(own, job("late", &[replica("Worker", 1)], json!({}))).await?;
    create(own, job("done", &[replica("Worker", 1).fate(succeed("1s"))], json!({}))).await?;
    let done =
        wait_job(own, "done", WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded)).await?;
    wait_pods(
        own,
        &["done-worker-0", "half-worker-0", "half-worker-1", "late-worker-0", "run-ps-0", "run-worker-0"],
        WAIT,
    )
    .await?;
    for name in ["run", "half", "late"] {
        wait_job(own, name, WAIT, "Running", running).await?;
    }
    let late_start = status_time(&jobs(own).get("late").await?, |s| s.start_time.as_ref());
    annotate(own, "half-worker-1", succeed("1s")).await?;
    let half = wait_job(own, "half", WAIT, "worker 1 succeeded", |j| {
        worker_status(j).is_some_and(|w| w.succeeded == 1 && w.active == 1)
    })
    .await?;
    ensure!(running(&half) && !finished(&half), "half: {:?}", half.status);
    wait_services(
        own,
        &["done-worker-0", "half-worker-0", "half-worker-1", "late-worker-0", "run-ps-0", "run-worker-0"],
        WAIT,
    )
    .await?;
    Ok(KubeflowJobs { done, late_start: late_start.context("late: no startTime")? })
}

/// Under ours: nothing re-created, the succeeded worker not run again, a deadline and a TTL
/// patched onto inherited jobs acting at their instants, the running jobs finishing.
async fn inherited(own: &Ctx, kf: &KubeflowJobs, before: &BTreeMap<String, String>) -> Result<()> {
    // Every job reconciled: our own status fields written, half's succeeded index recorded.
    for name in ["run", "half", "late", "done"] {
        wait_job(own, name, WAIT, "reconciled by ours", |j| {
            j.status.as_ref().is_some_and(|s| s.applied_policy.is_some())
        })
        .await?;
    }
    wait_job(own, "half", WAIT, "worker 1 recorded", |j| {
        worker_status(j).is_some_and(|w| w.completed_indexes.contains(1))
    })
    .await?;
    let done_at = status_time(&kf.done, |s| s.completion_time.as_ref()).context("done: completionTime")?;
    assert_stays(Duration::from_secs(3), "no pod or service re-created, done still finished", || async {
        let now = uids(own).await?;
        ensure!(now == *before, "before {before:?}\nnow {now:?}");
        let done = jobs(own).get("done").await?;
        ensure!(has_condition(&done, ConditionType::Succeeded), "done: {:?}", done.status);
        ensure!(
            status_time(&done, |s| s.completion_time.as_ref()) == Some(done_at),
            "done: {:?}",
            done.status
        );
        Ok(())
    })
    .await?;

    // The deadline: 8 s from now, counted from Kubeflow's startTime; the TTL: 14 s from now.
    let deadline_in = Timestamp::now().duration_since(kf.late_start).as_secs() + 8;
    merge_patch_job(own, "late", json!({"spec": {"runPolicy": {"activeDeadlineSeconds": deadline_in}}}))
        .await?;
    let deadline = kf.late_start.checked_add(SignedDuration::from_secs(deadline_in))?;
    let ttl = Timestamp::now().duration_since(done_at).as_secs() + 14;
    merge_patch_job(own, "done", json!({"spec": {"runPolicy": {"ttlSecondsAfterFinished": ttl}}})).await?;
    let expiry = done_at.checked_add(SignedDuration::from_secs(ttl))?;

    // half's worker 1 succeeded under Kubeflow: its pod deleted, it is not run again.
    pods(own).delete("half-worker-1", &DeleteParams::default()).await?;
    assert_stays(Duration::from_secs(4), "half-worker-1 not run again", || async {
        let live = live_pods(own).await?;
        ensure!(!live.contains(&"half-worker-1".to_string()), "pods {live:?}");
        let half = jobs(own).get("half").await?;
        ensure!(!finished(&half), "half: {:?}", half.status);
        Ok(())
    })
    .await?;

    let (at, late) =
        watch_until(&jobs(own), "late", WAIT, "Failed", |j| has_condition(j, ConditionType::Failed)).await?;
    ensure!(last_reason(&late).as_deref() == Some("DeadlineExceeded"), "late: {:?}", late.status);
    let l = lateness(at, deadline);
    println!("    deadline lateness: {l:.3}s");
    ensure!((0.0..=2.0).contains(&l), "deadline lateness {l:.3}s outside [0, 2]");
    let at = wait_job_gone(own, "done", WAIT).await?;
    let l = lateness(at, expiry);
    println!("    TTL lateness: {l:.3}s");
    ensure!((0.0..=2.2).contains(&l), "TTL lateness {l:.3}s outside [0, 2.2]");

    // The running jobs finish; run's PS, still running, is deleted (cleanPodPolicy Running).
    annotate(own, "run-worker-0", succeed("1s")).await?;
    annotate(own, "half-worker-0", succeed("1s")).await?;
    for name in ["run", "half"] {
        wait_job(own, name, WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded)).await?;
    }
    eventually(WAIT, "run's PS deleted, the finished workers kept", || async {
        let live = live_pods(own).await?;
        let left: Vec<&String> =
            live.iter().filter(|p| p.starts_with("run-") || p.starts_with("half-")).collect();
        ensure!(left == ["half-worker-0", "run-worker-0"], "pods {live:?}");
        Ok(())
    })
    .await
}
