//! A stuck job explains itself: the `PodsNotStarted` diagnosis, the startup deadline, failure
//! details that survive cleanup, and README's examples on an untainted plane like
//! `make cluster`'s.

mod diagnosis;
mod examples;
mod startup;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tfjob_operator::api::{ConditionType, JobCondition, TFJob};

use crate::support::*;
use crate::{Ctx, Test};

pub fn tests() -> Vec<Test> {
    let mut all = diagnosis::tests();
    all.extend(startup::tests());
    all.extend(examples::tests());
    all
}

/// The operator's grace before a stuck pod is diagnosed.
const GRACE: Duration = Duration::from_secs(30);

/// The job's condition of type `t` that holds, if any.
fn condition(j: &TFJob, t: ConditionType) -> Option<JobCondition> {
    j.status.as_ref()?.conditions.iter().find(|c| c.type_ == t && c.status.as_str() == "True").cloned()
}

/// The type of the job's last condition: what the CRD's `State` column shows.
fn state(j: &TFJob) -> Option<ConditionType> {
    Some(j.status.as_ref()?.conditions.last()?.type_)
}

/// One worker with this fate and restart policy.
fn one_worker(name: &str, restart: &str, fate: Value, spec_extra: Value) -> Value {
    job(name, &[replica("Worker", 1).restart(restart).fate(fate)], spec_extra)
}

/// `job` with its workers' pods selecting `label=value` too (beside `type: kwok`).
fn select_nodes(mut job: Value, label: &str, value: &str) -> Value {
    job["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["nodeSelector"][label] = json!(value);
    job
}

/// `job` with this startup-deadline annotation.
fn startup_deadline(mut job: Value, value: &str) -> Value {
    job["metadata"]["annotations"] = json!({"tfjob.kubeflow.org/startup-deadline-seconds": value});
    job
}

/// A creation time of the job or one of its pods.
fn created(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Result<Timestamp> {
    Ok(meta.creation_timestamp.as_ref().context("no creationTimestamp")?.0)
}

fn secs_between(from: Timestamp, to: Timestamp) -> f64 {
    to.duration_since(from).as_secs_f64()
}

/// Waits until `name` has a `PodsNotStarted` condition with `reason`; returns when it arrived
/// and the job.
async fn wait_diagnosis(
    ctx: &Ctx,
    name: &str,
    reason: &str,
    timeout: Duration,
) -> Result<(Timestamp, TFJob)> {
    watch_until(&jobs(ctx), name, timeout, &format!("PodsNotStarted {reason}"), |j| {
        condition(j, ConditionType::PodsNotStarted).is_some_and(|c| c.reason.as_deref() == Some(reason))
    })
    .await
}

/// Waits until exactly `n` events of `reason` are about `name`.
async fn wait_events(ctx: &Ctx, name: &str, reason: &str, n: usize) -> Result<()> {
    eventually(Duration::from_secs(10), &format!("{n} {reason} event(s) about {name}"), || async {
        let got = count_events(ctx, name, reason).await?;
        ensure!(got == n, "{got} {reason} events: {:?}", events(ctx, name).await?);
        Ok(())
    })
    .await
}

/// The failure's reason and message, once the job has failed.
async fn wait_failed(ctx: &Ctx, name: &str, timeout: Duration) -> Result<(Timestamp, JobCondition)> {
    let (at, j) =
        watch_until(&jobs(ctx), name, timeout, "Failed", |j| has_condition(j, ConditionType::Failed)).await?;
    Ok((at, condition(&j, ConditionType::Failed).context("Failed")?))
}
