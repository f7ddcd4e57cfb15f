//! Pure builders for a replica's pod and headless service (`pod_for`, `service_for`), from the
//! job's validated view: the raw TFJob is read only for its name, namespace and uid.
//! [`Builder`] builds the objects a plan names, batch by batch, as they are sent.

use k8s_openapi::api::core::v1::{Container, ContainerPort, EnvVar, Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::api::{JobView, ReplicaSpec, ReplicaType, RestartPolicy};
use crate::names::{self, CONTAINER_NAME, DEFAULT_PORT, PORT_NAME, ROLE_MASTER};
use crate::plan::ReplicaId;
use crate::tf_config::TfConfigs;

/// Builds the pods and services of one job on demand: the job's view and its TF_CONFIG
/// cluster are resolved once, and each object only when it is asked for, so nothing holds a
/// big job's pods all at once.
pub struct Builder<'a> {
    view: &'a JobView<'a>,
    tf_configs: TfConfigs<'a>,
}

impl<'a> Builder<'a> {
    /// `cluster_domain` is appended to TF_CONFIG addresses when set.
    pub fn new(view: &'a JobView<'a>, cluster_domain: Option<&'a str>) -> Builder<'a> {
        Builder { view, tf_configs: TfConfigs::new(view, cluster_domain) }
    }

    /// The pod of replica `r` (see [`pod_for`]).
    pub fn pod(&self, r: ReplicaId) -> Option<Pod> {
        pod_for(self.view, &self.tf_configs, r.rtype, r.index)
    }

    /// The service of replica `r` (see [`service_for`]).
    pub fn service(&self, r: ReplicaId) -> Option<Service> {
        service_for(self.view, r.rtype, r.index)
    }
}

/// The pod restart policy for a replica restart policy: ExitCode is handled by the
/// operator, so its pods never restart in place.
pub fn pod_restart_policy(p: RestartPolicy) -> &'static str {
    match p {
        RestartPolicy::Always => "Always",
        RestartPolicy::OnFailure => "OnFailure",
        RestartPolicy::Never | RestartPolicy::ExitCode => "Never",
    }
}

/// The `tensorflow` container's named ports, with `tfjob-port` 2222 added when missing.
fn tensorflow_ports(container: &Container) -> Vec<ContainerPort> {
    let mut ports = container.ports.clone().unwrap_or_default();
    if !ports.iter().any(|p| p.name.as_deref() == Some(PORT_NAME)) {
        ports.push(ContainerPort {
            name: Some(PORT_NAME.into()),
            container_port: DEFAULT_PORT,
            ..Default::default()
        });
    }
    ports
}

fn meta(job: &JobView<'_>, rtype: ReplicaType, index: i32) -> Option<ObjectMeta> {
    let name = job.job.metadata.name.as_deref()?;
    Some(ObjectMeta {
        name: Some(names::replica_name(name, rtype, index)),
        namespace: job.job.metadata.namespace.clone(),
        labels: Some(names::replica_labels(name, rtype, index)),
        owner_references: Some(vec![names::owner_ref(job.job)?]),
        ..Default::default()
    })
}

fn replica_spec<'a>(job: &JobView<'a>, rtype: ReplicaType) -> Option<(&'a ReplicaSpec, RestartPolicy)> {
    let r = job.replicas.get(&rtype)?;
    Some((r.spec, r.restart_policy))
}

/// The pod of replica `rtype`/`index`: the template, with the operator's name, labels (which
/// win over the template's), owner reference, restart policy, default port and `TF_CONFIG`.
/// `None` when the job has no name or uid, or no such replica type.
pub fn pod_for(job: &JobView<'_>, tf_configs: &TfConfigs<'_>, rtype: ReplicaType, index: i32) -> Option<Pod> {
    let (spec, restart) = replica_spec(job, rtype)?;
    let template = spec.template.clone();
    let mut meta = meta(job, rtype, index)?;
    let tmeta = template.metadata.unwrap_or_default();
    let mut labels = tmeta.labels.unwrap_or_default();
    labels.extend(meta.labels.take().unwrap_or_default());
    if job.is_master_role(rtype, index) {
        labels.insert(names::LABEL_JOB_ROLE.into(), ROLE_MASTER.into());
    }
    meta.labels = Some(labels);
    meta.annotations = tmeta.annotations;
    meta.finalizers = tmeta.finalizers;

    let mut pod_spec = template.spec.unwrap_or_default();
    pod_spec.restart_policy = Some(pod_restart_policy(restart).into());
    let tf_config = tf_configs.for_replica(rtype, index);
    for c in pod_spec.containers.iter_mut().filter(|c| c.name == CONTAINER_NAME) {
        c.ports = Some(tensorflow_ports(c));
        if let Some(value) = &tf_config {
            let env = c.env.get_or_insert_with(Vec::new);
            env.retain(|e| e.name != names::TF_CONFIG);
            env.push(EnvVar { name: names::TF_CONFIG.into(), value: Some(value.clone()), value_from: None });
        }
    }
    Some(Pod { metadata: meta, spec: Some(pod_spec), status: None })
}

