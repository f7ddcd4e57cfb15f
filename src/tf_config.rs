//! `TF_CONFIG`: the cluster description each TensorFlow process reads (upstream's tensorflow.go).

use std::collections::BTreeMap;

use kube::ResourceExt;
use serde::Serialize;

use crate::api::{JobView, ReplicaSpec, ReplicaType};
use crate::names::{self, CONTAINER_NAME, DEFAULT_PORT, PORT_NAME};

#[derive(Serialize)]
struct Task {
    #[serde(rename = "type")]
    type_: &'static str,
    index: i32,
}

#[derive(Serialize)]
struct TfConfig<C: Serialize> {
    cluster: C,
    task: Task,
    #[serde(skip_serializing_if = "Option::is_none")]
    environment: Option<&'static str>,
}

/// The sparse cluster of `enableDynamicWorker`: a worker sees only itself and the PS.
#[derive(Serialize)]
struct SparseCluster {
    worker: BTreeMap<String, String>,
    ps: Vec<String>,
}

/// The port TF_CONFIG uses for a replica type: `tfjob-port` of its `tensorflow` container,
/// else 2222.
pub fn port_of(spec: &ReplicaSpec) -> i32 {
    spec.template
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .filter(|c| c.name == CONTAINER_NAME)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some(PORT_NAME))
        .map_or(DEFAULT_PORT, |p| p.container_port)
}

/// The address of one replica: `<pod>.<namespace>.svc[.<domain>]:<port>`.
fn address(job: &str, ns: &str, domain: Option<&str>, rtype: ReplicaType, index: i32, port: i32) -> String {
    let name = names::replica_name(job, rtype, index);
    match domain.filter(|d| !d.is_empty()) {
        Some(d) => format!("{name}.{ns}.svc.{d}:{port}"),
        None => format!("{name}.{ns}.svc:{port}"),
    }
}

/// The annotation that asks for Kubeflow's exact `TF_CONFIG` (value [`KUBEFLOW`]); any
/// other value, or none, gets TensorFlow's layouts (see [`TfConfigs`]).
pub const ANNOTATION_TF_CONFIG: &str = "tfjob.kubeflow.org/tf-config";
/// The value of [`ANNOTATION_TF_CONFIG`] that selects Kubeflow's exact `TF_CONFIG`.
pub const KUBEFLOW: &str = "kubeflow";

/// The TF_CONFIG of every replica of one job. The shared cluster is serialized once and
/// shared by all its replicas' TF_CONFIG strings, so building a batch of pods costs one pass
/// over the job's addresses, not one per pod.
///
/// By default it follows TensorFlow's guides where they differ from Kubeflow's operator,
/// which otherwise it matches byte for byte:
/// - an Evaluator beside parameter servers (or with `enableDynamicWorker`) is a sidecar
///   evaluator: it is left out of every other replica's cluster (a `ParameterServerStrategy`
///   coordinator connects to every task of its cluster, and a sidecar evaluator starts no
///   server) and its own cluster holds only itself, as in TensorFlow's parameter server
///   training tutorial ("Clusters in the real world");
/// - with `enableDynamicWorker`, the Chief (the coordinator) gets that cluster (Kubeflow
///   gives it an empty one, kubeflow/training-operator#1763) and a parameter server gets
///   every parameter server (Kubeflow gives it only its own address, at index 0).
///
/// The annotation [`ANNOTATION_TF_CONFIG`]`: kubeflow` gives Kubeflow's exact `TF_CONFIG`.
pub struct TfConfigs<'a> {
    job: &'a JobView<'a>,
    domain: Option<&'a str>,
    /// The shared cluster's JSON; `None` for a job with a single replica, and for a sparse
    /// cluster in Kubeflow's layout.
    shared: Option<String>,
    /// Kubeflow's exact TF_CONFIG (the annotation).
    kubeflow: bool,
    /// The Evaluator is a sidecar: out of the shared cluster, only itself in its own.
    sidecar: bool,
}

fn count(job: &JobView<'_>, t: ReplicaType) -> i32 {
    job.replicas.get(&t).map_or(0, |r| r.count)
}

