//! The in-cluster install end to end: `deploy/` rendered and applied under restricted Pod
//! Security admission, the operator running under exactly `deploy/`'s RBAC with a token from
//! the TokenRequest API, leader election across processes, and `/metrics`.

mod deploy;
mod leader;
mod rbac;

pub use rbac::as_deploy_service_account;

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::{Ctx, Test};

pub fn tests() -> Vec<Test> {
    let mut all = deploy::tests();
    all.extend(rbac::tests());
    all.extend(leader::tests());
    all
}

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
