//! Replica keys Kueue does not read (`Ps`, `worker`), with Kueue: what Kueue makes of them,
//! the operator's Warning, and `crds/kueue-policies.yaml` refusing them.
//!
//! Serial: it takes the cluster-wide replica-key policy away while it shows Kueue's side and
//! applies it again (as `replica_keys` does) before it ends.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;

use crate::kueue::{get, job_of, live};
use crate::kueue_env::*;
use crate::support::*;
use crate::{Ctx, Test, test};

const POLICY: &str = "tfjob-kueue-replica-keys";

pub fn tests() -> Vec<Test> {
    vec![test!(replica_keys_kueue_cannot_read_are_answered).kueue().serial()]
}

/// Messages of the Warning events about `name`.
async fn warnings(ctx: &Ctx, name: &str) -> Result<Vec<String>> {
    let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(ctx.cluster.client.clone(), &ctx.ns);
    Ok(api
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await?
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .filter_map(|e| e.message)
        .collect())
}

async fn kueue_warning(ctx: &Ctx, name: &str, keys: &str) -> Result<()> {
    eventually(Duration::from_secs(20), &format!("a Warning on {name} about Kueue and {keys}"), || async {
        let ws = warnings(ctx, name).await?;
        ensure!(ws.iter().any(|m| m.contains("Kueue") && m.contains(keys)), "warnings {ws:?}");
        Ok(())
    })
    .await
}

async fn podsets(ctx: &Ctx) -> Result<Vec<Vec<String>>> {
    let wls = workloads(ctx).list(&ListParams::default()).await?.items;
    Ok(wls
        .iter()
        .map(|w| {
            w.data["spec"]["podSets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect()
        })
        .collect())
}

/// Kueue reads only `Chief`, `Master`, `PS`, `Worker` and `Evaluator`. Without the policy: a
/// job keyed only `Ps`/`worker` gets no Workload and waits forever; one keyed `PS`/`worker`
/// is charged for its PS alone and its worker runs off the flavor's nodes; the operator warns
/// on both. With the policy, the API server refuses such a job.
async fn replica_keys_kueue_cannot_read_are_answered(ctx: Ctx) -> Result<()> {
    queue(&ctx, "1").await?;
    let op = Operator::start(&ctx, &[])?;
    let bindings: Api<ValidatingAdmissionPolicyBinding> = Api::all(ctx.cluster.client.clone());
    let _ = bindings.delete(POLICY, &DeleteParams::default()).await;
    let odd = queued("odd", &[replica("Ps", 1), replica("worker", 1).fate(succeed("2s"))], "1", json!({}));
    let half = queued("half", &[replica("PS", 1), replica("worker", 1).fate(succeed("2s"))], "1", json!({}));
    // The API server may still apply the policy for a moment after its binding is gone.
    eventually(Duration::from_secs(30), "odd to be accepted without the policy", || async {
        create(&ctx, odd.clone()).await.map(|_| ())
    })
    .await?;
    create(&ctx, half).await?;
    kueue_warning(&ctx, "odd", "Ps, worker").await?;
    kueue_warning(&ctx, "half", "worker").await?;

    // half: Kueue charges only the PS, admits it, and the worker runs off the flavor's nodes.
    let worker = wait_for(&pods(&ctx), "half-worker-0", Duration::from_secs(60), "half admitted", |_| true)
        .await
        .with_context(|| op.log_tail())?;
    let selector = worker.spec.as_ref().and_then(|s| s.node_selector.clone()).unwrap_or_default();
    ensure!(!selector.contains_key(POOL.0), "the worker got the flavor's selector after all: {selector:?}");
    let sets = podsets(&ctx).await?;
    ensure!(sets == [vec!["ps".to_string()]], "Workloads' podSets {sets:?}: want one, with ps only");
    eprintln!(
        "e2e: kueue replica keys: PS/worker charged as podSets {sets:?}; the worker ran on {selector:?}"
    );

    // odd: no Workload can be made (no PodSet), so it stays suspended without pods.
    assert_stays(Duration::from_secs(4), "odd suspended, without pods", || async {
        let j = get(&ctx, "odd").await?;
        ensure!(suspended_in_spec(&j), "odd: {}", summary(Some(&j)));
        let ps = pods(&ctx).list(&ListParams::default()).await?.items;
        ensure!(!ps.iter().any(|p| job_of(p) == "odd" && live(p)), "odd has pods");
        Ok(())
    })
    .await?;
    ensure!(podsets(&ctx).await?.len() == 1, "a Workload for odd");

    // With the policy, the API server refuses it.
    crate::support::deploy::apply_kueue_policies(&ctx)?;
    let mut n = 0;
    eventually(Duration::from_secs(30), "the policy to refuse Ps/worker", || {
        n += 1;
        let j = queued(&format!("odd-{n}"), &[replica("Ps", 1), replica("worker", 1)], "1", json!({}));
        let ctx = &ctx;
        async move {
            let msg = match create(ctx, j).await {
                Ok(_) => String::new(),
                Err(e) => format!("{e:#}"),
            };
            ensure!(msg.contains("rename Ps, worker"), "not refused as wanted: {msg:?}");
            Ok(())
        }
    })
    .await?;
    drop_queue(&ctx).await;
    Ok(())
}
