//! The local control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
//! kwok on loopback, with fake nodes, started in order and stopped in reverse.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kube::{Client, Config, config::KubeConfigOptions, config::Kubeconfig};

pub use crate::nodes::{KWOK_TAINT, kwok_node};
use crate::pki::{Pki, write_pki};
use crate::process::Proc;

mod processes;

/// The kwok stage file: pod fates chosen by `kwok.test/*` annotations.
pub const KWOK_STAGES: &str = include_str!("../kwok-stages.yaml");

/// How to start a plane.
#[derive(Clone, Debug)]
pub struct PlaneOptions {
    /// Directory holding the binaries (from `hack/build-control-plane.sh`).
    pub bin_dir: PathBuf,
    /// Fake nodes to create.
    pub nodes: u32,
    /// QPS (and twice that burst) for the controller-manager and scheduler clients.
    pub component_qps: u32,
    /// Whether the nodes carry kwok's `kwok.x-k8s.io/node=fake:NoSchedule` taint, so only pods
    /// that tolerate it land there (the shared e2e plane: a pod meant for a fake node says
    /// so). `make cluster` and `make run` start untainted nodes, the only nodes there, so
    /// every example runs as written.
    pub taint: bool,
    /// Whether Kubernetes' own gang scheduling is on (alpha in 1.36): the feature gates
    /// [`GANG_FEATURE_GATES`] on kube-apiserver, kube-controller-manager and kube-scheduler,
    /// and the `scheduling.k8s.io/v1alpha2` API served. It changes nothing for pods that name
    /// no PodGroup, so it is on by default.
    pub gang_scheduling: bool,
    /// How many pods kwok moves through their stages at once (its `podPlayStageParallelism`;
    /// kwok's default is [`KWOK_POD_PARALLELISM`]). kwok plays every node's kubelet with these
    /// few workers, each waiting on its API call; a kubelet per node would not queue so.
    pub kwok_pod_parallelism: u32,
}

/// kwok's own default `podPlayStageParallelism`.
pub const KWOK_POD_PARALLELISM: u32 = 4;

/// The feature gates of native gang scheduling.
pub const GANG_FEATURE_GATES: &str = "GenericWorkload=true,GangScheduling=true";
/// The API of native gang scheduling (`--runtime-config`).
pub const GANG_RUNTIME_CONFIG: &str = "scheduling.k8s.io/v1alpha2=true";

impl Default for PlaneOptions {
    fn default() -> Self {
        PlaneOptions {
            bin_dir: PathBuf::new(),
            nodes: 4,
            component_qps: 500,
            taint: true,
            gang_scheduling: true,
            kwok_pod_parallelism: KWOK_POD_PARALLELISM,
        }
    }
}

/// A running plane. Dropping it stops every process and removes its directory.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub server: String,
    pub pki: Pki,
    pub bin_dir: PathBuf,
    pub ports: Vec<u16>,
    /// The components, in start order; a restarted one takes its predecessor's place.
    procs: Mutex<Vec<Proc>>,
    /// Each component's arguments, to start it again.
    specs: Vec<(String, Vec<String>)>,
    /// etcd's client port.
    etcd_port: u16,
}

/// A free loopback port (bound and released: the kernel will not hand it out again soon).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether something accepts connections on 127.0.0.1:`port`.
pub fn port_in_use(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200)).is_ok()
}

/// A client from a kubeconfig file.
pub async fn client_for(kubeconfig: &Path) -> Result<Client> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// The cluster of a kubeconfig's current context (its server, CA, ...).
pub fn current_cluster(kubeconfig: &Path) -> Result<kube::config::Cluster> {
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let current = kc.current_context.clone().context("the kubeconfig has no current context")?;
    let cluster_name = kc
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .map(|c| c.cluster.clone())
        .context("the current context names no cluster")?;
    kc.clusters
        .into_iter()
        .find(|c| c.name == cluster_name)
        .and_then(|c| c.cluster)
        .context("the current cluster is missing")
}

impl ControlPlane {
    /// Starts everything and waits until the nodes are Ready and schedulable. A free port
    /// is picked by binding and releasing it, so another process can take it before a
    /// component binds it: a start that fails on `address already in use` is tried again
    /// with new ports (three times at most).
    pub async fn start(opts: &PlaneOptions) -> Result<ControlPlane> {
        let mut tries = 0;
        loop {
            tries += 1;
            match Self::start_once(opts).await {
                Err(e) if tries < 3 && format!("{e:#}").contains("address already in use") => {
                    eprintln!("control plane: a port was taken meanwhile, starting again: {e:#}");
                }
                other => return other,
            }
        }
    }

    async fn start_once(opts: &PlaneOptions) -> Result<ControlPlane> {
        let dir = std::env::temp_dir().join(format!("tfjob-plane-{}-{}", std::process::id(), free_port()?));
        std::fs::create_dir_all(&dir)?;
        let [etcd, peer, api, kcm, sched] =
            [free_port()?, free_port()?, free_port()?, free_port()?, free_port()?];
        let server = format!("https://127.0.0.1:{api}");
        let pki = write_pki(&dir.join("pki"), &server)?;
        let mut plane = ControlPlane {
            dir: dir.clone(),
            server,
            pki,
            bin_dir: opts.bin_dir.clone(),
            ports: vec![etcd, peer, api, kcm, sched],
            procs: Mutex::default(),
            specs: vec![],
            etcd_port: etcd,
        };
        plane
            .start_processes(opts, [etcd, peer, api, kcm, sched])
            .await
            .with_context(|| format!("starting the control plane (component logs in {})", dir.display()))?;
        Ok(plane)
    }

