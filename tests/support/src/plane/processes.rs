//! Starting the plane's processes in order (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, kwok), each waited for, then the fake nodes until Ready.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::api::{Api, PostParams};

use super::{
    ControlPlane, GANG_FEATURE_GATES, GANG_RUNTIME_CONFIG, KWOK_POD_PARALLELISM, KWOK_STAGES, KWOK_TAINT,
    PlaneOptions, client_for, kwok_node,
};
use crate::nodes::node_ready;
use crate::process::Proc;

fn http_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

fn a(s: &str) -> String {
    s.to_string()
}

fn path(x: &Path) -> String {
    x.display().to_string()
}

impl ControlPlane {
    pub(super) fn spawn(&mut self, name: &str, args: Vec<String>) -> Result<()> {
        let bin = self.bin_dir.join(name);
        let proc = Proc::spawn(name, &bin, &args, &self.dir)?;
        self.procs().push(proc);
        self.specs.push((name.to_string(), args));
        Ok(())
    }

    pub(super) fn check_alive(&mut self) -> Result<()> {
        for p in self.procs().iter_mut() {
            if let Some(status) = p.exited() {
                // The directory goes with a failed start: show the log's end here.
                let log = self.dir.join(format!("{}.log", p.name));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                bail!("{} exited ({status}); the end of {}:\n{tail}", p.name, log.display());
            }
        }
        Ok(())
    }

    pub(super) async fn start_processes(&mut self, opts: &PlaneOptions, ports: [u16; 5]) -> Result<()> {
        let [etcd, peer, api, kcm, sched] = ports;
        self.start_etcd(etcd, peer).await?;
        let gates: Vec<String> =
            if opts.gang_scheduling { vec![format!("--feature-gates={GANG_FEATURE_GATES}")] } else { vec![] };
        let client = self.start_apiserver(opts, &gates, etcd, api).await?;
        self.start_controller_manager(opts, &gates, kcm)?;
        self.start_scheduler(opts, &gates, sched)?;
        self.start_kwok(opts)?;
        self.create_nodes(opts, &client).await
    }

