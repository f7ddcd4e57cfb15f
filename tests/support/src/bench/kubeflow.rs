//! Kubeflow's training-operator (v1.9.2, `hack/build-training-operator.sh`) as the second
//! operator of the bench: its CRD, its flags, and its webhook certificate.
//!
//! Its `cmd/training-operator.v1` always runs a certificate rotator (open-policy-agent's
//! cert-controller) before it starts any controller: the rotator fills the Secret
//! `training-operator-webhook-cert` in `$MY_POD_NAMESPACE` (it must exist; the manifests ship
//! it empty), then waits for `tls.crt` in `/tmp/k8s-webhook-server/serving-certs` (a path
//! fixed in its source, where a pod's Secret volume would put the files), and only then
//! registers the TFJob controller. There is no flag to turn it off. So, per run, the bench
//! creates the empty Secret in the run's namespace, starts the operator with
//! `MY_POD_NAMESPACE` set to it, and writes the Secret's keys into that directory once the
//! rotator has filled them, as the kubelet would. Its validating webhook is not registered
//! with the API server (the rotator's certificate names `training-operator.<ns>.svc`, which
//! the plane cannot reach): TFJob creates are not validated by it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use super::OperatorSpec;
use crate::process::Proc;

/// The Secret its rotator fills (`--webhook-secret-name`'s default).
pub const SECRET: &str = "training-operator-webhook-cert";
/// Where its rotator waits for the certificate files (fixed in `pkg/cert/cert.go`); also
/// controller-runtime's default webhook certificate directory under `TMPDIR=/tmp`.
pub const CERT_DIR: &str = "/tmp/k8s-webhook-server/serving-certs";

/// One way of running it: a row label (ending in ` tuned` or ` defaults`) and the flags
/// added to [`common_args`].
#[derive(Clone, Debug)]
pub struct KubeflowVariant {
    pub label: String,
    pub args: Vec<String>,
}

/// Kubeflow's training-operator beside ours.
#[derive(Clone, Debug)]
pub struct Kubeflow {
    /// The binary (`<dir>/training-operator`).
    pub bin: PathBuf,
    /// Its version, for the labels (from `<dir>/VERSIONS`).
    pub version: String,
    /// Its TFJob CRD (installed for its rows) and ours (put back after them).
    pub crd: CustomResourceDefinition,
    pub our_crd: CustomResourceDefinition,
    pub kubeconfig: PathBuf,
    pub log_dir: PathBuf,
    pub variants: Vec<KubeflowVariant>,
    /// Jobs not deleted this long after they should have been (the last batch job's success
    /// plus the TTL, and the deadline jobs' create plus their deadline plus the TTL) are
    /// counted as unfinished instead of waited for: its deadline is only enforced when
    /// something else reconciles the job.
    pub grace: Duration,
    /// Give up on a size after this long (its defaults need about 1 s per job).
    pub timeout: Duration,
}

/// The flags of every run: one namespace, TFJob only, loopback ports.
pub fn common_args() -> Vec<String> {
    [
        "--namespace={namespace}",
        "--enable-scheme=tfjob",
        "--metrics-bind-address=127.0.0.1:{port}",
        "--health-probe-bind-address=127.0.0.1:{probe_port}",
        "--webhook-server-port={webhook_port}",
    ]
    .map(String::from)
    .to_vec()
}

/// Its defaults (`--controller-threads 1 --kube-api-qps 20 --kube-api-burst 30`: what its
/// users get), and tuned (16 threads, QPS 1000, burst 2000, as the plane's own components).
pub fn default_variants(version: &str) -> Vec<KubeflowVariant> {
    vec![
        KubeflowVariant {
            label: format!("training-operator {version} tuned"),
            args: ["--controller-threads=16", "--kube-api-qps=1000", "--kube-api-burst=2000"]
                .map(String::from)
                .to_vec(),
        },
        KubeflowVariant { label: format!("training-operator {version} defaults"), args: Vec::new() },
    ]
}