    fn procs(&self) -> std::sync::MutexGuard<'_, Vec<Proc>> {
        self.procs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The PIDs of every component.
    pub fn pids(&self) -> Vec<u32> {
        self.procs().iter().map(Proc::pid).collect()
    }

    /// The PID of component `name` (`etcd`, `kube-apiserver`, `kube-controller-manager`,
    /// `kube-scheduler`, `kwok`).
    pub fn pid(&self, name: &str) -> Result<u32> {
        self.procs()
            .iter()
            .find(|p| p.name == name)
            .map(Proc::pid)
            .with_context(|| format!("no component {name}"))
    }

    /// Sends `signal` to component `name` (SIGSTOP, SIGCONT, SIGKILL, ...).
    pub fn signal(&self, name: &str, signal: i32) -> Result<()> {
        let procs = self.procs();
        let p = procs.iter().find(|p| p.name == name).with_context(|| format!("no component {name}"))?;
        p.signal(signal);
        Ok(())
    }

    /// SIGKILLs component `name` and waits until it has exited.
    pub fn kill(&self, name: &str) -> Result<()> {
        let mut procs = self.procs();
        let p = procs.iter_mut().find(|p| p.name == name).with_context(|| format!("no component {name}"))?;
        p.signal(libc::SIGKILL);
        p.wait_exit(Duration::from_secs(10))
            .with_context(|| format!("{name} still runs 10 s after SIGKILL"))?;
        Ok(())
    }

    /// Starts component `name` again with its first arguments (etcd from its data directory,
    /// the API server on the same address), after [`ControlPlane::kill`]. Its log goes to
    /// `<name>.<n>.log`.
    pub fn restart(&self, name: &str) -> Result<()> {
        let (_, args) =
            self.specs.iter().find(|(n, _)| n == name).with_context(|| format!("no component {name}"))?;
        let mut procs = self.procs();
        let at = procs.iter().position(|p| p.name == name).with_context(|| format!("no component {name}"))?;
        if procs[at].exited().is_none() {
            bail!("{name} still runs: kill it first");
        }
        let n = (2..).find(|n| !self.dir.join(format!("{name}.{n}.log")).exists()).unwrap_or(2);
        let mut proc = Proc::spawn(&format!("{name}.{n}"), &self.bin_dir.join(name), args, &self.dir)?;
        proc.name = name.to_string();
        procs[at] = proc;
        Ok(())
    }

    /// Starts again every component that has exited (some do when the API server or etcd is
    /// away long enough); returns their names.
    pub fn revive(&self) -> Result<Vec<String>> {
        let exited: Vec<String> =
            self.procs().iter_mut().filter_map(|p| p.exited().map(|_| p.name.clone())).collect();
        for name in &exited {
            self.restart(name)?;
        }
        Ok(exited)
    }

    /// etcd's client URL (for its HTTP/JSON gateway: `/v3/kv/range`, `/v3/kv/compaction`).
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// POSTs `body` to etcd's HTTP/JSON gateway at `path` (`/v3/kv/put`, `/v3/kv/range`,
    /// `/v3/kv/compaction`) and returns its JSON answer.
    pub async fn etcd_post(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let url = self.etcd_url();
        let addr = url.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        let (_, json) = out.split_once("\r\n\r\n").context("etcd's answer has no body")?;
        if !(out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")) {
            bail!("etcd {path}: {out}");
        }
        Ok(serde_json::from_str(json)?)
    }

    /// A 410 Gone for every watch, provoked for real: with the API server down, etcd's
    /// revision is moved on and compacted up to it, so the API server comes back with a watch
    /// cache that starts after every client's last resourceVersion, and etcd no longer has
    /// the history. Returns the compacted revision once the API server has been started
    /// again (it may not answer yet). kube-scheduler may exit on purpose a while later (its
    /// re-list contradicts its cache): [`ControlPlane::revive`] starts it again.
    pub async fn force_410(&self) -> Result<String> {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        self.kill("kube-apiserver")?;
        for i in 0..3 {
            let body = serde_json::json!({"key": b64(&format!("/tfjob-e2e/bump-{i}")), "value": b64("1")});
            self.etcd_post("/v3/kv/put", body).await?;
        }
        let head =
            self.etcd_post("/v3/kv/range", serde_json::json!({"key": b64("/tfjob-e2e/bump-0")})).await?;
        let revision = head["header"]["revision"].as_str().context("etcd revision")?.to_string();
        self.etcd_post("/v3/kv/compaction", serde_json::json!({"revision": revision, "physical": true}))
            .await?;
        self.restart("kube-apiserver")?;
        Ok(revision)
    }

    /// Stops every component, newest first, and removes the plane's directory unless
    /// `TFJOB_KEEP_PLANE` is set.
    pub fn stop(&mut self) {
        while let Some(mut p) = self.procs().pop() {
            p.stop(Duration::from_secs(10));
        }
        if std::env::var_os("TFJOB_KEEP_PLANE").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}
