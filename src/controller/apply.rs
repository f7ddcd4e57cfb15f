//! Apply: executes a [`Plan`] in its order through the [`Writer`] (status, events, pod
//! deletes, a suspended job's `active: 0`, service deletes, creates, the TTL deletion of the
//! job), records every write as unseen until the caches show it, and returns what happened.
//! No decisions here: what to do is the plan's, what follows is [`super::report`]'s.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use tracing::{info, warn};

use super::Now;
use super::job_counting::JobCounting;
use super::observe::Slim;
use super::slow_start::{NewObject, SlowStart, create_order};
use super::unseen::{UnseenObjects, UnseenWrites};
use super::write_slots::{Room, WRITES_IN_FLIGHT, WriteSlots};
use crate::api::{JobView, TFJob, TFJobStatus};
use crate::error::Error;
use crate::metrics::CreateFailureCause;
use crate::metrics::Metrics;
use crate::metrics::jobs::DeleteAnswer;
use crate::objects::Builder;
use crate::plan::{ObjectKey, Plan, PlannedEvent};
use crate::writer::{Created, JobDeletion, Namespaced, Writer, failure_message, refused};

/// Where apply writes: the writer, and the record of writes the caches have not shown.
pub struct Applier<'a> {
    pub writer: &'a Writer,
    pub unseen: &'a Mutex<UnseenWrites>,
    /// Appended to TF_CONFIG addresses when set (`--cluster-domain`).
    pub cluster_domain: Option<&'a str>,
    pub metrics: &'a Metrics,
    /// Kubeflow's job counters; the TTL deletion moves one.
    pub counting: &'a JobCounting,
    /// The pod and service creates in flight over all jobs.
    pub writes: &'a WriteSlots,
    /// The job cache, as the TFJob watch keeps it: a job it shows suspended since its plan
    /// gets no more creates.
    pub jobs: &'a Store<TFJob>,
}

/// What the create step came to.
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

