//! A job's life: its pods, services, TF_CONFIG and status, and which replicas decide success.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use tfjob_operator::api::{ConditionType, ReplicaType};

use super::one_worker_done_job_still_running;
use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        test!(seed_job_gets_pods_services_tf_config_and_status),
        test!(success_removes_the_running_ps_and_keeps_the_services),
        test!(all_workers_success_waits_for_every_worker),
        test!(with_a_chief_the_chief_decides_success),
    ]
}

fn tf_config(pod: &Pod) -> Option<Value> {
    let c = pod.spec.as_ref()?.containers.iter().find(|c| c.name == "tensorflow")?;
    let v = c.env.as_ref()?.iter().find(|e| e.name == "TF_CONFIG")?.value.as_ref()?;
    serde_json::from_str(v).ok()
}

async fn seed_job_gets_pods_services_tf_config_and_status(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    for (file, name) in [("tfjob-seed.yaml", "tfjob-test"), ("tfjob-kubeflow.yaml", "tfjob-test-kf")] {
        create(&ctx, example_on_kwok(file, name)?).await?;
        let j = wait_job(&ctx, name, WAIT, "Running with both replicas active", |j| {
            has_condition(j, ConditionType::Running)
                && j.status.as_ref().is_some_and(|s| {
                    s.replica_statuses.get(&ReplicaType::PS).is_some_and(|r| r.active == 1)
                        && s.replica_statuses.get(&ReplicaType::Worker).is_some_and(|r| r.active == 1)
                })
        })
        .await
        .with_context(|| op.log_tail())?;
        let st = j.status.clone().context("status")?;
        let conds: Vec<(String, String, String)> = st
            .conditions
            .iter()
            .map(|c| {
                (
                    format!("{:?}", c.type_),
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default(),
                )
            })
            .collect();
        ensure!(
            conds
                == [
                    ("Created".into(), "TFJobCreated".into(), format!("TFJob {name} is created.")),
                    ("Running".into(), "TFJobRunning".into(), format!("TFJob {name} is running.")),
                ],
            "{file}: conditions {conds:?}"
        );
        ensure!(st.start_time.is_some(), "startTime");
        let warnings = count_events(&ctx, name, "SetPodTemplateRestartPolicy").await?;
        ensure!(warnings == 1, "one warning: {:?}", events(&ctx, name).await?);
        let rs = serde_json::to_value(&st.replica_statuses)?;
        ensure!(rs == json!({"PS": {"active": 1}, "Worker": {"active": 1}}), "{file}: replicaStatuses {rs}");
        for (t, i) in [("ps", 0), ("worker", 0)] {
            let pod_name = format!("{name}-{t}-{i}");
            let pod = pods(&ctx).get(&pod_name).await?;
            let want = json!({
                "cluster": {"ps": [format!("{name}-ps-0.{}.svc:2222", ctx.ns)], "worker": [format!("{name}-worker-0.{}.svc:2222", ctx.ns)]},
                "task": {"type": t, "index": i},
                "environment": "cloud"
            });
            ensure!(
                tf_config(&pod) == Some(want.clone()),
                "{pod_name}: TF_CONFIG {:?}, want {want}",
                tf_config(&pod)
            );
            // The replica's restartPolicy (default Never) replaces the template's OnFailure.
            ensure!(pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("Never"));
            let svc = services(&ctx).get(&pod_name).await?;
            ensure!(
                svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None"),
                "{pod_name}: headless"
            );
        }
    }
    Ok(())
}

async fn success_removes_the_running_ps_and_keeps_the_services(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    // Worker 0 decides; cleanPodPolicy Running (the default) removes the PS.
    create(&ctx, job("basic", &[replica("PS", 1), replica("Worker", 1).fate(succeed("3s"))], json!({})))
        .await?;
    let j = wait_job(&ctx, "basic", WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded))
        .await
        .with_context(|| op.log_tail())?;
    ensure!(j.status.as_ref().and_then(|s| s.completion_time.as_ref()).is_some(), "completionTime");
    ensure!(!has_condition(&j, ConditionType::Running), "Running turned False");
    wait_pods(&ctx, &["basic-worker-0"], WAIT)
        .await
        .context("the PS pod is removed, the finished worker stays")?;
    // The services stay until the job goes (they select no ready pod); the one event says
    // what the cleanup deleted.
    wait_services(&ctx, &["basic-ps-0", "basic-worker-0"], Duration::ZERO).await?;
    eventually(Duration::from_secs(5), "the outcome event", || async {
        let said = messages_of(&ctx, "basic", "TFJobSucceeded").await?;
        let end = "cleanPodPolicy Running deleted the pods basic-ps-0 still running.";
        ensure!(said.len() == 1 && said[0].ends_with(end), "{said:?}");
        Ok(())
    })
    .await
}

async fn all_workers_success_waits_for_every_worker(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    create(&ctx, job("all", &[replica("Worker", 2)], json!({"successPolicy": "AllWorkers"}))).await?;
    wait_job(&ctx, "all", WAIT, "Running", |j| has_condition(j, ConditionType::Running))
        .await
        .with_context(|| op.log_tail())?;
    annotate(&ctx, "all-worker-0", succeed("0s")).await?;
    one_worker_done_job_still_running(&ctx, "all").await.context("AllWorkers must wait for worker 1")?;
    annotate(&ctx, "all-worker-1", succeed("0s")).await?;
    wait_job(&ctx, "all", WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded)).await?;
    Ok(())
}

async fn with_a_chief_the_chief_decides_success(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    create(&ctx, job("chief", &[replica("Chief", 1), replica("Worker", 1).fate(succeed("1s"))], json!({})))
        .await?;
    one_worker_done_job_still_running(&ctx, "chief")
        .await
        .context("the chief decides, not the workers")
        .with_context(|| op.log_tail())?;
    annotate(&ctx, "chief-chief-0", succeed("0s")).await?;
    wait_job(&ctx, "chief", WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded)).await?;
    Ok(())
}