impl Kubeflow {
    /// From the directory `hack/build-training-operator.sh` prints.
    pub fn from_dir(
        dir: &Path,
        our_crd: CustomResourceDefinition,
        kubeconfig: PathBuf,
        log_dir: PathBuf,
    ) -> Result<Kubeflow> {
        let bin = dir.join("training-operator");
        if !bin.exists() {
            bail!("no training-operator binary in {} (hack/build-training-operator.sh)", dir.display());
        }
        let crd_path = dir.join("tfjobs-crd.yaml");
        let text =
            std::fs::read_to_string(&crd_path).with_context(|| format!("reading {}", crd_path.display()))?;
        let crd = serde_saphyr::from_str(&text).with_context(|| format!("parsing {}", crd_path.display()))?;
        let version = std::fs::read_to_string(dir.join("VERSIONS"))
            .ok()
            .and_then(|v| v.lines().next().and_then(|l| l.split_whitespace().nth(1)).map(String::from))
            .unwrap_or_else(|| "?".into());
        Ok(Kubeflow {
            bin,
            variants: default_variants(&version),
            version,
            crd,
            our_crd,
            kubeconfig,
            log_dir,
            grace: Duration::from_secs(30),
            timeout: Duration::from_secs(3600),
        })
    }

    /// How to start it for one variant.
    pub fn spec(&self, variant: &KubeflowVariant) -> OperatorSpec {
        let mut args = common_args();
        args.extend(variant.args.iter().cloned());
        OperatorSpec::Kubeflow {
            bin: self.bin.clone(),
            args,
            kubeconfig: self.kubeconfig.clone(),
            log_dir: self.log_dir.clone(),
        }
    }
}

/// Before a start: the empty Secret its rotator fills, and no stale certificate files (the
/// rotator must wait for this run's).
pub(super) async fn prepare(client: &Client, ns: &str) -> Result<()> {
    let secret = Secret {
        metadata: ObjectMeta { name: Some(SECRET.into()), ..Default::default() },
        ..Default::default()
    };
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &secret)
        .await
        .with_context(|| format!("creating the Secret {ns}/{SECRET}"))?;
    for key in ["tls.crt", "tls.key", "ca.crt", "ca.key"] {
        let _ = std::fs::remove_file(Path::new(CERT_DIR).join(key));
    }
    Ok(())
}

/// After a start: waits for the rotator to fill the Secret and writes its keys into
/// [`CERT_DIR`], as a Secret volume would. Fails if the operator exits first.
pub async fn mount_certs(client: &Client, ns: &str, proc: &mut Proc, log: &Path) -> Result<()> {
    let api = Api::<Secret>::namespaced(client.clone(), ns);
    let end = Instant::now() + Duration::from_secs(60);
    let data: BTreeMap<String, Vec<u8>> = loop {
        if let Some(status) = proc.exited() {
            bail!("training-operator exited ({status}) before filling its Secret; see {}", log.display());
        }
        if let Some(data) = api.get_opt(SECRET).await.ok().flatten().and_then(|s| s.data)
            && data.contains_key("tls.crt")
            && data.contains_key("tls.key")
        {
            break data.into_iter().map(|(k, v)| (k, v.0)).collect();
        }
        if Instant::now() > end {
            bail!("training-operator did not fill its Secret {ns}/{SECRET} in 60 s; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    std::fs::create_dir_all(CERT_DIR).with_context(|| format!("creating {CERT_DIR}"))?;
    // The key files first: the rotator only waits for tls.crt.
    for (k, v) in data.iter().filter(|(k, _)| *k != "tls.crt").chain(data.get_key_value("tls.crt")) {
        std::fs::write(Path::new(CERT_DIR).join(k), v).with_context(|| format!("writing {CERT_DIR}/{k}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_and_args() {
        let v = default_variants("v1.9.2");
        assert_eq!(v.len(), 2);
        assert!(v[0].label.contains("tuned") && v[0].args.contains(&"--controller-threads=16".to_string()));
        assert!(v[1].label.contains("defaults") && v[1].args.is_empty());
        let args = common_args();
        assert!(args.contains(&"--enable-scheme=tfjob".to_string()));
        for p in ["{namespace}", "{port}", "{probe_port}", "{webhook_port}"] {
            assert!(args.iter().any(|a| a.contains(p)), "{p}");
        }
    }
}
