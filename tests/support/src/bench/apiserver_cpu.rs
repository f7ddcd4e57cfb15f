//! What the API server's own CPU went to during a size (`--apiserver-profile`): its
//! `/debug/pprof/profile` sampled in back-to-back windows while the size runs, merged into
//! one profile, and summed by part (status writes, CRD rules, creates, deletes, watches, ...)
//! with `go tool pprof`. The summing is pure.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::AsyncReadExt;
use kube::Client;
use serde::Serialize;
use tokio::task::JoinHandle;

/// Seconds of one sampling window: the profile overruns the size by at most this much.
const WINDOW_S: u64 = 10;

/// The parts reported, each the cumulative CPU of one function of the API server.
pub const PARTS: [(&str, &str); 9] = [
    ("creates", "k8s.io/apiserver/pkg/registry/generic/registry.(*Store).Create"),
    ("updates and patches", "k8s.io/apiserver/pkg/registry/generic/registry.(*Store).Update"),
    (
        "of which TFJob status",
        "k8s.io/apiextensions-apiserver/pkg/registry/customresource.(*StatusREST).Update",
    ),
    ("of which pod status", "k8s.io/kubernetes/pkg/registry/core/pod/storage.(*StatusREST).Update"),
    ("CRD rules (CEL)", "k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel.(*Validator).Validate"),
    ("deletes", "k8s.io/apiserver/pkg/registry/generic/registry.(*Store).Delete"),
    ("watches served", "k8s.io/apiserver/pkg/endpoints/handlers.(*WatchServer).HandleHTTP"),
    (
        "client certificates",
        "k8s.io/apiserver/pkg/authentication/request/x509.(*Authenticator).AuthenticateRequest",
    ),
    ("Go garbage collector", "runtime.gcBgMarkWorker"),
];

/// The API server's CPU during a size, by part.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CpuParts {
    /// Seconds sampled in all.
    pub total_s: f64,
    /// Seconds per part of [`PARTS`], in that order (parts overlap: CEL runs inside writes).
    pub parts: Vec<(String, f64)>,
    /// The merged profile, for `go tool pprof`.
    pub file: String,
}

impl CpuParts {
    /// One line: the total, then each part with its share.
    pub fn line(&self) -> String {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|(p, s)| format!("{p} {s:.1} ({:.0}%)", 100.0 * s / self.total_s.max(f64::MIN_POSITIVE)))
            .collect();
        format!("API server CPU profile {:.1} s sampled: {} ({})", self.total_s, parts.join(", "), self.file)
    }
}

/// Sums `go tool pprof -top -cum -unit=s` output by [`PARTS`].
pub fn parts_of(top: &str) -> (f64, Vec<(String, f64)>) {
    let total = top
        .lines()
        .find_map(|l| l.split("Total samples = ").nth(1))
        .and_then(|rest| rest.split('s').next())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    let cum_of = |func: &str| -> f64 {
        top.lines()
            .find_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                // flat flat% sum% cum cum% name...
                (cols.len() >= 6 && cols[5..].join(" ") == func)
                    .then(|| cols[3].trim_end_matches('s').parse().ok())?
            })
            .unwrap_or(0.0)
    };
    (total, PARTS.iter().map(|(part, func)| (part.to_string(), cum_of(func))).collect())
}

/// Profiles the API server in windows until [`Sampler::finish`].
pub struct Sampler {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Vec<Vec<u8>>>,
}

/// Starts sampling the API server `client` talks to.
pub fn start(client: &Client) -> Sampler {
    let stop = Arc::new(AtomicBool::new(false));
    let (client, flag) = (client.clone(), stop.clone());
    let task = tokio::spawn(async move {
        let mut windows = Vec::new();
        while !flag.load(Ordering::Relaxed) {
            match window(&client).await {
                Ok(bytes) => windows.push(bytes),
                Err(e) => {
                    eprintln!("tfjob-bench: API server profile: {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        windows
    });
    Sampler { stop, task }
}

async fn window(client: &Client) -> Result<Vec<u8>> {
    let req = http::Request::get(format!("/debug/pprof/profile?seconds={WINDOW_S}")).body(Vec::new())?;
    let mut body = client.request_stream(req).await.context("GET /debug/pprof/profile")?;
    let mut bytes = Vec::new();
    body.read_to_end(&mut bytes).await?;
    Ok(bytes)
}

impl Sampler {
    /// Ends sampling once the window running ends, writes the merged profile to `path` and
    /// sums it by part (`go` must be on the PATH).
    pub async fn finish(self, path: &Path) -> Result<CpuParts> {
        self.stop.store(true, Ordering::Relaxed);
        let windows = self.task.await?;
        if windows.is_empty() {
            bail!("no profile window was sampled");
        }
        let dir = path.with_extension("windows");
        std::fs::create_dir_all(&dir)?;
        let mut files = Vec::new();
        for (i, w) in windows.iter().enumerate() {
            let f = dir.join(format!("{i}.pb.gz"));
            std::fs::write(&f, w)?;
            files.push(f);
        }
        let pprof = |args: &[&str], files: &[std::path::PathBuf]| -> Result<Vec<u8>> {
            let out = std::process::Command::new("go")
                .args(["tool", "pprof"])
                .args(args)
                .args(files)
                .output()
                .context("running go tool pprof")?;
            if !out.status.success() {
                bail!("go tool pprof: {}", String::from_utf8_lossy(&out.stderr));
            }
            Ok(out.stdout)
        };
        std::fs::write(path, pprof(&["-proto"], &files)?)?;
        std::fs::remove_dir_all(&dir)?;
        let top_args = ["-top", "-cum", "-unit=s", "-nodefraction=0", "-nodecount=1000000"];
        let top = String::from_utf8_lossy(&pprof(&top_args, &[path.to_path_buf()])?).into_owned();
        let (total_s, parts) = parts_of(&top);
        Ok(CpuParts { total_s, parts, file: path.display().to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_read_from_pprofs_cumulative_column() {
        let top = "File: kube-apiserver\nType: cpu\n\
            Duration: 90.07s, Total samples = 67.69s (75.15%)\n\
            Showing nodes accounting for 67.69s, 100% of 67.69s total\n      flat  flat%   sum%        cum   cum%\n\
            0     0%     0%     5.01s  7.40%  k8s.io/apiextensions-apiserver/pkg/registry/customresource.(*StatusREST).Update\n\
            0.01s 0.015% 0.015% 2.01s  2.97%  k8s.io/apiextensions-apiserver/pkg/apiserver/schema/cel.(*Validator).Validate\n\
            0     0%     0%     1.2s   1.1%   k8s.io/apiserver/pkg/registry/generic/registry.(*Store).Delete\n\
            0     0%     0%     9.9s   9.9%   k8s.io/apiserver/pkg/registry/generic/registry.(*Store).Delete.func1\n";
        let (total, parts) = parts_of(top);
        assert_eq!(total, 67.69);
        let get = |p: &str| parts.iter().find(|(n, _)| n == p).map(|(_, s)| *s);
        assert_eq!(get("of which TFJob status"), Some(5.01));
        assert_eq!(get("CRD rules (CEL)"), Some(2.01));
        assert_eq!(get("deletes"), Some(1.2), "the function itself, not its closures");
        assert_eq!(get("creates"), Some(0.0), "absent: none sampled");
        assert_eq!(parts.len(), PARTS.len());
        let line = CpuParts { total_s: 10.0, parts: vec![("deletes".into(), 2.5)], file: "f".into() }.line();
        assert_eq!(line, "API server CPU profile 10.0 s sampled: deletes 2.5 (25%) (f)");
    }
}
