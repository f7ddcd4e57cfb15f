//! Apply: executes a [`Plan`] in its order through the [`Writer`] (status, events, pod
//! deletes, service deletes, creates, the TTL deletion of the job), records every write as
//! unseen until the caches show it, and returns what happened. No decisions here: what to do
//! is the plan's, what follows is [`super::report`]'s.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use tracing::info;

use super::Now;
use super::backoff::slow_start;
use super::unseen::{UnseenObjects, UnseenWrites};
use crate::api::{TFJob, TFJobStatus};
use crate::error::Error;
use crate::plan::{Plan, PlannedEvent};
use crate::writer::{Created, Namespaced, Writer};

/// Creates of one job in flight at once (the largest slow-start batch).
pub const CREATES_IN_FLIGHT: usize = 16;

/// Where apply writes: the writer, and the record of writes the caches have not shown.
pub struct Applier<'a> {
    pub writer: &'a Writer,
    pub unseen: &'a Mutex<UnseenWrites>,
}

/// What the create step came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CreateStep {
    /// The plan creates nothing.
    NoneNeeded,
    /// The job's create backoff runs until then: nothing was sent.
    Waiting { until: Instant },
    /// Every object was created (or found already created by this job).
    Done,
    /// An object of the same name is still terminating: try again shortly.
    Blocked,
    /// The API server refused a create, with its message.
    Refused(String),
    /// The namespace is being deleted: nothing more is created, nothing is reported.
    NamespaceGone,
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

/// One create's outcome.
enum CreateOutcome {
    Done,
    Blocked,
    Refused(String),
    NamespaceGone,
}

/// Pods and services: their kind's name in events and where their unseen creates are kept.
trait OwnedKind: Namespaced {
    const KIND: &'static str;
    fn unseen(w: &mut UnseenWrites) -> &mut UnseenObjects<Self>;
}

impl OwnedKind for Pod {
    const KIND: &'static str = "Pod";
    fn unseen(w: &mut UnseenWrites) -> &mut UnseenObjects<Pod> {
        &mut w.pods
    }
}

impl OwnedKind for Service {
    const KIND: &'static str = "Service";
    fn unseen(w: &mut UnseenWrites) -> &mut UnseenObjects<Service> {
        &mut w.services
    }
}

