//! The operator under test: a process per test, limited to the test's namespace unless
//! started cluster-wide (as `deploy/` runs it).

use std::path::{Path, PathBuf};

use anyhow::Result;
use tfjob_testsupport::free_port;
pub use tfjob_testsupport::http_get;
use tfjob_testsupport::process::Proc;

use crate::Ctx;

/// The operator under test, limited to the test's namespace; stopped (SIGTERM) on drop.
pub struct Operator {
    pub proc: Proc,
    pub http_port: u16,
    pub log: PathBuf,
}

impl Operator {
    pub fn start(ctx: &Ctx, extra: &[&str]) -> Result<Operator> {
        Self::start_as(ctx, "tfjob-operator", &ctx.cluster.kubeconfig, extra)
    }

    /// An operator process logging to `<name>.log`, with its own kubeconfig.
    pub fn start_as(ctx: &Ctx, name: &str, kubeconfig: &Path, extra: &[&str]) -> Result<Operator> {
        Self::launch(ctx, name, kubeconfig, Some(&ctx.ns), extra, &[])
    }

    /// An operator watching every namespace, as `deploy/` installs it.
    pub fn start_cluster_wide(ctx: &Ctx, name: &str, extra: &[&str]) -> Result<Operator> {
        Self::launch(ctx, name, &ctx.cluster.kubeconfig, None, extra, &[])
    }

    /// The general form: `namespace` (None: all), extra flags and environment variables.
    pub fn launch(
        ctx: &Ctx,
        name: &str,
        kubeconfig: &Path,
        namespace: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
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
        Ok(Operator { proc, http_port: port, log: dir.join(format!("{name}.log")) })
    }

    /// The whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The operator's `/metrics` text (empty if it does not answer).
    pub async fn metrics(&self) -> String {
        http_get(self.http_port, "/metrics").await.map(|(_, body)| body).unwrap_or_default()
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

/// Signal numbers (Linux) for the operator processes the tests stop.
pub const SIGTERM: i32 = 15;
pub const SIGKILL: i32 = 9;
pub const SIGSTOP: i32 = 19;
pub const SIGCONT: i32 = 18;
