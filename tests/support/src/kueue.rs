//! Kueue as a process against a plane: its CRDs and webhook manifests read from the Go
//! module cache, its webhook certificate, its configuration; started, waited for, stopped.
//!
//! Everything is on loopback. The webhooks are registered by `url` on 127.0.0.1 and only
//! for namespaces labelled [`NAMESPACE_LABEL`], so a plane's other tests never call Kueue.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

use crate::kueue_certs::WebhookCerts;
use crate::process::Proc;
use crate::{free_port, http_get, wait};

/// Namespaces with this label (key, value) are served by Kueue's webhooks.
pub const NAMESPACE_LABEL: (&str, &str) = ("tfjob-e2e/kueue", "true");
/// Kueue's own namespace, where it looks for its certificate Secret.
pub const NAMESPACE: &str = "kueue-system";
const SECRET: &str = "kueue-webhook-server-cert";
const SERVICE: &str = "kueue-webhook-service";
/// The names the certificate rotator injects its CA into (`<service base>-<type>-webhook-configuration`).
const MUTATING: &str = "kueue-mutating-webhook-configuration";
const VALIDATING: &str = "kueue-validating-webhook-configuration";
/// CRDs whose served versions are converted by Kueue's `/convert` webhook.
const CONVERTED: [&str; 5] = ["localqueues", "clusterqueues", "cohorts", "workloads", "multikueueclusters"];
const FIELD_MANAGER: &str = "tfjob-e2e-kueue";

/// The directory `hack/build-kueue.sh` prints (`kueue` and `module/`): `TFJOB_KUEUE_DIR`, or
/// the script's answer (it builds Kueue on first use, then reuses it).
pub fn kueue_dir() -> Result<PathBuf> {
    crate::built_dir("TFJOB_KUEUE_DIR", "hack/build-kueue.sh")
}

/// A running Kueue. [`Kueue::stop`] removes its webhooks before it stops the process; a
/// drop without it only kills the process.
pub struct Kueue {
    client: Client,
    proc: Proc,
    pub dir: PathBuf,
    pub webhook_port: u16,
    pub health_port: u16,
    /// How long the start took, from the first API write to `/readyz`.
    pub started_in: Duration,
}

fn yaml_docs(text: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in text.split("\n---") {
        let v: Value = serde_saphyr::from_str(doc).context("parsing Kueue's YAML")?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Kueue's CRDs from the module, the converted ones with a webhook stanza pointing at `url`.
pub fn crds(module: &Path, convert_url: &str, ca_bundle: &str) -> Result<Vec<CustomResourceDefinition>> {
    let bases = module.join("config/components/crd/bases");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&bases)
        .with_context(|| format!("reading {}", bases.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let mut v = yaml_docs(&std::fs::read_to_string(&f)?)?.pop().context("empty CRD file")?;
        let plural = v.pointer("/spec/names/plural").and_then(Value::as_str).unwrap_or_default().to_string();
        if CONVERTED.contains(&plural.as_str()) {
            v["spec"]["conversion"] = json!({
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": {"url": convert_url, "caBundle": ca_bundle},
                    "conversionReviewVersions": ["v1"]
                }
            });
        }
        out.push(serde_json::from_value(v).with_context(|| format!("decoding {}", f.display()))?);
    }
    if out.len() != 11 {
        bail!("{}: {} CRDs, want Kueue's 11", bases.display(), out.len());
    }
    Ok(out)
}

/// Whether Kueue's webhook at `path` is one we register: Kueue's own objects and TFJobs.
fn wanted(path: &str) -> bool {
    path.contains("-kueue-x-k8s-io-") || path.ends_with("-kubeflow-org-v1-tfjob")
}

/// Kueue's webhook configurations from the module, kept to Kueue's objects and TFJobs,
/// called by URL on `base` and scoped to namespaces with [`NAMESPACE_LABEL`].
pub fn webhook_configs(module: &Path, base: &str, ca_bundle: &str) -> Result<(Value, Value)> {
    let file = module.join("config/components/webhook/manifests.yaml");
    let docs =
        yaml_docs(&std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?)?;
    let mut found = (None, None);
    for mut doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let hooks: Vec<Value> = doc["webhooks"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|mut h| {
                let path = h.pointer("/clientConfig/service/path")?.as_str()?.to_string();
                if !wanted(&path) {
                    return None;
                }
                h["clientConfig"] = json!({"url": format!("{base}{path}"), "caBundle": ca_bundle});
                h["namespaceSelector"] = json!({"matchLabels": {NAMESPACE_LABEL.0: NAMESPACE_LABEL.1}});
                Some(h)
            })
            .collect();
        doc["webhooks"] = Value::Array(hooks);
        match kind.as_str() {
            "MutatingWebhookConfiguration" => {
                doc["metadata"] = json!({"name": MUTATING});
                found.0 = Some(doc);
            }
            "ValidatingWebhookConfiguration" => {
                doc["metadata"] = json!({"name": VALIDATING});
                found.1 = Some(doc);
            }
            _ => {}
        }
    }
    match found {
        (Some(m), Some(v)) => {
            for (name, c) in [("mutating", &m), ("validating", &v)] {
                let n = c["webhooks"].as_array().map_or(0, Vec::len);
                if n < 2 || !c.to_string().contains("-kubeflow-org-v1-tfjob") {
                    bail!(
                        "{}: the {name} configuration has {n} webhooks and none for TFJobs",
                        file.display()
                    );
                }
            }
            Ok((m, v))
        }
        _ => bail!("{}: no mutating or no validating configuration", file.display()),
    }
}

