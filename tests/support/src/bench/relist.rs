//! The re-list row: the operator's peak memory with a full cache (N jobs whose pods all run)
//! before and after a forced 410 Gone makes every one of its watches list again.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use serde::Serialize;

use super::namespace::{create_namespace, delete_namespace};
use super::operator::Running;
use super::record::{Recorder, tfjob_resource};
use super::size_run::secs;
use super::{Options, batch_job, footprint};
use crate::ControlPlane;

/// What the re-list row measured.
#[derive(Clone, Debug, Serialize)]
pub struct RelistReport {
    pub jobs: usize,
    pub pods: usize,
    /// Peak RSS (VmHWM) once every pod ran, before the 410.
    pub peak_before_mib: Option<f64>,
    /// Peak RSS after the re-list of pods and services completed.
    pub peak_after_mib: Option<f64>,
    /// `tfjob_operator_watch_restarts_total`, by resource, over the row.
    pub watch_restarts: Vec<(String, f64)>,
    /// From the API server's restart until the operator logged both re-lists complete.
    pub relist_s: f64,
}

impl RelistReport {
    pub fn line(&self) -> String {
        let mib = |m: Option<f64>| m.map_or("-".into(), |m| format!("{m:.1}"));
        let restarts: Vec<String> = self.watch_restarts.iter().map(|(r, n)| format!("{r} {n}")).collect();
        format!(
            "forced re-list at {} jobs ({} pods running): peak RSS {} MiB before the 410, {} MiB after the re-list \
             ({:.1} s after the API server restarted); watch restarts: {}\n",
            self.jobs,
            self.pods,
            mib(self.peak_before_mib),
            mib(self.peak_after_mib),
            self.relist_s,
            if restarts.is_empty() { "none".to_string() } else { restarts.join(", ") }
        )
    }
}

/// Runs the row: `n` jobs whose workers run for an hour, a 410 forced once every pod runs.
pub async fn relist_row(
    client: &Client,
    plane: &ControlPlane,
    opts: &Options,
    n: usize,
) -> Result<RelistReport> {
    let ns = format!("{}-relist{n}", opts.prefix);
    create_namespace(client, &ns).await?;
    let recorder = Recorder::start(client, &ns);
    let mut op = Running::start(client, &opts.operator, &ns).await?;
    create_hour_long_jobs(client, &ns, opts, n).await?;
    let want = n * (opts.ps + opts.workers) as usize;
    crate::wait(opts.timeout, "every pod of the re-list row to run", || async {
        let seen = recorder.seen();
        seen.services.len() >= want && seen.stages.values().filter(|s| s.running.is_some()).count() >= want
    })
    .await?;
    drop(recorder);
    // Let the status writes of the last starts land.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = op.pid.context("the operator's pid")?;
    let restarts_before = op.requests().await;
    let peak_before_mib = footprint::peak_rss_mib(pid);
    plane.force_410().await?;
    let restarted = Instant::now();
    let log = op.log().context("the operator's log")?;
    let outcome = relisted_after(plane, &log, restarted).await;
    // Let what the re-list triggered run.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let peak_after_mib = footprint::peak_rss_mib(pid);
    let restarts = footprint::delta(&op.requests().await, &restarts_before);
    op.stop();
    clean_up(client, plane, &ns, restarted).await?;
    let relist_s = outcome?;
    Ok(RelistReport {
        jobs: n,
        pods: want,
        peak_before_mib,
        peak_after_mib,
        watch_restarts: restarts
            .into_iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("watch restarts ")?.to_string(), v)))
            .collect(),
        relist_s,
    })
}

/// Creates `n` jobs whose workers run for an hour, `opts.in_flight` at a time.
async fn create_hour_long_jobs(client: &Client, ns: &str, opts: &Options, n: usize) -> Result<()> {
    let long = Options { run_for: "1h".into(), ..opts.clone() };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &tfjob_resource());
    let creates = futures::stream::iter((0..n).map(|i| {
        let api = api.clone();
        let body = batch_job(&format!("r-{i}"), &long);
        async move {
            let obj: DynamicObject = serde_json::from_value(body)?;
            api.create(&PostParams::default(), &obj).await.map(|_| ()).context("creating a TFJob")
        }
    }));
    use futures::StreamExt;
    let created: Vec<Result<()>> = creates.buffer_unordered(opts.in_flight).collect().await;
    created.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(())
}

/// Seconds from `restarted` until the operator logged both re-lists complete (up to 180 s),
/// starting again whatever part of the plane exited meanwhile.
async fn relisted_after(plane: &ControlPlane, log: &Path, restarted: Instant) -> Result<f64> {
    let relisted = |text: &str| {
        ["\"pods\"", "\"services\""]
            .iter()
            .all(|r| text.lines().any(|l| l.contains("re-list complete") && l.contains(r)))
    };
    let end = Instant::now() + Duration::from_secs(180);
    loop {
        // kube-scheduler (and others) may exit after the compaction: started again.
        let _ = plane.revive();
        if std::fs::read_to_string(log).is_ok_and(|t| relisted(&t)) {
            return Ok(secs(restarted.elapsed()));
        }
        if Instant::now() > end {
            bail!("the operator did not log both re-lists complete within 180 s; see {}", log.display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Removes the row's namespace and keeps the plane whole for a minute after its restart.
async fn clean_up(client: &Client, plane: &ControlPlane, ns: &str, restarted: Instant) -> Result<()> {
    // The pods may be on nodes kwok no longer follows after the outage: removed at once.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let _ = pods
        .delete_collection(
            &DeleteParams { grace_period_seconds: Some(0), ..Default::default() },
            &ListParams::default(),
        )
        .await;
    delete_namespace(client, ns, Duration::from_secs(600)).await?;
    // kube-scheduler may exit up to half a minute after the API server is back: whatever
    // exits within a minute is started again, so the plane is whole when the row ends.
    while restarted.elapsed() < Duration::from_secs(60) {
        let _ = plane.revive();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let _ = plane.revive();
    Ok(())
}
