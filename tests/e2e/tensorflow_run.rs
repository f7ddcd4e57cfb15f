//! Running real TensorFlow on the `TF_CONFIG` of the pods the operator created: the cached
//! venv (`hack/install-tensorflow.sh`), one `tests/tensorflow/replica.py` process per pod,
//! each pod's address mapped onto its own loopback port, and what each process reported.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use serde_json::Value;
use tfjob_operator::names::{CONTAINER_NAME, LABEL_REPLICA_INDEX, LABEL_REPLICA_TYPE, PORT_NAME};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

use crate::Ctx;
use crate::support::pods;

/// The venv's directory: `TFJOB_TENSORFLOW_DIR` (what `make test` passes), else what the
/// install script prints (it installs on first use). A failed install fails the test with
/// the script's own words: it never skips.
pub fn venv() -> Result<PathBuf> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = DIR.get_or_init(|| match std::env::var("TFJOB_TENSORFLOW_DIR") {
        Ok(d) if !d.is_empty() => Ok(PathBuf::from(d)),
        _ => {
            let script = tfjob_testsupport::repo_root().join("hack/install-tensorflow.sh");
            let out = std::process::Command::new("bash").arg(&script).output().map_err(|e| e.to_string())?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            match stdout.lines().last() {
                Some(d) if out.status.success() => Ok(PathBuf::from(d.trim())),
                _ => Err(format!(
                    "cannot install TensorFlow ({} failed): {}",
                    script.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
            }
        }
    });
    let dir = dir.clone().map_err(anyhow::Error::msg)?;
    ensure!(dir.join("bin/python").exists(), "{}: no bin/python (TFJOB_TENSORFLOW_DIR)", dir.display());
    Ok(dir)
}

/// One pod as the test sees it: its replica type and index (labels) and the address its
/// service gives it (`<pod>.<namespace>.svc:<tfjob-port, else 2222>`).
#[derive(Clone, Debug)]
pub struct Replica {
    pub rtype: String,
    pub index: i64,
    pub address: String,
    pub tf_config: String,
}

/// The namespace's pods of job `name`, sorted by type and index.
pub async fn replicas(ctx: &Ctx, name: &str) -> Result<Vec<Replica>> {
    let list = pods(ctx).list(&ListParams::default()).await?;
    let mut out = Vec::new();
    for p in list.items.iter().filter(|p| p.metadata.name.as_deref().is_some_and(|n| n.starts_with(name))) {
        out.push(replica(ctx, p)?);
    }
    out.sort_by(|a, b| (&a.rtype, a.index).cmp(&(&b.rtype, b.index)));
    Ok(out)
}

fn replica(ctx: &Ctx, p: &Pod) -> Result<Replica> {
    let pod = p.metadata.name.clone().unwrap_or_default();
    let labels = p.metadata.labels.clone().unwrap_or_default();
    let c = p.spec.iter().flat_map(|s| &s.containers).find(|c| c.name == CONTAINER_NAME);
    let c = c.with_context(|| format!("{pod}: no {CONTAINER_NAME} container"))?;
    let port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some(PORT_NAME))
        .map_or(2222, |p| p.container_port);
    let env = c.env.iter().flatten().find(|e| e.name == "TF_CONFIG");
    Ok(Replica {
        rtype: labels
            .get(LABEL_REPLICA_TYPE)
            .with_context(|| format!("{pod}: no replica type"))?
            .to_lowercase(),
        index: labels.get(LABEL_REPLICA_INDEX).with_context(|| format!("{pod}: no index"))?.parse()?,
        address: format!("{pod}.{}.svc:{port}", ctx.ns),
        tf_config: env.and_then(|e| e.value.clone()).with_context(|| format!("{pod}: no TF_CONFIG"))?,
    })
}

/// A replica's process and what it printed.
pub struct Run {
    pub replica: Replica,
    child: Child,
    log: PathBuf,
}

