//! What the pod and service caches keep of each object: only the fields planning, the
//! diagnosis and gang scheduling read (an allowlist, so a field the API adds later is not
//! cached either), cut at the watch before the object is stored.
//!
//! Read from a pod's metadata: name, namespace, uid, resourceVersion (the reflector and the
//! unseen writes), the creation time (the diagnosis's grace), the deletion time and grace
//! (terminating pods, `deleted_by`), the controller owner reference, and the labels of
//! [`LABELS_READ`]. From its status: the phase and reason (`Evicted`), the conditions of
//! [`CONDITIONS_READ`], and per container (init and regular) its name, restart count, state
//! (waiting reason and message, running since, terminated exit code, reason and message) and
//! last termination. A service keeps the same metadata and nothing else.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    Pod, PodCondition, PodStatus, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::PodGroup;
use crate::names;

/// Keeps in a cached object only what planning reads, so the caches stay small.
pub trait Slim {
    fn slim(&mut self);
}

/// The labels read from a cached pod or service: its replica ([`names::replica_of`]) and
/// whether it is a member of the job's PodGroup ([`crate::plan::gang::LABEL_POD_GROUP`]).
pub const LABELS_READ: [&str; 3] =
    [names::LABEL_REPLICA_TYPE, names::LABEL_REPLICA_INDEX, crate::plan::gang::LABEL_POD_GROUP];

/// The pod conditions read: `PodScheduled` (the diagnosis's `Unschedulable`) and
/// `DisruptionTarget` (a disrupted pod's failure is not counted).
pub const CONDITIONS_READ: [&str; 2] = ["PodScheduled", "DisruptionTarget"];

/// `v` without spare capacity; `None` when empty (every reader treats the two alike).
fn tight<T>(mut v: Vec<T>) -> Option<Vec<T>> {
    v.shrink_to_fit();
    (!v.is_empty()).then_some(v)
}

/// The metadata planning reads of a pod or service.
fn meta(m: ObjectMeta) -> ObjectMeta {
    let labels = m.labels.map(|mut l| {
        l.retain(|k, _| LABELS_READ.contains(&k.as_str()));
        l
    });
    let owners = m.owner_references.map(|o| o.into_iter().filter(|o| o.controller == Some(true)).collect());
    ObjectMeta {
        name: m.name,
        namespace: m.namespace,
        uid: m.uid,
        resource_version: m.resource_version,
        creation_timestamp: m.creation_timestamp,
        deletion_timestamp: m.deletion_timestamp,
        deletion_grace_period_seconds: m.deletion_grace_period_seconds,
        labels: labels.filter(|l| !l.is_empty()),
        owner_references: owners.and_then(tight),
        ..Default::default()
    }
}

fn terminated(t: ContainerStateTerminated) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        reason: t.reason,
        message: t.message,
        ..Default::default()
    }
}

fn state(s: ContainerState) -> ContainerState {
    ContainerState {
        waiting: s.waiting.map(|w| ContainerStateWaiting { reason: w.reason, message: w.message }),
        running: s.running.map(|r| ContainerStateRunning { started_at: r.started_at }),
        terminated: s.terminated.map(terminated),
    }
}

fn container(c: ContainerStatus) -> ContainerStatus {
    ContainerStatus {
        name: c.name,
        restart_count: c.restart_count,
        state: c.state.map(state),
        last_state: c
            .last_state
            .and_then(|l| l.terminated)
            .map(|t| ContainerState { terminated: Some(terminated(t)), ..Default::default() }),
        ..Default::default()
    }
}

fn containers(v: Option<Vec<ContainerStatus>>) -> Option<Vec<ContainerStatus>> {
    v.and_then(|v| tight(v.into_iter().map(container).collect()))
}

fn condition(c: PodCondition) -> PodCondition {
    PodCondition {
        type_: c.type_,
        status: c.status,
        reason: c.reason,
        message: c.message,
        ..Default::default()
    }
}

fn status(s: PodStatus) -> PodStatus {
    let conditions = s.conditions.map(|v| {
        v.into_iter().filter(|c| CONDITIONS_READ.contains(&c.type_.as_str())).map(condition).collect()
    });
    PodStatus {
        phase: s.phase,
        reason: s.reason,
        conditions: conditions.and_then(tight),
        init_container_statuses: containers(s.init_container_statuses),
        container_statuses: containers(s.container_statuses),
        ..Default::default()
    }
}

impl Slim for Pod {
    fn slim(&mut self) {
        self.metadata = meta(std::mem::take(&mut self.metadata));
        self.spec = None;
        self.status = self.status.take().map(status);
    }
}

impl Slim for Service {
    fn slim(&mut self) {
        self.metadata = meta(std::mem::take(&mut self.metadata));
        self.spec = None;
        self.status = None;
    }
}

impl Slim for PodGroup {
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
    }
}

#[cfg(test)]
mod footprint_tests;
#[cfg(test)]
mod tests;
