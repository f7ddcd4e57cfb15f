//! Gang scheduling with Kubernetes' own PodGroup (`scheduling.k8s.io/v1alpha2`, alpha in
//! 1.35 and 1.36): the mode (`--gang-scheduling`), the PodGroup type and its pure builder, and
//! the pure planning step that decides, after [`crate::plan`], whether the job's PodGroup is
//! created or deleted and makes every pod to be created name it.
//!
//! With `native`, every unfinished, unsuspended TFJob has one PodGroup named after it, owned by
//! it (controller owner reference), whose `spec.schedulingPolicy.gang.minCount` is
//! `runPolicy.schedulingPolicy.minAvailable` or the sum of all replicas; kube-scheduler's
//! `GangScheduling` plugin then binds none of the job's pods until that many fit at once. The
//! PodGroup is created before any pod (apply creates it first and creates no pod when it is
//! refused), and deleted when the job finishes (whatever `cleanPodPolicy` keeps) or is
//! suspended; a resume creates it again.

use std::collections::BTreeMap;

use clap::ValueEnum;
use k8s_openapi::api::core::v1::{Pod, PodSchedulingGroup};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

use crate::api::{JobView, TFJob};
use crate::names;
use crate::plan::{ObjectKey, Plan};

/// How the operator gang-schedules jobs (`--gang-scheduling`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum GangScheduling {
    /// No gang scheduling: `runPolicy.schedulingPolicy` is ignored and pods are scheduled one
    /// by one.
    #[default]
    None,
    /// Kubernetes' own PodGroup (`scheduling.k8s.io/v1alpha2`) and kube-scheduler's
    /// `GangScheduling` plugin.
    Native,
}

/// The PodGroup API this operator writes.
pub const GROUP: &str = "scheduling.k8s.io";
pub const VERSION: &str = "v1alpha2";
pub const API_VERSION: &str = "scheduling.k8s.io/v1alpha2";
pub const KIND: &str = "PodGroup";
pub const PLURAL: &str = "podgroups";

/// What to tell the user when the cluster does not serve the PodGroup API.
pub const NOT_SERVED: &str = "the cluster does not serve scheduling.k8s.io/v1alpha2 PodGroups: native gang \
scheduling needs Kubernetes 1.36 with the feature gates GenericWorkload and GangScheduling on kube-apiserver, \
kube-controller-manager and kube-scheduler, and --runtime-config=scheduling.k8s.io/v1alpha2=true on \
kube-apiserver";

/// A `scheduling.k8s.io/v1alpha2` PodGroup, with the fields this operator writes.
/// (k8s-openapi's newest API version has only v1alpha3 and v1beta1; 1.36 serves v1alpha2.)
/// Serialized with its `apiVersion` and `kind`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PodGroup {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodGroupSpec,
}

/// The PodGroup's spec: its scheduling policy and priority class.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodGroupSpec {
    #[serde(default)]
    pub scheduling_policy: SchedulingPolicy,
    /// Used by kube-scheduler only with the `WorkloadAwarePreemption` feature gate; the API
    /// server drops it otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// A union: `basic` or `gang`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SchedulingPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gang: Option<GangPolicy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic: Option<BTreeMap<String, serde_json::Value>>,
}

/// All-or-nothing: at least `minCount` pods of the group are bound together, or none.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GangPolicy {
    pub min_count: i32,
}