/// Starts one TensorFlow process per replica: `strategy` is `mwms` or `ps`.
pub fn start(ctx: &Ctx, replicas: &[Replica], strategy: &str, steps: u32) -> Result<Vec<Run>> {
    let python = venv()?.join("bin/python");
    let script = tfjob_testsupport::repo_root().join("tests/tensorflow/replica.py");
    let dir = std::env::temp_dir().join(format!("tfjob-e2e-{}", ctx.ns));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("checkpoints"))?;
    let mut loopback = BTreeMap::new();
    for r in replicas {
        loopback.insert(r.address.clone(), format!("127.0.0.1:{}", tfjob_testsupport::free_port()?));
    }
    let loopback = serde_json::to_string(&loopback)?;
    let mut runs = Vec::new();
    for r in replicas {
        let log = dir.join(format!("{}-{}", r.rtype, r.index));
        let child = Command::new(&python)
            .arg(&script)
            .env("TF_CONFIG", &r.tf_config)
            .env("TFJOB_LOOPBACK", &loopback)
            .env("TFJOB_STRATEGY", strategy)
            .env("TFJOB_CHECKPOINTS", dir.join("checkpoints"))
            .env("TFJOB_STEPS", steps.to_string())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(log.with_extension("log"))?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", python.display()))?;
        runs.push(Run { replica: r.clone(), child, log });
    }
    Ok(runs)
}

impl Run {
    fn name(&self) -> String {
        format!("{}-{}", self.replica.rtype, self.replica.index)
    }

    fn stderr_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log.with_extension("log")).unwrap_or_default();
        let lines: Vec<&str> =
            text.lines().filter(|l| !l.contains("oneDNN") && !l.contains("absl::")).collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits for the process to exit 0 within `timeout`; returns its RESULT lines.
    pub async fn finish(&mut self, timeout: Duration) -> Result<Vec<Value>> {
        let status = tokio::time::timeout(timeout, self.child.wait()).await;
        let mut out = String::new();
        if let (Some(mut stdout), Ok(_)) = (self.child.stdout.take(), &status) {
            stdout.read_to_string(&mut out).await?;
        }
        let status = status.map_err(|_| {
            anyhow::anyhow!(
                "{} did not finish within {timeout:?}; its log ends:\n{}",
                self.name(),
                self.stderr_tail()
            )
        })??;
        ensure!(status.success(), "{} failed ({status}); its log ends:\n{}", self.name(), self.stderr_tail());
        results(&out).with_context(|| format!("{}: {out}", self.name()))
    }

    /// A server (ps, or a worker of ParameterServerStrategy) must still be serving: it runs
    /// until stopped. Returns its RESULT lines so far.
    pub async fn stop_server(&mut self) -> Result<Vec<Value>> {
        ensure!(
            self.child.try_wait()?.is_none(),
            "{} exited; its log ends:\n{}",
            self.name(),
            self.stderr_tail()
        );
        self.child.kill().await?;
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut out).await?;
        }
        results(&out).with_context(|| format!("{}: {out}", self.name()))
    }
}

fn results(out: &str) -> Result<Vec<Value>> {
    out.lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .map(|l| serde_json::from_str(l).context("a RESULT line"))
        .collect()
}

/// What TensorFlow's `TFConfigClusterResolver` read from the pod's own `TF_CONFIG` must be
/// the pod's own type and index, and the address at that index the pod's own.
pub fn check_resolver(run: &Replica, results: &[Value]) -> Result<()> {
    let first = results.first().context("no RESULT from the resolver")?;
    let r = run;
    ensure!(
        first["task_type"] == r.rtype.as_str(),
        "{}-{}: task type {}",
        r.rtype,
        r.index,
        first["task_type"]
    );
    ensure!(first["task_id"] == r.index, "{}-{}: task id {}", r.rtype, r.index, first["task_id"]);
    ensure!(
        first["own_address"] == r.address.as_str(),
        "{}-{}: own address {}, want {}",
        r.rtype,
        r.index,
        first["own_address"],
        r.address
    );
    Ok(())
}
