//! The operator's image (`make image`, `hack/build-image.sh`) run with podman on the host
//! network against the local plane as `deploy/namespaced` runs it in a pod: in-cluster
//! configuration from a mounted ServiceAccount token, the Deployment's user, read-only root
//! and dropped capabilities, and a job succeeds. `make test` builds the image when podman is
//! installed and passes it in `TFJOB_IMAGE`; without podman the test is left out (see `tests`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use base64::Engine;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use serde_json::{Value, json};
use tfjob_operator::api::ConditionType;
use tfjob_testsupport::free_port;
use tfjob_testsupport::process::Proc;

use crate::support::audit::Sender;
use crate::support::deploy::{Install, deploy_identity};
use crate::support::*;
use crate::{Ctx, Test, test};

/// Where the kubelet mounts a pod's ServiceAccount token; kube's in-cluster config reads it.
const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The Dockerfile's and Containerfile's user.
const IMAGE_USER: &str = "65532:65532";

/// The test when there is an image to run: `TFJOB_IMAGE` (set, not empty), or else podman on
/// PATH (the test then builds it with `hack/build-image.sh`; run `make image` first, a cold
/// release build outlasts the test's timeout). `TFJOB_IMAGE` empty (`make test` without
/// podman) leaves it out: a machine without a container engine cannot run it, and `make test`
/// must pass there; stderr says so.
pub fn tests() -> Vec<Test> {
    let podman = Command::new("podman").arg("--version").output().is_ok_and(|o| o.status.success());
    match std::env::var("TFJOB_IMAGE") {
        Ok(image) if !image.is_empty() => {}
        Err(_) if podman => {}
        _ => {
            return vec![test!(image_runs_a_job_as_deployed).skip(
                "no podman on this machine (make test builds and runs the image where podman is installed)",
            )];
        }
    }
    vec![test!(image_runs_a_job_as_deployed)]
}

fn image() -> Result<String> {
    let image = tfjob_testsupport::built_dir("TFJOB_IMAGE", "hack/build-image.sh")?;
    Ok(image.to_string_lossy().into_owned())
}

/// `podman <args>`; its stdout, trimmed.
fn podman(args: &[&str]) -> Result<String> {
    let out = Command::new("podman").args(args).output().with_context(|| format!("podman {args:?}"))?;
    ensure!(out.status.success(), "podman {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The image as built: nothing but the static binary, its entrypoint, a numeric non-root user.
fn check_image(image: &str) -> Result<()> {
    let config: Value =
        serde_json::from_str(&podman(&["image", "inspect", "--format", "{{json .Config}}", image])?)?;
    ensure!(config["User"] == IMAGE_USER, "image user {}", config["User"]);
    ensure!(
        config["Entrypoint"] == json!(["/usr/local/bin/tfjob-operator"]),
        "entrypoint {}",
        config["Entrypoint"]
    );
    ensure!(config["ExposedPorts"].get("8080/tcp").is_some(), "exposed ports {}", config["ExposedPorts"]);
    let layers = podman(&["image", "inspect", "--format", "{{len .RootFS.Layers}}", image])?;
    ensure!(layers == "1", "{layers} layers: the image should hold the binary alone");
    Ok(())
}

/// The files the kubelet would mount for `deploy/namespaced`'s ServiceAccount: its token (from
/// the kubeconfig `deploy_identity` made), the cluster's CA and the namespace; and the API
/// server's address, as the kubelet's `KUBERNETES_SERVICE_HOST` and `_PORT`.
fn service_account_files(ctx: &Ctx, kubeconfig: &Path) -> Result<(PathBuf, String, String)> {
    let text = std::fs::read_to_string(kubeconfig)?;
    let doc: Value = serde_saphyr::from_str(&text)?;
    let token = doc["users"][0]["user"]["token"].as_str().context("no token in the kubeconfig")?;
    let cluster = tfjob_testsupport::current_cluster(&ctx.cluster.kubeconfig)?;
    let ca = cluster.certificate_authority_data.context("the cluster's CA must be inline")?;
    let ca = base64::engine::general_purpose::STANDARD.decode(ca.trim())?;
    let server: http::Uri = cluster.server.context("the cluster has no server")?.parse()?;
    let host = server.host().context("server host")?.to_string();
    let port = server.port_u16().unwrap_or(443).to_string();
    let dir = std::env::temp_dir().join(format!("tfjob-e2e-image-{}", ctx.ns)).join("serviceaccount");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("token"), token)?;
    std::fs::write(dir.join("ca.crt"), ca)?;
    std::fs::write(dir.join("namespace"), &ctx.ns)?;
    // Readable by the image's user, as the kubelet's projected volume is.
    use std::os::unix::fs::PermissionsExt;
    for f in ["token", "ca.crt", "namespace"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644))?;
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok((dir, host, port))
}