impl k8s_openapi::Resource for PodGroup {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = KIND;
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = PLURAL;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for PodGroup {
    const LIST_KIND: &'static str = "PodGroupList";
}

impl k8s_openapi::Metadata for PodGroup {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Serialize for PodGroup {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut s = serializer.serialize_struct(KIND, 4)?;
        s.serialize_field("apiVersion", API_VERSION)?;
        s.serialize_field("kind", KIND)?;
        s.serialize_field("metadata", &self.metadata)?;
        s.serialize_field("spec", &self.spec)?;
        s.end()
    }
}

impl PodGroup {
    /// The gang's `minCount`, if it is a gang.
    pub fn min_count(&self) -> Option<i32> {
        self.spec.scheduling_policy.gang.as_ref().map(|g| g.min_count)
    }
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

/// What the planning step decided about the job's PodGroup ([`Plan::gang`]).
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

/// The pure planning step after [`crate::plan::plan_with`]: with `native`, a job that runs
/// (neither finished, after this plan's status, nor suspended) gets its PodGroup when the
/// observed one is missing, and every pod the plan creates names it; a job that finished or
/// is suspended loses it. `observed` is the PodGroup this job controls, if the cache shows
/// one; `pods` the job's pods. With `none`, nothing.
///
/// A running job without a PodGroup whose pods name none started without gang scheduling
/// (before the operator ran with `native`): it is left so until it has no pods (a
/// suspension, or its end), since a new pod in a gang its running peers are not part of
/// would never be scheduled. A job whose pods name a PodGroup that is gone gets it again.
///
/// The decision is kept in [`Plan::gang`] and returned.
pub fn plan(
    mode: GangScheduling,
    job: &TFJob,
    pods: &[Pod],
    plan: &mut Plan,
    observed: Option<&PodGroup>,
) -> GangPlan {
    let out = decide(mode, job, pods, plan, observed);
    plan.gang = out.clone();
    out
}

/// Whether the pod was created as a member of a PodGroup.
fn in_gang(pod: &Pod) -> bool {
    pod.metadata.labels.as_ref().is_some_and(|l| l.contains_key(LABEL_POD_GROUP))
}

fn decide(
    mode: GangScheduling,
    job: &TFJob,
    pods: &[Pod],
    plan: &mut Plan,
    observed: Option<&PodGroup>,
) -> GangPlan {
    let mut out = GangPlan::default();
    if mode == GangScheduling::None || job.metadata.uid.is_none() {
        return out;
    }
    let finished = plan.status.as_ref().or(job.status.as_ref()).is_some_and(|s| s.is_finished());
    if finished || job.spec.is_suspended() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        ConditionType, ReplicaSpec, RunPolicy, SchedulingPolicy as Policy, TFJobSpec, TFJobStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn job(replicas: &[(&str, i32)], policy: Option<Policy>) -> TFJob {
        let mut spec = TFJobSpec {
            run_policy: Some(RunPolicy { scheduling_policy: policy, ..Default::default() }),
            ..Default::default()
        };
        for (k, n) in replicas {
            spec.tf_replica_specs
                .insert(k.to_string(), ReplicaSpec { replicas: Some(*n), ..Default::default() });
        }
        let mut j = TFJob::new("train", spec);
        j.metadata.namespace = Some("ns".into());
        j.metadata.uid = Some("uid-1".into());
        j
    }

    fn pod(name: &str) -> Pod {
        Pod {
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            spec: Some(Default::default()),
            status: None,
        }
    }

    fn observed(deleting: bool) -> PodGroup {
        let j = job(&[("Worker", 2)], None);
        let mut g = pod_group_for(&JobView::new(&j).unwrap()).unwrap();
        g.metadata.uid = Some("pg-uid".into());
        if deleting {
            g.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        }
        g
    }

    #[test]
    fn the_pod_group_is_named_after_the_job_owned_by_it_and_sized_by_all_replicas() {
        let j = job(&[("PS", 1), ("Worker", 3), ("Evaluator", 1)], None);
        let g = pod_group_for(&JobView::new(&j).unwrap()).unwrap();
        assert_eq!(g.metadata.name.as_deref(), Some("train"));
        assert_eq!(g.metadata.namespace.as_deref(), Some("ns"));
        assert!(names::controlled_by(&g.metadata, "uid-1"));
        assert_eq!(g.min_count(), Some(5));
        assert_eq!(g.spec.priority_class_name, None);
        let labels = g.metadata.labels.clone().unwrap();
        assert_eq!(labels.get(names::LABEL_JOB_NAME).map(String::as_str), Some("train"));
        let v = serde_json::to_value(&g).unwrap();
        assert_eq!(v["apiVersion"], "scheduling.k8s.io/v1alpha2");
        assert_eq!(v["kind"], "PodGroup");
        assert_eq!(v["spec"], serde_json::json!({"schedulingPolicy": {"gang": {"minCount": 5}}}));
    }

    #[test]
    fn min_available_and_the_priority_class_come_from_the_scheduling_policy() {
        let policy =
            Policy { min_available: Some(2), priority_class: Some("high".into()), ..Default::default() };
        let j = job(&[("Worker", 4)], Some(policy));
        let g = pod_group_for(&JobView::new(&j).unwrap()).unwrap();
        assert_eq!(g.min_count(), Some(2));
        assert_eq!(g.spec.priority_class_name.as_deref(), Some("high"));
        let mut p = pod("train-worker-0");
        join(&mut p, &j);
        let spec = p.spec.unwrap();
        assert_eq!(spec.scheduling_group.and_then(|g| g.pod_group_name).as_deref(), Some("train"));
        assert_eq!(spec.priority_class_name.as_deref(), Some("high"));
        // A template's own priority class stays.
        let mut p = pod("train-worker-1");
        p.spec.as_mut().unwrap().priority_class_name = Some("mine".into());
        join(&mut p, &j);
        assert_eq!(p.spec.unwrap().priority_class_name.as_deref(), Some("mine"));
    }

    #[test]
    fn a_running_job_gets_its_pod_group_and_its_pods_name_it() {
        let j = job(&[("Worker", 2)], None);
        let mut p = Plan::default();
        let g = plan(GangScheduling::Native, &j, &[], &mut p, None);
        assert_eq!(p.gang, g, "kept in the plan");
        assert_eq!(g.create.as_ref().and_then(PodGroup::min_count), Some(2));
        assert_eq!(g.delete, None);
        let member = g.member(pod("train-worker-0"), &j);
        let group = member.spec.as_ref().and_then(|s| s.scheduling_group.as_ref());
        assert_eq!(group.and_then(|g| g.pod_group_name.as_deref()), Some("train"));
        // Seen in the cache: not created again; the pods still name it.
        let g = plan(GangScheduling::Native, &j, &[], &mut Plan::default(), Some(&observed(false)));
        assert_eq!(g, GangPlan { join: true, ..Default::default() });
        // Still terminating (a suspension's): created again, the create waits for it.
        let g = plan(GangScheduling::Native, &j, &[], &mut Plan::default(), Some(&observed(true)));
        assert!(g.create.is_some());
    }

    #[test]
    fn without_gang_scheduling_nothing_changes() {
        let j = job(&[("Worker", 2)], Some(Policy { min_available: Some(1), ..Default::default() }));
        let mut p = Plan::default();
        let g = plan(GangScheduling::None, &j, &[], &mut p, Some(&observed(false)));
        assert_eq!(g, GangPlan::default());
        assert_eq!(p, Plan::default());
        assert_eq!(g.member(pod("train-worker-0"), &j), pod("train-worker-0"));
    }

    #[test]
    fn a_finished_or_suspended_job_loses_its_pod_group() {
        let mut done = job(&[("Worker", 2)], None);
        let mut st = TFJobStatus::default();
        crate::plan::set(
            &mut st,
            ConditionType::Succeeded,
            "Succeeded",
            "done".into(),
            Timestamp::UNIX_EPOCH,
        );
        done.status = Some(st.clone());
        let g = plan(GangScheduling::Native, &done, &[], &mut Plan::default(), Some(&observed(false)));
        assert_eq!(g.delete.map(|k| (k.name, k.uid)), Some(("train".into(), "pg-uid".into())));
        assert_eq!(g.create, None);
        // Finished by this very plan.
        let running = job(&[("Worker", 2)], None);
        let mut p = Plan { status: Some(st), ..Default::default() };
        assert!(plan(GangScheduling::Native, &running, &[], &mut p, Some(&observed(false))).delete.is_some());
        // Already being deleted, or gone: nothing more.
        assert_eq!(
            plan(GangScheduling::Native, &done, &[], &mut Plan::default(), Some(&observed(true))),
            GangPlan::default()
        );
        assert_eq!(plan(GangScheduling::Native, &done, &[], &mut Plan::default(), None), GangPlan::default());
        let mut suspended = job(&[("Worker", 2)], None);
        suspended.spec.run_policy.as_mut().unwrap().suspend = Some(true);
        let g = plan(GangScheduling::Native, &suspended, &[], &mut Plan::default(), Some(&observed(false)));
        assert!(g.delete.is_some() && g.create.is_none());
    }

    #[test]
    fn a_job_started_without_gang_scheduling_is_left_so_until_it_has_no_pods() {
        let j = job(&[("Worker", 2)], None);
        let old = pod("train-worker-0");
        let g = plan(GangScheduling::Native, &j, std::slice::from_ref(&old), &mut Plan::default(), None);
        assert_eq!(g, GangPlan::default(), "no gang its peer is not in");
        // A pod that names the PodGroup: the PodGroup was lost, and comes back.
        let mut member = pod("train-worker-0");
        join(&mut member, &j);
        assert_eq!(
            member.metadata.labels.as_ref().unwrap().get(LABEL_POD_GROUP).map(String::as_str),
            Some("train")
        );
        let g = plan(GangScheduling::Native, &j, &[member], &mut Plan::default(), None);
        assert!(g.create.is_some());
        // Only terminating pods (a resume): a new gang.
        let mut going = old;
        going.metadata.deletion_timestamp = Some(Time(Timestamp::UNIX_EPOCH));
        let g = plan(GangScheduling::Native, &j, &[going], &mut Plan::default(), None);
        assert!(g.create.is_some());
    }
}
