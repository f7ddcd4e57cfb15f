//! Apply: executes a [`Plan`] in its order through the [`Writer`] (status, events, pod
//! deletes, a suspended job's `active: 0`, service deletes, creates, the TTL deletion of the
//! job), records every write as unseen until the caches show it, and returns what happened.
//! No decisions here: what to do is the plan's, what follows is [`super::report`]'s.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use kube::runtime::reflector::Store;
use tracing::info;

mod create;
mod pod_group;

use super::Now;
use super::cached_job::CachedJob;
use super::job_counting::JobCounting;
use super::observe::Slim;
use super::unseen::{UnseenObjects, UnseenWrites};
use super::write_slots::{WRITES_IN_FLIGHT, WriteSlots};
use crate::api::{TFJob, TFJobStatus};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::metrics::jobs::DeleteAnswer;
use crate::plan::{Cleanup, ObjectKey, Plan, PlannedEvent, PodSelection};
use crate::writer::{JobDeletion, Namespaced, Writer, forbidden, refused};

/// Where apply writes: the writer, and the record of writes the caches have not shown.
pub struct Applier<'a> {
    pub writer: &'a Writer,
    pub unseen: &'a Mutex<UnseenWrites>,
    /// Appended to TF_CONFIG addresses when set (`--cluster-domain`).
    pub cluster_domain: Option<&'a str>,
    /// Announce each step's creates with events (`--announce-creates`).
    pub announce_creates: bool,
    pub metrics: &'a Metrics,
    /// Kubeflow's job counters; the TTL deletion moves one.
    pub counting: &'a JobCounting,
    /// The pod and service creates in flight over all jobs.
    pub writes: &'a WriteSlots,
    /// The job cache, as the TFJob watch keeps it: a job it shows suspended since its plan
    /// gets no more creates.
    pub jobs: &'a Store<CachedJob>,
}

/// What the create step came to: the one create result past the writer. Each create's answer
/// ([`Created`](crate::writer::Created)) becomes one, and the step ends with the first that stops it;
/// [`super::report`] acts on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateStep {
    /// The plan creates nothing, or nothing more: the job cache showed the job suspended
    /// since it was planned (the suspension's own reconcile follows).
    NoneNeeded,
    /// The job's create backoff runs until then: nothing was sent.
    Waiting { until: Instant },
    /// Every object was created (or found already created by this job).
    Done,
    /// An object of the same name is still terminating: try again shortly.
    Blocked,
    /// The API server refused a create, with its message.
    Refused(String),
    /// A create failed for a reason not the job's (no answer, 429, 5xx such as an admission
    /// webhook that cannot be called): which create, and the API server's answer.
    Transient(String),
    /// The namespace is being deleted: nothing more is created, nothing is reported.
    NamespaceGone,
    /// Older jobs' creates come first: the job is queued for room and woken when it has it
    /// ([`WriteSlots`]).
    Queued,
}

/// What applying a plan did.
#[derive(Clone, Debug)]
pub struct Applied {
    /// The job as stored after this reconcile's status write (as observed when none).
    pub job: TFJob,
    /// When a status was written: the status it replaced.
    pub status_written_over: Option<Option<TFJobStatus>>,
    pub creates: CreateStep,
    /// The job itself was deleted (its TTL expired).
    pub job_deleted: bool,
}

/// Names listed in one announcing event; more are counted ("and 7 more").
pub const ANNOUNCED_NAMES: usize = 10;

/// The note of the one event that announces what one step did to objects of one kind:
/// Kubeflow's `Created pod: a` for one, `Created 3 pods: a, b, c` for more, with at most
/// [`ANNOUNCED_NAMES`] names. `None` for none.
pub fn announcement(verb: &str, noun: &str, names: &[String]) -> Option<String> {
    match names {
        [] => None,
        [one] => Some(format!("{verb} {noun}: {one}")),
        _ => {
            let shown = names[..names.len().min(ANNOUNCED_NAMES)].join(", ");
            let more = names.len().saturating_sub(ANNOUNCED_NAMES);
            let tail = if more > 0 { format!(", and {more} more") } else { String::new() };
            Some(format!("{verb} {} {noun}s: {shown}{tail}", names.len()))
        }
    }
}

