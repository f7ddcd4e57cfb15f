//! A fleet of jobs of mixed fates in flight when a fault hits, and the invariants every fault
//! test checks once the plane is back: each job reaches the terminal state it would have
//! reached without the fault with the right reason (or is gone for its TTL), no pod name gets
//! more uids than the job's restart policy calls for, the job counters count each job once,
//! and the operator's request rate returns to idle.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher;
use serde_json::{Value, json};
use tfjob_operator::api::ConditionType;

use crate::Ctx;
use crate::support::*;

/// What a fleet job is meant to come to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// PS + 2 workers that succeed: `Succeeded`.
    Succeed,
    /// 2 workers that fail with exit code 1: `Failed` (`TFJobFailed`).
    Fail,
    /// 1 worker killed by a signal (137) under `ExitCode` with `backoffLimit: 1`: re-created
    /// once, then `Failed` (`BackoffLimitExceeded`).
    Restart,
    /// PS + worker running for ever with a 25 s deadline: `Failed` (`DeadlineExceeded`).
    Deadline,
    /// A worker that succeeds, with a 5 s TTL: deleted.
    Ttl,
}

const FATES: [Fate; 5] = [Fate::Succeed, Fate::Fail, Fate::Restart, Fate::Deadline, Fate::Ttl];

impl Fate {
    fn manifest(self, name: &str) -> Value {
        match self {
            Fate::Succeed => {
                job(name, &[replica("PS", 1), replica("Worker", 2).fate(succeed("8s"))], json!({}))
            }
            Fate::Fail => job(name, &[replica("Worker", 2).fate(fail("8s", 1))], json!({})),
            Fate::Restart => job(
                name,
                &[replica("Worker", 1).restart("ExitCode").fate(fail("5s", 137))],
                json!({"backoffLimit": 1}),
            ),
            Fate::Deadline => {
                job(name, &[replica("PS", 1), replica("Worker", 1)], json!({"activeDeadlineSeconds": 25}))
            }
            Fate::Ttl => {
                job(name, &[replica("Worker", 1).fate(succeed("6s"))], json!({"ttlSecondsAfterFinished": 5}))
            }
        }
    }

    /// The uids a pod name may have: one, or two where the policy re-creates once.
    fn max_uids(self) -> usize {
        if self == Fate::Restart { 2 } else { 1 }
    }

    /// The pods the job creates (at least once).
    fn pods(self) -> usize {
        match self {
            Fate::Succeed => 3,
            Fate::Fail => 2,
            // Its deadline may pass before its pods are made (in an outage): then it has none.
            Fate::Deadline => 0,
            Fate::Restart | Fate::Ttl => 1,
        }
    }

    /// The fewest pods the job may have made when it failed before all were made: a job
    /// whose first worker fails ends `Failed` at once and creates nothing more (Kubeflow's
    /// rule). An outage can delay the second worker's create past the first one's failure:
    /// kwok, restarted after the outage, plays a stage whose time passed meanwhile at once.
    /// Such a job must show the failed pod that ended it ([`Fleet::check_outcomes`]).
    fn pods_if_failed_early(self) -> usize {
        match self {
            Fate::Fail => 1,
            other => other.pods(),
        }
    }

    /// The final condition's reason; `None` for a job deleted by its TTL.
    fn reason(self) -> Option<&'static str> {
        match self {
            Fate::Succeed => Some("TFJobSucceeded"),
            Fate::Fail => Some("TFJobFailed"),
            Fate::Restart => Some("BackoffLimitExceeded"),
            Fate::Deadline => Some("DeadlineExceeded"),
            Fate::Ttl => None,
        }
    }
}