/// Kueue's configuration file: the TFJob integration only (or, without `tfjob_integration`,
/// only `batch/job`: Kueue's TFJob integration switched off), no leader election, no metrics
/// server, health probes and webhooks on loopback, the internal certificate manager on
/// (it checks the Secret we made and injects the CA).
pub fn config(webhook_port: u16, health_port: u16, cert_dir: &Path, tfjob_integration: bool) -> String {
    let framework = if tfjob_integration { "kubeflow.org/tfjob" } else { "batch/job" };
    format!(
        "apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: {NAMESPACE}
health:
  healthProbeBindAddress: 127.0.0.1:{health_port}
metrics:
  bindAddress: \"0\"
webhook:
  host: 127.0.0.1
  port: {webhook_port}
  certDir: {}
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: true
  webhookServiceName: {SERVICE}
  webhookSecretName: {SECRET}
clientConnection:
  qps: 200
  burst: 400
featureGates:
  VisibilityOnDemand: false
integrations:
  frameworks:
  - {framework}
",
        cert_dir.display()
    )
}

async fn apply<K>(api: &Api<K>, name: &str, obj: &Value) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(obj))
        .await
        .with_context(|| format!("applying {name}"))?;
    Ok(())
}

/// Applies Kueue's CRDs (conversion through the webhook at `base`) and waits until each is
/// Established.
async fn install_crds(client: &Client, module: &Path, base: &str, ca_bundle: &str) -> Result<()> {
    let crd_api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crds = crds(module, &format!("{base}/convert"), ca_bundle)?;
    for crd in &crds {
        crd_api
            .patch(&crd.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(crd))
            .await
            .with_context(|| format!("applying the CRD {}", crd.name_any()))?;
    }
    for crd in &crds {
        let name = crd.name_any();
        wait(Duration::from_secs(60), &format!("{name} to be Established"), || async {
            crd_api.get(&name).await.ok().and_then(|c| c.status).is_some_and(|s| {
                s.conditions.iter().flatten().any(|c| c.type_ == "Established" && c.status == "True")
            })
        })
        .await?;
    }
    Ok(())
}

