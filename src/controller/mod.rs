//! The controller: watches TFJobs and the pods and services this operator labels, and runs
//! each reconcile as a pipeline: [`observe`] (caches plus unseen writes), [`crate::plan`]
//! (pure), [`apply`] (the plan's writes, in order), [`report`] (pure: follow-up status,
//! counters, backoff and the next wake-up). This module only wires them.

mod apply;
mod backoff;
mod books;
mod cached_job;
mod decode;
pub mod freshness;

mod index;
mod job_counting;
mod job_watch;
mod observe;
#[cfg(test)]
mod reconcile_tests;
mod reflect;
mod report;
mod slow_start;
mod status_writes;
#[cfg(test)]
mod tests;
mod unseen;
mod watch_backoff;
mod wiring;
mod workloads;
mod write_slots;

pub use wiring::run;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use tracing::{Instrument, debug, info_span, warn};

use crate::api::TFJob;
use crate::error::Error;
use crate::leader::Gate;
use crate::metrics::Metrics;
use crate::plan;
use crate::writer::Writer;
use apply::{Applied, Applier};
use backoff::Backoffs;
use books::{Forget, PerJob};
use cached_job::CachedJob;
use observe::Caches;
use unseen::UnseenWrites;

/// How the controller runs.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Watch one namespace only.
    pub namespace: Option<String>,
    /// Jobs reconciled at once (0: no limit).
    pub concurrency: u16,
    /// Pod and service creates in flight at once over all jobs
    /// (`--writes-in-flight`; 0 is taken as 1).
    pub writes_in_flight: usize,
    /// Appended to TF_CONFIG service addresses.
    pub cluster_domain: Option<String>,
    /// Announce pod and service creates with events (`--announce-creates`).
    pub announce_creates: bool,
    /// The startup deadline of jobs without the annotation.
    pub startup_deadline_seconds: Option<i64>,
    /// The events' reporting instance (the pod name).
    pub instance: Option<String>,
    /// Gang scheduling (`--gang-scheduling`).
    pub gang: crate::plan::gang::GangScheduling,
    /// Who writes the Kueue Workload of a queued job (`--kueue-workloads`).
    pub workloads: crate::queue::WorkloadsBy,
}

/// The one clock read of a reconcile: wall time for status and events, monotonic time for
/// backoff and the expiry of unseen writes.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    pub wall: Timestamp,
    pub mono: Instant,
}

impl Now {
    pub fn read() -> Now {
        Now { wall: Timestamp::now(), mono: Instant::now() }
    }

    /// The instant to plan at.
    pub fn at(self) -> plan::reconcile::At {
        plan::reconcile::At { wall: self.wall, mono: self.mono }
    }
}

struct Context {
    writer: Writer,
    caches: Caches,
    unseen: Mutex<UnseenWrites>,
    backoffs: Mutex<Backoffs>,
    /// When each job's status was last written, for [`plan::coalesce`].
    status_writes: Mutex<status_writes::StatusWrites>,
    /// Whether the job cache follows the API server (see [`observe::job_triggers`]).
    jobs_fresh: Arc<AtomicBool>,
    /// Kubeflow's job counters, moved by the watch and by this process's writes.
    counting: Arc<job_counting::JobCounting>,
    /// The pod and service creates in flight over all jobs, handed out oldest job first.
    writes: write_slots::WriteSlots,
    /// The job cache: apply reads it between create batches (a job suspended meanwhile).
    jobs: reflector::Store<CachedJob>,
    settings: Settings,
    metrics: Arc<Metrics>,
}

impl Context {
    /// A context with empty bookkeeping; `wake` reconciles a job given room to create.
    fn new(
        writer: Writer,
        caches: Caches,
        jobs: reflector::Store<CachedJob>,
        settings: Settings,
        metrics: Arc<Metrics>,
        gate: Gate,
        wake: Option<tokio::sync::mpsc::UnboundedSender<reflector::ObjectRef<CachedJob>>>,
    ) -> Context {
        Context {
            writer,
            caches,
            unseen: Mutex::default(),
            backoffs: Mutex::default(),
            status_writes: Mutex::default(),
            jobs_fresh: Arc::default(),
            counting: Arc::new(job_counting::JobCounting::new(gate, metrics.clone())),
            writes: write_slots::WriteSlots::new(
                settings.writes_in_flight,
                write_slots::WriteSlots::holders_for(settings.concurrency),
                wake,
            ),
            jobs,
            settings,
            metrics,
        }
    }

