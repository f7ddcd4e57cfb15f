//! The benchmark behind `tfjob-bench` (and the suite's tiny run): N TFJobs at once against a
//! cluster and a TFJob operator, measured from watches; then the same pods and services
//! created directly with 64 requests in flight (the bound) against the same API server with
//! the same identity.
//!
//! The jobs use the Kubeflow `runPolicy` shape and set `cleanPodPolicy` explicitly, so any
//! kubeflow.org/v1 TFJob operator does the same work.

pub mod footprint;
pub mod record;
pub mod stats;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ObjectMeta, PostParams};
use serde::Serialize;
use serde_json::{Value, json};

use crate::process::Proc;
use record::{Recorder, tfjob_resource};
pub use stats::Stats;

/// What to run and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// Numbers of TFJobs, one run each.
    pub sizes: Vec<usize>,
    /// Replicas per job.
    pub ps: i32,
    pub workers: i32,
    /// How long a worker runs before it succeeds (kwok).
    pub run_for: String,
    /// `ttlSecondsAfterFinished` of every job.
    pub ttl: i64,
    /// `activeDeadlineSeconds` of the deadline jobs (one per ten jobs, at least one).
    pub deadline: i64,
    /// Creates in flight (the jobs, and the bound's pods and services).
    pub in_flight: usize,
    /// Namespaces are `<prefix>-<N>` and `<prefix>-bound-<N>`.
    pub prefix: String,
    /// The operator: started per size by the bench, or already running.
    pub operator: OperatorSpec,
    /// Give up on a size after this long.
    pub timeout: Duration,
    /// Run one unreported job first: the API server's first TFJob writes on a fresh plane
    /// (building the CRD's schema) take about 2 s that no later job pays.
    pub warmup: bool,
}

/// The operator under test.
#[derive(Clone, Debug)]
pub enum OperatorSpec {
    /// Started fresh for each size with these arguments (`{namespace}` and `{port}` are
    /// replaced) and `KUBECONFIG`; stopped with SIGTERM after it.
    Start { bin: PathBuf, args: Vec<String>, kubeconfig: PathBuf, log_dir: PathBuf },
    /// Already running: its pid (for `/proc`) and metrics URL (`http://127.0.0.1:P/metrics`), if known.
    External { pid: Option<u32>, metrics_port: Option<u16> },
}

/// This operator's default arguments.
pub fn default_operator_args() -> Vec<String> {
    vec!["--namespace={namespace}".into(), "--http-addr=127.0.0.1:{port}".into(), "--log-format=json".into()]
}

impl Options {
    pub fn new(operator: OperatorSpec) -> Options {
        Options {
            sizes: vec![10, 100, 1000],
            ps: 1,
            workers: 4,
            run_for: "5s".into(),
            ttl: 10,
            deadline: 20,
            in_flight: 64,
            prefix: "bench".into(),
            operator,
            timeout: Duration::from_secs(1200),
            warmup: true,
        }
    }
}

/// One size's results. Times in seconds.
#[derive(Clone, Debug, Serialize)]
pub struct SizeReport {
    pub jobs: usize,
    pub deadline_jobs: usize,
    pub pods: usize,
    pub services: usize,
    /// From the first TFJob create until every pod and service exists.
    pub all_created_s: f64,
    /// The same pods and services created directly, 64 in flight.
    pub bound_s: f64,
    /// all_created_s / bound_s.
    pub ratio: f64,
    pub create_to_running: Stats,
    pub create_to_succeeded: Stats,
    /// Jobs / (first create until the last job succeeded).
    pub jobs_per_second: f64,
    /// Failed condition's arrival past the published deadline.
    pub deadline_lateness: Stats,
    /// Deletion's arrival past the published expiry.
    pub ttl_lateness: Stats,
    pub operator_cpu_s: Option<f64>,
    pub operator_peak_rss_mib: Option<f64>,
    /// The operator's API requests during the size, by `"<verb> <resource>"`.
    pub operator_requests: BTreeMap<String, f64>,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub operator: String,
    pub jobs_shape: String,
    pub sizes: Vec<SizeReport>,
}