    async fn start_etcd(&mut self, etcd: u16, peer: u16) -> Result<()> {
        let d = self.dir.display().to_string();
        self.spawn(
            "etcd",
            vec![
                a("--name=node0"),
                format!("--data-dir={d}/etcd"),
                format!("--listen-client-urls=http://127.0.0.1:{etcd}"),
                format!("--advertise-client-urls=http://127.0.0.1:{etcd}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster=node0=http://127.0.0.1:{peer}"),
                a("--unsafe-no-fsync=true"),
                a("--quota-backend-bytes=4294967296"),
                a("--log-level=warn"),
            ],
        )?;
        let end = Instant::now() + Duration::from_secs(30);
        while !http_ok(etcd, "/health") {
            self.check_alive()?;
            if Instant::now() > end {
                bail!("etcd did not become healthy");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Starts kube-apiserver and waits until `/readyz` says ok; a client of the admin.
    async fn start_apiserver(
        &mut self,
        opts: &PlaneOptions,
        gates: &[String],
        etcd: u16,
        api: u16,
    ) -> Result<Client> {
        let p = self.pki.clone();
        let mut api_args = gates.to_vec();
        if opts.gang_scheduling {
            api_args.push(format!("--runtime-config={GANG_RUNTIME_CONFIG}"));
        }
        self.spawn(
            "kube-apiserver",
            api_args
                .into_iter()
                .chain([
                    format!("--etcd-servers=http://127.0.0.1:{etcd}"),
                    a("--bind-address=127.0.0.1"),
                    format!("--secure-port={api}"),
                    a("--advertise-address=127.0.0.1"),
                    a("--endpoint-reconciler-type=none"),
                    format!("--tls-cert-file={}", path(&p.serving_cert)),
                    format!("--tls-private-key-file={}", path(&p.serving_key)),
                    format!("--client-ca-file={}", path(&p.ca_cert)),
                    a("--service-account-issuer=https://kubernetes.default.svc.cluster.local"),
                    format!("--service-account-key-file={}", path(&p.sa_pub)),
                    format!("--service-account-signing-key-file={}", path(&p.sa_key)),
                    a("--authorization-mode=Node,RBAC"),
                    a("--enable-admission-plugins=OwnerReferencesPermissionEnforcement"),
                    a("--service-cluster-ip-range=10.96.0.0/16"),
                    a("--allow-privileged=true"),
                    a("--v=1"),
                ])
                .collect(),
        )?;
        let client = client_for(&p.kubeconfig).await?;
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            self.check_alive()?;
            let req = http::Request::get("/readyz").body(Vec::new())?;
            if client.request_text(req).await.is_ok_and(|t| t.trim() == "ok") {
                return Ok(client);
            }
            if Instant::now() > end {
                bail!("kube-apiserver did not become ready");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn start_controller_manager(&mut self, opts: &PlaneOptions, gates: &[String], kcm: u16) -> Result<()> {
        let p = self.pki.clone();
        let kubeconfig = path(&p.kubeconfig);
        let qps = opts.component_qps;
        self.spawn(
            "kube-controller-manager",
            gates
                .iter()
                .cloned()
                .chain([
                    format!("--kubeconfig={kubeconfig}"),
                    a("--leader-elect=false"),
                    a("--bind-address=127.0.0.1"),
                    format!("--secure-port={kcm}"),
                    a("--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"),
                    format!("--root-ca-file={}", path(&p.ca_cert)),
                    format!("--service-account-private-key-file={}", path(&p.sa_key)),
                    a("--use-service-account-credentials=false"),
                    a("--controllers=*"),
                    format!("--kube-api-qps={qps}"),
                    format!("--kube-api-burst={}", qps * 2),
                    a("--node-monitor-period=5s"),
                    a("--node-monitor-grace-period=40s"),
                    a("--v=1"),
                ])
                .collect(),
        )
    }

    fn start_scheduler(&mut self, opts: &PlaneOptions, gates: &[String], sched: u16) -> Result<()> {
        let kubeconfig = path(&self.pki.kubeconfig);
        let qps = opts.component_qps;
        let sched_config = self.dir.join("scheduler.yaml");
        std::fs::write(
            &sched_config,
            format!(
                "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nclientConnection:\n  \
             kubeconfig: {kubeconfig}\n  qps: {qps}\n  burst: {}\nleaderElection:\n  leaderElect: false\n",
                qps * 2
            ),
        )?;
        self.spawn(
            "kube-scheduler",
            gates
                .iter()
                .cloned()
                .chain([
                    format!("--config={}", path(&sched_config)),
                    a("--bind-address=127.0.0.1"),
                    format!("--secure-port={sched}"),
                    a("--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"),
                    a("--v=1"),
                ])
                .collect(),
        )
    }

    fn start_kwok(&mut self, opts: &PlaneOptions) -> Result<()> {
        let kubeconfig = path(&self.pki.kubeconfig);
        let stages = self.dir.join("kwok-stages.yaml");
        let mut config = KWOK_STAGES.to_string();
        if opts.kwok_pod_parallelism != KWOK_POD_PARALLELISM {
            // kwok does not default the options of a configuration it reads: the rest are
            // written as its defaults.
            config.push_str(&format!(
                "\n---\napiVersion: config.kwok.x-k8s.io/v1alpha1\nkind: KwokConfiguration\noptions:\n  \
                 podPlayStageParallelism: {}\n  nodePlayStageParallelism: 4\n  nodeLeaseParallelism: 4\n  \
                 podsOnNodeSyncParallelism: 1\n  enablePodsOnNodeSyncListPager: true\n",
                opts.kwok_pod_parallelism
            ));
        }
        std::fs::write(&stages, config)?;
        self.spawn(
            "kwok",
            vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--config={}", path(&stages)),
                a("--manage-all-nodes=false"),
                a("--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake"),
                a("--node-ip=127.0.0.1"),
                a("--cidr=10.244.0.0/16"),
                a("--node-lease-duration-seconds=40"),
            ],
        )
    }

    /// Creates `opts.nodes` fake nodes and waits (up to 120 s) until they are Ready and
    /// schedulable.
    async fn create_nodes(&mut self, opts: &PlaneOptions, client: &Client) -> Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        for i in 0..opts.nodes {
            let taints: &[(&str, &str)] = if opts.taint { &[KWOK_TAINT] } else { &[] };
            nodes.create(&PostParams::default(), &kwok_node(&format!("kwok-node-{i}"), &[], taints)?).await?;
        }
        let want = opts.nodes as usize;
        let end = Instant::now() + Duration::from_secs(120);
        loop {
            self.check_alive()?;
            let nodes = nodes.list(&Default::default()).await?;
            if nodes.items.iter().filter(|n| node_ready(n)).count() >= want {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("the fake nodes did not become Ready and schedulable");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
