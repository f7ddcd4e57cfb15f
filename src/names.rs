//! Names, `training.kubeflow.org/*` labels and owner references: the one place they are defined.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;

use crate::api::{ReplicaType, TFJob};

/// The operator-name label value, shared with Kubeflow's training-operator.
pub const OPERATOR_NAME: &str = "tfjob-controller";
/// Label: which operator manages the pod or service. Watches select on it.
pub const LABEL_OPERATOR_NAME: &str = "training.kubeflow.org/operator-name";
/// Label: the TFJob's name.
pub const LABEL_JOB_NAME: &str = "training.kubeflow.org/job-name";
/// Label: the replica type, lowercase (`ps`, `worker`, ...).
pub const LABEL_REPLICA_TYPE: &str = "training.kubeflow.org/replica-type";
/// Label: the replica index.
pub const LABEL_REPLICA_INDEX: &str = "training.kubeflow.org/replica-index";
/// Label (pods only): `master` on the chief or master pod, or on worker 0 without one.
pub const LABEL_JOB_ROLE: &str = "training.kubeflow.org/job-role";
/// The job-role label value.
pub const ROLE_MASTER: &str = "master";

/// Annotation on a TFJob: its startup deadline in seconds (may be changed on a live job).
pub const ANNOTATION_STARTUP_DEADLINE: &str = "tfjob.kubeflow.org/startup-deadline-seconds";

/// The container that runs TensorFlow and gets `TF_CONFIG`.
pub const CONTAINER_NAME: &str = "tensorflow";
/// The port name TF_CONFIG addresses use.
pub const PORT_NAME: &str = "tfjob-port";
/// The port added to the `tensorflow` container when it has no `tfjob-port`.
pub const DEFAULT_PORT: i32 = 2222;
/// The environment variable that describes the cluster to TensorFlow.
pub const TF_CONFIG: &str = "TF_CONFIG";

/// Kueue's label naming the LocalQueue a job is queued in.
pub const KUEUE_QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";

/// The API version and kind of the owner references the operator sets.
pub const API_VERSION: &str = "kubeflow.org/v1";
pub const KIND: &str = "TFJob";

/// The label selector for everything this operator creates.
pub fn operator_selector() -> String {
    format!("{LABEL_OPERATOR_NAME}={OPERATOR_NAME}")
}

/// The label selector for the pods and services of the job named `job`.
pub fn job_selector(job: &str) -> String {
    format!("{LABEL_OPERATOR_NAME}={OPERATOR_NAME},{LABEL_JOB_NAME}={job}")
}

/// `<job>-<type lowercase>-<index>`: the name of a replica's pod and of its service.
pub fn replica_name(job: &str, rtype: ReplicaType, index: i32) -> String {
    format!("{job}-{}-{index}", rtype.lower())
}

/// The labels on a replica's pod and service, and the service's selector.
pub fn replica_labels(job: &str, rtype: ReplicaType, index: i32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_OPERATOR_NAME.to_string(), OPERATOR_NAME.to_string()),
        (LABEL_JOB_NAME.to_string(), job.to_string()),
        (LABEL_REPLICA_TYPE.to_string(), rtype.lower().to_string()),
        (LABEL_REPLICA_INDEX.to_string(), index.to_string()),
    ])
}

/// The replica a pod or service stands for, read from its labels.
pub fn replica_of(meta: &ObjectMeta) -> Option<(ReplicaType, i32)> {
    let labels = meta.labels.as_ref()?;
    let rtype = ReplicaType::parse(labels.get(LABEL_REPLICA_TYPE)?)?;
    let index = labels.get(LABEL_REPLICA_INDEX)?.parse().ok()?;
    Some((rtype, index))
}

/// The controller owner reference to the job; `None` when the job has no uid yet.
pub fn owner_ref(job: &TFJob) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        name: job.name_any(),
        uid: job.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

/// The object's controller owner reference, if it is a TFJob.
pub fn tfjob_controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == KIND && o.api_version == API_VERSION)
}

/// Whether the object's controller owner is the object with this uid.
pub fn controlled_by(meta: &ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.controller == Some(true) && o.uid == uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_labels() {
        assert_eq!(replica_name("tfjob-test", ReplicaType::PS, 0), "tfjob-test-ps-0");
        assert_eq!(replica_name("j", ReplicaType::Evaluator, 12), "j-evaluator-12");
        let l = replica_labels("j", ReplicaType::Worker, 3);
        assert_eq!(l[LABEL_OPERATOR_NAME], "tfjob-controller");
        assert_eq!(l[LABEL_JOB_NAME], "j");
        assert_eq!(l[LABEL_REPLICA_TYPE], "worker");
        assert_eq!(l[LABEL_REPLICA_INDEX], "3");
        assert_eq!(l.len(), 4);
        assert_eq!(operator_selector(), "training.kubeflow.org/operator-name=tfjob-controller");
    }

    #[test]
    fn replica_of_reads_labels() {
        let meta = ObjectMeta { labels: Some(replica_labels("j", ReplicaType::PS, 2)), ..Default::default() };
        assert_eq!(replica_of(&meta), Some((ReplicaType::PS, 2)));
        let mut bad = replica_labels("j", ReplicaType::PS, 2);
        bad.insert(LABEL_REPLICA_INDEX.into(), "x".into());
        assert_eq!(replica_of(&ObjectMeta { labels: Some(bad), ..Default::default() }), None);
        assert_eq!(replica_of(&ObjectMeta::default()), None);
    }

    #[test]
    fn owner_reference_needs_uid_and_is_controller() {
        let mut job = TFJob::new("j", Default::default());
        assert!(owner_ref(&job).is_none());
        job.metadata.uid = Some("u1".into());
        let o = owner_ref(&job).unwrap();
        assert_eq!(
            (o.api_version.as_str(), o.kind.as_str(), o.name.as_str(), o.uid.as_str()),
            ("kubeflow.org/v1", "TFJob", "j", "u1")
        );
        assert_eq!((o.controller, o.block_owner_deletion), (Some(true), Some(true)));

        let owned = ObjectMeta { owner_references: Some(vec![o.clone()]), ..Default::default() };
        assert!(controlled_by(&owned, "u1"));
        assert!(!controlled_by(&owned, "u2"));
        let not_controller = OwnerReference { controller: None, ..o };
        let meta = ObjectMeta { owner_references: Some(vec![not_controller]), ..Default::default() };
        assert!(!controlled_by(&meta, "u1"));
    }
}
