//! One size's operator run: N TFJobs (and the deadline jobs, and maybe the huge job) created
//! at once in a fresh namespace, watched until every pod and service exists and every job is
//! gone, then summed up in a `SizeReport`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use serde_json::Value;

use super::namespace::{create_namespace, delete_namespace};
use super::operator::Running;
use super::plane_profile::PlaneProfile;
use super::record::{Recorder, Seen, tfjob_resource};
use super::stats::lateness;
use super::{
    HugeReport, JobTimes, OperatorSpec, Options, SizeReport, Stats, apiserver_cpu, batch_job, deadline_job,
    footprint, huge_job, plane_profile,
};

pub(super) fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// One operator's rows: how it is started, the label of its rows, and how long the bench
/// waits for jobs that should be done (`None`: for every job, up to the size's timeout).
pub(super) struct Side<'a> {
    pub(super) label: String,
    pub(super) spec: &'a OperatorSpec,
    pub(super) grace: Option<Duration>,
    /// Namespaces are `<prefix>-<tag><N>`.
    pub(super) tag: String,
}

/// The pods and services the operator created, to replay for the bound.
pub(super) struct Created {
    pub(super) pods: Vec<Pod>,
    pub(super) services: Vec<Service>,
}

/// What the operator and the plane spent during the size.
struct Spent {
    cpu_s: Option<f64>,
    peak_rss_mib: Option<f64>,
    requests: BTreeMap<String, f64>,
    plane: PlaneProfile,
}

/// The jobs of one size as the bench created them: when, and the counts the report needs.
struct Batch {
    created_at: BTreeMap<String, Instant>,
    t0: Instant,
    n: usize,
    deadline_jobs: usize,
    /// Pods (and services) the operator should make.
    want: usize,
}

