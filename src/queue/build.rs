//! The Workload built for a queued job, and the job patches that start it on an admission
//! (the assignment merged into the templates) and stop it (suspended, templates restored).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodTemplateSpec, Toleration};
use kube::ResourceExt;
use serde_json::{Map, Value, json};

use super::decide::Priority;
use super::{CLUSTER_QUEUE_LABEL, JOB_UID_LABEL, LOCAL_QUEUE_LABEL, PODSET_LABEL, workload_name};
use crate::api::workload::{FlavorSpec, PodSet, PriorityClassRef, Workload, WorkloadSpec};
use crate::api::{ReplicaType, TFJob};
use crate::names;

/// Kueue's order of pod sets for a TFJob.
const ORDER: [ReplicaType; 5] =
    [ReplicaType::Chief, ReplicaType::Master, ReplicaType::PS, ReplicaType::Worker, ReplicaType::Evaluator];

/// The job's pod sets: one per replica type in Kueue's order, named by the type in lowercase
/// (whatever the key's case), with its count (default 1) and its template, the labels an
/// admission adds left out.
pub(super) fn pod_sets(job: &TFJob) -> Vec<PodSet> {
    let mut sets: Vec<(usize, PodSet)> = job
        .spec
        .tf_replica_specs
        .iter()
        .filter_map(|(key, r)| {
            let t = ReplicaType::parse(key)?;
            let mut template: PodTemplateSpec = (*r.template).clone();
            if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
                for admitted in [PODSET_LABEL, LOCAL_QUEUE_LABEL, CLUSTER_QUEUE_LABEL] {
                    labels.remove(admitted);
                }
            }
            let rank = ORDER.iter().position(|o| *o == t).unwrap_or(ORDER.len());
            Some((rank, PodSet { name: t.lower().to_string(), count: r.replicas.unwrap_or(1), template }))
        })
        .collect();
    sets.sort_by_key(|(rank, _)| *rank);
    sets.into_iter().map(|(_, s)| s).collect()
}

/// The Workload's spec for the job: its pod sets, queue and priority.
pub(super) fn spec_for(job: &TFJob, queue: &str, priority: Option<&Priority>) -> WorkloadSpec {
    WorkloadSpec {
        pod_sets: pod_sets(job),
        queue_name: queue.to_string(),
        priority_class_ref: priority.map(|p| PriorityClassRef {
            group: crate::api::workload::GROUP.to_string(),
            kind: "WorkloadPriorityClass".to_string(),
            name: p.name.clone(),
        }),
        priority: priority.map(|p| p.value),
        active: None,
    }
}

/// The Workload of a job labelled for `queue`: controlled by the job (so it goes with it),
/// labelled with the job's uid as Kueue's own are, and with the operator's label (its watch
/// selects on it). `None` for a job without a uid.
pub fn workload_for(job: &TFJob, queue: &str, priority: Option<&Priority>) -> Option<Workload> {
    let uid = job.metadata.uid.clone()?;
    let mut wl = Workload { spec: spec_for(job, queue, priority), ..Workload::default() };
    wl.metadata.name = Some(workload_name(&job.name_any(), &uid));
    wl.metadata.namespace = job.namespace();
    wl.metadata.labels = Some(BTreeMap::from([
        (names::LABEL_OPERATOR_NAME.to_string(), names::OPERATOR_NAME.to_string()),
        (names::LABEL_JOB_NAME.to_string(), job.name_any()),
        (JOB_UID_LABEL.to_string(), uid),
    ]));
    wl.metadata.owner_references = Some(vec![names::owner_ref(job)?]);
    Some(wl)
}

/// The key and template of each replica spec whose type is the pod set `name`.
fn replicas_of<'a>(job: &'a TFJob, name: &'a str) -> impl Iterator<Item = (&'a String, &'a PodTemplateSpec)> {
    job.spec
        .tf_replica_specs
        .iter()
        .filter(move |(key, _)| ReplicaType::parse(key).is_some_and(|t| t.lower() == name))
        .map(|(key, r)| (key, &*r.template))
}

fn map_of(m: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    m.cloned().unwrap_or_default()
}

/// A merge patch taking the map `from` to `to`: keys to drop are set to null.
fn map_patch(from: &BTreeMap<String, String>, to: &BTreeMap<String, String>) -> Value {
    let mut out: Map<String, Value> =
        from.keys().filter(|k| !to.contains_key(*k)).map(|k| (k.clone(), Value::Null)).collect();
    out.extend(to.iter().map(|(k, v)| (k.clone(), json!(v))));
    Value::Object(out)
}