/// Every uid seen per pod name, through watch failures (the plane is being broken on purpose):
/// the watch restarts with backoff and re-lists; failures are counted, not hidden.
pub struct PodUids {
    seen: Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>,
    /// Each pod's creation time, by uid.
    created: Arc<Mutex<BTreeMap<String, k8s_openapi::jiff::Timestamp>>>,
    failures: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodUids {
    pub fn start(ctx: &Ctx) -> PodUids {
        let (seen, failures) = (Arc::new(Mutex::new(BTreeMap::new())), Arc::new(Mutex::new(0)));
        let created = Arc::new(Mutex::new(BTreeMap::new()));
        let (seen2, failures2, created2, api) = (seen.clone(), failures.clone(), created.clone(), pods(ctx));
        // A failed watch starts again with a fresh list 300 ms later (no growing backoff: the
        // outage is short and the pods made right after it must be seen).
        let task = tokio::spawn(async move {
            loop {
                let mut s = std::pin::pin!(watcher::watcher(api.clone(), watcher::Config::default()));
                while let Some(ev) = s.next().await {
                    match ev {
                        Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                            let (name, uid) =
                                (p.metadata.name.unwrap_or_default(), p.metadata.uid.unwrap_or_default());
                            if let (Some(t), Ok(mut c)) = (p.metadata.creation_timestamp, created2.lock()) {
                                c.insert(uid.clone(), t.0);
                            }
                            if let Ok(mut m) = seen2.lock() {
                                m.entry(name).or_insert_with(BTreeSet::new).insert(uid);
                            }
                        }
                        Ok(_) => {}
                        Err(_) => {
                            if let Ok(mut n) = failures2.lock() {
                                *n += 1;
                            }
                            break;
                        }
                    }
                }
                // Paces the re-watch after a watch error; not an assertion.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        PodUids { seen, created, failures, task }
    }

    /// When the pod with `uid` was created, if the watch saw it.
    pub fn created(&self, uid: &str) -> Option<k8s_openapi::jiff::Timestamp> {
        self.created.lock().ok()?.get(uid).copied()
    }

    pub fn names_with_uids(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.seen.lock().map(|m| m.clone()).unwrap_or_default()
    }

    /// Watch failures seen (the fault reached the watch too).
    pub fn failures(&self) -> usize {
        self.failures.lock().map(|n| *n).unwrap_or_default()
    }
}

impl Drop for PodUids {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Jobs of every fate, `per_fate` of each, named `<fate>-<i>`.
pub struct Fleet {
    pub jobs: Vec<(String, Fate)>,
}

impl Fleet {
    pub async fn create(ctx: &Ctx, per_fate: usize) -> Result<Fleet> {
        let mut jobs = Vec::new();
        for fate in FATES {
            for i in 0..per_fate {
                jobs.push((format!("{}-{i}", format!("{fate:?}").to_lowercase()), fate));
            }
        }
        let creates = jobs.iter().map(|(name, fate)| create(ctx, fate.manifest(name)));
        for r in futures::future::join_all(creates).await {
            r?;
        }
        Ok(Fleet { jobs })
    }

    fn count(&self, fates: &[Fate]) -> f64 {
        self.jobs.iter().filter(|(_, f)| fates.contains(f)).count() as f64
    }

    /// Waits for every job's expected end and checks the pods: each job made the pods its fate
    /// calls for (fewer only when it failed before all were made, and then the failed pod that
    /// ended it exists), no pod was made after its job finished, and no pod name got more uids
    /// than the restart policy calls for.
    pub async fn check_outcomes(&self, ctx: &Ctx, uids: &PodUids, timeout: Duration) -> Result<()> {
        let finished_at = self.wait_ends(ctx, timeout).await?;
        // The uid watch is the test's own and may still be catching up after the outage.
        let complete = |seen: &BTreeMap<String, BTreeSet<String>>| {
            self.jobs.iter().all(|(name, fate)| names_of(seen, name).len() >= fate.pods())
        };
        let _ = tfjob_testsupport::wait(Duration::from_secs(30), "the uid watch to catch up", || async {
            complete(&uids.names_with_uids())
        })
        .await;
        let seen = uids.names_with_uids();
        for (name, fate) in &self.jobs {
            check_pods(ctx, uids, &seen, name, *fate, finished_at.get(name)).await?;
        }
        Ok(())
    }

    /// Waits for every job's expected end (gone for its TTL, or finished with its fate's
    /// reason); when each job that remains finished (its last condition's transition).
    async fn wait_ends(&self, ctx: &Ctx, timeout: Duration) -> Result<BTreeMap<String, Timestamp>> {
        let mut finished_at = BTreeMap::new();
        for (name, fate) in &self.jobs {
            match fate.reason() {
                None => {
                    wait_job_gone(ctx, name, timeout)
                        .await
                        .with_context(|| format!("{name}: deleted for its TTL"))?;
                }
                Some(reason) => {
                    let j = wait_job(ctx, name, timeout, "finished", |j| {
                        has_condition(j, ConditionType::Succeeded) || has_condition(j, ConditionType::Failed)
                    })
                    .await?;
                    ensure!(
                        last_reason(&j).as_deref() == Some(reason),
                        "{name}: ended with {:?}, want {reason}: {:?}",
                        last_reason(&j),
                        j.status
                    );
                    let at =
                        j.status.as_ref().and_then(|s| s.conditions.last()?.last_transition_time.clone());
                    finished_at.extend(at.map(|t| (name.clone(), t.0)));
                }
            }
        }
        Ok(finished_at)
    }

    /// Kubeflow's job counters of the namespace, summed over `metrics` (one text per process
    /// that ran the jobs): each job counted once.
    pub fn check_counters(&self, ctx: &Ctx, metrics: &[String]) -> Result<()> {
        let ns = format!("job_namespace=\"{}\"", ctx.ns);
        let sum = |family: &str| -> f64 { metrics.iter().map(|m| metric_sum(m, family, &[&ns])).sum() };
        use Fate::*;
        let want = [
            ("training_operator_jobs_created_total", self.count(&FATES)),
            ("training_operator_jobs_successful_total", self.count(&[Succeed, Ttl])),
            ("training_operator_jobs_failed_total", self.count(&[Fail, Restart, Deadline])),
            ("training_operator_jobs_restarted_total", self.count(&[Restart])),
            ("training_operator_jobs_deleted_total", self.count(&[Ttl])),
        ];
        for (family, n) in want {
            ensure!(sum(family) == n, "{family}: {} counted, want {n} (each job once)", sum(family));
        }
        Ok(())
    }
}

/// The job's pods that ended `Failed` with a non-zero exit code.
async fn failed_pods(ctx: &Ctx, job: &str) -> Result<Vec<String>> {
    use kube::api::ListParams;
    let prefix = format!("{job}-");
    Ok(pods(ctx)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.name.as_deref().is_some_and(|n| n.starts_with(&prefix)))
        .filter(|p| {
            let status = p.status.as_ref();
            let phase_failed = status.and_then(|s| s.phase.as_deref()) == Some("Failed");
            let exit = status
                .and_then(|s| s.container_statuses.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|c| c.state.as_ref()?.terminated.as_ref().map(|t| t.exit_code))
                .any(|code| code != 0);
            phase_failed && exit
        })
        .filter_map(|p| p.metadata.name)
        .collect())
}

/// The operator's requests so far (every attempt, all verbs).
pub async fn requests(op: &Operator) -> Result<f64> {
    Ok(metric_sum(&op.metrics().await?, "tfjob_operator_api_requests_total", &[]))
}

/// The operator's request rate comes back to idle (at most `idle` per second over 5 s)
/// within 30 s: no hot loop once the cluster has settled.
pub async fn check_idle(op: &Operator, idle: f64) -> Result<f64> {
    let end = Instant::now() + Duration::from_secs(30);
    let mut last = f64::NAN;
    while Instant::now() < end {
        let before = requests(op).await?;
        // The 5 s the rate is measured over; not an assertion.
        tokio::time::sleep(Duration::from_secs(5)).await;
        last = (requests(op).await? - before) / 5.0;
        if last <= idle {
            return Ok(last);
        }
    }
    bail!("the operator still sends {last:.1} requests/s 30 s after the cluster settled (idle: {idle})")
}

/// The pods of job `name` the uid watch saw, with their uids.
fn names_of(seen: &BTreeMap<String, BTreeSet<String>>, name: &str) -> Vec<(String, BTreeSet<String>)> {
    let prefix = format!("{name}-");
    seen.iter()
        .filter(|(pod, _)| pod.starts_with(&prefix))
        .map(|(p, u)| (p.clone(), u.clone()))
        .collect::<Vec<_>>()
}

/// One job's pods: the number its fate calls for (fewer only when it failed first), none
/// created after it finished (`end`), no name with more uids than its restart policy allows.
async fn check_pods(
    ctx: &Ctx,
    uids: &PodUids,
    seen: &BTreeMap<String, BTreeSet<String>>,
    name: &str,
    fate: Fate,
    end: Option<&Timestamp>,
) -> Result<()> {
    let names = names_of(seen, name);
    // A pod created and removed while the test's own watch was down (the 410 test
    // breaks every watch) is never seen by it: the operator's announcement of its
    // creation stands in for it.
    let announced = if names.len() < fate.pods() {
        announced_names(ctx, name, "SuccessfulCreatePod").await?
    } else {
        BTreeSet::new()
    };
    let all: BTreeSet<&String> = names.iter().map(|(p, _)| p).chain(announced.iter()).collect();
    ensure!(
        all.len() >= fate.pods_if_failed_early(),
        "{name}: saw {} pod names, want {}: {names:?}, announced {announced:?} (the uid watch saw {} names in all, {} failures)",
        all.len(),
        fate.pods(),
        seen.len(),
        uids.failures(),
    );
    if all.len() < fate.pods() {
        // Fewer only because the job failed first: the pod that ended it failed.
        let failed = failed_pods(ctx, name).await?;
        ensure!(
            !failed.is_empty(),
            "{name}: {} of {} pods made ({all:?}) and none of them failed: a create was lost",
            all.len(),
            fate.pods()
        );
        println!("    {name}: failed ({failed:?}) before its other pods were made; nothing more created");
    }
    // Nothing is created for a finished job (times at the API's one-second precision).
    if let Some(end) = end {
        for (pod, ids) in &names {
            for uid in ids {
                let made = uids.created(uid);
                ensure!(
                    made.is_none_or(|t| t.as_second() <= end.as_second()),
                    "{pod} ({uid}) was created at {made:?}, after {name} finished at {end}"
                );
            }
        }
    }
    for (pod, ids) in names {
        ensure!(
            ids.len() <= fate.max_uids(),
            "{pod} had {} uids, at most {} allowed for {fate:?}: {ids:?}",
            ids.len(),
            fate.max_uids()
        );
    }
    Ok(())
}