    fn backoffs(&self) -> MutexGuard<'_, Backoffs> {
        self.backoffs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops a job's bookkeeping (it is being deleted or gone).
    fn forget(&self, uid: &str) {
        self.unseen.lock().unwrap_or_else(PoisonError::into_inner).status.forget(uid);
        self.backoffs().forget(uid);
        self.status_writes().forget(uid);
        self.writes.cancel(uid);
    }

    /// The watch saw the job deleted: its bookkeeping goes, and a reconcile still creating
    /// for it stops before its next batch.
    fn deleted(&self, uid: &str) {
        self.forget(uid);
        self.unseen.lock().unwrap_or_else(PoisonError::into_inner).status.gone(uid, Instant::now());
    }

    fn status_writes(&self) -> MutexGuard<'_, status_writes::StatusWrites> {
        self.status_writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn plan_settings(&self) -> plan::Settings {
        plan::Settings {
            startup_deadline_seconds: self.settings.startup_deadline_seconds,
            gang: self.settings.gang,
            workloads: self.settings.workloads,
        }
    }

    /// The newer of the cached job and the one this process last wrote, with its uid; `None`
    /// for a job found gone or being deleted (its bookkeeping goes).
    fn job_to_plan(&self, cached: Arc<TFJob>, now: Instant) -> Result<Option<(Arc<TFJob>, String)>, Error> {
        let Some(job) = observe::job(&self.unseen, cached, now) else { return Ok(None) };
        let uid = job.uid().ok_or(Error::MissingField("metadata.uid"))?;
        if job.metadata.deletion_timestamp.is_some() {
            self.forget(&uid);
            return Ok(None);
        }
        Ok(Some((job, uid)))
    }

    /// Applies `plan`; `None` when the job was found gone (deleted since the cache showed it,
    /// by its TTL or a user): nothing more to do, and a cache that has not caught up must not
    /// bring it back.
    async fn apply(
        &self,
        job: &TFJob,
        uid: &str,
        plan: &plan::Plan,
        now: Now,
    ) -> Result<Option<Applied>, Error> {
        let wait_until = self.backoffs().creates_wait_until(uid, now.mono);
        let verify_job = !self.jobs_fresh.load(Ordering::SeqCst);
        match self.applier().apply_plan(job, plan, wait_until, verify_job, now).await {
            Err(Error::JobGone { .. }) => {
                self.backoffs().forget(uid);
                self.unseen.lock().unwrap_or_else(PoisonError::into_inner).status.gone(uid, now.mono);
                self.counting.found_gone(uid);
                Ok(None)
            }
            other => other.map(Some),
        }
    }

    /// What follows from `applied`: the bookkeeping of its writes, then the pure report
    /// ([`report::report`]) and its follow-up writes, backoff and next wake-up.
    async fn report(
        &self,
        uid: &str,
        plan: &plan::Plan,
        applied: &Applied,
        now: Now,
    ) -> Result<Action, Error> {
        if applied.creates != apply::CreateStep::Queued {
            // Nothing to create now, or created: the job leaves the queue for room if it was in it.
            self.writes.cancel(uid);
        }
        self.metrics.jobs_queued_to_create(self.writes.queued());
        if plan.status_held {
            self.metrics.status_write_held();
        }
        self.status_writes().planned(uid, plan.status_held, now.mono);
        if let (Some(_), Some(status)) = (&applied.status_written_over, &plan.status) {
            self.counting.wrote(&applied.job, status);
            self.status_writes().wrote(uid, now.mono);
        }
        let backoff = self.backoffs().create(uid);
        let report = report::report(plan, applied, backoff, now);
        self.backoffs().change_create(uid, report.create_backoff);
        for ev in &report.events {
            self.writer.publish(&applied.job, ev, now.wall)?;
        }
        if let Some(status) = &report.follow_up_status {
            self.applier().write_status(&applied.job, status, now).await?;
        }
        if applied.job_deleted {
            self.backoffs().forget(uid)
        } else {
            self.backoffs().succeeded(uid)
        }
        Ok(report.requeue_after.map_or_else(Action::await_change, Action::requeue))
    }

