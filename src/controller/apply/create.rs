//! Apply's create step: the plan's services and pods in slow-start batches as room is given
//! ([`crate::controller::write_slots::WriteSlots`]), each create's answer turned into what the step came to.

use kube::ResourceExt;
use tracing::{info, warn};

use super::{Applier, CreateStep, OwnedKind};
use crate::api::{JobView, TFJob};
use crate::controller::Now;
use crate::controller::cached_job;
use crate::controller::slow_start::{NewObject, SlowStart, create_order};
use crate::controller::write_slots::Room;
use crate::error::Error;
use crate::metrics::CreateFailureCause;
use crate::objects::Builder;
use crate::plan::gang::GangPlan;
use crate::plan::{PlannedEvent, ReplicaId};
use crate::writer::{Created, failure_message};

impl Applier<'_> {
    /// Creates the plan's services and pods in slow-start batches ([`create_order`]: one
    /// object of each template first, then doubling up to [`WRITES_IN_FLIGHT`], each batch
    /// as large as the room [`crate::controller::write_slots::WriteSlots`] gives; none when older jobs' creates come first: the
    /// job is then queued and woken), stopping after the first batch with a
    /// refusal: a template the API server refuses costs one create, not one per replica. Objects are built batch by batch. With
    /// gang scheduling, the job's PodGroup first, and nothing when it is not there.
    pub(super) async fn create_all(
        &self,
        job: &TFJob,
        (services, pods): (&[ReplicaId], &[ReplicaId]),
        gang: &GangPlan,
        now: Now,
    ) -> Result<CreateStep, Error> {
        if self.suspended_since(job) {
            return Ok(CreateStep::NoneNeeded);
        }
        // Gang scheduling (gang.rs): the PodGroup before any pod, and no pod without it.
        match self.create_pod_group(job, gang, now).await? {
            CreateStep::Done | CreateStep::NoneNeeded => {}
            other => return Ok(other),
        }
        let view = JobView::new(job)
            .map_err(|e| Error::BuildObjects { job: job.name_any(), message: e.to_string() })?;
        let builder = Builder::new(&view, self.cluster_domain);
        // With --announce-creates, one event per kind announces what this step created, also
        // when it stopped early.
        let (order, first) = create_order(services, pods);
        let (mut services, mut pods) = (Vec::new(), Vec::new());
        let step =
            self.create_batches(job, (&order, first), gang, &builder, (&mut services, &mut pods), now).await;
        if self.announce_creates {
            self.announce(job, "SuccessfulCreateService", "Created", "service", &services, now)?;
            self.announce(job, "SuccessfulCreatePod", "Created", "pod", &pods, now)?;
        }
        step
    }

    /// [`Self::create_all`]'s batches; `created` gets the names of the new services and pods.
    async fn create_batches(
        &self,
        job: &TFJob,
        (order, first): (&[NewObject], usize),
        gang: &GangPlan,
        builder: &Builder<'_>,
        created: (&mut Vec<String>, &mut Vec<String>),
        now: Now,
    ) -> Result<CreateStep, Error> {
        let mut step = CreateStep::Done;
        let mut rest = order;
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
                    NewObject::Pod(r) => pods.extend(builder.pod(r).map(|p| gang.member(p, job))),
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
                        Ok((CreateStep::Done, new)) => names.extend(new),
                        Ok((CreateStep::Blocked, _)) => step = CreateStep::Blocked,
                        Ok((CreateStep::Transient(msg), _)) => transient = transient.or(Some(msg)),
                        // A refusal, or the namespace going.
                        Ok((other, _)) => stop = stop.or(Some(Ok(other))),
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
        let cached = self.jobs.get(&cached_job::key(job));
        cached.is_some_and(|c| c.uid() == job.uid() && c.job().is_ok_and(|c| c.spec.is_suspended()))
    }

    /// Records a created (or found) object as unseen until the cache shows it, kept as the
    /// watch keeps it: what planning reads, not the pod's TF_CONFIG.
    fn created<K: OwnedKind>(&self, mut obj: K, now: Now) {
        obj.slim();
        K::unseen(&mut self.unseen()).created(obj, now.mono);
    }

    /// Creates one pod or service and records it as unseen: what it came to for the step
    /// (`Done` with the name of a new object, to be announced), and a refusal gets its
    /// Warning. Failed creates are counted by cause: refused (the user's to fix) or transient
    /// (not the job's).
    async fn create_one<K: OwnedKind>(
        &self,
        job: &TFJob,
        obj: &K,
        now: Now,
    ) -> Result<(CreateStep, Option<String>), Error> {
        let name = obj.name_any();
        let (kind, noun) = (K::KIND, K::KIND.to_lowercase());
        let created = self.writer.create(&job.uid().unwrap_or_default(), obj).await?;
        match &created {
            Created::Refused(_) | Created::Foreign => self.metrics.create_failed(CreateFailureCause::Refused),
            Created::Transient(_) => self.metrics.create_failed(CreateFailureCause::Transient),
            _ => {}
        }
        let refusal = |msg: String| -> Result<(CreateStep, Option<String>), Error> {
            self.event(job, PlannedEvent::warning(&format!("FailedCreate{kind}"), msg.clone()), now)?;
            Ok((CreateStep::Refused(msg), None))
        };
        match created {
            Created::New(o) => {
                self.created(o, now);
                Ok((CreateStep::Done, Some(name)))
            }
            Created::Existing(o) => {
                self.created(o, now);
                Ok((CreateStep::Done, None))
            }
            Created::Terminating => Ok((CreateStep::Blocked, None)),
            Created::Foreign => refusal(format!(
                "{noun} {name} already exists and is not controlled by this TFJob; it is left alone"
            )),
            Created::Refused(message) => refusal(format!("Error creating {noun} {name}: {message}")),
            Created::NamespaceGone => Ok((CreateStep::NamespaceGone, None)),
            Created::Transient(source) => Ok((
                CreateStep::Transient(format!("Creating {noun} {name} failed: {}", failure_message(&source))),
                None,
            )),
        }
    }
}
