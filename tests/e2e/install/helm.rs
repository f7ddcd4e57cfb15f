//! The Helm chart installed with `helm install` (Helm 4, `hack/build-helm.sh`): its Deployment
//! placed on kwok nodes becomes ready, the operator runs (as a local process: kwok cannot run
//! the image) with a token of the chart's ServiceAccount, under the chart's RBAC alone, and a
//! job succeeds; `helm uninstall` removes every object of the release and leaves the CRD.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams};
use serde_json::json;
use tfjob_operator::api::ConditionType;

use super::token_kubeconfig;
use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        test!(helm_install_cluster_wide_runs_a_job_under_the_charts_rbac),
        test!(helm_install_namespaced_runs_a_job_under_the_charts_rbac),
    ]
}

/// The default values: a ClusterRole and its binding, named after the release.
async fn helm_install_cluster_wide_runs_a_job_under_the_charts_rbac(ctx: Ctx) -> Result<()> {
    install_run_uninstall(&ctx, false).await
}

/// `watchNamespace` the release namespace (deploy/namespaced): a Role, nothing cluster-wide.
async fn helm_install_namespaced_runs_a_job_under_the_charts_rbac(ctx: Ctx) -> Result<()> {
    install_run_uninstall(&ctx, true).await
}

/// The release: named per test (`e2e<N>-tfjob-operator`, like the suite's `deploy/` prefix),
/// so its cluster-scoped ClusterRole and binding clash with no other test's.
fn release(ctx: &Ctx) -> String {
    format!("e2e{}-tfjob-operator", ctx.ns.rsplit('-').next().unwrap_or_default())
}

/// `helm` against the cluster (admin kubeconfig), its config and cache in the test's directory.
fn helm(ctx: &Ctx) -> Result<Command> {
    let dir = tfjob_testsupport::built_dir("TFJOB_HELM_DIR", "hack/build-helm.sh")?;
    let home = std::env::temp_dir().join(format!("tfjob-e2e-helm-{}", ctx.ns));
    let mut c = Command::new(dir.join("helm"));
    c.env("KUBECONFIG", &ctx.cluster.kubeconfig).args(["--namespace", &ctx.ns]);
    for (var, sub) in
        [("HELM_CONFIG_HOME", "config"), ("HELM_CACHE_HOME", "cache"), ("HELM_DATA_HOME", "data")]
    {
        c.env(var, home.join(sub));
    }
    Ok(c)
}

fn run(mut c: Command, what: &str) -> Result<String> {
    let out = tokio::task::block_in_place(|| c.output()).with_context(|| format!("running {what}"))?;
    ensure!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn install_run_uninstall(ctx: &Ctx, namespaced: bool) -> Result<()> {
    let name = release(ctx);
    // The values: the Deployment's pods on kwok nodes. The CRD is the suite's already
    // (--skip-crds: Helm would skip it anyway), and so is the update contract's policy, which
    // the suite installs with it; the Kueue policies, cluster-scoped with fixed names, are
    // applied and removed by their own tests.
    let mut values = json!({
        "kueuePolicies": {"enabled": false},
        "validationPolicy": {"enabled": false},
        "nodeSelector": {"type": "kwok"},
        "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
    });
    if namespaced {
        values["watchNamespace"] = json!(ctx.ns);
    }
    let file = std::env::temp_dir().join(format!("tfjob-e2e-helm-{}", ctx.ns)).join("values.json");
    std::fs::create_dir_all(file.parent().context("values path")?)?;
    std::fs::write(&file, values.to_string())?;
    let chart = tfjob_testsupport::repo_root().join("charts/tfjob-operator");
    let mut install = helm(ctx)?;
    install.args(["install", &name]).arg(&chart).arg("--skip-crds").arg("--values").arg(&file);
    let out = run(install, "helm install")?;
    ensure!(out.contains("STATUS: deployed"), "helm install: {out}");

    let ran = run_a_job(ctx, &name, namespaced).await;
    let removed = uninstall(ctx, &name).await;
    ran.and(removed)
}

/// What the chart installed, its Deployment ready, and a job run under its identity.
async fn run_a_job(ctx: &Ctx, name: &str, namespaced: bool) -> Result<()> {
    let client = ctx.cluster.client.clone();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ctx.ns);
    wait_for(&deployments, name, WAIT, "the chart's 2 replicas ready", |d| {
        d.status.as_ref().and_then(|s| s.ready_replicas) == Some(2)
    })
    .await?;
    let cluster_roles: Api<ClusterRole> = Api::all(client.clone());
    let roles: Api<Role> = Api::namespaced(client.clone(), &ctx.ns);
    ensure!(
        cluster_roles.get_opt(name).await?.is_some() != namespaced,
        "ClusterRole {name}, namespaced {namespaced}"
    );
    ensure!(roles.get_opt(name).await?.is_some() == namespaced, "Role {name}, namespaced {namespaced}");
    ensure!(roles.get_opt(&format!("{name}-leader-election")).await?.is_some(), "no lease Role");

    let kubeconfig = chart_identity(ctx, name).await?;
    let ns_flag = format!("--leader-election-namespace={}", ctx.ns);
    // Limited to the test's namespace in both cases (the other tests' jobs are not its own);
    // cluster-wide, the namespace's requests are granted by the ClusterRoleBinding alone.
    let op = Operator::launch(
        ctx,
        "tfjob-operator-helm",
        &kubeconfig,
        Some(&ctx.ns),
        &["--leader-elect", &ns_flag],
        &[],
    )?;
    let ok = [replica("PS", 1), replica("Worker", 1).fate(succeed("2s"))];
    create(ctx, job("ok", &ok, json!({"runPolicy": {"cleanPodPolicy": "Running"}}))).await?;
    wait_job(ctx, "ok", WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded))
        .await
        .with_context(|| op.log_tail())?;
    // cleanPodPolicy Running: the PS deleted, the succeeded worker kept.
    eventually(Duration::from_secs(10), "the running PS cleaned up", || async {
        let pods = live_pods(ctx).await?;
        let job_pods: Vec<&String> = pods.iter().filter(|p| p.starts_with("ok-")).collect();
        ensure!(job_pods == ["ok-worker-0"], "pods {pods:?}");
        Ok(())
    })
    .await?;
    let lease = Api::<Lease>::namespaced(client, &ctx.ns).get("tfjob-operator").await?;
    let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    ensure!(holder.ends_with(&format!("_{}", op.proc.pid())), "lease holder {holder:?}");
    let m = op.metrics().await?;
    for code in ["401", "403"] {
        let refused = metric_sum(&m, "tfjob_operator_api_requests_total", &[&format!("code=\"{code}\"")]);
        ensure!(refused == 0.0, "{refused} requests answered {code}:\n{m}");
    }
    ensure!(metric_sum(&m, "tfjob_operator_reconcile_errors_total", &[]) == 0.0, "reconcile errors:\n{m}");
    // Stopped (and its requests recorded for the audit) before its ServiceAccount goes.
    drop(op);
    Ok(())
}

