//! What a pod watch showed of the namespace's pods, in order, and the gang property read
//! from it; the two gated jobs the placement tests release one pod at a time.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};

use super::{PARTIAL_MAX, placed};
use crate::Ctx;
use crate::support::*;

/// What a pod watch showed, in order: when, and each pod's node and phase then.
#[derive(Clone, Default)]
pub(super) struct Timeline {
    pub(super) events: Vec<(Instant, String, Option<String>, String)>,
}

/// Records every change of the namespace's pods until dropped.
pub(super) struct PodWatch {
    timeline: Arc<Mutex<Timeline>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodWatch {
    pub(super) fn start(ctx: &Ctx) -> PodWatch {
        let timeline: Arc<Mutex<Timeline>> = Arc::default();
        let api = pods(ctx);
        let t = timeline.clone();
        let task = tokio::spawn(async move {
            let mut stream =
                std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff().applied_objects());
            while let Some(ev) = stream.next().await {
                let Ok(pod) = ev else { continue };
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                let name = pod.metadata.name.unwrap_or_default();
                t.lock().unwrap().events.push((Instant::now(), name, node, phase));
            }
        });
        PodWatch { timeline, task }
    }

    pub(super) fn timeline(&self) -> Timeline {
        self.timeline.lock().unwrap().clone()
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Timeline {
    /// Bound pods per job (name prefix before `-worker-`) after each event.
    fn bound_counts(&self) -> Vec<(Instant, BTreeMap<String, usize>)> {
        let mut state: BTreeMap<String, bool> = BTreeMap::new();
        let mut out = Vec::new();
        for (at, name, node, _) in &self.events {
            state.insert(name.clone(), node.is_some());
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for (pod, bound) in &state {
                let job = pod.split("-worker-").next().unwrap_or_default().to_string();
                *counts.entry(job).or_default() += usize::from(*bound);
            }
            out.push((*at, counts));
        }
        out
    }

    /// The gang property for jobs of `size` pods: no job's pods are partly bound (neither
    /// none nor all) for longer than [`PARTIAL_MAX`], up to `until`. Returns the longest
    /// partial binding seen (the binding of a gang's pods takes that long).
    pub(super) fn all_or_nothing(&self, size: usize, until: Instant) -> Result<Duration> {
        let mut partial_since: BTreeMap<String, Instant> = BTreeMap::new();
        let mut longest = Duration::ZERO;
        let mut check = |at: Instant, counts: &BTreeMap<String, usize>| -> Result<()> {
            for (job, &n) in counts {
                if n == 0 || n == size {
                    partial_since.remove(job);
                    continue;
                }
                let since = *partial_since.entry(job.clone()).or_insert(at);
                longest = longest.max(at.duration_since(since));
                if at.duration_since(since) > PARTIAL_MAX {
                    bail!(
                        "job {job} had {n} of its {size} pods bound for {:.1}s: {counts:?}",
                        at.duration_since(since).as_secs_f64()
                    );
                }
            }
            Ok(())
        };
        let counts = self.bound_counts();
        for (at, c) in &counts {
            check(*at, c)?;
        }
        if let Some((_, last)) = counts.last() {
            check(until, last)?;
        }
        Ok(longest)
    }

    /// When the first of the job's pods was seen bound, and when the first one succeeded.
    pub(super) fn first(&self, job: &str, what: impl Fn(&Option<String>, &str) -> bool) -> Option<Instant> {
        let prefix = format!("{job}-worker-");
        self.events
            .iter()
            .find(|(_, n, node, phase)| n.starts_with(&prefix) && what(node, phase))
            .map(|e| e.0)
    }
}

/// Removes the scheduling gate of the two jobs' pods one at a time, alternating between them.
/// Each pod's release waits until it is bound, for at most 2 s (a pod that can be bound
/// alone is bound before the next is released, however slow the scheduler; a gang's member
/// is not), so the scheduler sees the pods in this order.
pub(super) async fn ungate_alternating(ctx: &Ctx, jobs: [&str; 2], workers: i32) -> Result<()> {
    let remove = Patch::Merge(json!({"spec": {"schedulingGates": null}}));
    for i in 0..workers {
        for job in jobs {
            let name = format!("{job}-worker-{i}");
            pods(ctx).patch(&name, &PatchParams::default(), &remove).await?;
            let bound = |p: &Pod| p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
            let _ = wait_for(&pods(ctx), &name, Duration::from_secs(2), "bound", bound).await;
        }
    }
    Ok(())
}

/// Creates jobs `a` and `b` (4 gated workers of 10 CPUs on the test's 6-place node, each
/// meeting `fate`) and waits until all 8 pods exist; returns the pod watch.
pub(super) async fn two_gated_jobs(ctx: &Ctx, fate: Value) -> Result<PodWatch> {
    let watch = PodWatch::start(ctx);
    for name in ["a", "b"] {
        create(ctx, placed(ctx, name, 4, "10", fate.clone(), json!({}), true)).await?;
    }
    let want: Vec<String> =
        ["a", "b"].iter().flat_map(|j| (0..4).map(move |i| format!("{j}-worker-{i}"))).collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    wait_pods(ctx, &want, WAIT).await?;
    Ok(watch)
}

/// Waits until the watch has seen all `n` pods of `job` bound; returns the timeline.
pub(super) async fn eventually_timeline(watch: &PodWatch, job: &str, n: usize) -> Result<Timeline> {
    let prefix = format!("{job}-worker-");
    eventually(Duration::from_secs(120), &format!("{job}: {n} pods bound"), || async {
        let t = watch.timeline();
        let mut bound: BTreeMap<&str, bool> = BTreeMap::new();
        for e in t.events.iter().filter(|e| e.1.starts_with(&prefix)) {
            bound.insert(e.1.as_str(), e.2.is_some());
        }
        let count = bound.values().filter(|b| **b).count();
        ensure!(count == n, "{count} of {n} bound");
        Ok(t)
    })
    .await
}
