//! Test support for tfjob-operator: a real control plane on loopback, or the user's cluster.
//!
//! [`Cluster::from_env`] starts the local plane (the default) or, with
//! `USE_EXISTING_CLUSTER=true`, uses the current KUBECONFIG.

pub mod bench;
pub mod kueue;
pub mod kueue_certs;
pub mod nodes;
pub mod pki;
pub mod plane;
pub mod process;
pub mod proxy;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, ResourceExt};

pub use plane::{
    ControlPlane, GANG_FEATURE_GATES, GANG_RUNTIME_CONFIG, KWOK_POD_PARALLELISM, KWOK_TAINT, PlaneOptions,
    client_for, current_cluster, free_port, kwok_node, port_in_use,
};

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory of the control-plane binaries: `TFJOB_BIN_DIR`, or what
/// `hack/build-control-plane.sh` prints (it builds them on first use, then reuses them).
pub fn bin_dir() -> Result<PathBuf> {
    built_dir("TFJOB_BIN_DIR", "hack/build-control-plane.sh")
}

/// The directory in environment variable `var`, else the last line a build script of
/// `hack/` prints (the script builds on first use, then reuses its cache).
pub fn built_dir(var: &str, script: &str) -> Result<PathBuf> {
    if let Some(d) = std::env::var_os(var) {
        return Ok(PathBuf::from(d));
    }
    let script = repo_root().join(script);
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed", script.display());
    }
    let stdout = String::from_utf8(out.stdout)?;
    let last = stdout.lines().last().with_context(|| format!("{} printed no directory", script.display()))?;
    Ok(PathBuf::from(last.trim()))
}

/// Applies a CRD (server-side, always with the same field manager, so applying another
/// CRD of the same name replaces it: fields the new one leaves out are removed) and waits
/// until it is Established.
pub async fn apply_crd(client: &Client, crd: &CustomResourceDefinition) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(&crd.name_any(), &PatchParams::apply("tfjob-e2e").force(), &Patch::Apply(crd))
        .await
        .context("applying the CRD")?;
    let name = crd.name_any();
    let established = await_condition(api, &name, conditions::is_crd_established());
    tokio::time::timeout(Duration::from_secs(60), established)
        .await
        .context("timed out after 60s waiting for the CRD to be Established")?
        .context("watching the CRD")?;
    Ok(())
}

/// Applies `crds/tfjob-validation.yaml` (server-side) and waits, up to 60 s, until the
/// API server refuses a forbidden update with it: a policy is enforced a moment after it is
/// stored. The probe is a suspended TFJob in `default` (no pods), refused a dry-run change of
/// `spec.successPolicy`, then deleted.
pub async fn apply_validation_policy(client: &Client) -> Result<()> {
    let path = repo_root().join("crds/tfjob-validation.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    for doc in text.split("\n---\n") {
        let obj: DynamicObject =
            serde_saphyr::from_str(doc).with_context(|| format!("parsing {}", path.display()))?;
        let kind = obj.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
        let plural = if kind == "ValidatingAdmissionPolicy" {
            "validatingadmissionpolicies"
        } else {
            "validatingadmissionpolicybindings"
        };
        let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", &kind);
        let api: Api<DynamicObject> =
            Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, plural));
        api.patch(&obj.name_any(), &PatchParams::apply("tfjob-e2e").force(), &Patch::Apply(&obj))
            .await
            .with_context(|| format!("applying {kind} {}", obj.name_any()))?;
    }
    let tfjobs: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kubeflow.org", "v1", "TFJob"), "tfjobs"),
    );
    let probe = "tfjob-contract-probe";
    let job: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": probe},
        "spec": {"runPolicy": {"suspend": true}, "tfReplicaSpecs": {"Worker": {"replicas": 1, "template": {"spec": {
            "containers": [{"name": "tensorflow", "image": "tensorflow/tensorflow:2.16.1"}]}}}}}
    }))?;
    match tfjobs.create(&PostParams::default(), &job).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).context("creating the policy probe TFJob"),
    }
    let change = serde_json::json!({"spec": {"successPolicy": "AllWorkers"}});
    let dry = PatchParams { dry_run: true, ..Default::default() };
    let refused = wait(Duration::from_secs(60), "the update contract's policy to be enforced", || async {
        matches!(tfjobs.patch(probe, &dry, &Patch::Merge(&change)).await,
            Err(kube::Error::Api(e)) if e.code == 422 && e.message.contains("cannot be changed"))
    })
    .await;
    let _ = tfjobs.delete(probe, &DeleteParams::background()).await;
    refused
}

/// Whether the suite runs against the user's cluster.
pub fn use_existing_cluster() -> bool {
    std::env::var("USE_EXISTING_CLUSTER").is_ok_and(|v| v == "true")
}

/// Where the tests run: a local plane we own, or an existing cluster.
pub struct Cluster {
    pub client: Client,
    pub kubeconfig: PathBuf,
    /// The kubectl to run (the plane's own version when the plane is local).
    pub kubectl: PathBuf,
    pub plane: Option<ControlPlane>,
}

