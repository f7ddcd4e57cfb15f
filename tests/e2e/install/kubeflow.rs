//! Kubeflow's training-operator v1.9.2 installed the way its manifests install it, on a plane
//! of the test's own: its CRD (server-side apply), its validating webhook for `tfjobs`
//! registered with `failurePolicy: Fail`, and the process (flags and certificate handling of
//! `tfjob_testsupport::bench::kubeflow`, which the bench also uses).
//!
//! The webhook is registered by `url` on 127.0.0.1 (the plane has no Service network): its
//! Secret is filled beforehand with a CA its certificate rotator accepts (named
//! `training-operator-ca`) and a server certificate for `training-operator.<ns>.svc` and
//! 127.0.0.1, so the rotator keeps it and the API server can call the webhook.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use tfjob_testsupport::bench::kubeflow::{self, CERT_DIR, Kubeflow, SECRET, common_args};
use tfjob_testsupport::kueue_certs::WebhookCerts;
use tfjob_testsupport::process::Proc;
use tfjob_testsupport::{Cluster, ControlPlane, PlaneOptions, bin_dir, client_for, free_port, http_get};

use super::apply;
use crate::Ctx;
use crate::support::{Progress, eventually, until};

/// The name its install gives its ValidatingWebhookConfiguration (its rotator injects the CA
/// into it; `cmd/training-operator.v1/main.go`).
pub const WEBHOOK_CONFIG: &str = "validator.training-operator.kubeflow.org";
/// Its TFJob webhook (`manifests/base/webhook/manifests.yaml`).
pub const TFJOB_WEBHOOK: &str = "validator.tfjob.training-operator.kubeflow.org";

/// The directory `hack/build-training-operator.sh` prints. `make test` passes it in
/// `TFJOB_TRAINING_OPERATOR_DIR`, empty when the build failed: the test then fails saying so.
pub fn training_operator_dir() -> Result<PathBuf> {
    const VAR: &str = "TFJOB_TRAINING_OPERATOR_DIR";
    if std::env::var_os(VAR).is_some_and(|v| v.is_empty()) {
        bail!(
            "Kubeflow's training-operator could not be built (hack/build-training-operator.sh failed \
             under make test; its output is above): this test runs it"
        );
    }
    tfjob_testsupport::built_dir(VAR, "hack/build-training-operator.sh")
        .context("building Kubeflow's training-operator, which this test runs")
}

/// A plane of the test's own (its CRD is swapped), with the test's namespace: a `Ctx` on it.
pub async fn own_plane(ctx: &Ctx) -> Result<Ctx> {
    let bins = bin_dir()?;
    let plane =
        ControlPlane::start(&PlaneOptions { bin_dir: bins.clone(), nodes: 2, ..Default::default() }).await?;
    let cluster = Cluster {
        client: client_for(&plane.pki.kubeconfig).await?,
        kubeconfig: plane.pki.kubeconfig.clone(),
        kubectl: bins.join("kubectl"),
        plane: Some(plane),
    };
    cluster.namespace(&ctx.ns).await?;
    Ok(Ctx { cluster: Arc::new(cluster), ns: ctx.ns.clone() })
}

