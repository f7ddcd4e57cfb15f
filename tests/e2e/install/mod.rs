//! The in-cluster install end to end: `deploy/` rendered and applied under restricted Pod
//! Security admission, the operator running under exactly `deploy/`'s RBAC with a token from
//! the TokenRequest API, leader election across processes, and `/metrics`.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tfjob_operator::api::ConditionType;

use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        test!(deploy_renders_and_its_pods_pass_restricted_admission),
        test!(operator_under_deploy_rbac_runs_the_lifecycle),
        test!(metrics_count_each_job_once_across_restarts),
        test!(leader_election_hands_over_on_sigkill_and_sigterm).serial(),
    ]
}

const T: Duration = Duration::from_secs(60);

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

fn find<'a>(docs: &'a [Value], k: &str) -> Result<&'a Value> {
    docs.iter().find(|d| kind(d) == k).with_context(|| format!("no {k} rendered"))
}

/// `deploy/<dir>` rendered by kustomize for this test: in the test's namespace, and every
/// name (cluster-scoped ones too) prefixed with the test's number, so tests do not share
/// RBAC objects. Returns the documents and the prefix.
fn render(ctx: &Ctx, dir: &str) -> Result<(Vec<Value>, String)> {
    let root = tfjob_testsupport::repo_root().canonicalize()?;
    let prefix = format!("e2e{}-", ctx.ns.rsplit('-').next().unwrap_or_default());
    let tmp =
        std::env::temp_dir().join(format!("tfjob-e2e-kustomize-{}", ctx.ns)).join(dir.replace('/', "-"));
    std::fs::create_dir_all(&tmp)?;
    let tmp = tmp.canonicalize()?;
    // kustomize takes only relative paths to other kustomizations.
    let up = "../".repeat(tmp.components().count() - 1);
    let target = format!("{up}{}", root.join(dir).to_string_lossy().trim_start_matches('/'));
    std::fs::write(
        tmp.join("kustomization.yaml"),
        format!(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: {ns}\nnamePrefix: {prefix}\nresources:\n- {target}\n",
            ns = ctx.ns
        ),
    )?;
    let out = ctx.cluster.kubectl().arg("kustomize").arg(&tmp).output()?;
    ensure!(out.status.success(), "kubectl kustomize {dir}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout)?;
    let docs = text.split("\n---\n").map(serde_saphyr::from_str::<Value>).collect::<Result<_, _>>()?;
    Ok((docs, prefix))
}

/// `kubectl apply --server-side` of the documents.
fn apply(ctx: &Ctx, docs: &[&Value]) -> Result<()> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
    let mut child = ctx
        .cluster
        .kubectl()
        .args(["apply", "--server-side", "--field-manager=tfjob-e2e", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("kubectl stdin")?.write_all(list.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "kubectl apply: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A kubeconfig for the cluster's current context that authenticates with `token` only.
fn token_kubeconfig(ctx: &Ctx, token: &str) -> Result<PathBuf> {
    let kc = kube::config::Kubeconfig::read_from(&ctx.cluster.kubeconfig)?;
    let current = kc.current_context.clone().context("the kubeconfig has no current context")?;
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .context("the current context names no cluster")?;
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster.clone())
        .context("the current cluster is missing")?;
    let server = cluster.server.context("the cluster has no server")?;
    let ca = cluster
        .certificate_authority_data
        .context("the cluster's CA must be inline (certificate-authority-data)")?;
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: sa\ncurrent-context: c\n"
    );
    let path = std::env::temp_dir().join(format!("tfjob-e2e-kustomize-{}", ctx.ns)).join("sa.kubeconfig");
    std::fs::write(&path, text)?;
    Ok(path)
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
    crate::smoke::on_kwok(&mut deployment["spec"]["template"]["spec"]);
    let rest: Vec<&Value> = docs
        .iter()
        .filter(|d| !matches!(kind(d), "Namespace" | "CustomResourceDefinition" | "Deployment"))
        .collect();
    apply(&ctx, &rest)?;
    apply(&ctx, &[&deployment])?;
    // The replicaset controller creates the pods, admission lets them in, kwok runs them.
    let name = deployment["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let deployments: Api<Deployment> = Api::namespaced(ctx.cluster.client.clone(), &ctx.ns);
    let end = Instant::now() + T;
    loop {
        let d = deployments.get(&name).await?;
        let ready = d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        if ready == 2 {
            break;
        }
        if Instant::now() > end {
            let events = crate::support::events(&ctx, &name).await.unwrap_or_default();
            bail!("{name}: {ready} of 2 replicas ready; status {:?}; events {events:?}", d.status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
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
    create(
        ctx,
        job(
            "ok",
            &[R("PS", 1, None, json!({})), R("Worker", 1, None, succeed("2s"))],
            json!({"runPolicy": {"cleanPodPolicy": "Running", "ttlSecondsAfterFinished": 3}}),
        ),
    )
    .await?;
    create(ctx, job("bad", &[R("Worker", 1, None, fail("1s", 1))], json!({}))).await?;
    create(
        ctx,
        job("late", &[R("Worker", 1, None, json!({}))], json!({"runPolicy": {"activeDeadlineSeconds": 3}})),
    )
    .await?;
    Ok(())
}

async fn wait_event(ctx: &Ctx, job: &str, reason: &str) -> Result<()> {
    tfjob_testsupport::wait(Duration::from_secs(10), &format!("{job}: event {reason}"), || async {
        events(ctx, job).await.is_ok_and(|e| e.iter().any(|(r, _)| r == reason))
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
    let bad = wait_job(&ctx, "bad", T, "Failed", |j| is(j, ConditionType::Failed))
        .await
        .with_context(|| op.log_tail())?;
    ensure!(last_reason(&bad).as_deref() == Some("TFJobFailed"), "bad: {:?}", last_reason(&bad));
    let late = wait_job(&ctx, "late", T, "Failed", |j| is(j, ConditionType::Failed)).await?;
    ensure!(last_reason(&late).as_deref() == Some("DeadlineExceeded"), "late: {:?}", last_reason(&late));
    // Succeeded (seen, or inferred from its deletion), the PS cleaned up, then the TTL deletion.
    tfjob_testsupport::wait(T, "ok to be deleted for its TTL", || async {
        jobs(&ctx).get_opt("ok").await.is_ok_and(|j| j.is_none())
    })
    .await
    .with_context(|| op.log_tail())?;
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
    tfjob_testsupport::wait(Duration::from_secs(10), "late's running pod to be removed", || async {
        live_pods(&ctx).await.is_ok_and(|p| !p.iter().any(|n| n.starts_with("late-")))
    })
    .await?;

    // Nothing was refused, nothing failed, every job counted once; the lease is this process's.
    let m = op.metrics().await;
    ensure!(sample(&m, "tfjob_operator_api_requests_total", &["code=\"403\""]) == 0.0, "403s:\n{m}");
    ensure!(sample(&m, "tfjob_operator_reconcile_errors_total", &[]) == 0.0, "reconcile errors:\n{m}");
    let ns = format!("job_namespace=\"{}\"", ctx.ns);
    for (name, want) in [
        ("training_operator_jobs_created_total", 3.0),
        ("training_operator_jobs_successful_total", 1.0),
        ("training_operator_jobs_failed_total", 2.0),
        ("training_operator_jobs_deleted_total", 1.0),
    ] {
        ensure!(sample(&m, name, &[&ns]) == want, "{name} != {want}:\n{m}");
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

async fn metrics_count_each_job_once_across_restarts(ctx: Ctx) -> Result<()> {
    let mut op = Operator::start(&ctx, &[])?;
    let port = op.http_port;
    tfjob_testsupport::wait(T, "/readyz (caches synced)", || async move {
        http_get(port, "/readyz").await.is_some_and(|(c, _)| c == 200)
    })
    .await?;
    create(&ctx, job("m", &[R("Worker", 1, None, succeed("1s"))], json!({}))).await?;
    create(&ctx, job("r", &[R("Worker", 1, Some("OnFailure"), fail("1s", 1))], json!({"backoffLimit": 2})))
        .await?;
    wait_job(&ctx, "m", T, "Succeeded", |j| is(j, ConditionType::Succeeded))
        .await
        .with_context(|| op.log_tail())?;
    let r = wait_job(&ctx, "r", T, "Failed", |j| is(j, ConditionType::Failed)).await?;
    let restarts: i32 =
        r.status.as_ref().map(|s| s.replica_statuses.values().map(|v| v.restarts).sum()).unwrap_or(0);
    ensure!(restarts >= 2, "r restarted {restarts} times: the once-per-job check needs several");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ns = format!("job_namespace=\"{}\"", ctx.ns);
    let fw = "framework=\"tensorflow\"";
    let m = op.metrics().await;
    for (name, want) in [
        ("training_operator_jobs_created_total", 2.0),
        ("training_operator_jobs_successful_total", 1.0),
        ("training_operator_jobs_failed_total", 1.0),
        ("training_operator_jobs_restarted_total", 1.0),
        ("training_operator_jobs_deleted_total", 0.0),
    ] {
        ensure!(sample(&m, name, &[&ns, fw]) == want, "{name} != {want}:\n{m}");
    }
    ensure!(sample(&m, "tfjob_operator_reconciles_total", &[]) >= 2.0, "reconciles:\n{m}");
    ensure!(
        sample(
            &m,
            "tfjob_operator_api_requests_total",
            &["verb=\"create\"", "resource=\"pods\"", "code=\"201\""]
        ) == 2.0,
        "pod creates:\n{m}"
    );
    // Bounded labels only: never a pod or job name.
    let keys: BTreeSet<&str> = m
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('{')?.1.split_once('}').map(|(labels, _)| labels))
        .flat_map(|labels| labels.split(',').filter_map(|kv| kv.split_once('=').map(|(k, _)| k)))
        .collect();
    let allowed: BTreeSet<&str> =
        ["job_namespace", "framework", "kind", "verb", "resource", "code", "le"].into();
    ensure!(keys.is_subset(&allowed), "label keys {keys:?}");

    // A restarted operator reads the stored status and counts nothing again.
    op.proc.signal(SIGTERM);
    tokio::task::block_in_place(|| op.proc.wait_exit(Duration::from_secs(20)))
        .context("no exit after SIGTERM")?;
    let op2 = Operator::start_as(&ctx, "tfjob-operator-2", &ctx.cluster.kubeconfig, &[])?;
    let port2 = op2.http_port;
    tfjob_testsupport::wait(T, "the new process to reconcile both jobs", || async move {
        http_get(port2, "/metrics")
            .await
            .is_some_and(|(_, m)| sample(&m, "tfjob_operator_reconciles_total", &[]) >= 2.0)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let m = op2.metrics().await;
    ensure!(sample(&m, "training_operator_jobs_", &[&ns]) == 0.0 && !m.contains(&ns), "counted again:\n{m}");
    // Deleted for its TTL: counted once.
    jobs(&ctx)
        .patch("m", &PatchParams::default(), &Patch::Merge(json!({"spec": {"ttlSecondsAfterFinished": 0}})))
        .await?;
    tfjob_testsupport::wait(Duration::from_secs(10), "m to be deleted", || async {
        jobs(&ctx).get_opt("m").await.is_ok_and(|j| j.is_none())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = op2.metrics().await;
    ensure!(sample(&m, "training_operator_jobs_deleted_total", &[&ns]) == 1.0, "deleted:\n{m}");
    Ok(())
}

/// Whether the operator leads, from its /metrics (None while it does not answer).
async fn leads(op: &Operator) -> Option<bool> {
    let (_, m) = http_get(op.http_port, "/metrics").await?;
    m.lines().find_map(|l| l.strip_prefix("tfjob_operator_leader ")).map(|v| v.trim() == "1")
}

/// The process's writes to the job's objects (the lease excluded), from its /metrics.
fn job_writes(metrics: &str) -> f64 {
    let mut n = 0.0;
    for verb in ["create", "update", "patch", "delete"] {
        for resource in ["pods", "services", "tfjobs", "tfjobs/status", "events"] {
            n += sample(
                metrics,
                "tfjob_operator_api_requests_total",
                &[&format!("verb=\"{verb}\""), &format!("resource=\"{resource}\"")],
            );
        }
    }
    n
}

/// Polls every 100 ms until `op` leads; returns how long that took.
async fn until_leads(op: &Operator, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if leads(op).await == Some(true) {
            return Ok(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{} did not lead within {timeout:?}: {}", op.proc.name, op.log_tail())
}

async fn leader_election_hands_over_on_sigkill_and_sigterm(ctx: Ctx) -> Result<()> {
    let ns_flag = format!("--leader-election-namespace={}", ctx.ns);
    let args = ["--leader-elect", ns_flag.as_str()];
    let kc = ctx.cluster.kubeconfig.clone();
    let mut ops =
        vec![Operator::start_as(&ctx, "op-a", &kc, &args)?, Operator::start_as(&ctx, "op-b", &kc, &args)?];
    let end = Instant::now() + T;
    let leader = loop {
        let l = [leads(&ops[0]).await, leads(&ops[1]).await];
        match l {
            [Some(true), Some(false)] => break 0,
            [Some(false), Some(true)] => break 1,
            _ if Instant::now() > end => bail!("no single leader: {l:?}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let follower = 1 - leader;
    // Both ready: the follower while it waits, the leader once its caches synced.
    for op in &ops {
        let port = op.http_port;
        tfjob_testsupport::wait(T, "/readyz", || async move {
            http_get(port, "/readyz").await.is_some_and(|(c, _)| c == 200)
        })
        .await?;
    }

    // The workers outlast the takeover, so the new leader creates what the old one had not.
    let uids = UidWatch::start(&ctx);
    for i in 0..10 {
        create(&ctx, job(&format!("j{i}"), &[R("Worker", 2, None, succeed("25s"))], json!({}))).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (lw, fw) = (job_writes(&ops[leader].metrics().await), job_writes(&ops[follower].metrics().await));
    ensure!(lw > 0.0 && fw == 0.0, "writes: leader {lw}, follower {fw}");
    ops[leader].proc.signal(SIGKILL);
    let after_kill = until_leads(&ops[follower], Duration::from_secs(30)).await?;
    // The lease was renewed at most one retry period (2 s) before the kill; the follower saw
    // that renewal at most one retry period later and takes over when the lease (15 s) runs
    // out from there: 13-17 s after the kill, plus its lease requests and our /metrics
    // polling (1 s allowed).
    ensure!(
        after_kill >= Duration::from_secs(12) && after_kill <= Duration::from_secs(18),
        "took over {after_kill:?} after SIGKILL (lease 15 s + retry 2 s)"
    );
    for i in 0..10 {
        wait_job(&ctx, &format!("j{i}"), T, "Succeeded", |j| is(j, ConditionType::Succeeded))
            .await
            .with_context(|| ops[follower].log_tail())?;
    }
    ensure!(uids.names() == 20, "{} pod names, want 20", uids.names());
    let reused = uids.reused_names();
    ensure!(reused.is_empty(), "pod names with more than one uid: {reused:?}");

    // SIGTERM: the leader releases the lease and a waiting follower takes it at its next try.
    let third = Operator::start_as(&ctx, "op-c", &kc, &args)?;
    let port = third.http_port;
    tfjob_testsupport::wait(T, "op-c ready", || async move {
        http_get(port, "/readyz").await.is_some_and(|(c, _)| c == 200)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await; // op-c has read the held lease
    ensure!(leads(&third).await == Some(false), "op-c leads while op-b holds the lease");
    ops[follower].proc.signal(SIGTERM);
    let after_term = until_leads(&third, Duration::from_secs(10)).await?;
    ensure!(after_term <= Duration::from_millis(3_500), "took over {after_term:?} after SIGTERM (retry 2 s)");
    let status = tokio::task::block_in_place(|| ops[follower].proc.wait_exit(Duration::from_secs(20)))
        .context("op-b still running 20 s after SIGTERM")?;
    ensure!(status.success(), "op-b exit status {status}");
    let log = std::fs::read_to_string(&ops[follower].log)?;
    ensure!(
        log.contains("released the lease"),
        "op-b did not release the lease: {}",
        ops[follower].log_tail()
    );
    eprintln!(
        "e2e: leader takeover {:.2}s after SIGKILL (bound 17 s), {:.2}s after SIGTERM (bound 2 s)",
        after_kill.as_secs_f64(),
        after_term.as_secs_f64()
    );
    Ok(())
}
