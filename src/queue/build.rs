//! The Workload built for a queued job, and the job patches that start it on an admission
//! (the assignment merged into the templates) and stop it (suspended, templates restored).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use kube::ResourceExt;
use serde_json::{Map, Value, json};

use super::decide::Priority;
use super::{JOB_UID_LABEL, PODSET_LABEL, workload_name};
use crate::api::workload::{FlavorSpec, PodSet, PriorityClassRef, Workload, WorkloadSpec};
use crate::api::{ReplicaType, TFJob};
use crate::names;

/// Kueue's order of pod sets for a TFJob.
const ORDER: [ReplicaType; 5] =
    [ReplicaType::Chief, ReplicaType::Master, ReplicaType::PS, ReplicaType::Worker, ReplicaType::Evaluator];

/// The job's pod sets: one per replica type in Kueue's order, named by the type in lowercase
/// (whatever the key's case), with its count (default 1) and its template, the admission's
/// [`PODSET_LABEL`] left out.
pub(super) fn pod_sets(job: &TFJob) -> Vec<PodSet> {
    let mut sets: Vec<(usize, PodSet)> = job
        .spec
        .tf_replica_specs
        .iter()
        .filter_map(|(key, r)| {
            let t = ReplicaType::parse(key)?;
            let mut template: PodTemplateSpec = (*r.template).clone();
            if let Some(labels) = template.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
                labels.remove(PODSET_LABEL);
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

/// The merge patch that starts an admitted job: `runPolicy.suspend: false` and, per pod set
/// of the admission, the flavors' node labels added to each template's `nodeSelector`, their
/// tolerations to its `tolerations`, and [`PODSET_LABEL`] to its labels, as Kueue's own
/// integration does. Fenced by the job's resourceVersion. Err: a flavor is not known, or a
/// node label the template already selects with another value (Kueue refuses those too).
pub fn start_patch(
    job: &TFJob,
    wl: &Workload,
    flavors: &BTreeMap<String, FlavorSpec>,
) -> Result<Value, String> {
    let admission = wl.admission().ok_or("the Workload is not admitted")?;
    let mut specs = Map::new();
    for a in &admission.pod_set_assignments {
        let mut selector = BTreeMap::new();
        let mut tolerations = Vec::new();
        for flavor in a.flavors.values() {
            let f = flavors.get(flavor).ok_or_else(|| format!("ResourceFlavor {flavor} is not found"))?;
            selector.extend(f.node_labels.clone());
            tolerations.extend(f.tolerations.iter().cloned());
        }
        for (key, template) in replicas_of(job, &a.name) {
            let spec = template.spec.as_ref();
            let mut node_selector = map_of(spec.and_then(|s| s.node_selector.as_ref()));
            for (k, v) in &selector {
                match node_selector.insert(k.clone(), v.clone()) {
                    Some(old) if old != *v => {
                        return Err(format!(
                            "replica {key} selects nodes with {k}={old}, and the admitted flavor needs {k}={v}"
                        ));
                    }
                    _ => {}
                }
            }
            let mut tols = spec.and_then(|s| s.tolerations.clone()).unwrap_or_default();
            for t in &tolerations {
                if !tols.contains(t) {
                    tols.push(t.clone());
                }
            }
            specs.insert(
                key.clone(),
                json!({"template": {
                    "metadata": {"labels": {PODSET_LABEL: a.name}},
                    "spec": {"nodeSelector": node_selector, "tolerations": tols}
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
/// Workload's pod set (the template before the admission). Without a Workload only
/// [`PODSET_LABEL`] is removed. Fenced by the job's resourceVersion.
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
                json!({"metadata": {"labels": {PODSET_LABEL: null}}})
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
