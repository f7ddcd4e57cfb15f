//! Kueue's Workload (`kueue.x-k8s.io/v1beta2`), which the operator creates and follows for a
//! queued TFJob with `--kueue-workloads=operator`: the fields it writes and the status it
//! reads (admission, conditions), and the ResourceFlavor fields an admission merges in.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodTemplateSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta};
use serde::{Deserialize, Serialize};

/// The Workload API this operator writes.
pub const GROUP: &str = "kueue.x-k8s.io";
pub const VERSION: &str = "v1beta2";
pub const API_VERSION: &str = "kueue.x-k8s.io/v1beta2";
pub const KIND: &str = "Workload";
pub const PLURAL: &str = "workloads";

/// Condition types Kueue sets on a Workload.
pub const QUOTA_RESERVED: &str = "QuotaReserved";
pub const ADMITTED: &str = "Admitted";
pub const EVICTED: &str = "Evicted";
pub const REQUEUED: &str = "Requeued";
pub const FINISHED: &str = "Finished";

/// A Workload, with the fields this operator writes and reads; others are dropped on decode
/// (the operator writes by merge patch, so it never sends them back).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Workload {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: WorkloadSpec,
    #[serde(default)]
    pub status: Option<WorkloadStatus>,
}

/// What the Workload asks Kueue for.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// One per replica type: its name (the type in lowercase), count and pod template.
    #[serde(default)]
    pub pod_sets: Vec<PodSet>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub queue_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_ref: Option<PriorityClassRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Set false by Kueue (or a user) to deactivate the Workload; never written here.
    #[serde(default, skip_serializing)]
    pub active: Option<bool>,
}

/// One pod set: `count` pods of `template`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PodSet {
    pub name: String,
    pub count: i32,
    pub template: PodTemplateSpec,
}

/// The WorkloadPriorityClass (or PriorityClass) the priority comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriorityClassRef {
    pub group: String,
    pub kind: String,
    pub name: String,
}

/// What Kueue decided.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub admission: Option<Admission>,
    /// The admission checks' states, with what each adds to the pods of a pod set.
    #[serde(default)]
    pub admission_checks: Vec<AdmissionCheckState>,
}

/// One admission check of the Workload.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionCheckState {
    pub name: String,
    #[serde(default)]
    pub pod_set_updates: Vec<PodSetUpdate>,
}

/// What an admission check adds to a pod set's template.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSetUpdate {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
}

/// The quota reserved: the ClusterQueue and, per pod set, the flavor of each resource.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Admission {
    #[serde(default)]
    pub cluster_queue: String,
    #[serde(default)]
    pub pod_set_assignments: Vec<PodSetAssignment>,
}

/// One pod set's assignment: resource name → ResourceFlavor name.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PodSetAssignment {
    pub name: String,
    #[serde(default)]
    pub flavors: BTreeMap<String, String>,
}

/// What an admission merges into a pod set's template from a ResourceFlavor.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlavorSpec {
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub tolerations: Vec<Toleration>,
}

impl Workload {
    /// The condition of `type_`, if Kueue set it.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the condition `type_` has status True.
    pub fn is(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }

    /// The admission, when Kueue admitted the Workload (`Admitted` True).
    pub fn admission(&self) -> Option<&Admission> {
        self.is(ADMITTED).then(|| self.status.as_ref()?.admission.as_ref()).flatten()
    }
}

impl k8s_openapi::Resource for Workload {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = KIND;
    const VERSION: &'static str = VERSION;
    const URL_PATH_SEGMENT: &'static str = PLURAL;
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::ListableResource for Workload {
    const LIST_KIND: &'static str = "WorkloadList";
}

impl k8s_openapi::Metadata for Workload {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl Serialize for Workload {
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