impl Report {
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut out = format!("operator: {}\njobs: {}\n\n", self.operator, self.jobs_shape);
        out.push_str(&format!(
            "{:>5} {:>6} {:>9} {:>8} {:>7} {:>6} {:>23} {:>23} {:>11} {:>11} {:>7} {:>8}\n",
            "jobs",
            "pods",
            "created s",
            "bound s",
            "ratio",
            "jobs/s",
            "to Running p50/95/99/max",
            "to Succeeded p50/95/99/max",
            "deadline late",
            "ttl late",
            "cpu s",
            "peak MiB"
        ));
        for s in &self.sizes {
            let late =
                |st: &Stats| if st.n == 0 { "-".into() } else { format!("{:.2}/{:.2}", st.median, st.max) };
            out.push_str(&format!(
                "{:>5} {:>6} {:>9.2} {:>8.2} {:>7} {:>6.1} {:>23} {:>23} {:>11} {:>11} {:>7} {:>8}\n",
                s.jobs,
                s.pods,
                s.all_created_s,
                s.bound_s,
                format!("{:.2}", s.ratio),
                s.jobs_per_second,
                s.create_to_running.short(),
                s.create_to_succeeded.short(),
                late(&s.deadline_lateness),
                late(&s.ttl_lateness),
                s.operator_cpu_s.map_or("-".into(), |c| format!("{c:.1}")),
                s.operator_peak_rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
            ));
        }
        if let (Some(first), Some(last)) = (self.sizes.first(), self.sizes.last())
            && last.jobs > first.jobs
        {
            let growth = |a: f64, b: f64| if a > 0.0 { format!("x{:.1}", b / a) } else { "-".into() };
            out.push_str(&format!(
                "\ngrowth {} -> {} jobs (x{:.0}): creation time {}, operator CPU {}, peak RSS {}\n",
                first.jobs,
                last.jobs,
                last.jobs as f64 / first.jobs as f64,
                growth(first.all_created_s, last.all_created_s),
                growth(first.operator_cpu_s.unwrap_or(0.0), last.operator_cpu_s.unwrap_or(0.0)),
                growth(first.operator_peak_rss_mib.unwrap_or(0.0), last.operator_peak_rss_mib.unwrap_or(0.0)),
            ));
        }
        for s in &self.sizes {
            let reqs: Vec<String> = s.operator_requests.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out.push_str(&format!("requests at {} jobs: {}\n", s.jobs, reqs.join(", ")));
        }
        out
    }
}

fn template(annotations: Value) -> Value {
    json!({
        "metadata": {"annotations": annotations},
        "spec": {
            "containers": [{"name": "tensorflow", "image": "tensorflow/tensorflow:2.16.1"}],
            "nodeSelector": {"type": "kwok"},
            "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            "terminationGracePeriodSeconds": 0
        }
    })
}

/// A job of the batch: PS running until cleaned up, workers succeeding after `run_for`.
pub fn batch_job(name: &str, o: &Options) -> Value {
    json!({
        "apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": name},
        "spec": {
            "runPolicy": {"cleanPodPolicy": "Running", "ttlSecondsAfterFinished": o.ttl},
            "tfReplicaSpecs": {
                "PS": {"replicas": o.ps, "restartPolicy": "Never", "template": template(json!({}))},
                "Worker": {"replicas": o.workers, "restartPolicy": "Never",
                           "template": template(json!({"kwok.test/outcome": "succeed", "kwok.test/run-for": o.run_for}))}
            }
        }
    })
}

/// A deadline job: one worker that runs until the deadline fails the job.
pub fn deadline_job(name: &str, o: &Options) -> Value {
    json!({
        "apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": name},
        "spec": {
            "runPolicy": {"cleanPodPolicy": "Running", "ttlSecondsAfterFinished": o.ttl,
                          "activeDeadlineSeconds": o.deadline},
            "tfReplicaSpecs": {"Worker": {"replicas": 1, "restartPolicy": "Never", "template": template(json!({}))}}
        }
    })
}

async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let ns = Namespace {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        ..Default::default()
    };
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .with_context(|| format!("creating namespace {name}"))?;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    crate::wait(Duration::from_secs(60), "the default ServiceAccount", || async {
        sas.get_opt("default").await.ok().flatten().is_some()
    })
    .await
}

async fn delete_namespace(client: &Client, name: &str, timeout: Duration) -> Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
    crate::wait(timeout, &format!("namespace {name} to be gone"), || async {
        api.get_opt(name).await.is_ok_and(|n| n.is_none())
    })
    .await
}

/// The running operator of one size.
struct Running {
    proc: Option<Proc>,
    pid: Option<u32>,
    port: Option<u16>,
}

impl Running {
    async fn start(spec: &OperatorSpec, ns: &str) -> Result<Running> {
        match spec {
            OperatorSpec::External { pid, metrics_port } => {
                Ok(Running { proc: None, pid: *pid, port: *metrics_port })
            }
            OperatorSpec::Start { bin, args, kubeconfig, log_dir } => {
                let port = crate::free_port()?;
                let args: Vec<String> = args
                    .iter()
                    .map(|a| a.replace("{namespace}", ns).replace("{port}", &port.to_string()))
                    .collect();
                std::fs::create_dir_all(log_dir)?;
                let proc = Proc::spawn_with_env(
                    &format!("operator-{ns}"),
                    bin,
                    &args,
                    log_dir,
                    &[("KUBECONFIG", kubeconfig.as_os_str())],
                )?;
                let pid = Some(proc.pid());
                let running = Running { proc: Some(proc), pid, port: Some(port) };
                // Ready: this operator answers /readyz once its caches synced; another may not
                // serve it, so give up waiting after a while and go on.
                let _ = crate::wait(Duration::from_secs(30), "the operator's /readyz", || async {
                    crate::http_get(port, "/readyz").await.is_some_and(|(code, _)| code == 200)
                })
                .await;
                Ok(running)
            }
        }
    }