/// The headless service of replica `rtype`/`index`: selects exactly that pod and exposes the
/// named ports of its `tensorflow` container.
pub fn service_for(job: &JobView<'_>, rtype: ReplicaType, index: i32) -> Option<Service> {
    let (spec, _) = replica_spec(job, rtype)?;
    let meta = meta(job, rtype, index)?;
    let ports: Vec<ServicePort> = spec
        .template
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .filter(|c| c.name == CONTAINER_NAME)
        .flat_map(tensorflow_ports)
        .filter(|p| p.name.is_some())
        .map(|p| ServicePort {
            name: p.name,
            // targetPort defaults to port, which is the container's port.
            port: p.container_port,
            protocol: p.protocol,
            ..Default::default()
        })
        .collect();
    Some(Service {
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: meta.labels.clone(),
            ports: Some(ports),
            ..Default::default()
        }),
        metadata: meta,
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{TFJob, TFJobSpec};

    fn pod_for(j: &TFJob, t: ReplicaType, i: i32, domain: Option<&str>) -> Option<Pod> {
        let view = JobView::new(j).ok()?;
        Builder::new(&view, domain).pod(ReplicaId { rtype: t, index: i })
    }

    fn service_for(j: &TFJob, t: ReplicaType, i: i32) -> Option<Service> {
        super::service_for(&JobView::new(j).ok()?, t, i)
    }
    use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
    use std::collections::BTreeMap;

    fn container(name: &str, ports: Option<Vec<ContainerPort>>) -> Container {
        Container { name: name.into(), image: Some("img".into()), ports, ..Default::default() }
    }

    fn job(types: &[(&str, i32, Option<RestartPolicy>)], template: PodTemplateSpec) -> TFJob {
        let mut spec = TFJobSpec::default();
        for (k, n, rp) in types {
            spec.tf_replica_specs.insert(
                k.to_string(),
                ReplicaSpec { replicas: Some(*n), template: template.clone().into(), restart_policy: *rp },
            );
        }
        let mut j = TFJob::new("j", spec);
        j.metadata.namespace = Some("ns".into());
        j.metadata.uid = Some("uid-1".into());
        j
    }

    fn template(
        containers: Vec<Container>,
        labels: &[(&str, &str)],
        restart: Option<&str>,
    ) -> PodTemplateSpec {
        PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                annotations: Some(BTreeMap::from([("kwok.test/outcome".to_string(), "succeed".to_string())])),
                ..Default::default()
            }),
            spec: Some(PodSpec { containers, restart_policy: restart.map(Into::into), ..Default::default() }),
        }
    }

    fn env(pod: &Pod, container: &str) -> Vec<EnvVar> {
        let spec = pod.spec.as_ref().unwrap();
        spec.containers.iter().find(|c| c.name == container).unwrap().env.clone().unwrap_or_default()
    }

    #[test]
    fn pod_copies_template_and_operator_labels_win() {
        let t = template(
            vec![container("tensorflow", None), container("sidecar", None)],
            &[("app", "x"), (names::LABEL_JOB_NAME, "spoofed")],
            Some("Always"),
        );
        let j = job(&[("PS", 1, None), ("Worker", 2, Some(RestartPolicy::ExitCode))], t);
        let pod = pod_for(&j, ReplicaType::Worker, 1, None).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("j-worker-1"));
        assert_eq!(pod.metadata.namespace.as_deref(), Some("ns"));
        let labels = pod.metadata.labels.clone().unwrap();
        assert_eq!(labels["app"], "x");
        assert_eq!(labels[names::LABEL_JOB_NAME], "j");
        assert_eq!(labels[names::LABEL_REPLICA_TYPE], "worker");
        assert_eq!(labels[names::LABEL_REPLICA_INDEX], "1");
        assert!(!labels.contains_key(names::LABEL_JOB_ROLE), "worker 1 is not the master role");
        assert_eq!(pod.metadata.annotations.clone().unwrap()["kwok.test/outcome"], "succeed");
        let owner = pod.metadata.owner_references.clone().unwrap()[0].clone();
        assert_eq!((owner.uid.as_str(), owner.controller), ("uid-1", Some(true)));
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.restart_policy.as_deref(), Some("Never"), "ExitCode pods never restart in place");
        let tf = spec.containers.iter().find(|c| c.name == "tensorflow").unwrap();
        assert_eq!(tf.ports.as_ref().unwrap()[0].name.as_deref(), Some("tfjob-port"));
        assert_eq!(tf.ports.as_ref().unwrap()[0].container_port, 2222);
        assert_eq!(env(&pod, "tensorflow").iter().filter(|e| e.name == "TF_CONFIG").count(), 1);
        assert!(env(&pod, "sidecar").is_empty(), "only the tensorflow container gets TF_CONFIG");
        assert!(spec.containers.iter().find(|c| c.name == "sidecar").unwrap().ports.is_none());
    }

    #[test]
    fn restart_policy_mapping() {
        let cases = [
            (None, "Never"),
            (Some(RestartPolicy::Never), "Never"),
            (Some(RestartPolicy::ExitCode), "Never"),
            (Some(RestartPolicy::OnFailure), "OnFailure"),
            (Some(RestartPolicy::Always), "Always"),
        ];
        for (rp, want) in cases {
            let j = job(
                &[("Worker", 2, rp)],
                template(vec![container("tensorflow", None)], &[], Some("OnFailure")),
            );
            let pod = pod_for(&j, ReplicaType::Worker, 0, None).unwrap();
            assert_eq!(pod.spec.unwrap().restart_policy.as_deref(), Some(want), "{rp:?}");
        }
    }

    #[test]
    fn master_role_goes_to_chief_or_worker_zero() {
        let t = template(vec![container("tensorflow", None)], &[], None);
        let with_chief = job(&[("Chief", 1, None), ("Worker", 2, None)], t.clone());
        let role = |j: &TFJob, t, i| {
            pod_for(j, t, i, None).unwrap().metadata.labels.unwrap().get(names::LABEL_JOB_ROLE).cloned()
        };
        assert_eq!(role(&with_chief, ReplicaType::Chief, 0).as_deref(), Some("master"));
        assert_eq!(role(&with_chief, ReplicaType::Worker, 0), None);
        let workers = job(&[("PS", 1, None), ("Worker", 2, None)], t);
        assert_eq!(role(&workers, ReplicaType::Worker, 0).as_deref(), Some("master"));
        assert_eq!(role(&workers, ReplicaType::PS, 0), None);
    }

    #[test]
    fn user_tf_config_is_replaced_and_single_replica_gets_none() {
        let mut c = container("tensorflow", None);
        c.env = Some(vec![
            EnvVar { name: "TF_CONFIG".into(), value: Some("mine".into()), value_from: None },
            EnvVar { name: "OTHER".into(), value: Some("1".into()), value_from: None },
        ]);
        let j = job(&[("Worker", 2, None)], template(vec![c.clone()], &[], None));
        let e = env(&pod_for(&j, ReplicaType::Worker, 0, None).unwrap(), "tensorflow");
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].name, "OTHER");
        assert!(e[1].value.as_deref().unwrap().starts_with("{\"cluster\""));
        let single = job(&[("Worker", 1, None)], template(vec![container("tensorflow", None)], &[], None));
        assert!(env(&pod_for(&single, ReplicaType::Worker, 0, None).unwrap(), "tensorflow").is_empty());
    }

    #[test]
    fn service_is_headless_with_named_ports() {
        let ports = vec![
            ContainerPort { name: Some("tfjob-port".into()), container_port: 3000, ..Default::default() },
            ContainerPort { name: Some("metrics".into()), container_port: 9090, ..Default::default() },
            ContainerPort { name: None, container_port: 7000, ..Default::default() },
        ];
        let j = job(
            &[("PS", 1, None), ("Worker", 1, None)],
            template(vec![container("tensorflow", Some(ports))], &[], None),
        );
        let svc = service_for(&j, ReplicaType::PS, 0).unwrap();
        assert_eq!(svc.metadata.name.as_deref(), Some("j-ps-0"));
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.selector, Some(names::replica_labels("j", ReplicaType::PS, 0)));
        let got: Vec<_> = spec.ports.unwrap().into_iter().map(|p| (p.name.unwrap(), p.port)).collect();
        assert_eq!(got, [("tfjob-port".to_string(), 3000), ("metrics".to_string(), 9090)]);
        assert_eq!(svc.metadata.labels, Some(names::replica_labels("j", ReplicaType::PS, 0)));

        let udp = ContainerPort {
            name: Some("tfjob-port".into()),
            container_port: 3000,
            protocol: Some("UDP".into()),
            ..Default::default()
        };
        let own =
            job(&[("Worker", 2, None)], template(vec![container("tensorflow", Some(vec![udp]))], &[], None));
        let p = service_for(&own, ReplicaType::Worker, 0).unwrap().spec.unwrap().ports.unwrap();
        assert_eq!(p.len(), 1, "a tfjob-port of its own: no default added");
        assert_eq!((p[0].port, p[0].protocol.as_deref()), (3000, Some("UDP")));
        let pod = pod_for(&own, ReplicaType::Worker, 0, None).unwrap();
        assert_eq!(pod.spec.unwrap().containers[0].ports.as_ref().unwrap().len(), 1);

        let default_port =
            job(&[("Worker", 2, None)], template(vec![container("tensorflow", None)], &[], None));
        let p = service_for(&default_port, ReplicaType::Worker, 1).unwrap().spec.unwrap().ports.unwrap();
        assert_eq!((p[0].name.as_deref(), p[0].port), (Some("tfjob-port"), 2222));
    }

    #[test]
    fn no_uid_or_unknown_type_builds_nothing() {
        let t = template(vec![container("tensorflow", None)], &[], None);
        let mut j = job(&[("Worker", 1, None)], t);
        assert!(pod_for(&j, ReplicaType::PS, 0, None).is_none());
        j.metadata.uid = None;
        assert!(pod_for(&j, ReplicaType::Worker, 0, None).is_none());
        assert!(service_for(&j, ReplicaType::Worker, 0).is_none());
    }
}