impl<'a> TfConfigs<'a> {
    /// `domain` is the cluster domain appended to service addresses, if any.
    pub fn new(job: &'a JobView<'a>, domain: Option<&'a str>) -> TfConfigs<'a> {
        let kubeflow = job.job.annotations().get(ANNOTATION_TF_CONFIG).is_some_and(|v| v == KUBEFLOW);
        let dynamic = job.policy.dynamic_worker;
        let sidecar = !kubeflow
            && count(job, ReplicaType::Evaluator) > 0
            && (dynamic || count(job, ReplicaType::PS) > 0);
        let shared = (job.total_replicas != 1 && !(dynamic && kubeflow))
            .then(|| {
                let cluster: BTreeMap<&str, Vec<String>> = job
                    .replicas
                    .values()
                    .filter(|r| r.count > 0 && !(sidecar && r.rtype == ReplicaType::Evaluator))
                    .map(|r| (r.rtype.lower(), addresses(job, domain, r.rtype)))
                    .collect();
                serde_json::to_string(&cluster).ok()
            })
            .flatten();
        TfConfigs { job, domain, shared, kubeflow, sidecar }
    }

    /// TF_CONFIG for replica `rtype`/`index`, or `None` for a job with a single replica in
    /// all (upstream's `isDistributed`), which runs without one.
    pub fn for_replica(&self, rtype: ReplicaType, index: i32) -> Option<String> {
        let job = self.job;
        if job.total_replicas == 1 {
            return None;
        }
        let dynamic = job.policy.dynamic_worker;
        let task = Task { type_: rtype.lower(), index };
        let environment = (!dynamic).then_some("cloud");
        if self.sidecar && rtype == ReplicaType::Evaluator {
            let own = addresses(job, self.domain, rtype).into_iter().nth(usize::try_from(index).ok()?)?;
            let cluster = BTreeMap::from([(rtype.lower(), vec![own])]);
            return serde_json::to_string(&TfConfig { cluster, task, environment }).ok();
        }
        let coordinator = dynamic && !self.kubeflow && rtype == ReplicaType::Chief;
        if let Some(cluster) = self.shared.as_ref().filter(|_| !dynamic || coordinator) {
            // `{"cluster":…,"task":…,"environment":"cloud"}`, the field order of upstream.
            let task = serde_json::to_string(&task).ok()?;
            let env = environment.map_or_else(String::new, |e| format!(r#","environment":"{e}""#));
            return Some(format!(r#"{{"cluster":{cluster},"task":{task}{env}}}"#));
        }
        let mut cluster = SparseCluster { worker: BTreeMap::new(), ps: Vec::new() };
        match rtype {
            ReplicaType::Worker => {
                let workers =
                    job.replicas.get(&ReplicaType::Worker).filter(|r| (0..r.count).contains(&index))?;
                let port = port_of(workers.spec);
                let own = address(&job.name, namespace(job), self.domain, rtype, index, port);
                cluster.worker.insert(index.to_string(), own);
                cluster.ps = addresses(job, self.domain, ReplicaType::PS);
            }
            ReplicaType::PS if self.kubeflow => {
                let all = addresses(job, self.domain, ReplicaType::PS);
                cluster.ps = all.into_iter().nth(usize::try_from(index).ok()?).into_iter().collect();
            }
            ReplicaType::PS => cluster.ps = addresses(job, self.domain, ReplicaType::PS),
            _ => {}
        }
        serde_json::to_string(&TfConfig { cluster, task, environment: None }).ok()
    }
}

fn namespace<'a>(job: &'a JobView<'_>) -> &'a str {
    if job.namespace.is_empty() { "default" } else { job.namespace.as_str() }
}

/// The addresses of every replica of type `t`, by index.
fn addresses(job: &JobView<'_>, domain: Option<&str>, t: ReplicaType) -> Vec<String> {
    job.replicas.get(&t).map_or_else(Vec::new, |r| {
        let port = port_of(r.spec);
        (0..r.count).map(|i| address(&job.name, namespace(job), domain, t, i, port)).collect()
    })
}

/// TF_CONFIG for one replica (see [`TfConfigs`], which builds many at once).
pub fn tf_config(job: &JobView<'_>, rtype: ReplicaType, index: i32, domain: Option<&str>) -> Option<String> {
    TfConfigs::new(job, domain).for_replica(rtype, index)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ReplicaSpec, TFJob, TFJobSpec};
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodSpec, PodTemplateSpec};
    use serde_json::{Value, json};

    fn replica(count: i32, port: Option<i32>) -> ReplicaSpec {
        let ports = port.map(|p| {
            vec![ContainerPort { name: Some(PORT_NAME.into()), container_port: p, ..Default::default() }]
        });
        ReplicaSpec {
            replicas: Some(count),
            template: PodTemplateSpec {
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "tensorflow".into(),
                        image: Some("i".into()),
                        ports,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                ..Default::default()
            }
            .into(),
            restart_policy: None,
        }
    }

    fn job(types: &[(&str, i32, Option<i32>)], dynamic: bool) -> TFJob {
        let mut spec = TFJobSpec { enable_dynamic_worker: dynamic.then_some(true), ..Default::default() };
        for (k, n, p) in types {
            spec.tf_replica_specs.insert(k.to_string(), replica(*n, *p));
        }
        let mut j = TFJob::new("j", spec);
        j.metadata.namespace = Some("ns".into());
        j
    }

    fn tf_config(j: &TFJob, t: ReplicaType, i: i32, domain: Option<&str>) -> Option<String> {
        super::tf_config(&JobView::new(j).unwrap(), t, i, domain)
    }

    fn parsed(j: &TFJob, t: ReplicaType, i: i32, domain: Option<&str>) -> Value {
        serde_json::from_str(&tf_config(j, t, i, domain).expect("distributed job has TF_CONFIG")).unwrap()
    }

    #[test]
    fn ps_worker_cluster_matches_upstream() {
        let j = job(&[("PS", 2, None), ("Worker", 2, None)], false);
        assert_eq!(
            parsed(&j, ReplicaType::Worker, 1, None),
            json!({
                "cluster": {"ps": ["j-ps-0.ns.svc:2222", "j-ps-1.ns.svc:2222"],
                            "worker": ["j-worker-0.ns.svc:2222", "j-worker-1.ns.svc:2222"]},
                "task": {"type": "worker", "index": 1},
                "environment": "cloud"
            })
        );
        assert_eq!(parsed(&j, ReplicaType::PS, 0, None)["task"], json!({"type": "ps", "index": 0}));
    }

    #[test]
    fn evaluator_and_chief_included_with_their_ports_and_domain() {
        let j = job(&[("Chief", 1, Some(3333)), ("worker", 1, None), ("Evaluator", 1, Some(4444))], false);
        assert_eq!(
            parsed(&j, ReplicaType::Evaluator, 0, Some("cluster.local")),
            json!({
                "cluster": {"chief": ["j-chief-0.ns.svc.cluster.local:3333"],
                            "worker": ["j-worker-0.ns.svc.cluster.local:2222"],
                            "evaluator": ["j-evaluator-0.ns.svc.cluster.local:4444"]},
                "task": {"type": "evaluator", "index": 0},
                "environment": "cloud"
            })
        );
    }

    #[test]
    fn zero_replica_types_are_left_out() {
        let j = job(&[("Worker", 2, None), ("Evaluator", 0, None)], false);
        assert_eq!(
            parsed(&j, ReplicaType::Worker, 0, Some(""))["cluster"],
            json!({"worker": ["j-worker-0.ns.svc:2222", "j-worker-1.ns.svc:2222"]})
        );
    }

    #[test]
    fn single_replica_job_has_no_tf_config() {
        assert_eq!(tf_config(&job(&[("Worker", 1, None)], false), ReplicaType::Worker, 0, None), None);
        assert_eq!(
            tf_config(&job(&[("Worker", 1, None), ("PS", 0, None)], false), ReplicaType::Worker, 0, None),
            None
        );
        assert!(tf_config(&job(&[("Worker", 2, None)], false), ReplicaType::Worker, 0, None).is_some());
    }

    fn kubeflow(mut j: TFJob) -> TFJob {
        j.metadata.annotations = Some(BTreeMap::from([(ANNOTATION_TF_CONFIG.into(), KUBEFLOW.into())]));
        j
    }

    #[test]
    fn layouts_by_replica_default_and_kubeflow() {
        let ps_eval = &[("Chief", 1, None), ("PS", 2, None), ("Worker", 1, None), ("Evaluator", 1, None)][..];
        let mwms_eval = &[("Chief", 1, None), ("Worker", 1, None), ("Evaluator", 1, None)][..];
        let dynamic = &[("Chief", 1, None), ("PS", 2, None), ("Worker", 3, None), ("Evaluator", 1, None)][..];
        let trainers = json!({"chief": ["j-chief-0.ns.svc:2222"], "ps": ["j-ps-0.ns.svc:2222", "j-ps-1.ns.svc:2222"],
                              "worker": ["j-worker-0.ns.svc:2222"]});
        let mut all = trainers.clone();
        all["evaluator"] = json!(["j-evaluator-0.ns.svc:2222"]);
        let ps = json!(["j-ps-0.ns.svc:2222", "j-ps-1.ns.svc:2222"]);
        let dense = json!({"chief": ["j-chief-0.ns.svc:2222"], "ps": ps,
                           "worker": ["j-worker-0.ns.svc:2222", "j-worker-1.ns.svc:2222", "j-worker-2.ns.svc:2222"]});
        let own_eval = json!({"evaluator": ["j-evaluator-0.ns.svc:2222"]});
        let w2 = json!({"worker": {"2": "j-worker-2.ns.svc:2222"}, "ps": ps});
        let mwms_all = json!({"chief": ["j-chief-0.ns.svc:2222"], "worker": ["j-worker-0.ns.svc:2222"],
                              "evaluator": ["j-evaluator-0.ns.svc:2222"]});
        let (empty, all_ps) = (json!({"worker": {}, "ps": []}), json!({"worker": {}, "ps": ps}));
        let own_ps = json!({"worker": {}, "ps": ["j-ps-1.ns.svc:2222"]});
        use ReplicaType::*;
        // (case, types, mode: "dyn" enableDynamicWorker, "kf" the annotation, replica, index, cluster)
        let cases = [
            ("PS + sidecar evaluator: a trainer", ps_eval, "", Worker, 0, &trainers),
            ("PS + sidecar evaluator: the coordinator", ps_eval, "", Chief, 0, &trainers),
            ("PS + sidecar evaluator: the evaluator", ps_eval, "", Evaluator, 0, &own_eval),
            ("PS + evaluator, kubeflow: a trainer", ps_eval, "kf", PS, 1, &all),
            ("PS + evaluator, kubeflow: the evaluator", ps_eval, "kf", Evaluator, 0, &all),
            ("MWMS + evaluator: the evaluator stays", mwms_eval, "", Worker, 0, &mwms_all),
            ("dynamic: a worker sees itself and the PS", dynamic, "dyn", Worker, 2, &w2),
            ("dynamic: the coordinator sees every trainer", dynamic, "dyn", Chief, 0, &dense),
            ("dynamic: a PS sees every PS", dynamic, "dyn", PS, 1, &all_ps),
            ("dynamic: the evaluator sees itself", dynamic, "dyn", Evaluator, 0, &own_eval),
            ("dynamic, kubeflow: a worker", dynamic, "dyn kf", Worker, 2, &w2),
            ("dynamic, kubeflow: the chief's is empty", dynamic, "dyn kf", Chief, 0, &empty),
            ("dynamic, kubeflow: a PS has its own only", dynamic, "dyn kf", PS, 1, &own_ps),
            ("dynamic, kubeflow: the evaluator's is empty", dynamic, "dyn kf", Evaluator, 0, &empty),
        ];
        for (case, types, mode, t, i, cluster) in cases {
            let j = job(types, mode.contains("dyn"));
            let j = if mode.contains("kf") { kubeflow(j) } else { j };
            let mut want = json!({"cluster": cluster, "task": {"type": t.lower(), "index": i}});
            if !mode.contains("dyn") {
                want["environment"] = json!("cloud");
            }
            assert_eq!(parsed(&j, t, i, None), want, "{case}");
        }
    }

    #[test]
    fn kubeflow_annotation_is_byte_for_byte_the_old_output() {
        // Upstream's field order (cluster, task, environment) and its sparse worker map.
        let j = kubeflow(job(&[("PS", 1, None), ("Worker", 1, None), ("Evaluator", 1, None)], false));
        assert_eq!(
            tf_config(&j, ReplicaType::Evaluator, 0, None).unwrap(),
            r#"{"cluster":{"evaluator":["j-evaluator-0.ns.svc:2222"],"ps":["j-ps-0.ns.svc:2222"],"worker":["j-worker-0.ns.svc:2222"]},"task":{"type":"evaluator","index":0},"environment":"cloud"}"#
        );
        let d = kubeflow(job(&[("PS", 1, None), ("Worker", 2, None)], true));
        assert_eq!(
            tf_config(&d, ReplicaType::Worker, 1, None).unwrap(),
            r#"{"cluster":{"worker":{"1":"j-worker-1.ns.svc:2222"},"ps":["j-ps-0.ns.svc:2222"]},"task":{"type":"worker","index":1}}"#
        );
        // Another value is not Kubeflow's layout.
        let mut other = job(&[("PS", 1, None), ("Worker", 1, None), ("Evaluator", 1, None)], false);
        other.metadata.annotations = Some(BTreeMap::from([(ANNOTATION_TF_CONFIG.into(), "Kubeflow".into())]));
        assert_eq!(
            parsed(&other, ReplicaType::Evaluator, 0, None)["cluster"],
            json!({"evaluator": ["j-evaluator-0.ns.svc:2222"]})
        );
    }

    #[test]
    fn port_defaults_to_2222() {
        assert_eq!(port_of(&replica(1, None)), 2222);
        assert_eq!(port_of(&replica(1, Some(9000))), 9000);
        assert_eq!(port_of(&ReplicaSpec::default()), 2222);
    }
}
