//! One benchmark run: per size, the operator's run (measured from watches), then the bound
//! (the same pods and services created directly, in `bound`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ObjectMeta, PostParams};
use serde_json::Value;

use super::bound::bound;
use super::record::{Recorder, tfjob_resource};
use super::relist::relist_row;
use super::stats::lateness;
use super::{
    HugeReport, JobTimes, OperatorSpec, Options, Report, SizeReport, Stats, batch_job, deadline_job,
    footprint, huge_job, kubeflow, plane_profile,
};
use crate::process::Proc;

pub(super) async fn create_namespace(client: &Client, name: &str) -> Result<()> {
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

pub(super) async fn delete_namespace(client: &Client, name: &str, timeout: Duration) -> Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    let _ = api.delete(name, &DeleteParams::background()).await;
    crate::wait(timeout, &format!("namespace {name} to be gone"), || async {
        api.get_opt(name).await.is_ok_and(|n| n.is_none())
    })
    .await
}

/// The running operator of one size.
pub(super) struct Running {
    proc: Option<Proc>,
    pub(super) pid: Option<u32>,
    port: Option<u16>,
    /// Its log, when the bench started it.
    log: Option<std::path::PathBuf>,
}

impl Running {
    pub(super) async fn start(client: &Client, spec: &OperatorSpec, ns: &str) -> Result<Running> {
        match spec {
            OperatorSpec::External { pid, metrics_port } => {
                Ok(Running { proc: None, pid: *pid, port: *metrics_port, log: None })
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
            OperatorSpec::Kubeflow { bin, args, kubeconfig, log_dir } => {
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
                // Ready once its certificates are in place and its webhook server listens; its
                // TFJob controller is registered then, and starts its workers once its caches
                // synced (controller-runtime logs "Starting workers").
                let end = Instant::now() + Duration::from_secs(60);
                loop {
                    if let Some(status) = proc.exited() {
                        bail!("training-operator exited ({status}); see {}", log.display());
                    }
                    let workers = std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Starting workers"));
                    if workers
                        && crate::http_get(probe_port, "/readyz").await.is_some_and(|(code, _)| code == 200)
                    {
                        break;
                    }
                    if Instant::now() > end {
                        bail!("training-operator was not ready after 60 s; see {}", log.display());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let pid = Some(proc.pid());
                Ok(Running { proc: Some(proc), pid, port: Some(port), log: Some(log) })
            }
        }
    }

    pub(super) fn log(&self) -> Option<std::path::PathBuf> {
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

pub(super) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// One operator's rows: how it is started, the label of its rows, and how long the bench
/// waits for jobs that should be done (`None`: for every job, up to the size's timeout).
struct Side<'a> {
    label: String,
    spec: &'a OperatorSpec,
    grace: Option<Duration>,
    /// Namespaces are `<prefix>-<tag><N>`.
    tag: String,
}

fn describe(spec: &OperatorSpec) -> String {
    match spec {
        OperatorSpec::Start { bin, args, .. } | OperatorSpec::Kubeflow { bin, args, .. } => {
            format!("{} {}", bin.display(), args.join(" "))
        }
        OperatorSpec::External { pid, .. } => format!("already running (pid {pid:?})"),
    }
}

/// The unreported one-job run (warm-up).
async fn warm_up(client: &Client, opts: &Options, side: &Side<'_>) -> Result<()> {
    let warm = Options {
        prefix: format!("{}-warmup", opts.prefix),
        run_for: "1s".into(),
        ttl: 1,
        deadline: 2,
        ..opts.clone()
    };
    let side = Side {
        label: side.label.clone(),
        spec: side.spec,
        grace: side.grace.map(|g| g.min(Duration::from_secs(5))),
        tag: side.tag.clone(),
    };
    tokio::time::timeout(opts.timeout, run_operator(client, None, &warm, &side, 1, None))
        .await
        .context("warm-up: not done in time")??;
    Ok(())
}

/// Runs every size in turn: ours, then Kubeflow's training-operator per variant (when
/// `opts.kubeflow` is set) with its CRD in place of ours.
pub async fn run(
    client: &Client,
    plane: Option<&crate::ControlPlane>,
    opts: &Options,
    progress: impl Fn(&str),
) -> Result<Report> {
    let operator = describe(&opts.operator);
    let jobs_shape = format!(
        "{} PS (running until cleaned up) + {} Workers (succeed after {}), runPolicy.cleanPodPolicy Running, ttlSecondsAfterFinished {}; plus one job in ten with activeDeadlineSeconds {} and one running worker",
        opts.ps, opts.workers, opts.run_for, opts.ttl, opts.deadline
    );
    let ours = Side { label: "tfjob-operator".into(), spec: &opts.operator, grace: None, tag: String::new() };
    if opts.warmup {
        progress("warm-up: one job, not reported");
        warm_up(client, opts, &ours).await?;
    }
    let mut sizes = Vec::new();
    for &n in &opts.sizes {
        progress(&format!("size {n}: operator run"));
        let mut size = tokio::time::timeout(opts.timeout, run_operator(client, plane, opts, &ours, n, None))
            .await
            .with_context(|| format!("size {n}: not done within {:?}", opts.timeout))??;
        progress(&format!("size {n}: bound run"));
        size.0.bound_s = bound(client, opts, &n.to_string(), &size.1).await?;
        size.0.ratio = if size.0.bound_s > 0.0 { size.0.all_created_s / size.0.bound_s } else { 0.0 };
        sizes.push(size.0);
    }
    if let Some(replicas) = opts.huge {
        let n = opts.huge_beside;
        progress(&format!("huge job of {replicas} replicas beside {n} jobs: operator run"));
        let huge_side = Side { label: ours.label.clone(), tag: "h".into(), ..ours };
        let (mut size, created) = tokio::time::timeout(
            opts.timeout,
            run_operator(client, plane, opts, &huge_side, n, Some(replicas)),
        )
        .await
        .with_context(|| format!("the huge-job row: not done within {:?}", opts.timeout))??;
        progress("the huge-job row: bound runs");
        size.bound_s = bound(client, opts, &format!("h{n}"), &created).await?;
        size.ratio = if size.bound_s > 0.0 { size.all_created_s / size.bound_s } else { 0.0 };
        let huge_only = |name: &Option<String>| name.as_deref().is_some_and(|n| n.starts_with("huge-"));
        let alone = Created {
            pods: created.pods.into_iter().filter(|p| huge_only(&p.metadata.name)).collect(),
            services: created.services.into_iter().filter(|s| huge_only(&s.metadata.name)).collect(),
        };
        let without =
            sizes.iter().find(|s| s.jobs == n && s.huge.is_none()).map(|s| s.create_to_running.median);
        if let Some(h) = &mut size.huge {
            h.bound_s = bound(client, opts, "h", &alone).await?;
            h.ratio = if h.bound_s > 0.0 { h.all_created_s / h.bound_s } else { 0.0 };
            h.running_p50_vs_without =
                without.filter(|w| *w > 0.0).map(|w| size.create_to_running.median / w);
        }
        sizes.push(size);
    }
    let mut other_operators = BTreeMap::new();
    let mut failures = Vec::new();
    if let Some(kf) = &opts.kubeflow {
        progress(&format!("installing training-operator {}'s TFJob CRD in place of ours", kf.version));
        crate::apply_crd(client, &kf.crd).await.context("installing training-operator's CRD")?;
        for (i, variant) in kf.variants.iter().enumerate() {
            let spec = kf.spec(variant);
            other_operators.insert(variant.label.clone(), describe(&spec));
            let side = Side {
                label: variant.label.clone(),
                spec: &spec,
                grace: Some(kf.grace),
                tag: format!("kf{i}-"),
            };
            let rows = async {
                if opts.warmup {
                    progress(&format!("{}: warm-up, one job, not reported", side.label));
                    warm_up(client, opts, &side).await?;
                }
                let mut rows = Vec::new();
                for &n in &opts.sizes {
                    progress(&format!("size {n}: {}", side.label));
                    let (mut size, _) =
                        tokio::time::timeout(kf.timeout, run_operator(client, plane, opts, &side, n, None))
                            .await
                            .with_context(|| format!("size {n}: not done within {:?}", kf.timeout))??;
                    // The bound of this size, measured once (after our run).
                    if let Some(b) =
                        sizes.iter().find(|s| s.jobs == n && s.huge.is_none() && s.operator == ours.label)
                    {
                        size.bound_s = b.bound_s;
                        size.ratio = if size.bound_s > 0.0 { size.all_created_s / size.bound_s } else { 0.0 };
                    }
                    rows.push(size);
                }
                Ok::<_, anyhow::Error>(rows)
            }
            .await;
            match rows {
                Ok(rows) => sizes.extend(rows),
                Err(e) => {
                    let msg = format!("{}: {e:#}", variant.label);
                    progress(&format!("failed: {msg}"));
                    failures.push(msg);
                }
            }
        }
        progress("putting our TFJob CRD back");
        crate::apply_crd(client, &kf.our_crd).await.context("putting our CRD back")?;
    }
    // Last: it restarts the API server. A failure is reported without losing the other rows.
    let relist = match (opts.relist, plane) {
        (Some(n), Some(plane)) => {
            progress(&format!("re-list row: {n} jobs running, then a forced 410"));
            match relist_row(client, plane, opts, n).await {
                Ok(r) => Some(r),
                Err(e) => {
                    let msg = format!("the re-list row: {e:#}");
                    progress(&format!("failed: {msg}"));
                    failures.push(msg);
                    None
                }
            }
        }
        (Some(_), None) => {
            progress("re-list row skipped: it needs the local control plane");
            None
        }
        (None, _) => None,
    };
    Ok(Report { operator, other_operators, jobs_shape, sizes, failures, relist })
}
/// The pods and services the operator created, to replay for the bound.
pub(super) struct Created {
    pub(super) pods: Vec<Pod>,
    pub(super) services: Vec<Service>,
}

async fn run_operator(
    client: &Client,
    plane: Option<&crate::ControlPlane>,
    opts: &Options,
    side: &Side<'_>,
    n: usize,
    huge: Option<i32>,
) -> Result<(SizeReport, Created)> {
    let ns = format!("{}-{}{n}", opts.prefix, side.tag);
    create_namespace(client, &ns).await?;
    let recorder = Recorder::start(client, &ns);
    let mut op = Running::start(client, side.spec, &ns).await?;
    let (cpu0, req0) = (op.pid.and_then(footprint::cpu_seconds), op.requests().await);
    let plane0 = plane_profile::snapshot(client, plane).await;
    let deadline_jobs = (n / 10).max(1);
    let mut jobs: Vec<(String, Value)> =
        (0..n).map(|i| (format!("j-{i}"), batch_job(&format!("j-{i}"), opts))).collect();
    jobs.extend((0..deadline_jobs).map(|i| (format!("late-{i}"), deadline_job(&format!("late-{i}"), opts))));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &tfjob_resource());
    let t0 = Instant::now();
    // The huge job goes first, alone: the ordinary jobs come while its pods are being created.
    let huge_at = match huge {
        Some(replicas) => {
            let obj: DynamicObject = serde_json::from_value(huge_job("huge", opts, replicas))?;
            api.create(&PostParams::default(), &obj).await.context("creating the huge TFJob")?;
            Some(Instant::now())
        }
        None => None,
    };
    let mut created_at: BTreeMap<String, Instant> =
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
    if let Some(at) = huge_at {
        created_at.insert("huge".into(), at);
    }
    let per_job = (opts.ps + opts.workers) as usize;
    let huge_objects = huge.map_or(0, |r| r as usize);
    let want = n * per_job + deadline_jobs + huge_objects;
    // Every pod and service exists, or every job is gone: a job that ends before all its
    // objects are made (a deadline job whose creates queued behind older jobs') never gets
    // the rest, rightly.
    let all_created = loop {
        {
            let seen = recorder.seen();
            let all_gone = created_at.keys().all(|j| seen.jobs.get(j).is_some_and(|s| s.deleted.is_some()));
            if (seen.pods.len() >= want && seen.services.len() >= want) || all_gone {
                if all_gone && seen.pods.len() < want {
                    eprintln!(
                        "tfjob-bench: {} of {want} pods and {} services made before every job was gone",
                        seen.pods.len(),
                        seen.services.len()
                    );
                }
                let last =
                    seen.pods.values().map(|(t, _)| *t).chain(seen.services.values().map(|(t, _)| *t)).max();
                break last.map_or(0.0, |l| secs(l - t0));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let huge_created = huge_at.map(|at| {
        let seen = recorder.seen();
        let mine = |name: &String| name.starts_with("huge-");
        let last = seen
            .pods
            .iter()
            .filter(|(name, _)| mine(name))
            .map(|(_, (t, _))| *t)
            .chain(seen.services.iter().filter(|(name, _)| mine(name)).map(|(_, (t, _))| *t))
            .max();
        last.map_or(0.0, |l| secs(l.saturating_duration_since(at)))
    });
    // Every job finished and deleted for its TTL; with a grace, jobs still there that long
    // after they should have gone are given up on (counted below).
    let ttl = Duration::from_secs(opts.ttl.max(0).unsigned_abs());
    let deadline = Duration::from_secs(opts.deadline.max(0).unsigned_abs());
    let last_create = created_at.values().max().copied().unwrap_or(t0);
    let is_batch = |name: &str| name.starts_with("j-") || name == "huge";
    loop {
        {
            let seen = recorder.seen();
            let done = created_at.keys().all(|j| seen.jobs.get(j).is_some_and(|s| s.deleted.is_some()));
            if done {
                break;
            }
            if let Some(grace) = side.grace {
                let successes: Option<Vec<Instant>> = created_at
                    .keys()
                    .filter(|j| is_batch(j))
                    .map(|j| seen.jobs.get(j).and_then(|s| s.succeeded))
                    .collect();
                if let Some(last_success) = successes.and_then(|s| s.into_iter().max()) {
                    let due = (last_success + ttl).max(last_create + deadline + ttl);
                    if Instant::now() >= due + grace {
                        break;
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (cpu1, peak) = (op.pid.and_then(footprint::cpu_seconds), op.pid.and_then(footprint::peak_rss_mib));
    let requests = footprint::delta(&op.requests().await, &req0);
    let plane_spent = plane_profile::profile(&plane0, &plane_profile::snapshot(client, plane).await);
    op.stop();
    let (report, created) = {
        let seen = recorder.seen();
        let batch = |name: &&String| name.starts_with("j-");
        let mut running = Vec::new();
        let mut succeeded = Vec::new();
        let mut deadline_late = Vec::new();
        let mut success_late = Vec::new();
        let mut ttl_late = Vec::new();
        let mut stages: [Vec<f64>; 5] = Default::default();
        let mut per_job = Vec::new();
        let mut last_success = t0;
        for (name, at) in &created_at {
            let Some(s) = seen.jobs.get(name) else { continue };
            if batch(&name) {
                per_job.push(JobTimes {
                    name: name.clone(),
                    to_running_s: s.running.map(|r| secs(r.saturating_duration_since(*at))),
                    to_succeeded_s: s.succeeded.map(|d| secs(d.saturating_duration_since(*at))),
                    success_late_s: s
                        .succeeded_at
                        .zip(seen.finished.get(&format!("{name}-worker-0")))
                        .map(|(arrived, finished)| lateness(arrived, *finished)),
                });
                if let Some(r) = s.running {
                    running.push(secs(r.saturating_duration_since(*at)));
                }
                if let Some(done) = s.succeeded {
                    succeeded.push(secs(done.saturating_duration_since(*at)));
                    last_success = last_success.max(done);
                }
                // Worker 0 decides success (no chief, the default success policy).
                if let (Some(arrived), Some(finished)) =
                    (s.succeeded_at, seen.finished.get(&format!("{name}-worker-0")))
                {
                    success_late.push(lateness(arrived, *finished));
                }
                let w0 = format!("{name}-worker-0");
                if let (Some((seen_at, _)), Some(st), Some(done)) =
                    (seen.pods.get(&w0), seen.stages.get(&w0), s.succeeded)
                {
                    let points = [Some(*at), Some(*seen_at), st.bound, st.running, st.succeeded, Some(done)];
                    for (i, pair) in points.windows(2).enumerate() {
                        if let [Some(a), Some(b)] = pair {
                            stages[i].push(secs(b.saturating_duration_since(*a)));
                        }
                    }
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
        let unfinished: Vec<&String> =
            created_at.keys().filter(|j| seen.jobs.get(*j).is_none_or(|s| s.deleted.is_none())).collect();
        let deadline_not_enforced = unfinished
            .iter()
            .filter(|j| !is_batch(j) && seen.jobs.get(**j).is_none_or(|s| s.failed.is_none()))
            .count();
        let report = SizeReport {
            operator: side.label.clone(),
            jobs: n,
            deadline_jobs,
            pods: want,
            services: want,
            all_created_s: all_created,
            bound_s: 0.0,
            ratio: 0.0,
            create_to_running: Stats::of(&running),
            create_to_succeeded: Stats::of(&succeeded),
            success_lateness: Stats::of(&success_late),
            worker0_stages: [
                "job→pod",
                "pod→bound",
                "bound→Running",
                "Running→pod done",
                "pod done→job Succeeded",
            ]
            .iter()
            .zip(&stages)
            .map(|(name, v)| ((*name).to_string(), Stats::of(v)))
            .collect(),
            jobs_per_second: n as f64 / secs(last_success - t0).max(1e-9),
            deadline_lateness: Stats::of(&deadline_late),
            ttl_lateness: Stats::of(&ttl_late),
            operator_cpu_s: cpu0.zip(cpu1).map(|(a, b)| b - a),
            operator_peak_rss_mib: peak,
            operator_requests: requests,
            unfinished_jobs: unfinished.len(),
            plane: plane_spent,
            deadline_not_enforced,
            huge: huge.zip(huge_created).map(|(replicas, all_created_s)| HugeReport {
                replicas,
                all_created_s,
                bound_s: 0.0,
                ratio: 0.0,
                running_p50_vs_without: None,
            }),
            per_job,
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