/// Adds `add` to `into`; a key already there with another value is a conflict (Kueue refuses
/// to start a job on one too).
fn merge_map(
    into: &mut BTreeMap<String, String>,
    add: &BTreeMap<String, String>,
    (key, what): (&str, &str),
) -> Result<(), String> {
    for (k, v) in add {
        match into.insert(k.clone(), v.clone()) {
            Some(old) if old != *v => {
                return Err(format!("replica {key} has {what} {k}={old}, and its admission needs {k}={v}"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// What an admission adds to one pod set's templates: labels, annotations, node selector,
/// tolerations.
#[derive(Default)]
struct Additions {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    node_selector: BTreeMap<String, String>,
    tolerations: Vec<Toleration>,
}

/// The merge patch that starts an admitted job: `runPolicy.suspend: false` and, per pod set
/// of the admission, what Kueue's own integration adds to each template: the flavors' node
/// labels to its `nodeSelector` and their tolerations to its `tolerations`; the labels
/// [`PODSET_LABEL`], `kueue.x-k8s.io/local-queue-name` and
/// `kueue.x-k8s.io/cluster-queue-name`; and each admission check's `podSetUpdates` for the
/// pod set (labels, annotations, node selector, tolerations). Fenced by the job's
/// resourceVersion. Err: a flavor is not known, or a key the template already has with
/// another value (Kueue refuses those too).
pub fn start_patch(
    job: &TFJob,
    wl: &Workload,
    flavors: &BTreeMap<String, FlavorSpec>,
) -> Result<Value, String> {
    let admission = wl.admission().ok_or("the Workload is not admitted")?;
    let checks = wl.status.as_ref().map_or(&[][..], |s| s.admission_checks.as_slice());
    let mut specs = Map::new();
    for a in &admission.pod_set_assignments {
        let mut add = Additions::default();
        add.labels.insert(PODSET_LABEL.to_string(), a.name.clone());
        add.labels.insert(LOCAL_QUEUE_LABEL.to_string(), wl.spec.queue_name.clone());
        add.labels.insert(CLUSTER_QUEUE_LABEL.to_string(), admission.cluster_queue.clone());
        for flavor in a.flavors.values() {
            let f = flavors.get(flavor).ok_or_else(|| format!("ResourceFlavor {flavor} is not found"))?;
            add.node_selector.extend(f.node_labels.clone());
            add.tolerations.extend(f.tolerations.iter().cloned());
        }
        for u in checks.iter().flat_map(|c| &c.pod_set_updates).filter(|u| u.name == a.name) {
            add.labels.extend(u.labels.clone());
            add.annotations.extend(u.annotations.clone());
            add.node_selector.extend(u.node_selector.clone());
            add.tolerations.extend(u.tolerations.iter().cloned());
        }
        for (key, template) in replicas_of(job, &a.name) {
            let meta = template.metadata.as_ref();
            let spec = template.spec.as_ref();
            let mut labels = map_of(meta.and_then(|m| m.labels.as_ref()));
            let mut annotations = map_of(meta.and_then(|m| m.annotations.as_ref()));
            let mut node_selector = map_of(spec.and_then(|s| s.node_selector.as_ref()));
            merge_map(&mut labels, &add.labels, (key, "the label"))?;
            merge_map(&mut annotations, &add.annotations, (key, "the annotation"))?;
            merge_map(&mut node_selector, &add.node_selector, (key, "the node selector"))?;
            let mut tolerations = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
            for t in &add.tolerations {
                if !tolerations.contains(t) {
                    tolerations.push(t.clone());
                }
            }
            specs.insert(
                key.clone(),
                json!({"template": {
                    "metadata": {"labels": labels, "annotations": annotations},
                    "spec": {"nodeSelector": node_selector, "tolerations": tolerations}
                }}),
            );
        }
    }
    Ok(json!({
        "metadata": {"resourceVersion": job.resource_version()},
        "spec": {"runPolicy": {"suspend": false}, "tfReplicaSpecs": specs}
    }))
}

/// The merge patch that stops a job: `runPolicy.suspend: true` and each template's labels,
/// annotations, `nodeSelector`, `tolerations` and `schedulingGates` set back to the
/// Workload's pod set (the template before the admission). Without a Workload only the
/// labels an admission adds are removed. Fenced by the job's resourceVersion.
pub fn stop_patch(job: &TFJob, wl: Option<&Workload>) -> Value {
    let mut specs = Map::new();
    for (key, r) in &job.spec.tf_replica_specs {
        let now = &*r.template;
        let meta = now.metadata.as_ref();
        let labels = map_of(meta.and_then(|m| m.labels.as_ref()));
        let original = ReplicaType::parse(key)
            .and_then(|t| wl?.spec.pod_sets.iter().find(|s| s.name == t.lower()))
            .map(|s| &s.template);
        let patch = match original {
            Some(was) => {
                let was_meta = was.metadata.as_ref();
                let was_spec = was.spec.as_ref();
                json!({
                    "metadata": {
                        "labels": map_patch(&labels, &map_of(was_meta.and_then(|m| m.labels.as_ref()))),
                        "annotations": map_patch(
                            &map_of(meta.and_then(|m| m.annotations.as_ref())),
                            &map_of(was_meta.and_then(|m| m.annotations.as_ref())),
                        ),
                    },
                    "spec": {
                        "nodeSelector": map_patch(
                            &map_of(now.spec.as_ref().and_then(|s| s.node_selector.as_ref())),
                            &map_of(was_spec.and_then(|s| s.node_selector.as_ref())),
                        ),
                        "tolerations": was_spec.and_then(|s| s.tolerations.clone()),
                        "schedulingGates": was_spec.and_then(|s| s.scheduling_gates.clone()),
                    }
                })
            }
            None if labels.contains_key(PODSET_LABEL) => {
                json!({"metadata": {"labels": {PODSET_LABEL: null, LOCAL_QUEUE_LABEL: null, CLUSTER_QUEUE_LABEL: null}}})
            }
            None => continue,
        };
        specs.insert(key.clone(), json!({ "template": patch }));
    }
    json!({
        "metadata": {"resourceVersion": job.resource_version()},
        "spec": {"runPolicy": {"suspend": true}, "tfReplicaSpecs": specs}
    })
}
