//! Gang scheduling's decisions, pure: the mode (`--gang-scheduling`), the job's PodGroup as it
//! is created, the pods that join it, and, after the rest of the plan, whether the PodGroup
//! is created or deleted ([`decide`], kept in [`Plan::gang`]).
//!
//! With `native`, every unfinished, unsuspended TFJob has one PodGroup named after it, owned by
//! it (controller owner reference), whose `spec.schedulingPolicy.gang.minCount` is
//! `runPolicy.schedulingPolicy.minAvailable` or the sum of all replicas; kube-scheduler's
//! `GangScheduling` plugin then binds none of the job's pods until that many fit at once. The
//! PodGroup is created before any pod (apply creates it first and creates no pod when it is
//! refused), and deleted when the job finishes (whatever `cleanPodPolicy` keeps) or is
//! suspended; a resume creates it again. Its writes are in [`crate::writer`].

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodSchedulingGroup};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::{ObjectKey, Plan};
use crate::api::pod_group::{GangPolicy, PodGroupSpec, SchedulingPolicy};
use crate::api::{ConditionType, JobView, PodGroup, TFJob};
use crate::names;

/// How the operator gang-schedules jobs (`--gang-scheduling`; its values are in
/// [`crate::cli`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GangScheduling {
    /// No gang scheduling: `runPolicy.schedulingPolicy` is ignored and pods are scheduled one
    /// by one.
    #[default]
    None,
    /// Kubernetes' own PodGroup (`scheduling.k8s.io/v1alpha2`) and kube-scheduler's
    /// `GangScheduling` plugin.
    Native,
}

/// The gang's size: `runPolicy.schedulingPolicy.minAvailable`, else every replica of every
/// type (as Kubeflow counts), at least 1.
pub fn min_count(job: &JobView<'_>) -> i32 {
    let all = i32::try_from(job.total_replicas).unwrap_or(i32::MAX);
    scheduling_policy(job.job).and_then(|s| s.min_available).unwrap_or(all).max(1)
}

fn scheduling_policy(job: &TFJob) -> Option<&crate::api::SchedulingPolicy> {
    job.spec.run_policy.as_ref()?.scheduling_policy.as_ref()
}

/// The job's PodGroup: named after it, in its namespace, with the operator's labels (so the
/// label-selected watch sees it), owned by it, with `gang.minCount` and the priority class.
/// `None` when the job has no name or uid.
pub fn pod_group_for(job: &JobView<'_>) -> Option<PodGroup> {
    let name = job.job.metadata.name.clone()?;
    let labels = BTreeMap::from([
        (names::LABEL_OPERATOR_NAME.to_string(), names::OPERATOR_NAME.to_string()),
        (names::LABEL_JOB_NAME.to_string(), name.clone()),
    ]);
    Some(PodGroup {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: job.job.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![names::owner_ref(job.job)?]),
            ..Default::default()
        },
        spec: PodGroupSpec {
            scheduling_policy: SchedulingPolicy {
                gang: Some(GangPolicy { min_count: min_count(job) }),
                basic: None,
            },
            priority_class_name: scheduling_policy(job.job).and_then(|s| s.priority_class.clone()),
        },
    })
}

/// The label of the pods that name the job's PodGroup (the caches keep labels, not specs).
pub const LABEL_POD_GROUP: &str = "tfjob.kubeflow.org/pod-group";

/// Makes `pod` a member of the job's PodGroup (`spec.schedulingGroup.podGroupName`, and the
/// label [`LABEL_POD_GROUP`]); a pod whose template names no priority class gets the gang's.
pub fn join(pod: &mut Pod, job: &TFJob) {
    let Some(name) = job.metadata.name.clone() else { return };
    let priority = scheduling_policy(job).and_then(|s| s.priority_class.clone());
    pod.metadata.labels.get_or_insert_with(Default::default).insert(LABEL_POD_GROUP.into(), name.clone());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.scheduling_group = Some(PodSchedulingGroup { pod_group_name: Some(name) });
    if spec.priority_class_name.is_none() {
        spec.priority_class_name = priority;
    }
}

/// What [`decide`] decided about the job's PodGroup ([`Plan::gang`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GangPlan {
    /// Create it before any pod (it is missing and the job runs).
    pub create: Option<PodGroup>,
    /// Delete it (the job finished or is suspended), with the uid seen as a precondition.
    pub delete: Option<ObjectKey>,
    /// The pods to create are members of the job's PodGroup ([`join`]).
    pub join: bool,
}

impl GangPlan {
    /// `pod` as it is created: a member of the job's PodGroup when the plan says so.
    pub fn member(&self, mut pod: Pod, job: &TFJob) -> Pod {
        if self.join {
            join(&mut pod, job);
        }
        pod
    }
}

/// Whether the pod was created as a member of a PodGroup.
fn in_gang(pod: &Pod) -> bool {
    pod.metadata.labels.as_ref().is_some_and(|l| l.contains_key(LABEL_POD_GROUP))
}

/// The gang step of planning, after [`super::plan_with`] made `planned` (the caller keeps the
/// result in [`Plan::gang`]). With `native`, a job that runs (neither finished, after
/// `planned`'s status, nor suspended) gets its PodGroup when the observed one is missing, and
/// every pod the plan creates names it; a job that finished or is suspended loses it.
/// `observed` is the PodGroup this job controls, if the cache shows one; `pods` the job's
/// pods. With `none`, nothing.
///
/// A running job whose live pods name no PodGroup started without gang scheduling: it is
/// left so until it has no pods, since a new pod in a gang its running peers are not part of
/// would never be scheduled. A job whose pods name a PodGroup that is gone gets it again.
pub fn decide(
    mode: GangScheduling,
    job: &TFJob,
    pods: &[Pod],
    planned: &Plan,
    observed: Option<&PodGroup>,
) -> GangPlan {
    let mut out = GangPlan::default();
    if mode == GangScheduling::None || job.metadata.uid.is_none() {
        return out;
    }
    let finished = planned.status.as_ref().or(job.status.as_ref()).is_some_and(|s| s.is_finished());
    // Held without pods: suspended, or waiting in a queue (the plan says `Suspended`).
    let held =
        planned.status.as_ref().or(job.status.as_ref()).is_some_and(|s| s.is_true(ConditionType::Suspended));
    if finished || job.spec.is_suspended() || held {
        out.delete =
            observed.filter(|g| g.metadata.deletion_timestamp.is_none()).map(|g| ObjectKey::of(&g.metadata));
        return out;
    }
    let Ok(view) = JobView::new(job) else { return out };
    // A PodGroup still terminating (its pods of before a suspension are going) is created
    // again: the create waits for it to go.
    if observed.is_none_or(|g| g.metadata.deletion_timestamp.is_some()) {
        let live: Vec<&Pod> = pods.iter().filter(|p| p.metadata.deletion_timestamp.is_none()).collect();
        if !live.is_empty() && !live.iter().any(|p| in_gang(p)) {
            return out; // started without gang scheduling
        }
        out.create = pod_group_for(&view);
    }
    out.join = true;
    out
}