/// One create's outcome; a new object's name, to be announced.
enum CreateOutcome {
    Done(Option<String>),
    Blocked,
    Refused(String),
    NamespaceGone,
    Transient(String),
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
        // One event per kind announces what was deleted, also when a delete failed.
        let mut deleted = Vec::new();
        let pods = self.delete_owned::<Pod>(&ns, &plan.delete_pods, &mut deleted, now).await;
        self.announce(job, "SuccessfulDeletePod", "Deleted", "pod", &deleted, now)?;
        pods?;
        if let Some(status) = &plan.status_after_pod_deletes {
            // Every pod has a delete accepted: now the suspended job shows `active: 0`.
            applied.status_written_over = applied.status_written_over.or(Some(job.status.clone()));
            applied.job = self.write_status(job, status, now).await?;
        }
        let job = &applied.job;
        let mut deleted = Vec::new();
        let services = self.delete_owned::<Service>(&ns, &plan.delete_services, &mut deleted, now).await;
        self.announce(job, "SuccessfulDeleteService", "Deleted", "service", &deleted, now)?;
        services?;
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
        if plan.delete_job {
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

    /// Creates the plan's services and pods in slow-start batches ([`create_order`]: one
    /// object of each template first, then doubling up to [`WRITES_IN_FLIGHT`], each batch
    /// as large as the room [`WriteSlots`] gives; none when older jobs' creates come first: the
    /// job is then queued and woken), stopping after the first batch with a
    /// refusal: a template the API server refuses costs one create, not one per replica. Objects are built batch by batch. With
    /// gang scheduling, the job's PodGroup first, and nothing when it is not there.
    async fn create_all(&self, job: &TFJob, plan: &Plan, now: Now) -> Result<CreateStep, Error> {
        if self.suspended_since(job) {
            return Ok(CreateStep::NoneNeeded);
        }
        // Gang scheduling (gang.rs): the PodGroup before any pod, and no pod without it.
        match self.create_pod_group(job, plan, now).await? {
            CreateStep::Done | CreateStep::NoneNeeded => {}
            other => return Ok(other),
        }
        let view = JobView::new(job)
            .map_err(|e| Error::BuildObjects { job: job.name_any(), message: e.to_string() })?;
        let builder = Builder::new(&view, self.cluster_domain);
        // One event per kind announces what this step created, also when it stopped early.
        let (mut services, mut pods) = (Vec::new(), Vec::new());
        let step = self.create_batches(job, plan, &builder, (&mut services, &mut pods), now).await;
        self.announce(job, "SuccessfulCreateService", "Created", "service", &services, now)?;
        self.announce(job, "SuccessfulCreatePod", "Created", "pod", &pods, now)?;
        step
    }

    /// [`Self::create_all`]'s batches; `created` gets the names of the new services and pods.
    async fn create_batches(
        &self,
        job: &TFJob,
        plan: &Plan,
        builder: &Builder<'_>,
        created: (&mut Vec<String>, &mut Vec<String>),
        now: Now,
    ) -> Result<CreateStep, Error> {
        let (order, first) = create_order(&plan.create_services, &plan.create_pods);
        let mut step = CreateStep::Done;
        let mut rest = order.as_slice();
        let uid = job.uid().unwrap_or_default();
        let mut slow_start = SlowStart::new(first, self.writes.batch_max());
        let mut room: Option<Room<'_>> = None;
        let mut batches = 0usize;
        while !rest.is_empty() {
            let asked = slow_start.ask(rest.len());
            room = match room.take() {
                None => self.writes.take(job, asked),
                Some(r) => r.next_batch(asked),
            };
            let Some(held) = room.as_ref().map(|r| r.held()) else {
                return Ok(CreateStep::Queued);
            };
            // A job deleted meanwhile gets nothing more (what was created goes with it).
            if batches > 0 && self.unseen().status.is_gone(&uid) {
                return Err(Error::JobGone { job: job.name_any() });
            }
            // A job suspended meanwhile gets nothing more (its suspension deletes what was).
            if self.suspended_since(job) {
                info!(created = created.1.len(), "suspended meanwhile: the creates stop");
                return Ok(CreateStep::NoneNeeded);
            }
            let size = held.min(rest.len());
            batches += 1;
            slow_start.sent(size);
            let (batch, tail) = rest.split_at(size);
            rest = tail;
            self.metrics.create_batch(size);
            // Collected first: a lazily mapped iterator here trips the compiler's Send check.
            let (mut services, mut pods) = (Vec::new(), Vec::new());
            for obj in batch {
                match *obj {
                    NewObject::Service(r) => services.extend(builder.service(r)),
                    NewObject::Pod(r) => pods.extend(builder.pod(r).map(|p| plan.gang.member(p, job))),
                }
            }
            let services: Vec<_> = services.iter().map(|o| self.create_one(job, o, now)).collect();
            let pods: Vec<_> = pods.iter().map(|o| self.create_one(job, o, now)).collect();
            let (services, pods) =
                futures::future::join(futures::future::join_all(services), futures::future::join_all(pods))
                    .await;
            // Every outcome of the batch is read (its new objects are announced) before a
            // refusal or an error ends the step; a failure not the job's ends it when the
            // batch had nothing else to stop for.
            let mut stop: Option<Result<CreateStep, Error>> = None;
            let mut transient = None;
            for (results, names) in [(services, &mut *created.0), (pods, &mut *created.1)] {
                for r in results {
                    match r {
                        Ok(CreateOutcome::Done(new)) => names.extend(new),
                        Ok(CreateOutcome::Blocked) => step = CreateStep::Blocked,
                        Ok(CreateOutcome::Refused(msg)) => {
                            stop = stop.or(Some(Ok(CreateStep::Refused(msg))));
                        }
                        Ok(CreateOutcome::NamespaceGone) => {
                            stop = stop.or(Some(Ok(CreateStep::NamespaceGone)))
                        }
                        Ok(CreateOutcome::Transient(msg)) => transient = transient.or(Some(msg)),
                        Err(e) => stop = stop.or(Some(Err(e))),
                    }
                }
            }
            if let Some(stop) = stop {
                return stop;
            }
            if let Some(msg) = transient {
                warn!(error = %msg, "a create failed for a reason not the job's: retried with backoff");
                return Ok(CreateStep::Transient(msg));
            }
        }
        Ok(step)
    }

    /// Whether the job cache shows `job` (the same uid) suspended: a `suspend: true` stored
    /// since `job` was planned from a version that was not.
    fn suspended_since(&self, job: &TFJob) -> bool {
        let cached = self.jobs.get(&ObjectRef::from_obj(job));
        cached.is_some_and(|c| c.uid() == job.uid() && c.spec.is_suspended())
    }

    /// Creates one pod or service and records it as unseen; a refusal gets its Warning. Failed
    /// creates are counted by cause: refused (the user's to fix) or transient (not the job's).
    async fn create_one<K: OwnedKind>(&self, job: &TFJob, obj: &K, now: Now) -> Result<CreateOutcome, Error> {
        let name = obj.name_any();
        let (kind, noun) = (K::KIND, K::KIND.to_lowercase());
        let uid = job.uid().unwrap_or_default();
        let created = match self.writer.create(&uid, obj).await {
            Err(Error::Create { source, .. }) => {
                self.metrics.create_failed(CreateFailureCause::Transient);
                let msg = format!("Creating {noun} {name} failed: {}", failure_message(&source));
                return Ok(CreateOutcome::Transient(msg));
            }
            other => other?,
        };
        if matches!(created, Created::Refused(_) | Created::Foreign) {
            self.metrics.create_failed(CreateFailureCause::Refused);
        }
        match created {
            Created::New(mut o) => {
                // Kept as the watch keeps it: what planning reads, not the pod's TF_CONFIG.
                o.slim();
                K::unseen(&mut self.unseen()).created(o, now.mono);
                Ok(CreateOutcome::Done(Some(name)))
            }
            Created::Existing(mut o) => {
                o.slim();
                K::unseen(&mut self.unseen()).created(o, now.mono);
                Ok(CreateOutcome::Done(None))
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
