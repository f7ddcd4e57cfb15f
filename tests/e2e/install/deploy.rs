//! `deploy/` rendered by kustomize: least-privilege RBAC, a namespaced variant, and pods that
//! pass restricted Pod Security admission.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use super::{apply, find, kind, render};
use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        test!(deploy_renders_least_privilege_rbac_and_a_namespaced_variant),
        test!(deploy_pods_pass_restricted_admission),
    ]
}

async fn deploy_renders_least_privilege_rbac_and_a_namespaced_variant(ctx: Ctx) -> Result<()> {
    let (docs, _) = render(&ctx, "deploy")?;
    let kinds: BTreeSet<&str> = docs.iter().map(kind).collect();
    let want: BTreeSet<&str> = [
        "ClusterRole",
        "ClusterRoleBinding",
        "CustomResourceDefinition",
        "Deployment",
        "Namespace",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    .into();
    ensure!(kinds == want, "rendered kinds {kinds:?}");
    let cluster_rules = find(&docs, "ClusterRole")?["rules"].clone();
    let words = |key: &str| -> Vec<String> {
        cluster_rules
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|r| r[key].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    };
    for key in ["apiGroups", "resources", "verbs"] {
        ensure!(!words(key).iter().any(|w| w.contains('*')), "a wildcard in {key}: {cluster_rules}");
    }

    // The namespaced variant: the same rules in a Role, the operator limited to its namespace.
    let (namespaced, _) = render(&ctx, "deploy/namespaced")?;
    ensure!(!namespaced.iter().any(|d| kind(d).starts_with("Cluster")), "cluster RBAC in deploy/namespaced");
    let role = namespaced
        .iter()
        .find(|d| {
            kind(d) == "Role" && !d["metadata"]["name"].as_str().unwrap_or("").ends_with("leader-election")
        })
        .context("no Role for the jobs in deploy/namespaced")?;
    ensure!(role["rules"] == cluster_rules, "the Role's rules differ from the ClusterRole's");
    let env = &find(&namespaced, "Deployment")?["spec"]["template"]["spec"]["containers"][0]["env"];
    ensure!(
        env.as_array().into_iter().flatten().any(|e| e["name"] == "TFJOB_NAMESPACE"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"),
        "deploy/namespaced does not limit the operator to its namespace: {env}"
    );
    Ok(())
}

async fn deploy_pods_pass_restricted_admission(ctx: Ctx) -> Result<()> {
    let (docs, prefix) = render(&ctx, "deploy")?;
    // deploy/'s namespace labels on the test's namespace: the restricted profile is enforced.
    let labels = find(&docs, "Namespace")?["metadata"]["labels"].clone();
    ensure!(labels["pod-security.kubernetes.io/enforce"] == "restricted", "labels {labels}");
    Api::<Namespace>::all(ctx.cluster.client.clone())
        .patch(&ctx.ns, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": labels}})))
        .await?;
    let plain: Pod = serde_json::from_value(json!({
        "metadata": {"name": "unrestricted"},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]}
    }))?;
    match pods(&ctx).create(&PostParams::default(), &plain).await {
        Err(kube::Error::Api(s))
            if s.code == 403 && s.message.contains("violates PodSecurity \"restricted:latest\"") => {}
        other => bail!("a pod without the restricted settings was not refused: {other:?}"),
    }

    // deploy/ applied; the only test-side change puts the Deployment's pods on kwok nodes.
    let mut deployment = find(&docs, "Deployment")?.clone();
    ensure!(deployment["spec"]["replicas"] == 2, "replicas {}", deployment["spec"]["replicas"]);
    tfjob_testsupport::place_on_kwok(&mut deployment["spec"]["template"]["spec"]);
    let rest: Vec<&Value> = docs
        .iter()
        .filter(|d| !matches!(kind(d), "Namespace" | "CustomResourceDefinition" | "Deployment"))
        .collect();
    apply(&ctx, &rest)?;
    apply(&ctx, &[&deployment])?;
    // The replicaset controller creates the pods, admission lets them in, kwok runs them.
    let name = deployment["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let deployments: Api<Deployment> = Api::namespaced(ctx.cluster.client.clone(), &ctx.ns);
    let ready = wait_for(&deployments, &name, WAIT, "2 replicas ready", |d| {
        d.status.as_ref().and_then(|s| s.ready_replicas) == Some(2)
    })
    .await;
    if let Err(e) = ready {
        let events = events(&ctx, &name).await.unwrap_or_default();
        return Err(e.context(format!("events {events:?}")));
    }
    let running =
        pods(&ctx).list(&ListParams::default().labels("app.kubernetes.io/name=tfjob-operator")).await?;
    ensure!(running.items.len() == 2, "{} operator pods", running.items.len());
    for p in &running.items {
        let spec = p.spec.as_ref().context("pod spec")?;
        let sc = spec.containers[0].security_context.as_ref().context("container securityContext")?;
        ensure!(sc.read_only_root_filesystem == Some(true) && sc.allow_privilege_escalation == Some(false));
        ensure!(spec.service_account_name.as_deref() == Some(format!("{prefix}tfjob-operator").as_str()));
        let env: Vec<&str> = spec.containers[0].env.iter().flatten().map(|e| e.name.as_str()).collect();
        ensure!(env.contains(&"POD_NAME") && env.contains(&"POD_NAMESPACE"), "env {env:?}");
    }
    Ok(())
}