/// `kubectl <args>` on the test's plane; its stdout.
pub fn kubectl(ctx: &Ctx, args: &[&str]) -> Result<String> {
    let out = ctx.cluster.kubectl().args(args).output().with_context(|| format!("kubectl {args:?}"))?;
    ensure!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Kubeflow's training-operator running for the test's namespace.
pub struct TrainingOperator {
    pub proc: Proc,
    pub log: PathBuf,
}

impl TrainingOperator {
    /// Installs its CRD and webhook and starts it; returns once its TFJob controller runs and
    /// its webhook answers.
    pub async fn install_and_start(ctx: &Ctx, dir: &Path) -> Result<TrainingOperator> {
        let log_dir = std::env::temp_dir().join(format!("tfjob-e2e-op-{}", ctx.ns));
        std::fs::create_dir_all(&log_dir)?;
        let kf =
            Kubeflow::from_dir(dir, tfjob_operator::api::crd()?, ctx.cluster.kubeconfig.clone(), log_dir)?;
        // Its CRD as its install applies it (server-side: it is too large for the annotation).
        let crd = dir.join("tfjobs-crd.yaml");
        kubectl(ctx, &["apply", "--server-side", "-f", &crd.to_string_lossy()])?;
        eventually(Duration::from_secs(60), "its CRD Established", || async {
            kubectl(ctx, &["wait", "--for=condition=Established", "--timeout=10s", "crd/tfjobs.kubeflow.org"])
                .map(drop)
        })
        .await?;

        let certs = WebhookCerts::generate_with_ca(
            &format!("training-operator.{}.svc", ctx.ns),
            "training-operator-ca",
            "training-operator",
        )?;
        let secret: Secret = serde_json::from_value(certs.secret(SECRET, &ctx.ns))?;
        Api::<Secret>::namespaced(ctx.cluster.client.clone(), &ctx.ns)
            .create(&PostParams::default(), &secret)
            .await
            .context("creating its webhook Secret")?;
        for key in ["tls.crt", "tls.key", "ca.crt", "ca.key"] {
            let _ = std::fs::remove_file(Path::new(CERT_DIR).join(key));
        }

        let (port, probe_port, webhook_port) = (free_port()?, free_port()?, free_port()?);
        let args: Vec<String> = common_args()
            .iter()
            .map(|a| {
                a.replace("{namespace}", &ctx.ns)
                    .replace("{port}", &port.to_string())
                    .replace("{probe_port}", &probe_port.to_string())
                    .replace("{webhook_port}", &webhook_port.to_string())
            })
            .collect();
        let name = "training-operator";
        let mut proc = Proc::spawn_with_env(
            name,
            &kf.bin,
            &args,
            &kf.log_dir,
            &[
                ("KUBECONFIG", kf.kubeconfig.as_os_str()),
                ("MY_POD_NAMESPACE", ctx.ns.as_ref()),
                ("TMPDIR", "/tmp".as_ref()),
            ],
        )?;
        let log = kf.log_dir.join(format!("{name}.log"));
        kubeflow::mount_certs(&ctx.cluster.client, &ctx.ns, &mut proc, &log).await?;
        let mut op = TrainingOperator { proc, log };
        apply(ctx, &[&webhook_config(webhook_port, &certs.ca_bundle())])?;
        // Ready once its TFJob controller started its workers and its probe answers.
        until(Duration::from_secs(60), "training-operator ready", || {
            let (exited, log) = (op.proc.exited(), op.log.clone());
            async move {
                ensure!(exited.is_none(), "training-operator exited ({exited:?})");
                let workers = std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Starting workers"));
                let probe = http_get(probe_port, "/readyz").await.map(|(code, _)| code);
                Ok(if workers && probe == Some(200) {
                    Progress::Done(())
                } else {
                    Progress::NotYet(format!("workers started: {workers}; /readyz: {probe:?}"))
                })
            }
        })
        .await
        .with_context(|| op.log_tail())?;
        Ok(op)
    }

    /// Stops it (SIGTERM, then SIGKILL after 20 s), as scaling its Deployment to zero does.
    pub fn stop(&mut self) {
        self.proc.stop(Duration::from_secs(20));
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// Its install's webhook for TFJobs (the other kinds' are left out: only TFJob is served),
/// called by `url` on loopback instead of through its Service.
fn webhook_config(port: u16, ca_bundle: &str) -> Value {
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": WEBHOOK_CONFIG},
        "webhooks": [{
            "name": TFJOB_WEBHOOK,
            "admissionReviewVersions": ["v1"],
            "clientConfig": {
                "url": format!("https://127.0.0.1:{port}/validate-kubeflow-org-v1-tfjob"),
                "caBundle": ca_bundle,
            },
            "failurePolicy": "Fail",
            "sideEffects": "None",
            "rules": [{
                "apiGroups": ["kubeflow.org"],
                "apiVersions": ["v1"],
                "operations": ["CREATE", "UPDATE"],
                "resources": ["tfjobs"],
            }],
        }],
    })
}
