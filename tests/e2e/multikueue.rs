//! MultiKueue: a second plane is the manager (its own Kueue, our CRD, no operator), the
//! shared plane the worker. A TFJob queued on the manager runs on the worker through our
//! operator, and its status is seen on the manager.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tfjob_operator::api::TFJob;
use tfjob_testsupport::kueue::{Kueue, NAMESPACE, NAMESPACE_LABEL, kueue_dir};
use tfjob_testsupport::{Cluster, ControlPlane, PlaneOptions, client_for};

use crate::kueue_env::*;
use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![test!(multikueue_runs_the_job_on_the_worker).kueue()]
}

const T: Duration = Duration::from_secs(90);

fn obj(kind: &str, name: &str, spec: Value) -> Value {
    json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

/// The manager's queueing: every job of `ns` goes through the MultiKueue admission check to
/// the worker whose kubeconfig is `worker_kubeconfig`.
async fn manager_queue(mgr: &Cluster, ns: &str, worker_kubeconfig: &str) -> Result<()> {
    let c = &mgr.client;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "worker", "namespace": NAMESPACE},
                        "stringData": {"kubeconfig": worker_kubeconfig}});
    let secret: Secret = serde_json::from_value(secret)?;
    Api::<Secret>::namespaced(c.clone(), NAMESPACE).create(&PostParams::default(), &secret).await?;
    let mk = |kind: &str, plural: &str| kueue_api_on(c, kind, plural, None);
    let source = json!({"clusterSource": {"kubeConfig": {"locationType": "Secret", "location": "worker"}}});
    apply(&mk("MultiKueueCluster", "multikueueclusters"), obj("MultiKueueCluster", "worker", source)).await?;
    apply(
        &mk("MultiKueueConfig", "multikueueconfigs"),
        obj("MultiKueueConfig", "mk", json!({"clusters": ["worker"]})),
    )
    .await?;
    let check = json!({"controllerName": "kueue.x-k8s.io/multikueue",
                       "parameters": {"apiGroup": "kueue.x-k8s.io", "kind": "MultiKueueConfig", "name": "mk"}});
    apply(&mk("AdmissionCheck", "admissionchecks"), obj("AdmissionCheck", "mk", check)).await?;
    apply(&mk("ResourceFlavor", "resourceflavors"), obj("ResourceFlavor", "any", json!({}))).await?;
    let cq = json!({
        "namespaceSelector": {},
        "admissionChecksStrategy": {"admissionChecks": [{"name": "mk"}]},
        "resourceGroups": [{"coveredResources": ["cpu"],
            "flavors": [{"name": "any", "resources": [{"name": "cpu", "nominalQuota": "4"}]}]}]
    });
    apply(&mk("ClusterQueue", "clusterqueues"), obj("ClusterQueue", "manager", cq)).await?;
    let lq = json!({"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
                    "metadata": {"name": QUEUE, "namespace": ns}, "spec": {"clusterQueue": "manager"}});
    let lqs = kueue_api_on(c, "LocalQueue", "localqueues", Some(ns));
    apply(&lqs, lq).await?;
    for (api, name, what) in [
        (mk("MultiKueueCluster", "multikueueclusters"), "worker", "the worker cluster to be Active"),
        (mk("AdmissionCheck", "admissionchecks"), "mk", "the admission check to be Active"),
        (lqs, QUEUE, "the manager's LocalQueue to be Active"),
    ] {
        eventually(Duration::from_secs(60), what, || async {
            let o = api.get(name).await?;
            ensure!(condition(&o.data, "Active"), "{}", o.data["status"]);
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// The manager: a second local plane without nodes, with the TFJob CRD.
async fn manager_cluster(ctx: &Ctx) -> Result<Cluster> {
    let plane = ctx.cluster.plane.as_ref().context("needs the local plane")?;
    let opts = PlaneOptions { bin_dir: plane.bin_dir.clone(), nodes: 0, ..Default::default() };
    let manager_plane = ControlPlane::start(&opts).await?;
    let client = client_for(&manager_plane.pki.kubeconfig).await?;
    let mgr = Cluster {
        client: client.clone(),
        kubeconfig: manager_plane.pki.kubeconfig.clone(),
        kubectl: plane.bin_dir.join("kubectl"),
        plane: Some(manager_plane),
    };
    mgr.install_crd(&tfjob_operator::api::crd()?).await?;
    Ok(mgr)
}

/// On the manager: the namespace labelled for Kueue, its queue towards the worker (the test's
/// plane), then a queued job: it runs on the worker through our operator, without the
/// seed-shaped field MultiKueue drops, and its status is copied back to the manager.
async fn job_runs_on_the_worker_and_reports_to_the_manager(
    ctx: &Ctx,
    mgr: &Cluster,
    op: &Operator,
    work: &Path,
) -> Result<()> {
    mgr.namespace(&ctx.ns).await?;
    let label = json!({"metadata": {"labels": {NAMESPACE_LABEL.0: NAMESPACE_LABEL.1}}});
    Api::<k8s_openapi::api::core::v1::Namespace>::all(mgr.client.clone())
        .patch(&ctx.ns, &PatchParams::default(), &Patch::Merge(&label))
        .await?;
    manager_queue(mgr, &ctx.ns, &std::fs::read_to_string(&ctx.cluster.kubeconfig)?).await?;

    let on_mgr: Api<TFJob> = Api::namespaced(mgr.client.clone(), &ctx.ns);
    // A seed-shaped field directly under spec: not in the Go type MultiKueue copies through.
    let seed_field = json!({"activeDeadlineSeconds": 600});
    let job: TFJob = serde_json::from_value(queued(
        "remote",
        &[replica("Worker", 1).fate(succeed("3s"))],
        "1",
        seed_field,
    ))?;
    let created = serde_json::to_value(on_mgr.create(&PostParams::default(), &job).await?)?;
    let managed_by = created.pointer("/spec/runPolicy/managedBy").cloned();
    ensure!(managed_by == Some(json!("kueue.x-k8s.io/multikueue")), "manager's job managedBy {managed_by:?}");

    // The worker's copy runs through our operator.
    let j = wait_job(ctx, "remote", T, "the worker's copy to succeed", |j| {
        has_condition(j, tfjob_operator::api::ConditionType::Succeeded)
    })
    .await
    .with_context(|| {
        format!("{}\nmanager's Kueue log: {}", op.log_tail(), work.join("kueue.log").display())
    })?;
    let labels = j.metadata.labels.clone().unwrap_or_default();
    ensure!(labels.contains_key("kueue.x-k8s.io/prebuilt-workload-name"), "worker copy labels {labels:?}");
    let copy = serde_json::to_value(&j)?;
    ensure!(
        created["spec"]["activeDeadlineSeconds"] == 600,
        "the manager's job lost it: {}",
        created["spec"]
    );
    ensure!(copy["spec"]["activeDeadlineSeconds"].is_null(), "the worker's copy kept it: {}", copy["spec"]);
    eprintln!(
        "e2e: multikueue: spec.activeDeadlineSeconds is on the manager's job, not on the worker's copy"
    );
    // Its status is copied back to the manager.
    eventually(T, "the manager's job to show Succeeded", || async {
        let j = serde_json::to_value(on_mgr.get("remote").await?)?;
        ensure!(condition(&j, "Succeeded"), "manager status {}", j["status"]);
        Ok(())
    })
    .await?;
    let j = serde_json::to_value(on_mgr.get("remote").await?)?;
    eprintln!("e2e: multikueue: the manager's job shows {}", j["status"]["conditions"]);
    Ok(())
}

async fn multikueue_runs_the_job_on_the_worker(ctx: Ctx) -> Result<()> {
    queue(&ctx, "2").await?;
    let op = Operator::start(&ctx, &[])?;
    let mgr = manager_cluster(&ctx).await?;
    let work = mgr.plane.as_ref().map(|p| p.dir.join("kueue")).context("manager plane")?;
    let kueue = Kueue::start(&mgr.client, &mgr.kubeconfig, &kueue_dir()?, &work).await?;
    let result = job_runs_on_the_worker_and_reports_to_the_manager(&ctx, &mgr, &op, &work).await;
    kueue.stop().await?;
    drop(mgr);
    drop_queue(&ctx).await;
    result
}