impl Kueue {
    /// Installs Kueue's CRDs, certificate and webhooks on the plane `client` talks to and
    /// starts `<kueue_dir>/kueue` with `kubeconfig`; returns once `/readyz` answers 200.
    /// Logs and files go to `work_dir`.
    pub async fn start(
        client: &Client,
        kubeconfig: &Path,
        kueue_dir: &Path,
        work_dir: &Path,
    ) -> Result<Kueue> {
        Self::start_with(client, kubeconfig, kueue_dir, work_dir, true).await
    }

    /// [`Kueue::start`], with Kueue's TFJob integration on or (`tfjob_integration` false) off.
    pub async fn start_with(
        client: &Client,
        kubeconfig: &Path,
        kueue_dir: &Path,
        work_dir: &Path,
        tfjob_integration: bool,
    ) -> Result<Kueue> {
        let t0 = Instant::now();
        let module = kueue_dir.join("module");
        std::fs::create_dir_all(work_dir)?;
        let (webhook_port, health_port) = (free_port()?, free_port()?);
        let base = format!("https://127.0.0.1:{webhook_port}");

        let certs = WebhookCerts::generate(&format!("{SERVICE}.{NAMESPACE}.svc"))?;
        let cert_dir = work_dir.join("certs");
        std::fs::create_dir_all(&cert_dir)?;
        std::fs::write(cert_dir.join("tls.crt"), &certs.server_cert)?;
        std::fs::write(cert_dir.join("tls.key"), &certs.server_key)?;
        let ca_bundle = certs.ca_bundle();

        let namespaces: Api<Namespace> = Api::all(client.clone());
        apply(
            &namespaces,
            NAMESPACE,
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}),
        )
        .await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
        apply(&secrets, SECRET, &certs.secret(SECRET, NAMESPACE)).await?;

        install_crds(client, &module, &base, &ca_bundle).await?;
        let (mutating, validating) = webhook_configs(&module, &base, &ca_bundle)?;
        apply(&Api::<MutatingWebhookConfiguration>::all(client.clone()), MUTATING, &mutating).await?;
        apply(&Api::<ValidatingWebhookConfiguration>::all(client.clone()), VALIDATING, &validating).await?;

        let config_path = work_dir.join("kueue-config.yaml");
        std::fs::write(&config_path, config(webhook_port, health_port, &cert_dir, tfjob_integration))?;
        let args = vec![format!("--config={}", config_path.display()), "--zap-log-level=2".to_string()];
        let proc = Proc::spawn_with_env(
            "kueue",
            &kueue_dir.join("kueue"),
            &args,
            work_dir,
            &[("KUBECONFIG", kubeconfig.as_os_str())],
        )?;
        let mut kueue = Kueue {
            client: client.clone(),
            proc,
            dir: work_dir.to_path_buf(),
            webhook_port,
            health_port,
            started_in: Duration::ZERO,
        };
        kueue.wait_ready().await?;
        kueue.started_in = t0.elapsed();
        Ok(kueue)
    }

    /// Waits (up to 120 s) until `/readyz` answers 200; fails if the process exits first.
    async fn wait_ready(&mut self) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.proc.exited() {
                bail!("kueue exited ({status}); see {}", self.dir.join("kueue.log").display());
            }
            if http_get(self.health_port, "/readyz").await.is_some_and(|(code, _)| code == 200) {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("kueue was not ready after 120 s; see {}", self.dir.join("kueue.log").display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The process id (for the plane-stopped check).
    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Removes the webhook configurations (so nothing calls a Kueue that is gone), then
    /// stops the process (SIGTERM, SIGKILL after 10 s). The CRDs and Kueue's objects stay.
    pub async fn stop(mut self) -> Result<()> {
        let dp = DeleteParams::default();
        let m = Api::<MutatingWebhookConfiguration>::all(self.client.clone()).delete(MUTATING, &dp).await;
        let v = Api::<ValidatingWebhookConfiguration>::all(self.client.clone()).delete(VALIDATING, &dp).await;
        self.proc.stop(Duration::from_secs(10));
        m.context("deleting Kueue's mutating webhook configuration")?;
        v.context("deleting Kueue's validating webhook configuration")?;
        Ok(())
    }
}