    fn applier(&self) -> Applier<'_> {
        Applier {
            writer: &self.writer,
            unseen: &self.unseen,
            cluster_domain: self.settings.cluster_domain.as_deref(),
            announce_creates: self.settings.announce_creates,
            metrics: &self.metrics,
            counting: &self.counting,
            writes: &self.writes,
            jobs: &self.jobs,
        }
    }
}

impl Forget for Context {
    fn deleted(&self, uid: &str) {
        Context::deleted(self, uid);
    }

    /// Every per-job map but the counters' ([`job_counting::JobCounting::relisted`]).
    fn relisted(&self, listed: &HashSet<String>) {
        self.unseen.lock().unwrap_or_else(PoisonError::into_inner).status.retain_jobs(listed);
        self.backoffs().retain_jobs(listed);
        self.status_writes().retain_jobs(listed);
    }
}

/// How soon a job whose status write was refused as stale is planned again.
const STALE_STATUS_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

fn error_policy(job: Arc<CachedJob>, err: &Error, ctx: Arc<Context>) -> Action {
    // A 429 that says when to try again (an API server's storage initializing after a
    // restart) is tried again then, not after the growing backoff.
    let backoff = ctx.backoffs().failed(&job.uid().unwrap_or_default());
    let mut wait = err.retry_after().map_or(backoff, |asked| asked.min(backoff));
    if matches!(err, Error::StaleStatus { .. }) {
        // Not a failure: the job was read again and is planned from what was found.
        wait = wait.min(STALE_STATUS_RETRY);
    }
    warn!(job = %job.name_any(), namespace = job.namespace().unwrap_or_default(), error = %err, kind = err.kind(), retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

/// A reconcile of the job decoded from the job cache, in its span (every log line carries the
/// job's namespace and name), timed. A
/// job whose `runPolicy.managedBy` names another controller (Kueue's MultiKueue) is left
/// entirely alone: no pods, status, events, metrics or TTL.
async fn timed_reconcile(cached: Arc<CachedJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let job = match cached_job::decoded(&cached) {
        Ok(job) => job,
        Err(e) => {
            ctx.metrics.reconciled(started.elapsed().as_secs_f64(), Some(e.kind()));
            return Err(e);
        }
    };
    if let Some(by) = job.spec.managed_elsewhere() {
        debug!(job = %job.name_any(), managed_by = by, "managed by another controller: left alone");
        return Ok(Action::await_change());
    }
    let span =
        info_span!("reconcile", namespace = %job.namespace().unwrap_or_default(), job = %job.name_any());
    let result = reconcile(job, ctx.clone()).instrument(span).await;
    ctx.metrics.reconciled(started.elapsed().as_secs_f64(), result.as_ref().err().map(Error::kind));
    result
}

/// Observe, plan, apply, report (ARCHITECTURE.md draws it).
async fn reconcile(cached: Arc<TFJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let now = Now::read();
    // Observe: the job as last seen or written, what it owns, and when its status was written.
    let Some((job, uid)) = ctx.job_to_plan(cached, now.mono)? else {
        return Ok(Action::await_change());
    };
    let owned = observe::owned(&ctx.caches, &ctx.unseen, &job, now.mono);
    let (last_status_write, status_held_since) = {
        let writes = ctx.status_writes();
        (writes.last(&uid), writes.held_since(&uid))
    };
    let seen = plan::reconcile::Observed {
        job: &job,
        pods: &owned.pods,
        services: &owned.services,
        pod_group: owned.pod_group.as_ref(),
        last_status_write,
        status_held_since,
    };
    // Plan: pure.
    let plan = plan::reconcile::plan(&seen, ctx.plan_settings(), now.at());
    debug!(
        resource_version = job.resource_version().unwrap_or_default(),
        pods = owned.pods.len(),
        status = plan.status.is_some(),
        delete_pods = plan.delete_pods.len(),
        create_pods = plan.create_pods.len(),
        events = ?plan.all_events().map(|e| e.reason.as_str()).collect::<Vec<_>>(),
        "planned"
    );
    // Apply: the plan's writes, in its order.
    let Some(applied) = ctx.apply(&job, &uid, &plan, now).await? else {
        return Ok(Action::await_change());
    };
    // Report: what follows from what was applied.
    ctx.report(&uid, &plan, &applied, now).await
}
