//! Apply's gang-scheduling steps ([`crate::gang`]): the job's PodGroup is deleted after the
//! pods and services, and created before any service or pod; a PodGroup that
//! cannot be created stops the pods (a refusal is reported as any refused create is: a
//! Warning event now, the `ReplicaFailure` condition and the create backoff from
//! [`super::report`]). Both writes are remembered as unseen until the cache shows them.

use std::sync::PoisonError;

use kube::ResourceExt;

use super::Now;
use super::apply::{Applier, CreateStep};
use crate::api::TFJob;
use crate::error::Error;
use crate::gang::PodGroup;
use crate::plan::{Plan, PlannedEvent};
use crate::writer::Created;

impl Applier<'_> {
    /// Deletes the job's PodGroup when the plan says so (an event when this call deleted it).
    pub(super) async fn delete_pod_group(&self, job: &TFJob, plan: &Plan, now: Now) -> Result<(), Error> {
        let Some(group) = &plan.gang.delete else { return Ok(()) };
        let deleted = self.writer.delete_pod_group(&job.namespace().unwrap_or_default(), group).await?;
        self.unseen.lock().unwrap_or_else(PoisonError::into_inner).pod_groups.deleted(&group.uid, now.mono);
        if !deleted {
            return Ok(());
        }
        let note = format!("Deleted PodGroup: {}", group.name);
        self.writer.publish(job, &PlannedEvent::normal("SuccessfulDeletePodGroup", note), now.wall)
    }

    /// Creates the job's PodGroup when the plan says so: `Done` (also when found already
    /// created for this job), `Blocked` while one of the same name is terminating, `Refused`
    /// (with a Warning event) when the API server refuses it, it is someone else's, or the
    /// cluster does not serve the API.
    pub(super) async fn create_pod_group(
        &self,
        job: &TFJob,
        plan: &Plan,
        now: Now,
    ) -> Result<CreateStep, Error> {
        let Some(group) = &plan.gang.create else { return Ok(CreateStep::NoneNeeded) };
        let name = group.name_any();
        let refused = |msg: String| -> Result<CreateStep, Error> {
            self.writer.publish(
                job,
                &PlannedEvent::warning("FailedCreatePodGroup", msg.clone()),
                now.wall,
            )?;
            Ok(CreateStep::Refused(msg))
        };
        let seen = |g: PodGroup| {
            self.unseen.lock().unwrap_or_else(PoisonError::into_inner).pod_groups.created(g, now.mono)
        };
        match self.writer.create_pod_group(&job.uid().unwrap_or_default(), group).await? {
            Created::New(g) => {
                seen(g);
                let min = group.min_count().unwrap_or_default();
                let note = format!("Created PodGroup: {name} (gang of {min} pods)");
                self.writer.publish(
                    job,
                    &PlannedEvent::normal("SuccessfulCreatePodGroup", note),
                    now.wall,
                )?;
                Ok(CreateStep::Done)
            }
            Created::Existing(g) => {
                seen(g);
                Ok(CreateStep::Done)
            }
            Created::Terminating => Ok(CreateStep::Blocked),
            Created::NamespaceGone => Ok(CreateStep::NamespaceGone),
            Created::Foreign => refused(format!(
                "PodGroup {name} already exists and is not controlled by this TFJob; it is left alone and no pod \
                 is created without the job's own gang"
            )),
            Created::Refused(message) => refused(format!(
                "Error creating PodGroup {name}: {message}; no pod is created without the job's gang"
            )),
        }
    }
}