/// `podman run` and what this kind of machine needs to start a container at all (each
/// without it fails; README "The image"): runc where installed (crun 1.8 refuses a host whose
/// cgroups are hybrid, v1 controllers with a v2 hierarchy: "cgroups in hybrid mode not
/// supported"), and open-file and process limits no higher than the test's own (podman's
/// defaults raise them, which needs CAP_SYS_RESOURCE: "setrlimit `RLIMIT_NOFILE`: Operation
/// not permitted").
fn runtime_flags() -> Vec<String> {
    let mut flags = vec!["run".to_string()];
    if Command::new("runc").arg("--version").output().is_ok_and(|o| o.status.success()) {
        flags.push("--runtime=runc".into());
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = |name: &str| {
        let line = limits.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse::<u64>().ok()
    };
    let nofile = soft("Max open files").unwrap_or(1024);
    // At most 4096 threads of the image's user: far more than the operator starts.
    let nproc = soft("Max processes").unwrap_or(4096).min(4096);
    flags.push(format!("--ulimit=nofile={nofile}:{nofile}"));
    flags.push(format!("--ulimit=nproc={nproc}:{nproc}"));
    flags
}

/// The image running in a podman container named `name` (also its `POD_NAME`); on drop its
/// requests are recorded for the audit, then it is stopped and removed.
struct Container {
    name: String,
    proc: Proc,
    http_port: u16,
    sender: Sender,
    log: PathBuf,
}

impl Container {
    /// `podman run` with the Deployment's settings: its args (`--leader-elect`,
    /// `--log-format=json`, and `--namespace` as `deploy/namespaced`), `POD_NAME` and
    /// `POD_NAMESPACE`, its securityContext (the image's user, read-only root, no capability,
    /// no privilege escalation) and the ServiceAccount mount; the HTTP port on loopback.
    fn run(ctx: &Ctx, image: &str, kubeconfig: &Path) -> Result<Container> {
        let (sa, host, port) = service_account_files(ctx, kubeconfig)?;
        let name = format!("tfjob-e2e-{}", ctx.ns);
        let http_port = free_port()?;
        let dir = std::env::temp_dir().join(format!("tfjob-e2e-image-{}", ctx.ns));
        let mut args: Vec<String> = runtime_flags();
        args.extend(
            [
                "--rm",
                "--name",
                &name,
                "--network=host",
                "--read-only",
                "--cap-drop=ALL",
                "--security-opt=no-new-privileges",
                &format!("--volume={}:{SA_DIR}:ro", sa.display()),
                &format!("--env=KUBERNETES_SERVICE_HOST={host}"),
                &format!("--env=KUBERNETES_SERVICE_PORT={port}"),
                &format!("--env=POD_NAME={name}"),
                &format!("--env=POD_NAMESPACE={}", ctx.ns),
                image,
                "--leader-elect",
                "--log-format=json",
                &format!("--namespace={}", ctx.ns),
                &format!("--http-addr=127.0.0.1:{http_port}"),
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        let proc = Proc::spawn("podman-run", Path::new("podman"), &args, &dir)?;
        let sender = Sender::new(ctx, &name, kubeconfig);
        Ok(Container { name, proc, http_port, sender, log: dir.join("podman-run.log") })
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        if self.proc.exited().is_none() {
            self.sender.record(self.http_port);
        }
        self.proc.stop(Duration::from_secs(10));
        // `podman run` killed before its container stopped leaves the container: remove it.
        let _ = Command::new("podman").args(["rm", "--force", "--time=0", &self.name]).output();
    }
}

async fn image_runs_a_job_as_deployed(ctx: Ctx) -> Result<()> {
    let image = image()?;
    check_image(&image)?;
    let kubeconfig = deploy_identity(&ctx, Install::Namespaced)?;
    let mut c = Container::run(&ctx, &image, &kubeconfig)?;
    eventually(Duration::from_secs(30), "the container's /readyz answers 200", || async {
        let code = http_get(c.http_port, "/readyz").await.map(|(code, _)| code);
        ensure!(code == Some(200), "/readyz {code:?}; podman run log:\n{}", c.log_tail());
        Ok(())
    })
    .await?;
    // It is the container: a process of the image's user, in a PID namespace of its own.
    let pid = podman(&["inspect", "--format", "{{.State.Pid}}", &c.name])?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap_or_default();
    ensure!(uid.split_whitespace().skip(1).all(|u| u == "65532"), "the container's process: {uid}");
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap_or_default();
    ensure!(nspid.split_whitespace().last() == Some("1"), "not pid 1 in its namespace: {nspid}");

    let ok = [replica("PS", 1), replica("Worker", 1).fate(succeed("2s"))];
    create(&ctx, job("ok", &ok, json!({"runPolicy": {"cleanPodPolicy": "Running"}}))).await?;
    wait_job(&ctx, "ok", WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded))
        .await
        .with_context(|| c.log_tail())?;
    eventually(Duration::from_secs(10), "the running PS cleaned up", || async {
        let pods = live_pods(&ctx).await?;
        let job_pods: Vec<&String> = pods.iter().filter(|p| p.starts_with("ok-")).collect();
        ensure!(job_pods == ["ok-worker-0"], "pods {pods:?}");
        Ok(())
    })
    .await?;
    let lease = Api::<Lease>::namespaced(ctx.cluster.client.clone(), &ctx.ns).get("tfjob-operator").await?;
    let holder = lease.spec.and_then(|s| s.holder_identity).unwrap_or_default();
    ensure!(holder == c.name, "lease holder {holder:?}, not the container's POD_NAME {}", c.name);
    let m = http_get(c.http_port, "/metrics").await.map(|(_, body)| body).unwrap_or_default();
    ensure!(metric_sum(&m, "tfjob_operator_api_requests_total", &[]) > 0.0, "no API requests:\n{m}");
    for code in ["401", "403"] {
        let refused = metric_sum(&m, "tfjob_operator_api_requests_total", &[&format!("code=\"{code}\"")]);
        ensure!(refused == 0.0, "{refused} requests answered {code}:\n{m}");
    }
    ensure!(metric_sum(&m, "tfjob_operator_reconcile_errors_total", &[]) == 0.0, "reconcile errors:\n{m}");

    // SIGTERM to `podman run` reaches the operator (pid 1): it exits 0 well within the
    // Deployment's 30 s grace, and the container is removed.
    c.sender.record(c.http_port);
    let t0 = Instant::now();
    c.proc.signal(SIGTERM);
    let exit = tokio::task::block_in_place(|| c.proc.wait_exit(Duration::from_secs(20)));
    ensure!(exit.is_some_and(|s| s.success()), "podman run after SIGTERM: {exit:?}\n{}", c.log_tail());
    ensure!(t0.elapsed() < Duration::from_secs(10), "stopped after {:?}", t0.elapsed());
    let left = podman(&["ps", "--all", "--quiet", "--filter", &format!("name=^{}$", c.name)])?;
    ensure!(left.is_empty(), "container left after it stopped: {left}");
    Ok(())
}