pub(super) async fn run_operator(
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
    let sampler = opts.apiserver_profile.as_ref().map(|_| apiserver_cpu::start(client));
    let deadline_jobs = (n / 10).max(1);
    let jobs = job_bodies(opts, n, deadline_jobs);
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &ns, &tfjob_resource());
    let t0 = Instant::now();
    let (created_at, huge_at) = create_jobs(&api, opts, jobs, huge).await?;
    let per_job = (opts.ps + opts.workers) as usize;
    let huge_objects = huge.map_or(0, |r| r as usize);
    let want = n * per_job + deadline_jobs + huge_objects;
    let batch = Batch { created_at, t0, n, deadline_jobs, want };
    let all_created = wait_all_created(&recorder, &batch).await;
    let huge_created = huge_at.map(|at| huge_created_s(&recorder.seen(), at));
    wait_done(&recorder, &batch, opts, side.grace).await;
    let (cpu1, peak) = (op.pid.and_then(footprint::cpu_seconds), op.pid.and_then(footprint::peak_rss_mib));
    let mut spent = Spent {
        cpu_s: cpu0.zip(cpu1).map(|(a, b)| b - a),
        peak_rss_mib: peak,
        requests: footprint::delta(&op.requests().await, &req0),
        plane: plane_profile::profile(&plane0, &plane_profile::snapshot(client, plane).await),
    };
    if let (Some(sampler), Some(dir)) = (sampler, &opts.apiserver_profile) {
        let label: String =
            side.label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '-' }).collect();
        let file = dir.join(format!("apiserver-{label}-{}{n}.pb.gz", side.tag));
        std::fs::create_dir_all(dir)?;
        match sampler.finish(&file).await {
            Ok(parts) => spent.plane.cpu_parts = Some(parts),
            Err(e) => eprintln!("tfjob-bench: API server profile of size {n}: {e:#}"),
        }
    }
    op.stop();
    let (report, created) = {
        let seen = recorder.seen();
        let huge = huge.zip(huge_created).map(|(replicas, all_created_s)| HugeReport {
            replicas,
            all_created_s,
            bound_s: 0.0,
            ratio: 0.0,
            running_p50_vs_without: None,
        });
        let report = size_report(&seen, &batch, &side.label, all_created, spent, huge)?;
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

/// The batch jobs `j-<i>` and the deadline jobs `late-<i>`, by name.
fn job_bodies(opts: &Options, n: usize, deadline_jobs: usize) -> Vec<(String, Value)> {
    let mut jobs: Vec<(String, Value)> =
        (0..n).map(|i| (format!("j-{i}"), batch_job(&format!("j-{i}"), opts))).collect();
    jobs.extend((0..deadline_jobs).map(|i| (format!("late-{i}"), deadline_job(&format!("late-{i}"), opts))));
    jobs
}

/// Creates the jobs, `opts.in_flight` at a time: when each create was sent, by name (the huge
/// job's too), and when the huge job was created.
async fn create_jobs(
    api: &Api<DynamicObject>,
    opts: &Options,
    jobs: Vec<(String, Value)>,
    huge: Option<i32>,
) -> Result<(BTreeMap<String, Instant>, Option<Instant>)> {
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
    Ok((created_at, huge_at))
}

/// Seconds from the first create until every pod and service exists, or every job is gone: a
/// job that ends before all its objects are made (a deadline job whose creates queued behind
/// older jobs') never gets the rest, rightly.
async fn wait_all_created(recorder: &Recorder, batch: &Batch) -> f64 {
    let want = batch.want;
    loop {
        {
            let seen = recorder.seen();
            let all_gone =
                batch.created_at.keys().all(|j| seen.jobs.get(j).is_some_and(|s| s.deleted.is_some()));
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
                return last.map_or(0.0, |l| secs(l - batch.t0));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Seconds from the huge job's create until its last pod or service existed.
fn huge_created_s(seen: &Seen, at: Instant) -> f64 {
    let mine = |name: &String| name.starts_with("huge-");
    let last = seen
        .pods
        .iter()
        .filter(|(name, _)| mine(name))
        .map(|(_, (t, _))| *t)
        .chain(seen.services.iter().filter(|(name, _)| mine(name)).map(|(_, (t, _))| *t))
        .max();
    last.map_or(0.0, |l| secs(l.saturating_duration_since(at)))
}

fn is_batch(name: &str) -> bool {
    name.starts_with("j-") || name == "huge"
}

/// Waits until every job finished and was deleted for its TTL; with a grace, jobs still there
/// that long after they should have gone are given up on (counted in the report).
async fn wait_done(recorder: &Recorder, batch: &Batch, opts: &Options, grace: Option<Duration>) {
    let ttl = Duration::from_secs(opts.ttl.max(0).unsigned_abs());
    let deadline = Duration::from_secs(opts.deadline.max(0).unsigned_abs());
    let created_at = &batch.created_at;
    let last_create = created_at.values().max().copied().unwrap_or(batch.t0);
    loop {
        {
            let seen = recorder.seen();
            let done = created_at.keys().all(|j| seen.jobs.get(j).is_some_and(|s| s.deleted.is_some()));
            if done {
                break;
            }
            if let Some(grace) = grace {
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
}

/// The samples of one size, job by job.
#[derive(Default)]
struct Samples {
    running: Vec<f64>,
    succeeded: Vec<f64>,
    deadline_late: Vec<f64>,
    success_late: Vec<f64>,
    ttl_late: Vec<f64>,
    stages: [Vec<f64>; 5],
    per_job: Vec<JobTimes>,
    last_success: Option<Instant>,
}

fn samples(seen: &Seen, batch: &Batch) -> Samples {
    let mut out = Samples::default();
    for (name, at) in &batch.created_at {
        let Some(s) = seen.jobs.get(name) else { continue };
        if name.starts_with("j-") {
            batch_job_samples(&mut out, seen, name, *at);
        } else if let (Some(f), Some(d)) = (s.failed, s.deadline) {
            out.deadline_late.push(lateness(f, d));
        }
        if let (Some(del), Some(e)) = (s.deleted, s.expires) {
            out.ttl_late.push(lateness(del, e));
        }
    }
    out
}

/// One batch job's samples (the job is in `seen.jobs`), created at `at`.
fn batch_job_samples(out: &mut Samples, seen: &Seen, name: &str, at: Instant) {
    let Some(s) = seen.jobs.get(name) else { return };
    out.per_job.push(JobTimes {
        name: name.to_string(),
        to_running_s: s.running.map(|r| secs(r.saturating_duration_since(at))),
        to_succeeded_s: s.succeeded.map(|d| secs(d.saturating_duration_since(at))),
        success_late_s: s
            .succeeded_at
            .zip(seen.finished.get(&format!("{name}-worker-0")))
            .map(|(arrived, finished)| lateness(arrived, *finished)),
    });
    if let Some(r) = s.running {
        out.running.push(secs(r.saturating_duration_since(at)));
    }
    if let Some(done) = s.succeeded {
        out.succeeded.push(secs(done.saturating_duration_since(at)));
        out.last_success = Some(out.last_success.map_or(done, |l| l.max(done)));
    }
    // Worker 0 decides success (no chief, the default success policy).
    if let (Some(arrived), Some(finished)) = (s.succeeded_at, seen.finished.get(&format!("{name}-worker-0")))
    {
        out.success_late.push(lateness(arrived, *finished));
    }
    let w0 = format!("{name}-worker-0");
    if let (Some((seen_at, _)), Some(st), Some(done)) =
        (seen.pods.get(&w0), seen.stages.get(&w0), s.succeeded)
    {
        let points = [Some(at), Some(*seen_at), st.bound, st.running, st.succeeded, Some(done)];
        for (i, pair) in points.windows(2).enumerate() {
            if let [Some(a), Some(b)] = pair {
                out.stages[i].push(secs(b.saturating_duration_since(*a)));
            }
        }
    }
}

fn size_report(
    seen: &Seen,
    batch: &Batch,
    label: &str,
    all_created: f64,
    spent: Spent,
    huge: Option<HugeReport>,
) -> Result<SizeReport> {
    let n = batch.n;
    let s = samples(seen, batch);
    if s.succeeded.len() < n {
        bail!("size {n}: {} of {n} jobs were seen to succeed", s.succeeded.len());
    }
    let unfinished: Vec<&String> =
        batch.created_at.keys().filter(|j| seen.jobs.get(*j).is_none_or(|s| s.deleted.is_none())).collect();
    let deadline_not_enforced = unfinished
        .iter()
        .filter(|j| !is_batch(j) && seen.jobs.get(**j).is_none_or(|s| s.failed.is_none()))
        .count();
    let last_success = s.last_success.unwrap_or(batch.t0).max(batch.t0);
    Ok(SizeReport {
        operator: label.to_string(),
        jobs: n,
        deadline_jobs: batch.deadline_jobs,
        pods: batch.want,
        services: batch.want,
        all_created_s: all_created,
        bound_s: 0.0,
        ratio: 0.0,
        create_to_running: Stats::of(&s.running),
        create_to_succeeded: Stats::of(&s.succeeded),
        success_lateness: Stats::of(&s.success_late),
        worker0_stages: [
            "job→pod",
            "pod→bound",
            "bound→Running",
            "Running→pod done",
            "pod done→job Succeeded",
        ]
        .iter()
        .zip(&s.stages)
        .map(|(name, v)| ((*name).to_string(), Stats::of(v)))
        .collect(),
        jobs_per_second: n as f64 / secs(last_success - batch.t0).max(1e-9),
        deadline_lateness: Stats::of(&s.deadline_late),
        ttl_lateness: Stats::of(&s.ttl_late),
        operator_cpu_s: spent.cpu_s,
        operator_peak_rss_mib: spent.peak_rss_mib,
        operator_requests: spent.requests,
        unfinished_jobs: unfinished.len(),
        plane: spent.plane,
        deadline_not_enforced,
        huge,
        per_job: s.per_job,
    })
}