    async fn requests(&self) -> BTreeMap<String, f64> {
        match self.port {
            Some(p) => {
                footprint::requests(&crate::http_get(p, "/metrics").await.map(|(_, b)| b).unwrap_or_default())
            }
            None => BTreeMap::new(),
        }
    }

    fn stop(&mut self) {
        if let Some(p) = &mut self.proc {
            p.stop(Duration::from_secs(20));
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn lateness(actual: Timestamp, expected: Timestamp) -> f64 {
    actual.duration_since(expected).as_secs_f64()
}

/// Runs every size in turn.
pub async fn run(client: &Client, opts: &Options, progress: impl Fn(&str)) -> Result<Report> {
    let operator = match &opts.operator {
        OperatorSpec::Start { bin, args, .. } => format!("{} {}", bin.display(), args.join(" ")),
        OperatorSpec::External { pid, .. } => format!("already running (pid {pid:?})"),
    };
    let jobs_shape = format!(
        "{} PS (running until cleaned up) + {} Workers (succeed after {}), runPolicy.cleanPodPolicy Running, ttlSecondsAfterFinished {}; plus one job in ten with activeDeadlineSeconds {} and one running worker",
        opts.ps, opts.workers, opts.run_for, opts.ttl, opts.deadline
    );
    if opts.warmup {
        progress("warm-up: one job, not reported");
        let warm = Options {
            prefix: format!("{}-warmup", opts.prefix),
            run_for: "1s".into(),
            ttl: 1,
            deadline: 2,
            ..opts.clone()
        };
        tokio::time::timeout(opts.timeout, run_operator(client, &warm, 1))
            .await
            .context("warm-up: not done in time")??;
    }
    let mut sizes = Vec::new();
    for &n in &opts.sizes {
        progress(&format!("size {n}: operator run"));
        let mut size = tokio::time::timeout(opts.timeout, run_operator(client, opts, n))
            .await
            .with_context(|| format!("size {n}: not done within {:?}", opts.timeout))??;
        progress(&format!("size {n}: bound run"));
        size.0.bound_s = bound(client, opts, n, &size.1).await?;
        size.0.ratio = if size.0.bound_s > 0.0 { size.0.all_created_s / size.0.bound_s } else { 0.0 };
        sizes.push(size.0);
    }
    Ok(Report { operator, jobs_shape, sizes })
}

/// The pods and services the operator created, to replay for the bound.
struct Created {
    pods: Vec<Pod>,
    services: Vec<Service>,
}

async fn run_operator(client: &Client, opts: &Options, n: usize) -> Result<(SizeReport, Created)> {
    let ns = format!("{}-{n}", opts.prefix);
    create_namespace(client, &ns).await?;
    let recorder = Recorder::start(client, &ns);
    let mut op = Running::start(&opts.operator, &ns).await?;
    let (cpu0, req0) = (op.pid.and_then(footprint::cpu_seconds), op.requests().await);
    let deadline_jobs = (n / 10).max(1);
    let mut jobs: Vec<(String, Value)> =
        (0..n).map(|i| (format!("j-{i}"), batch_job(&format!("j-{i}"), opts))).collect();
    jobs.extend((0..deadline_jobs).map(|i| (format!("late-{i}"), deadline_job(&format!("late-{i}"), opts))));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &tfjob_resource());
    let t0 = Instant::now();
    let created_at: BTreeMap<String, Instant> =
        futures::stream::iter(jobs.into_iter().map(|(name, body)| {
            let api = api.clone();
            async move {
                let obj: DynamicObject = serde_json::from_value(body)?;
                let at = Instant::now();
                api.create(&PostParams::default(), &obj)
                    .await
                    .with_context(|| format!("creating TFJob {name}"))?;
                Ok::<_, anyhow::Error>((name, at))
            }
        }))
        .buffer_unordered(opts.in_flight)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    let per_job = (opts.ps + opts.workers) as usize;
    let want = n * per_job + deadline_jobs;
    // Every pod and service exists.
    let all_created = loop {
        {
            let seen = recorder.seen();
            if seen.pods.len() >= want && seen.services.len() >= want {
                let last =
                    seen.pods.values().map(|(t, _)| *t).chain(seen.services.values().map(|(t, _)| *t)).max();
                break last.map_or(0.0, |l| secs(l - t0));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Every job finished and deleted for its TTL.
    loop {
        {
            let seen = recorder.seen();
            let done = created_at.keys().all(|j| seen.jobs.get(j).is_some_and(|s| s.deleted.is_some()));
            if done {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (cpu1, peak) = (op.pid.and_then(footprint::cpu_seconds), op.pid.and_then(footprint::peak_rss_mib));
    let requests = footprint::delta(&op.requests().await, &req0);
    op.stop();
    let (report, created) = {
        let seen = recorder.seen();
        let batch = |name: &&String| name.starts_with("j-");
        let mut running = Vec::new();
        let mut succeeded = Vec::new();
        let mut deadline_late = Vec::new();
        let mut ttl_late = Vec::new();
        let mut last_success = t0;
        for (name, at) in &created_at {
            let Some(s) = seen.jobs.get(name) else { continue };
            if batch(&name) {
                if let Some(r) = s.running {
                    running.push(secs(r.saturating_duration_since(*at)));
                }
                if let Some(done) = s.succeeded {
                    succeeded.push(secs(done.saturating_duration_since(*at)));
                    last_success = last_success.max(done);
                }
            } else if let (Some(f), Some(d)) = (s.failed, s.deadline) {
                deadline_late.push(lateness(f, d));
            }
            if let (Some(del), Some(e)) = (s.deleted, s.expires) {
                ttl_late.push(lateness(del, e));
            }
        }
        if succeeded.len() < n {
            bail!("size {n}: {} of {n} jobs were seen to succeed", succeeded.len());
        }
        let report = SizeReport {
            jobs: n,
            deadline_jobs,
            pods: want,
            services: want,
            all_created_s: all_created,
            bound_s: 0.0,
            ratio: 0.0,
            create_to_running: Stats::of(&running),
            create_to_succeeded: Stats::of(&succeeded),
            jobs_per_second: n as f64 / secs(last_success - t0).max(1e-9),
            deadline_lateness: Stats::of(&deadline_late),
            ttl_lateness: Stats::of(&ttl_late),
            operator_cpu_s: cpu0.zip(cpu1).map(|(a, b)| b - a),
            operator_peak_rss_mib: peak,
            operator_requests: requests,
        };
        let created = Created {
            pods: seen.pods.values().map(|(_, p)| p.clone()).collect(),
            services: seen.services.values().map(|(_, s)| s.clone()).collect(),
        };
        (report, created)
    };
    drop(recorder);
    delete_namespace(client, &ns, Duration::from_secs(600)).await?;
    Ok((report, created))
}

fn fresh_meta(m: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone(),
        labels: m.labels.clone(),
        annotations: m.annotations.clone(),
        ..Default::default()
    }
}

/// Creates the same pods and services directly, `in_flight` at once; returns the seconds taken.
async fn bound(client: &Client, opts: &Options, n: usize, created: &Created) -> Result<f64> {
    let ns = format!("{}-bound-{n}", opts.prefix);
    create_namespace(client, &ns).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let pod_bodies: Vec<Pod> = created
        .pods
        .iter()
        .map(|p| {
            let mut spec = p.spec.clone().unwrap_or_default();
            spec.node_name = None;
            Pod { metadata: fresh_meta(&p.metadata), spec: Some(spec), status: None }
        })
        .collect();
    let svc_bodies: Vec<Service> = created
        .services
        .iter()
        .map(|s| {
            let mut spec = s.spec.clone().unwrap_or_default();
            if spec.cluster_ip.as_deref() != Some("None") {
                spec.cluster_ip = None;
                spec.cluster_ips = None;
            }
            Service { metadata: fresh_meta(&s.metadata), spec: Some(spec), status: None }
        })
        .collect();
    enum Body {
        Pod(Box<Pod>),
        Service(Box<Service>),
    }
    let bodies: Vec<Body> = svc_bodies
        .into_iter()
        .map(|s| Body::Service(Box::new(s)))
        .chain(pod_bodies.into_iter().map(|p| Body::Pod(Box::new(p))))
        .collect();
    let t0 = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(bodies.into_iter().map(|b| {
        let (pods, services) = (pods.clone(), services.clone());
        async move {
            match b {
                Body::Pod(p) => pods.create(&PostParams::default(), &p).await.map(|_| ())?,
                Body::Service(s) => services.create(&PostParams::default(), &s).await.map(|_| ())?,
            }
            Ok(())
        }
    }))
    .buffer_unordered(opts.in_flight)
    .collect()
    .await;
    let took = secs(t0.elapsed());
    results.into_iter().collect::<Result<Vec<()>>>().context("the bound's creates")?;
    delete_namespace(client, &ns, Duration::from_secs(600)).await?;
    Ok(took)
}
