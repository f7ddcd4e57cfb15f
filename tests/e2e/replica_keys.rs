//! `crds/kueue-policies.yaml` on the real API server: a TFJob queued by Kueue must spell its
//! replica keys as Kueue reads them, and a MultiKueue job with run-policy fields directly
//! under `spec` gets a warning. The policies stay installed (cluster-wide, they touch only
//! jobs with a Kueue queue label or `managedBy: kueue.x-k8s.io/multikueue`).

use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::{Value, json};

use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![test!(kueue_policies_refuse_odd_keys_and_warn_of_lost_fields)]
}

fn queued(mut j: Value) -> Value {
    j["metadata"]["labels"] = json!({"kueue.x-k8s.io/queue-name": "q"});
    j
}

/// `kubectl create -f -` of `job`: (success, stderr).
fn kubectl_create(ctx: &Ctx, job: &Value) -> Result<(bool, String)> {
    use std::io::Write;
    let mut child = ctx
        .cluster
        .kubectl()
        .args(["-n", &ctx.ns, "create", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(job.to_string().as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

async fn kueue_policies_refuse_odd_keys_and_warn_of_lost_fields(ctx: Ctx) -> Result<()> {
    crate::support::deploy::apply_kueue_policies(&ctx)?;
    // A policy takes effect once the API server has loaded it: retry with fresh names.
    let mut n = 0;
    eventually(Duration::from_secs(30), "the replica-key policy to refuse", || {
        n += 1;
        let name = format!("odd-{n}");
        let ctx = &ctx;
        async move {
            let (ok, err) = kubectl_create(
                ctx,
                &queued(job(&name, &[replica("Ps", 1), replica("worker", 1)], json!({}))),
            )?;
            ensure!(!ok, "{name} accepted");
            ensure!(
                err.contains("must spell its replica keys exactly Chief, Master, PS, Worker or Evaluator")
                    && err.contains("rename Ps, worker"),
                "{name}: {err}"
            );
            Ok(())
        }
    })
    .await?;
    for (name, j) in [
        ("canonical", queued(job("canonical", &[replica("PS", 1), replica("Worker", 1)], json!({})))),
        ("not-queued", job("not-queued", &[replica("Ps", 1), replica("worker", 1)], json!({}))),
    ] {
        let (ok, err) = kubectl_create(&ctx, &j)?;
        ensure!(ok, "{name} refused: {err}");
    }
    let lossy = job(
        "lossy",
        &[replica("Worker", 1)],
        json!({"backoffLimit": 2, "runPolicy": {"managedBy": "kueue.x-k8s.io/multikueue"}}),
    );
    // Like the refusal above, the warning comes once the API server has loaded its policy.
    let warned = eventually(Duration::from_secs(30), "a warning for lossy", || async {
        let (ok, err) = kubectl_create(&ctx, &lossy)?;
        if ok && !err.contains("Warning:") {
            ctx.cluster.kubectl().args(["-n", &ctx.ns, "delete", "tfjob", "lossy", "--wait"]).output()?;
        }
        ensure!(ok && err.contains("Warning:"), "created: {ok}; {err}");
        Ok(err)
    })
    .await?;
    ensure!(
        warned.contains("are lost when MultiKueue copies the job to a worker cluster"),
        "no warning for a MultiKueue job with fields under spec: {warned:?}"
    );
    Ok(())
}