impl Cluster {
    /// Starts the local plane, or connects to the current cluster with `USE_EXISTING_CLUSTER=true`.
    pub async fn from_env() -> Result<Cluster> {
        if use_existing_cluster() {
            let client =
                Client::try_default().await.context("USE_EXISTING_CLUSTER=true: no usable KUBECONFIG")?;
            let kubeconfig = std::env::var_os("KUBECONFIG").map(PathBuf::from).unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".kube/config")
            });
            let cluster = Cluster { client, kubeconfig, kubectl: PathBuf::from("kubectl"), plane: None };
            cluster.check_kwok().await?;
            return Ok(cluster);
        }
        let bin_dir = bin_dir()?;
        let plane =
            ControlPlane::start(&PlaneOptions { bin_dir: bin_dir.clone(), ..Default::default() }).await?;
        let client = client_for(&plane.pki.kubeconfig).await?;
        Ok(Cluster {
            client,
            kubeconfig: plane.pki.kubeconfig.clone(),
            kubectl: bin_dir.join("kubectl"),
            plane: Some(plane),
        })
    }

    /// On an existing cluster, kwok nodes and our stages must be installed.
    async fn check_kwok(&self) -> Result<()> {
        let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(self.client.clone());
        let kwok = nodes.list(&kube::api::ListParams::default().labels("type=kwok")).await?;
        if kwok.items.is_empty() {
            bail!(
                "USE_EXISTING_CLUSTER=true: the cluster has no kwok nodes (label type=kwok); see README, \"Running the e2e suite on your own cluster\""
            );
        }
        let out = Command::new(&self.kubectl)
            .args(["get", "stages.kwok.x-k8s.io", "-o", "name"])
            .env("KUBECONFIG", &self.kubeconfig)
            .output()?;
        let names = String::from_utf8_lossy(&out.stdout);
        for stage in stage_names() {
            if !names.lines().any(|l| l.trim_start_matches("stage.kwok.x-k8s.io/") == stage) {
                bail!(
                    "USE_EXISTING_CLUSTER=true: kwok stage {stage} is missing; apply tests/support/kwok-stages.yaml (see README)"
                );
            }
        }
        Ok(())
    }

    /// A kubectl command against this cluster.
    pub fn kubectl(&self) -> Command {
        let mut c = Command::new(&self.kubectl);
        c.env("KUBECONFIG", &self.kubeconfig);
        c
    }

    /// Applies the CRD (server-side) and waits until it is Established; then the update
    /// contract's admission policy (`crds/tfjob-validation.yaml`) and waits until the API
    /// server enforces it.
    pub async fn install_crd(&self, crd: &CustomResourceDefinition) -> Result<()> {
        apply_crd(&self.client, crd).await?;
        apply_validation_policy(&self.client).await
    }

    /// Creates a namespace and waits for its `default` ServiceAccount, as pods need on a real cluster.
    pub async fn namespace(&self, name: &str) -> Result<()> {
        let ns: Namespace = serde_json::from_value(
            serde_json::json!({"metadata": {"name": name, "labels": {"tfjob-e2e": "true"}}}),
        )?;
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), name);
        wait(Duration::from_secs(60), "the default ServiceAccount", || async {
            sas.get_opt("default").await.ok().flatten().is_some()
        })
        .await
    }

    /// Deletes a namespace (not waiting for it to go).
    pub async fn delete_namespace(&self, name: &str) {
        let _ = Api::<Namespace>::all(self.client.clone()).delete(name, &DeleteParams::background()).await;
    }
}

/// The names of the kwok stages in `kwok-stages.yaml`.
pub fn stage_names() -> Vec<String> {
    plane::KWOK_STAGES
        .split("\n---")
        .filter_map(|doc| serde_saphyr::from_str::<serde_json::Value>(doc).ok())
        .filter_map(|v| v.pointer("/metadata/name").and_then(|n| n.as_str()).map(String::from))
        .collect()
}

/// Puts a pod spec on kwok nodes: the node selector and toleration every test pod carries, so
/// on a user's cluster it lands on a kwok node, never a real one.
pub fn place_on_kwok(spec: &mut serde_json::Value) {
    spec["nodeSelector"] = serde_json::json!({"type": "kwok"});
    spec["tolerations"] =
        serde_json::json!([{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]);
}

/// The pod spec of a TFJob replica in the tests and the benchmark: one `tensorflow` container
/// on a kwok node, stopped without a grace period.
pub fn kwok_pod_spec() -> serde_json::Value {
    let mut spec = serde_json::json!({
        "containers": [{"name": "tensorflow", "image": "tensorflow/tensorflow:2.16.1"}],
        "terminationGracePeriodSeconds": 0
    });
    place_on_kwok(&mut spec);
    spec
}

/// Polls `ready` every 200 ms until it is true or `timeout` passes.
pub async fn wait<F, Fut>(timeout: Duration, what: &str, mut ready: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if ready().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= end {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `GET path` on a loopback port: the status code and the body.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).await.ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((code, body))
}