impl Applier<'_> {
    fn unseen(&self) -> MutexGuard<'_, UnseenWrites> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.unseen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes the job's status and records the stored object as unseen.
    pub async fn write_status(&self, job: &TFJob, status: &TFJobStatus, now: Now) -> Result<TFJob, Error> {
        let written = self.writer.patch_status(job, status).await?;
        self.unseen().status.wrote(written.clone(), now.mono);
        Ok(written)
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
        let ns = job.namespace().unwrap_or_default();
        let mut applied = Applied {
            job: job.clone(),
            status_written_over: None,
            creates: CreateStep::NoneNeeded,
            job_deleted: false,
        };
        if let Some(status) = &plan.status {
            applied.job = self.write_status(job, status, now).await?;
            applied.status_written_over = Some(job.status.clone());
        }
        let job = &applied.job;
        for ev in &plan.events {
            self.writer.publish(job, ev, now.wall)?;
        }
        for pod in &plan.delete_pods {
            self.writer.delete_pod(&ns, pod).await?;
            self.unseen().pods.deleted(&pod.uid, now.mono);
            self.event(
                job,
                PlannedEvent::normal("SuccessfulDeletePod", format!("Deleted pod: {}", pod.name)),
                now,
            )?;
        }
        for svc in &plan.delete_services {
            self.writer.delete_service(&ns, svc).await?;
            self.unseen().services.deleted(&svc.uid, now.mono);
            let note = format!("Deleted service: {}", svc.name);
            self.event(job, PlannedEvent::normal("SuccessfulDeleteService", note), now)?;
        }
        self.delete_pod_group(job, plan, now).await?; // gang scheduling: gang.rs
        if !plan.create_pods.is_empty() || !plan.create_services.is_empty() || plan.gang.create.is_some() {
            if creates_wait_until.is_none() && verify_job && !self.writer.job_exists(job).await? {
                return Err(Error::JobGone { job: job.name_any() });
            }
            applied.creates = match creates_wait_until {
                Some(until) => CreateStep::Waiting { until },
                None => self.create_all(job, plan, now).await?,
            };
            crate::fault_point::reached("after-creates", &job.name_any());
        }
        if plan.delete_job && self.writer.delete_job(job).await? {
            self.unseen().status.gone(&job.uid().unwrap_or_default(), now.mono);
            let ttl = job.status.as_ref().and_then(|s| s.applied_policy.as_ref()?.ttl_seconds_after_finished);
            info!(?ttl, "deleted the finished TFJob (ttlSecondsAfterFinished)");
            applied.job_deleted = true;
        }
        Ok(applied)
    }

    /// Creates the plan's services, then its pods, each kind concurrently. A refusal stops it
    /// before the pods.
    async fn create_all(&self, job: &TFJob, plan: &Plan, now: Now) -> Result<CreateStep, Error> {
        let services = self.create_batch(job, &plan.create_services, now).await?;
        if let CreateStep::Refused(_) | CreateStep::NamespaceGone = services {
            return Ok(services);
        }
        // Gang scheduling (gang.rs): the PodGroup before any pod, and no pod without it.
        match self.create_pod_group(job, plan, now).await? {
            CreateStep::Done | CreateStep::NoneNeeded => {}
            other => return Ok(other),
        }
        match self.create_batch(job, &plan.create_pods, now).await? {
            CreateStep::Done => Ok(services),
            other => Ok(other),
        }
    }

    /// Creates `objs` in slow-start batches (1, 2, 4, ... up to [`CREATES_IN_FLIGHT`], each
    /// batch at once), stopping after the first batch with a refusal: a template the API
    /// server refuses costs one create, not one per replica.
    async fn create_batch<K: OwnedKind>(
        &self,
        job: &TFJob,
        objs: &[K],
        now: Now,
    ) -> Result<CreateStep, Error> {
        let mut step = CreateStep::Done;
        let mut rest = objs;
        for size in slow_start(objs.len(), CREATES_IN_FLIGHT) {
            let (batch, tail) = rest.split_at(size);
            rest = tail;
            // Collected first: a lazily mapped iterator here trips the compiler's Send check.
            let creates: Vec<_> = batch.iter().map(|o| self.create_one(job, o, now)).collect();
            for r in futures::future::join_all(creates).await {
                match r? {
                    CreateOutcome::Done => {}
                    CreateOutcome::Blocked => step = CreateStep::Blocked,
                    CreateOutcome::Refused(msg) => return Ok(CreateStep::Refused(msg)),
                    CreateOutcome::NamespaceGone => return Ok(CreateStep::NamespaceGone),
                }
            }
        }
        Ok(step)
    }

    /// Creates one pod or service, records it as unseen and publishes its event.
    async fn create_one<K: OwnedKind>(&self, job: &TFJob, obj: &K, now: Now) -> Result<CreateOutcome, Error> {
        let name = obj.name_any();
        let (kind, noun) = (K::KIND, K::KIND.to_lowercase());
        let uid = job.uid().unwrap_or_default();
        match self.writer.create(&uid, obj).await? {
            Created::New(o) => {
                K::unseen(&mut self.unseen()).created(o, now.mono);
                let reason = format!("SuccessfulCreate{kind}");
                self.event(job, PlannedEvent::normal(&reason, format!("Created {noun}: {name}")), now)?;
                Ok(CreateOutcome::Done)
            }
            Created::Existing(o) => {
                K::unseen(&mut self.unseen()).created(o, now.mono);
                Ok(CreateOutcome::Done)
            }
            Created::Terminating => Ok(CreateOutcome::Blocked),
            Created::Foreign => {
                let msg = format!(
                    "{noun} {name} already exists and is not controlled by this TFJob; it is left alone"
                );
                self.event(job, PlannedEvent::warning(&format!("FailedCreate{kind}"), msg.clone()), now)?;
                Ok(CreateOutcome::Refused(msg))
            }
            Created::Refused(message) => {
                let msg = format!("Error creating {noun} {name}: {message}");
                self.event(job, PlannedEvent::warning(&format!("FailedCreate{kind}"), msg.clone()), now)?;
                Ok(CreateOutcome::Refused(msg))
            }
            Created::NamespaceGone => Ok(CreateOutcome::NamespaceGone),
        }
    }
}
