//! `deploy/` in a cluster: rendered and applied under restricted Pod Security admission, and
//! the operator running the job lifecycle under exactly its RBAC, with a token from the
//! TokenRequest API.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tfjob_operator::api::ConditionType;

use super::{apply, find, kind, render, token_kubeconfig};
use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        test!(deploy_renders_and_its_pods_pass_restricted_admission),
        test!(operator_under_deploy_rbac_runs_the_lifecycle),
    ]
}

async fn deploy_renders_and_its_pods_pass_restricted_admission(ctx: Ctx) -> Result<()> {
    let (docs, prefix) = render(&ctx, "deploy")?;
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

/// The jobs of "The controller" lifecycle, created at once.
async fn lifecycle_jobs(ctx: &Ctx) -> Result<()> {
    // Succeeds; the running PS is cleaned up; deleted 3 s after finishing.
    let ok = [replica("PS", 1), replica("Worker", 1).fate(succeed("2s"))];
    let policy = json!({"runPolicy": {"cleanPodPolicy": "Running", "ttlSecondsAfterFinished": 3}});
    create(ctx, job("ok", &ok, policy)).await?;
    create(ctx, job("bad", &[replica("Worker", 1).fate(fail("1s", 1))], json!({}))).await?;
    let late = json!({"runPolicy": {"activeDeadlineSeconds": 3}});
    create(ctx, job("late", &[replica("Worker", 1)], late)).await?;
    Ok(())
}

async fn wait_event(ctx: &Ctx, job: &str, reason: &str) -> Result<()> {
    eventually(Duration::from_secs(10), &format!("{job}: event {reason}"), || async {
        let n = count_events(ctx, job, reason).await?;
        ensure!(n >= 1, "events {:?}", events(ctx, job).await?);
        Ok(())
    })
    .await
}

async fn operator_under_deploy_rbac_runs_the_lifecycle(ctx: Ctx) -> Result<()> {
    let (docs, _) = render(&ctx, "deploy")?;
    let rbac: Vec<&Value> = docs
        .iter()
        .filter(|d| {
            matches!(
                kind(d),
                "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
            )
        })
        .collect();
    apply(&ctx, &rbac)?;
    let sa = find(&docs, "ServiceAccount")?["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let request = TokenRequest {
        spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(ctx.cluster.client.clone(), &ctx.ns)
        .create_token_request(&sa, &PostParams::default(), &request)
        .await
        .context("TokenRequest")?
        .status
        .context("TokenRequest has no status")?
        .token
        .context("TokenRequest has no token")?;
    let kubeconfig = token_kubeconfig(&ctx, &token)?;
    // The identity really is the ServiceAccount's: it may not read what deploy/ does not grant.
    let as_sa = tfjob_testsupport::client_for(&kubeconfig).await?;
    match Api::<k8s_openapi::api::core::v1::Secret>::namespaced(as_sa, &ctx.ns)
        .list(&ListParams::default())
        .await
    {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => bail!("the ServiceAccount may list secrets: {other:?}"),
    }

    let ns_flag = format!("--leader-election-namespace={}", ctx.ns);
    let op = Operator::start_as(&ctx, "tfjob-operator-sa", &kubeconfig, &["--leader-elect", &ns_flag])?;
    lifecycle_jobs(&ctx).await?;
    let bad = wait_job(&ctx, "bad", WAIT, "Failed", |j| has_condition(j, ConditionType::Failed))
        .await
        .with_context(|| op.log_tail())?;
    ensure!(last_reason(&bad).as_deref() == Some("TFJobFailed"), "bad: {:?}", last_reason(&bad));
    let late = wait_job(&ctx, "late", WAIT, "Failed", |j| has_condition(j, ConditionType::Failed)).await?;
    ensure!(last_reason(&late).as_deref() == Some("DeadlineExceeded"), "late: {:?}", last_reason(&late));
    // Succeeded (seen, or inferred from its deletion), the PS cleaned up, then the TTL deletion.
    wait_job_gone(&ctx, "ok", WAIT).await.context("ok deleted for its TTL").with_context(|| op.log_tail())?;
    for (job, reason) in [
        ("ok", "TFJobCreated"),
        ("ok", "SuccessfulCreatePod"),
        ("ok", "SuccessfulCreateService"),
        ("ok", "TFJobSucceeded"),
        ("ok", "SuccessfulDeletePod"),
        ("bad", "TFJobFailed"),
        ("late", "DeadlineExceeded"),
        ("late", "SuccessfulDeletePod"),
    ] {
        wait_event(&ctx, job, reason).await?;
    }
    let ps_deleted = events(&ctx, "ok").await?;
    ensure!(ps_deleted.iter().filter(|(r, _)| r == "SuccessfulDeletePod").count() == 1, "ok: {ps_deleted:?}");
    eventually(Duration::from_secs(10), "late's running pod to be removed", || async {
        let pods = live_pods(&ctx).await?;
        ensure!(!pods.iter().any(|n| n.starts_with("late-")), "pods {pods:?}");
        Ok(())
    })
    .await?;

    // Nothing was refused, nothing failed, every job counted once; the lease is this process's.
    let m = op.metrics().await;
    ensure!(metric_sum(&m, "tfjob_operator_api_requests_total", &["code=\"403\""]) == 0.0, "403s:\n{m}");
    ensure!(metric_sum(&m, "tfjob_operator_reconcile_errors_total", &[]) == 0.0, "reconcile errors:\n{m}");
    let ns = format!("job_namespace=\"{}\"", ctx.ns);
    for (name, want) in [
        ("training_operator_jobs_created_total", 3.0),
        ("training_operator_jobs_successful_total", 1.0),
        ("training_operator_jobs_failed_total", 2.0),
        ("training_operator_jobs_deleted_total", 1.0),
    ] {
        ensure!(metric_sum(&m, name, &[&ns]) == want, "{name} != {want}:\n{m}");
    }
    let lease = Api::<Lease>::namespaced(ctx.cluster.client.clone(), &ctx.ns).get("tfjob-operator").await?;
    let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    ensure!(holder.ends_with(&format!("_{}", op.proc.pid())), "lease holder {holder:?}");

    // A leader that cannot renew (its lease RoleBinding removed) stops within the renew
    // deadline (10 s from its last renewal, at most 2 s before the removal) and exits non-zero.
    let binding = docs
        .iter()
        .find(|d| kind(d) == "RoleBinding")
        .and_then(|d| d["metadata"]["name"].as_str())
        .context("no lease RoleBinding")?
        .to_string();
    let removed = Instant::now();
    Api::<k8s_openapi::api::rbac::v1::RoleBinding>::namespaced(ctx.cluster.client.clone(), &ctx.ns)
        .delete(&binding, &Default::default())
        .await?;
    let mut op = op;
    let status = tokio::task::block_in_place(|| op.proc.wait_exit(Duration::from_secs(20)))
        .context("still running 20 s after losing access to its lease")?;
    let took = removed.elapsed();
    ensure!(!status.success(), "exit status {status} after losing the lease");
    ensure!(
        took >= Duration::from_secs(7) && took <= Duration::from_secs(12),
        "stopped {took:?} after the lease became unrenewable (renew deadline 10 s)"
    );
    let log = std::fs::read_to_string(&op.log)?;
    ensure!(log.contains("could not renew the lease before the renew deadline"), "{}", op.log_tail());
    Ok(())
}
