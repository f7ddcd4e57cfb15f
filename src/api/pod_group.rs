//! Kubernetes' own PodGroup (`scheduling.k8s.io/v1alpha2`, alpha in 1.35 and 1.36), which
//! k8s-openapi does not have: the type with the fields native gang scheduling writes, and its
//! API's names.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};

/// The PodGroup API this operator writes.
pub const GROUP: &str = "scheduling.k8s.io";
pub const VERSION: &str = "v1alpha2";
pub const API_VERSION: &str = "scheduling.k8s.io/v1alpha2";
pub const KIND: &str = "PodGroup";
pub const PLURAL: &str = "podgroups";

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
