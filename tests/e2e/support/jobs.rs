//! TFJobs in the tests: building them (replicas whose pods meet a chosen fate on kwok), the
//! repository's examples, creating and patching them, reading their status, and waiting on them.

use std::time::Duration;

use anyhow::{Context, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tfjob_operator::api::{ConditionType, TFJob, TFJobStatus};
use tfjob_testsupport::{kwok_pod_spec, place_on_kwok};

use super::{pods, wait_for, wait_gone};
use crate::Ctx;

pub fn jobs(ctx: &Ctx) -> Api<TFJob> {
    Api::namespaced(ctx.cluster.client.clone(), &ctx.ns)
}

/// One replica type of a test job: `replica("Worker", 2).restart("OnFailure").fate(succeed("3s"))`.
pub struct Replica {
    ty: String,
    count: i32,
    restart: Option<String>,
    fate: Value,
}

/// `count` replicas of type `ty` (the `tfReplicaSpecs` key), the default restartPolicy, and
/// pods that run until something else happens.
pub fn replica(ty: &str, count: i32) -> Replica {
    Replica { ty: ty.into(), count, restart: None, fate: json!({}) }
}

impl Replica {
    /// The replica's restartPolicy.
    pub fn restart(mut self, policy: &str) -> Replica {
        self.restart = Some(policy.into());
        self
    }

    /// The kwok annotations that decide how its pods end: [`succeed`] or [`fail`].
    pub fn fate(mut self, annotations: Value) -> Replica {
        self.fate = annotations;
        self
    }
}

/// A TFJob whose pods land on kwok nodes and meet the fate their annotations choose;
/// `spec_extra`'s fields are added to its spec.
pub fn job(name: &str, replicas: &[Replica], spec_extra: Value) -> Value {
    let mut specs = serde_json::Map::new();
    for r in replicas {
        let mut spec = json!({
            "replicas": r.count,
            "template": {"metadata": {"annotations": r.fate}, "spec": kwok_pod_spec()}
        });
        if let Some(policy) = &r.restart {
            spec["restartPolicy"] = json!(policy);
        }
        specs.insert(r.ty.clone(), spec);
    }
    let mut spec = json!({"tfReplicaSpecs": specs});
    if let Value::Object(extra) = spec_extra {
        for (k, v) in extra {
            spec[k] = v;
        }
    }
    json!({"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": name}, "spec": spec})
}

/// Pods that succeed `after` running (a duration such as "3s").
pub fn succeed(after: &str) -> Value {
    json!({"kwok.test/outcome": "succeed", "kwok.test/run-for": after})
}

/// Pods whose `tensorflow` container exits with `code` after running `after`.
pub fn fail(after: &str, code: i32) -> Value {
    json!({"kwok.test/outcome": "fail", "kwok.test/run-for": after, "kwok.test/exit-code": code.to_string()})
}

/// `examples/<file>` as a user submits it.
pub fn example(file: &str) -> Result<Value> {
    let path = tfjob_testsupport::repo_root().join("examples").join(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_saphyr::from_str(&text)?)
}

/// `examples/<file>` named `name`, its pods on kwok nodes.
pub fn example_on_kwok(file: &str, name: &str) -> Result<Value> {
    let mut job = example(file)?;
    job["metadata"]["name"] = json!(name);
    if let Some(specs) = job["spec"]["tfReplicaSpecs"].as_object_mut() {
        for r in specs.values_mut() {
            place_on_kwok(&mut r["template"]["spec"]);
        }
    }
    Ok(job)
}

pub async fn create(ctx: &Ctx, job: Value) -> Result<TFJob> {
    let job: TFJob = serde_json::from_value(job)?;
    Ok(jobs(ctx).create(&PostParams::default(), &job).await?)
}

/// A JSON merge patch of the job, as `kubectl patch --type merge` sends it.
pub async fn merge_patch_job(ctx: &Ctx, name: &str, patch: Value) -> Result<TFJob> {
    jobs(ctx)
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .with_context(|| format!("patching {name}"))
}

pub fn has_condition(j: &TFJob, c: ConditionType) -> bool {
    j.status.as_ref().is_some_and(|s| s.is_true(c))
}

pub fn last_reason(j: &TFJob) -> Option<String> {
    j.status.as_ref()?.conditions.last()?.reason.clone()
}

/// A time the job's status publishes, such as `|s| s.deadline.as_ref()`.
pub fn status_time(j: &TFJob, field: impl Fn(&TFJobStatus) -> Option<&Time>) -> Option<Timestamp> {
    j.status.as_ref().and_then(field).map(|t| t.0)
}

/// Waits until `pred` holds for the job; the error shows the last status seen and its pods.
pub async fn wait_job(
    ctx: &Ctx,
    name: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&TFJob) -> bool,
) -> Result<TFJob> {
    match wait_for(&jobs(ctx), name, timeout, what, pred).await {
        Ok(j) => Ok(j),
        Err(e) => {
            let prefix = format!("{name}-");
            let its_pods: Vec<String> = pods(ctx)
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|p| p.metadata.name.as_deref().is_some_and(|n| n.starts_with(&prefix)))
                .map(|p| {
                    let phase = p.status.and_then(|s| s.phase).unwrap_or_default();
                    format!(
                        "{} {phase} deleting={}",
                        p.metadata.name.unwrap_or_default(),
                        p.metadata.deletion_timestamp.is_some()
                    )
                })
                .collect();
            Err(e.context(format!("its pods: {its_pods:?}")))
        }
    }
}

/// Waits until the job is deleted; returns the moment its deletion arrived.
pub async fn wait_job_gone(ctx: &Ctx, name: &str, timeout: Duration) -> Result<Timestamp> {
    wait_gone(&jobs(ctx), name, timeout).await
}