/// What a cleanup deleted, as the outcome event's last sentence: `cleanPodPolicy Running
/// deleted the pods still running: a, b.` `None` when it deleted nothing.
pub fn cleanup_note(selection: PodSelection, pods: &[String], services: &[String]) -> Option<String> {
    if pods.is_empty() && services.is_empty() {
        return None;
    }
    let list = |names: &[String]| {
        let shown = names[..names.len().min(ANNOUNCED_NAMES)].join(", ");
        let more = names.len().saturating_sub(ANNOUNCED_NAMES);
        if more > 0 { format!("{shown}, and {more} more") } else { shown }
    };
    let kinds = [("pods", pods), ("services", services)]
        .iter()
        .filter(|(_, names)| !names.is_empty())
        .map(|(kind, names)| format!("{kind} {}", list(names)))
        .collect::<Vec<_>>()
        .join(" and ");
    Some(match selection {
        PodSelection::Unfinished => format!("cleanPodPolicy Running deleted the {kinds} still running."),
        PodSelection::All => format!("cleanPodPolicy All deleted {kinds}."),
    })
}

/// Pods and services: their kind's name in events, where their unseen writes are kept, and
/// their delete.
trait OwnedKind: Namespaced + Slim {
    const KIND: &'static str;
    fn unseen(w: &mut UnseenWrites) -> &mut UnseenObjects<Self>;
    fn delete<'a>(
        w: &'a Writer,
        ns: &'a str,
        key: &'a ObjectKey,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a;
}

impl OwnedKind for Pod {
    const KIND: &'static str = "Pod";
    fn unseen(w: &mut UnseenWrites) -> &mut UnseenObjects<Pod> {
        &mut w.pods
    }
    fn delete<'a>(
        w: &'a Writer,
        ns: &'a str,
        key: &'a ObjectKey,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        w.delete_pod(ns, key)
    }
}

impl OwnedKind for Service {
    const KIND: &'static str = "Service";
    fn unseen(w: &mut UnseenWrites) -> &mut UnseenObjects<Service> {
        &mut w.services
    }
    fn delete<'a>(
        w: &'a Writer,
        ns: &'a str,
        key: &'a ObjectKey,
    ) -> impl Future<Output = Result<(), Error>> + Send + 'a {
        w.delete_service(ns, key)
    }
}

