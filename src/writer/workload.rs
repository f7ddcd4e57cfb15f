//! The writes of the operator's own Kueue Workloads (`--kueue-workloads=operator`): the job's
//! suspend-and-templates patch, the Workload's create, its spec and status patches. Every
//! patch is a merge patch fenced by the resourceVersion it was decided from, so a 409 means
//! "decide again from what is stored now".

use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::Value;

use super::{Created, FIELD_MANAGER, Writer, is_status};
use crate::api::TFJob;
use crate::api::workload::Workload;
use crate::error::Error;

/// What a fenced patch came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patched {
    Done,
    /// The object changed since the decision (409) or is gone (404): decide again.
    Stale,
}

fn outcome(res: Result<(), kube::Error>, err: impl FnOnce(kube::Error) -> Error) -> Result<Patched, Error> {
    match res {
        Ok(()) => Ok(Patched::Done),
        Err(e) if is_status(&e, 409) || is_status(&e, 404) => Ok(Patched::Stale),
        Err(e) => Err(err(e)),
    }
}

impl Writer {
    /// Patches the job's `runPolicy.suspend` and templates (a merge patch with its
    /// resourceVersion).
    pub async fn patch_job(&self, job: &TFJob, patch: &Value) -> Result<Patched, Error> {
        self.gate.check()?;
        let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let res = self.jobs(job).patch(&job.name_any(), &pp, &Patch::Merge(patch)).await.map(drop);
        outcome(res, |source| Error::PatchJob { job: job.name_any(), source })
    }

    /// Creates the job's Workload (job uid `owner`), as [`Writer::create`].
    pub async fn create_workload(&self, owner: &str, wl: &Workload) -> Result<Created<Workload>, Error> {
        self.create(owner, wl).await
    }

    /// Patches the Workload's spec, or its status (`status`), by a merge patch with its
    /// resourceVersion.
    pub async fn patch_workload(&self, wl: &Workload, patch: &Value, status: bool) -> Result<Patched, Error> {
        self.gate.check()?;
        let api: Api<Workload> = Api::namespaced(self.client.clone(), &wl.namespace().unwrap_or_default());
        let pp = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
        let name = wl.name_any();
        let res = if status {
            api.patch_status(&name, &pp, &Patch::Merge(patch)).await
        } else {
            api.patch(&name, &pp, &Patch::Merge(patch)).await
        };
        outcome(res.map(drop), |source| Error::PatchWorkload { name, source })
    }
}
