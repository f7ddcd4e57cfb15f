//! `deploy/` as the suite uses it: rendered by kustomize into a test's namespace, its RBAC
//! applied, and a kubeconfig holding a token of its ServiceAccount, so every operator under
//! test runs with exactly the permissions `deploy/` (cluster-wide) or `deploy/namespaced`
//! (one namespace) grants. Also `crds/kueue-policies.yaml`, which an install adds for Kueue.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Mutex;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::Ctx;

/// A rendered document's kind.
pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("")
}

/// The first rendered document of kind `k`.
pub fn find<'a>(docs: &'a [Value], k: &str) -> Result<&'a Value> {
    docs.iter().find(|d| kind(d) == k).with_context(|| format!("no {k} rendered"))
}

/// `deploy/<dir>` rendered by kustomize for this test: in the test's namespace, and every
/// name (cluster-scoped ones too) prefixed with the test's number, so tests do not share
/// RBAC objects. Returns the documents and the prefix.
pub fn render(ctx: &Ctx, dir: &str) -> Result<(Vec<Value>, String)> {
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
pub fn apply(ctx: &Ctx, docs: &[&Value]) -> Result<()> {
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

/// `kubectl apply --server-side` of `crds/kueue-policies.yaml` (cluster-wide; they touch only
/// jobs queued by Kueue or managed by MultiKueue). The API server enforces them a moment later.
pub fn apply_kueue_policies(ctx: &Ctx) -> Result<()> {
    let path = tfjob_testsupport::repo_root().join("crds/kueue-policies.yaml");
    let out = ctx
        .cluster
        .kubectl()
        .args(["apply", "--server-side", "--field-manager=tfjob-e2e", "-f"])
        .arg(&path)
        .output()?;
    ensure!(out.status.success(), "applying {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// A kubeconfig for the cluster's current context that authenticates with `token` only.
pub fn token_kubeconfig(ctx: &Ctx, token: &str) -> Result<PathBuf> {
    let cluster = tfjob_testsupport::current_cluster(&ctx.cluster.kubeconfig)?;
    let server = cluster.server.context("the cluster has no server")?;
    let ca = cluster
        .certificate_authority_data
        .context("the cluster's CA must be inline (certificate-authority-data)")?;
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {ca}\n\
         users:\n- name: sa\n  user:\n    token: {token}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: sa\ncurrent-context: c\n"
    );
    let dir = std::env::temp_dir().join(format!("tfjob-e2e-kustomize-{}", ctx.ns));
    std::fs::create_dir_all(&dir)?;
    static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("sa-{n}.kubeconfig"));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Which install an operator runs as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Install {
    /// `deploy/`: the ClusterRole, every namespace.
    ClusterWide,
    /// `deploy/namespaced`: a Role in the test's namespace.
    Namespaced,
}

impl Install {
    fn dir(self) -> &'static str {
        match self {
            Install::ClusterWide => "deploy",
            Install::Namespaced => "deploy/namespaced",
        }
    }
}

/// The RBAC kinds of a rendered install: what an operator process needs to run as deployed.
pub fn rbac_docs(docs: &[Value]) -> Vec<&Value> {
    docs.iter()
        .filter(|d| {
            matches!(
                kind(d),
                "ServiceAccount" | "ClusterRole" | "ClusterRoleBinding" | "Role" | "RoleBinding"
            )
        })
        .collect()
}

/// Kubeconfigs made per (namespace, install): several operators of one test share one.
static IDENTITIES: Mutex<Option<HashMap<(String, Install), PathBuf>>> = Mutex::new(None);

/// A kubeconfig with the token of the ServiceAccount of `install`, its RBAC applied in the
/// test's namespace (cluster-scoped objects prefixed with the test's number). The lease Role is
/// in the test's namespace, so operators that elect a leader pass
/// `--leader-election-namespace=<the test's namespace>`.
pub fn deploy_identity(ctx: &Ctx, install: Install) -> Result<PathBuf> {
    let key = (ctx.ns.clone(), install);
    if let Some(path) = IDENTITIES.lock().ok().and_then(|m| m.as_ref().and_then(|m| m.get(&key).cloned())) {
        return Ok(path);
    }
    let (docs, _) = render(ctx, install.dir())?;
    apply(ctx, &rbac_docs(&docs))?;
    let sa = find(&docs, "ServiceAccount")?["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let out = ctx
        .cluster
        .kubectl()
        .args(["create", "token", &sa, "-n", &ctx.ns, "--duration=3h"])
        .output()
        .context("kubectl create token")?;
    ensure!(out.status.success(), "kubectl create token {sa}: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout)?.trim().to_string();
    let path = token_kubeconfig(ctx, &token)?;
    if let Ok(mut m) = IDENTITIES.lock() {
        m.get_or_insert_with(HashMap::new).insert(key, path.clone());
    }
    Ok(path)
}

/// Drops the namespace's cached identities and deletes the cluster-scoped RBAC objects made
/// for it (the namespace's deletion takes the rest).
pub fn forget_identities(ctx: &Ctx) {
    let had_cluster_wide = IDENTITIES
        .lock()
        .ok()
        .and_then(|mut m| {
            let m = m.as_mut()?;
            let had = m.remove(&(ctx.ns.clone(), Install::ClusterWide)).is_some();
            m.remove(&(ctx.ns.clone(), Install::Namespaced));
            Some(had)
        })
        .unwrap_or(false);
    if had_cluster_wide && let Ok((docs, _)) = render(ctx, Install::ClusterWide.dir()) {
        for d in
            docs.iter().filter(|d| kind(d).starts_with("Cluster") && kind(d) != "CustomResourceDefinition")
        {
            let name = d["metadata"]["name"].as_str().unwrap_or_default();
            let _ = ctx
                .cluster
                .kubectl()
                .args(["delete", "--ignore-not-found", "--wait=false", &kind(d).to_lowercase(), name])
                .output();
        }
    }
}