impl Applier<'_> {
    fn unseen(&self) -> MutexGuard<'_, UnseenWrites> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.unseen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the job's status and records the stored object as unseen.
    ///
    /// A write refused as stale (the job changed since the version planned from) reads the
    /// job and records what it found the same way, so the next plan starts from it. The
    /// cache alone may not show that version for a minute: a write of this process whose
    /// answer was lost on a connection that then hung also hung the watch that would show it
    /// (e2e `a_hung_reconcile_request_is_cut_at_the_request_timeout`).
    pub async fn write_status(&self, job: &TFJob, status: &TFJobStatus, now: Now) -> Result<TFJob, Error> {
        match self.writer.patch_status(job, status).await {
            Ok(written) => {
                self.unseen().status.wrote(written.clone(), now.mono);
                Ok(written)
            }
            Err(stale @ Error::StaleStatus { .. }) => {
                // Not being able to read it changes nothing: the stale error is the outcome.
                if let Ok(Some(fresh)) = self.writer.read_job(job).await {
                    self.unseen().status.read(fresh, now.mono);
                }
                Err(stale)
            }
            Err(e) => Err(e),
        }
    }

    fn event(&self, job: &TFJob, ev: PlannedEvent, now: Now) -> Result<(), Error> {
        self.writer.publish(job, &ev, now.wall)
    }

    /// Executes `plan` for `job` in order. `creates_wait_until` is set while the job's create
    /// backoff runs: the plan's creates are then not sent. `verify_job`: the job cache may be
    /// stale (its watch is down or re-listing), so the job's existence is checked before
    /// anything is created for it.
    pub async fn apply_plan(
        &self,
        job: &TFJob,
        plan: &Plan,
        creates_wait_until: Option<Instant>,
        verify_job: bool,
        now: Now,
    ) -> Result<Applied, Error> {
        // Every field by name: a field added to `Plan` does not compile until it is applied
        // here or named as not apply's.
        let Plan {
            status,
            events,
            delete_pods,
            status_after_pod_deletes,
            delete_services,
            create_services,
            create_pods,
            more: _,
            delete_job,
            requeue_at: _,
            gang,
            status_held: _,
            cleanup,
        } = plan;
        let ns = job.namespace().unwrap_or_default();
        let mut applied = Applied {
            job: job.clone(),
            status_written_over: None,
            creates: CreateStep::NoneNeeded,
            job_deleted: false,
        };
        if let Some(status) = status {
            applied.job = self.write_status(job, status, now).await?;
            applied.status_written_over = Some(job.status.clone());
        }
        let job = &applied.job;
        for ev in events {
            self.writer.publish(job, ev, now.wall)?;
        }
        if let Some(cleanup) = cleanup {
            self.clean_up(job, cleanup, (delete_pods, delete_services), now).await?;
        } else {
            // One event per kind announces what was deleted, also when a delete failed.
            let mut deleted = Vec::new();
            let pods = self.delete_owned::<Pod>(&ns, delete_pods, &mut deleted, now).await;
            self.announce(job, "SuccessfulDeletePod", "Deleted", "pod", &deleted, now)?;
            pods?;
            if let Some(status) = status_after_pod_deletes {
                // Every pod has a delete accepted: now the suspended job shows `active: 0`.
                applied.status_written_over = applied.status_written_over.or(Some(job.status.clone()));
                applied.job = self.write_status(job, status, now).await?;
            }
            let job = &applied.job;
            let mut deleted = Vec::new();
            let services = self.delete_owned::<Service>(&ns, delete_services, &mut deleted, now).await;
            self.announce(job, "SuccessfulDeleteService", "Deleted", "service", &deleted, now)?;
            services?;
        }
        let job = &applied.job;
        self.delete_pod_group(job, gang, now).await?; // gang scheduling: gang.rs
        if !create_pods.is_empty() || !create_services.is_empty() || gang.create.is_some() {
            if creates_wait_until.is_none() && verify_job && !self.writer.job_exists(job).await? {
                return Err(Error::JobGone { job: job.name_any() });
            }
            applied.creates = match creates_wait_until {
                Some(until) => CreateStep::Waiting { until },
                None => self.create_all(job, (create_services, create_pods), gang, now).await?,
            };
            crate::fault_point::reached("after-creates", &job.name_any());
        }
        if *delete_job {
            applied.job_deleted = self.delete_job(job, now).await?;
        }
        Ok(applied)
    }

    /// Deletes the finished job for its TTL; `Ok(false)` when a change to it landed first.
    /// Kubeflow's deleted-jobs counter counts it once, also when the answer is lost.
    async fn delete_job(&self, job: &TFJob, now: Now) -> Result<bool, Error> {
        self.counting.delete_sent(job);
        let deletion = self.writer.delete_job(job).await;
        let answer = match &deletion {
            Ok(JobDeletion::Deleted) => DeleteAnswer::Deleted,
            Ok(JobDeletion::NotFound) => DeleteAnswer::NotFound,
            Ok(JobDeletion::Changed) => DeleteAnswer::Refused,
            Err(Error::DeleteJob { source, .. }) if !refused(source) => DeleteAnswer::NoAnswer,
            Err(_) => DeleteAnswer::Refused,
        };
        self.counting.delete_answered(job, answer);
        match deletion? {
            JobDeletion::Deleted => {
                self.unseen().status.gone(&job.uid().unwrap_or_default(), now.mono);
                let ttl =
                    job.status.as_ref().and_then(|s| s.applied_policy.as_ref()?.ttl_seconds_after_finished);
                info!(?ttl, "deleted the finished TFJob (ttlSecondsAfterFinished)");
                Ok(true)
            }
            JobDeletion::NotFound => Err(Error::JobGone { job: job.name_any() }),
            JobDeletion::Changed => Ok(false),
        }
    }

    /// A finished job's cleanup: its pods, then its services, each in one collection delete
    /// by the job's labels (one object delete per key where the operator may not delete
    /// collections: an install from before it needed to), then the one event that says what
    /// went (the job's outcome, when it finished in this plan).
    async fn clean_up(
        &self,
        job: &TFJob,
        cleanup: &Cleanup,
        (pods, services): (&[ObjectKey], &[ObjectKey]),
        now: Now,
    ) -> Result<(), Error> {
        let mut gone_pods = Vec::new();
        let mut gone_services = Vec::new();
        let mut result = Ok(());
        if !pods.is_empty() {
            let sent = self.writer.delete_pods_of(job, cleanup.pods).await;
            result = self.collection_deleted::<Pod>(job, sent, pods, &mut gone_pods, now).await;
        }
        if result.is_ok() && !services.is_empty() {
            let sent = self.writer.delete_services_of(job).await;
            result = self.collection_deleted::<Service>(job, sent, services, &mut gone_services, now).await;
        }
        match &cleanup.outcome {
            Some(outcome) => {
                let mut ev = outcome.clone();
                if let Some(what) = cleanup_note(cleanup.pods, &gone_pods, &gone_services) {
                    ev.note = format!("{} {what}", ev.note);
                }
                self.event(job, ev, now)?;
            }
            None => {
                self.announce(job, "SuccessfulDeletePod", "Deleted", "pod", &gone_pods, now)?;
                self.announce(job, "SuccessfulDeleteService", "Deleted", "service", &gone_services, now)?;
            }
        }
        result
    }

    /// Takes a collection delete's answer: the objects it deleted are recorded as unseen
    /// deletes and `names` gets their names; refused as forbidden, `keys` (the plan's) are
    /// deleted one by one instead.
    async fn collection_deleted<K: OwnedKind>(
        &self,
        job: &TFJob,
        sent: Result<Vec<ObjectKey>, Error>,
        keys: &[ObjectKey],
        names: &mut Vec<String>,
        now: Now,
    ) -> Result<(), Error> {
        match sent {
            Ok(deleted) => {
                let mut unseen = self.unseen();
                for key in deleted {
                    K::unseen(&mut unseen).deleted(&key.uid, now.mono);
                    names.push(key.name);
                }
                Ok(())
            }
            Err(e) if forbidden(&e) => {
                info!(error = %e, kind = K::KIND, "collection delete refused: deleting one by one");
                self.delete_owned::<K>(&job.namespace().unwrap_or_default(), keys, names, now).await
            }
            Err(e) => Err(e),
        }
    }

    /// Deletes `keys` (the plan's pods or services) in batches of at most
    /// [`WRITES_IN_FLIGHT`]; `deleted` gets their names. Deletes never wait for other jobs'
    /// creates: they are few, and they free what the cluster holds.
    async fn delete_owned<K: OwnedKind>(
        &self,
        ns: &str,
        keys: &[ObjectKey],
        deleted: &mut Vec<String>,
        now: Now,
    ) -> Result<(), Error> {
        for batch in keys.chunks(WRITES_IN_FLIGHT) {
            let deletes: Vec<_> = batch.iter().map(|key| K::delete(self.writer, ns, key)).collect();
            let results = futures::future::join_all(deletes).await;
            for (key, r) in batch.iter().zip(results) {
                r?;
                K::unseen(&mut self.unseen()).deleted(&key.uid, now.mono);
                deleted.push(key.name.clone());
            }
        }
        Ok(())
    }

    /// Publishes the one event announcing `names`, if any.
    fn announce(
        &self,
        job: &TFJob,
        reason: &str,
        verb: &str,
        noun: &str,
        names: &[String],
        now: Now,
    ) -> Result<(), Error> {
        match announcement(verb, noun, names) {
            Some(note) => self.event(job, PlannedEvent::normal(reason, note), now),
            None => Ok(()),
        }
    }
}
