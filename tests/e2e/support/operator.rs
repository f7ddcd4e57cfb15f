//! The operator under test: a process per test, limited to the test's namespace unless
//! started cluster-wide (as `deploy/` runs it), and by default with exactly the permissions
//! of `deploy/namespaced` or `deploy/` (its ServiceAccount's token). What each process sent is
//! recorded when it stops, for the suite's RBAC audit ([`super::audit`]).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use tfjob_testsupport::free_port;
pub use tfjob_testsupport::http_get;
use tfjob_testsupport::process::Proc;

use super::audit;
use super::deploy::{Install, deploy_identity};
use crate::Ctx;

/// The operator under test, limited to the test's namespace; stopped (SIGTERM) on drop.
pub struct Operator {
    pub proc: Proc,
    pub http_port: u16,
    pub log: PathBuf,
    /// Whose requests these are, for the audit.
    sender: audit::Sender,
}

impl Operator {
    /// The operator for the test's namespace, as `deploy/namespaced` installs it.
    pub fn start(ctx: &Ctx, extra: &[&str]) -> Result<Operator> {
        Self::launch(ctx, "tfjob-operator", &ctx.cluster.kubeconfig, Some(&ctx.ns), extra, &[])
    }

    /// An operator process logging to `<name>.log`, for the test's namespace, with
    /// `kubeconfig` (the cluster's own kubeconfig means: as `deploy/namespaced` installs it).
    pub fn start_as(ctx: &Ctx, name: &str, kubeconfig: &Path, extra: &[&str]) -> Result<Operator> {
        Self::launch(ctx, name, kubeconfig, Some(&ctx.ns), extra, &[])
    }

    /// An operator watching every namespace, as `deploy/` installs it.
    pub fn start_cluster_wide(ctx: &Ctx, name: &str, extra: &[&str]) -> Result<Operator> {
        Self::launch(ctx, name, &ctx.cluster.kubeconfig, None, extra, &[])
    }

    /// The general form: `namespace` (None: all), extra flags and environment variables. Given
    /// the cluster's own (admin) kubeconfig, the process runs as `deploy/` installs it instead:
    /// with the token of the ServiceAccount of `deploy/namespaced` (one namespace) or `deploy/`
    /// (every namespace), its RBAC applied in the test's namespace. Any other kubeconfig is
    /// used as it is.
    pub fn launch(
        ctx: &Ctx,
        name: &str,
        kubeconfig: &Path,
        namespace: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Operator> {
        let deployed = if kubeconfig == ctx.cluster.kubeconfig.as_path() {
            let install = if namespace.is_some() { Install::Namespaced } else { Install::ClusterWide };
            Some(deploy_identity(ctx, install)?)
        } else {
            None
        };
        let kubeconfig = deployed.as_deref().unwrap_or(kubeconfig);
        let sender = audit::Sender::new(ctx, name, kubeconfig);
        Self::spawn(ctx, name, kubeconfig, namespace, extra, env, sender)
    }

    /// Expects this process to be refused (401 or 403) on purpose; the audit then does not
    /// count its refusals as a failure.
    pub fn expect_refusals(&mut self, why: &'static str) {
        self.sender.expect_refusals(why);
    }

    /// The refusals this process got so far are the plane's doing, not its RBAC's (an API
    /// server restarting answers 403 until its authorizer has loaded RBAC): the audit counts
    /// only later ones. Call it once the API server answers `/readyz` again.
    pub async fn forgive_refusals_so_far(&mut self) -> Result<()> {
        let m = self.metrics().await?;
        self.sender.forgive_refusals_in(&m);
        Ok(())
    }

    fn spawn(
        ctx: &Ctx,
        name: &str,
        kubeconfig: &Path,
        namespace: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
        sender: audit::Sender,
    ) -> Result<Operator> {
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("tfjob-e2e-op-{}", ctx.ns));
        std::fs::create_dir_all(&dir)?;
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_tfjob-operator"));
        let mut args = vec![format!("--http-addr=127.0.0.1:{port}"), "--log-format=json".to_string()];
        args.extend(namespace.map(|ns| format!("--namespace={ns}")));
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut vars: Vec<(&str, &std::ffi::OsStr)> = vec![("KUBECONFIG", kubeconfig.as_os_str())];
        vars.extend(env.iter().map(|(k, v)| (*k, std::ffi::OsStr::new(*v))));
        let proc = Proc::spawn_with_env(name, &bin, &args, &dir, &vars)?;
        Ok(Operator { proc, http_port: port, log: dir.join(format!("{name}.log")), sender })
    }

    /// Every thread's stack, for a failure that looks like a hang (gdb, where installed).
    pub fn stacks(&self) -> String {
        let out = std::process::Command::new("timeout")
            .args([
                "60",
                "gdb",
                "-p",
                &self.proc.pid().to_string(),
                "-batch",
                "-ex",
                "thread apply all bt 25",
            ])
            .output();
        match out {
            Ok(o) => String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter(|l| l.starts_with('#') || l.starts_with("Thread"))
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("(no stacks: {e})"),
        }
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The operator's `/metrics` text. An error unless it answers 200, so that a check that
    /// something is absent cannot pass on an operator that stopped answering: a caller that
    /// polls retries it (`eventually`), any other fails.
    pub async fn metrics(&self) -> Result<String> {
        match http_get(self.http_port, "/metrics").await {
            Some((200, body)) => Ok(body),
            Some((code, _)) => bail!("{}: GET /metrics answered {code}", self.proc.name),
            None => bail!("{}: GET /metrics got no answer", self.proc.name),
        }
    }

    /// The status code of `GET path` on the operator's HTTP port (None while it does not answer).
    pub async fn http_status(&self, path: &str) -> Option<u16> {
        http_get(self.http_port, path).await.map(|(code, _)| code)
    }

    /// The operator's log so far (for failure messages).
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Operator {
    /// Records what the process sent (its `/metrics`, read while it still answers), before
    /// `proc` stops it.
    fn drop(&mut self) {
        self.sender.record(self.http_port);
    }
}

/// Signal numbers (Linux) for the operator processes the tests stop.
pub const SIGTERM: i32 = 15;
pub const SIGKILL: i32 = 9;
pub const SIGSTOP: i32 = 19;
pub const SIGCONT: i32 = 18;