/// A kubeconfig with a token of the chart's ServiceAccount; the token grants nothing the
/// chart does not (it may not list secrets).
async fn chart_identity(ctx: &Ctx, name: &str) -> Result<PathBuf> {
    let mut create_token = ctx.cluster.kubectl();
    create_token.args(["create", "token", name, "-n", &ctx.ns, "--duration=1h"]);
    let token = run(create_token, "kubectl create token")?.trim().to_string();
    let kubeconfig = token_kubeconfig(ctx, &token)?;
    let as_sa = tfjob_testsupport::client_for(&kubeconfig).await?;
    match Api::<Secret>::namespaced(as_sa, &ctx.ns).list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) if s.code == 403 => Ok(kubeconfig),
        other => anyhow::bail!("the chart's ServiceAccount may list secrets: {other:?}"),
    }
}

/// `helm uninstall`: every object of the release is gone, the CRD stays.
async fn uninstall(ctx: &Ctx, name: &str) -> Result<()> {
    let mut c = helm(ctx)?;
    c.args(["uninstall", name, "--wait", "--timeout=60s"]);
    run(c, "helm uninstall")?;
    let client = ctx.cluster.client.clone();
    let ns = &ctx.ns;
    let lease_role = format!("{name}-leader-election");
    let metrics = format!("{name}-metrics");
    let left = [
        ("Deployment", Api::<Deployment>::namespaced(client.clone(), ns).get_opt(name).await?.is_some()),
        (
            "ServiceAccount",
            Api::<ServiceAccount>::namespaced(client.clone(), ns).get_opt(name).await?.is_some(),
        ),
        ("Service", Api::<Service>::namespaced(client.clone(), ns).get_opt(&metrics).await?.is_some()),
        ("Role", Api::<Role>::namespaced(client.clone(), ns).get_opt(name).await?.is_some()),
        ("RoleBinding", Api::<RoleBinding>::namespaced(client.clone(), ns).get_opt(name).await?.is_some()),
        ("lease Role", Api::<Role>::namespaced(client.clone(), ns).get_opt(&lease_role).await?.is_some()),
        ("ClusterRole", Api::<ClusterRole>::all(client.clone()).get_opt(name).await?.is_some()),
        ("ClusterRoleBinding", Api::<ClusterRoleBinding>::all(client.clone()).get_opt(name).await?.is_some()),
    ];
    let left: Vec<&str> = left.iter().filter(|(_, there)| *there).map(|(k, _)| *k).collect();
    ensure!(left.is_empty(), "left after helm uninstall: {left:?}");
    let releases = Api::<Secret>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("owner=helm,name={name}")))
        .await?;
    ensure!(releases.items.is_empty(), "{} release Secrets left", releases.items.len());
    let crd = Api::<CustomResourceDefinition>::all(client).get_opt("tfjobs.kubeflow.org").await?;
    ensure!(crd.is_some(), "helm uninstall removed the CRD");
    Ok(())
}
