//! The operator under measurement for one size: started by the bench (ours or Kubeflow's
//! training-operator) or already running, its footprint read and stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kube::Client;

use super::{OperatorSpec, footprint, kubeflow};
use crate::process::Proc;

/// The running operator of one size.
pub(super) struct Running {
    proc: Option<Proc>,
    pub(super) pid: Option<u32>,
    port: Option<u16>,
    /// Its log, when the bench started it.
    log: Option<PathBuf>,
}

/// How the bench starts an operator binary: its program, arguments, kubeconfig and log
/// directory.
struct Launch<'a> {
    bin: &'a Path,
    args: &'a [String],
    kubeconfig: &'a Path,
    log_dir: &'a Path,
}

impl Running {
    pub(super) async fn start(client: &Client, spec: &OperatorSpec, ns: &str) -> Result<Running> {
        match spec {
            OperatorSpec::External { pid, metrics_port } => {
                Ok(Running { proc: None, pid: *pid, port: *metrics_port, log: None })
            }
            OperatorSpec::Start { bin, args, kubeconfig, log_dir } => {
                Running::start_ours(&Launch { bin, args, kubeconfig, log_dir }, ns).await
            }
            OperatorSpec::Kubeflow { bin, args, kubeconfig, log_dir } => {
                Running::start_kubeflow(client, &Launch { bin, args, kubeconfig, log_dir }, ns).await
            }
        }
    }

    /// Starts our operator and waits (up to 30 s) for its `/readyz`.
    async fn start_ours(launch: &Launch<'_>, ns: &str) -> Result<Running> {
        let Launch { bin, args, kubeconfig, log_dir } = *launch;
        let port = crate::free_port()?;
        let args: Vec<String> =
            args.iter().map(|a| a.replace("{namespace}", ns).replace("{port}", &port.to_string())).collect();
        std::fs::create_dir_all(log_dir)?;
        let proc = Proc::spawn_with_env(
            &format!("operator-{ns}"),
            bin,
            &args,
            log_dir,
            &[("KUBECONFIG", kubeconfig.as_os_str())],
        )?;
        let pid = Some(proc.pid());
        let log = Some(log_dir.join(format!("operator-{ns}.log")));
        let running = Running { proc: Some(proc), pid, port: Some(port), log };
        // Ready: this operator answers /readyz once its caches synced; another may not
        // serve it, so give up waiting after a while and go on.
        let _ = crate::wait(Duration::from_secs(30), "the operator's /readyz", || async {
            crate::http_get(port, "/readyz").await.is_some_and(|(code, _)| code == 200)
        })
        .await;
        Ok(running)
    }

    /// Starts Kubeflow's training-operator with its certificates mounted and waits until it
    /// is ready.
    async fn start_kubeflow(client: &Client, launch: &Launch<'_>, ns: &str) -> Result<Running> {
        let Launch { bin, args, kubeconfig, log_dir } = *launch;
        let (port, probe_port, webhook_port) =
            (crate::free_port()?, crate::free_port()?, crate::free_port()?);
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                a.replace("{namespace}", ns)
                    .replace("{port}", &port.to_string())
                    .replace("{probe_port}", &probe_port.to_string())
                    .replace("{webhook_port}", &webhook_port.to_string())
            })
            .collect();
        kubeflow::prepare(client, ns).await?;
        std::fs::create_dir_all(log_dir)?;
        let name = format!("training-operator-{ns}");
        let log = log_dir.join(format!("{name}.log"));
        let mut proc = Proc::spawn_with_env(
            &name,
            bin,
            &args,
            log_dir,
            &[
                ("KUBECONFIG", kubeconfig.as_os_str()),
                ("MY_POD_NAMESPACE", ns.as_ref()),
                ("TMPDIR", "/tmp".as_ref()),
            ],
        )?;
        kubeflow::mount_certs(client, ns, &mut proc, &log).await?;
        kubeflow_ready(&mut proc, &log, probe_port).await?;
        let pid = Some(proc.pid());
        Ok(Running { proc: Some(proc), pid, port: Some(port), log: Some(log) })
    }

    pub(super) fn log(&self) -> Option<PathBuf> {
        self.log.clone()
    }

    pub(super) async fn requests(&self) -> BTreeMap<String, f64> {
        match self.port {
            Some(p) => {
                footprint::requests(&crate::http_get(p, "/metrics").await.map(|(_, b)| b).unwrap_or_default())
            }
            None => BTreeMap::new(),
        }
    }

    pub(super) fn stop(&mut self) {
        if let Some(p) = &mut self.proc {
            p.stop(Duration::from_secs(20));
        }
    }
}

/// Waits (up to 60 s) for training-operator to be ready: once its certificates are in place
/// and its webhook server listens, its TFJob controller is registered, and it starts its
/// workers once its caches synced (controller-runtime logs "Starting workers").
async fn kubeflow_ready(proc: &mut Proc, log: &Path, probe_port: u16) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = proc.exited() {
            bail!("training-operator exited ({status}); see {}", log.display());
        }
        let workers = std::fs::read_to_string(log).is_ok_and(|l| l.contains("Starting workers"));
        if workers && crate::http_get(probe_port, "/readyz").await.is_some_and(|(code, _)| code == 200) {
            return Ok(());
        }
        if Instant::now() > end {
            bail!("training-operator was not ready after 60 s; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How the report names an operator: its command line, or the PID it already runs as.
pub(super) fn describe(spec: &OperatorSpec) -> String {
    match spec {
        OperatorSpec::Start { bin, args, .. } | OperatorSpec::Kubeflow { bin, args, .. } => {
            format!("{} {}", bin.display(), args.join(" "))
        }
        OperatorSpec::External { pid, .. } => format!("already running (pid {pid:?})"),
    }
}
