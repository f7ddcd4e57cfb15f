//! Apply's gang-scheduling steps ([`crate::plan::gang`] decides, [`crate::writer::pod_group`]
//! writes and words the events): the job's PodGroup is deleted after the pods and services,
//! and created before any service or pod; a PodGroup that cannot be created stops the pods (a
//! refusal is reported as any refused create is: a Warning event now, the `ReplicaFailure`
//! condition and the create backoff from [`super::report`]). Both writes are remembered as
//! unseen until the cache shows them.

use std::sync::PoisonError;

use kube::ResourceExt;

use super::{Applier, CreateStep};
use crate::api::TFJob;
use crate::controller::Now;
use crate::error::Error;
use crate::plan::gang::GangPlan;
use crate::writer::Created;
use crate::writer::pod_group::{create_event, delete_event};

impl Applier<'_> {
    /// Deletes the job's PodGroup when the plan says so (an event when this call deleted it).
    pub(super) async fn delete_pod_group(&self, job: &TFJob, gang: &GangPlan, now: Now) -> Result<(), Error> {
        let Some(group) = &gang.delete else { return Ok(()) };
        let deleted = self.writer.delete_pod_group(&job.namespace().unwrap_or_default(), group).await?;
        self.unseen.lock().unwrap_or_else(PoisonError::into_inner).pod_groups.deleted(&group.uid, now.mono);
        match delete_event(deleted, group) {
            Some(event) => self.writer.publish(job, &event, now.wall),
            None => Ok(()),
        }
    }

    /// Creates the job's PodGroup when the plan says so: `Done` (also when found already
    /// created for this job), `Blocked` while one of the same name is terminating, `Refused`
    /// (with a Warning event, [`create_event`]) when the API server refuses it, it is someone
    /// else's, or the cluster does not serve the API.
    pub(super) async fn create_pod_group(
        &self,
        job: &TFJob,
        gang: &GangPlan,
        now: Now,
    ) -> Result<CreateStep, Error> {
        let Some(group) = &gang.create else { return Ok(CreateStep::NoneNeeded) };
        let created = self.writer.create_pod_group(&job.uid().unwrap_or_default(), group).await?;
        let event = create_event(&created, group);
        let step = match created {
            Created::New(g) | Created::Existing(g) => {
                self.unseen.lock().unwrap_or_else(PoisonError::into_inner).pod_groups.created(g, now.mono);
                CreateStep::Done
            }
            Created::Terminating => CreateStep::Blocked,
            Created::NamespaceGone => CreateStep::NamespaceGone,
            // Retried as a failed reconcile is, with its backoff.
            Created::Transient(source) => {
                return Err(Error::Create { kind: "PodGroup".into(), name: group.name_any(), source });
            }
            // The Warning's note says why.
            Created::Foreign | Created::Refused(_) => {
                CreateStep::Refused(event.as_ref().map(|e| e.note.clone()).unwrap_or_default())
            }
        };
        if let Some(event) = &event {
            self.writer.publish(job, event, now.wall)?;
        }
        Ok(step)
    }
}
