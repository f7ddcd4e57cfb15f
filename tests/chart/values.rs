//! Each value of `charts/tfjob-operator/values.yaml` changes what it documents, and values
//! that cannot work together stop the render.

use anyhow::{Result, bail, ensure};
use serde_json::{Value, json};

use super::{keyed, template};

const DEPLOYMENT: &str = "apps/v1/Deployment/tfjob-operator/tfjob-operator";
const CONTAINER: &str = "/spec/template/spec/containers/0";
const LEASE_ROLE: &str = "rbac.authorization.k8s.io/v1/Role/tfjob-operator/tfjob-operator-leader-election";
const CLUSTER_ROLE: &str = "rbac.authorization.k8s.io/v1/ClusterRole//tfjob-operator";
const SERVICE_MONITOR: &str = "monitoring.coreos.com/v1/ServiceMonitor/tfjob-operator/tfjob-operator";
const KUEUE_POLICY: &str =
    "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy//tfjob-kueue-replica-keys";
const VALIDATION_POLICY: &str = "admissionregistration.k8s.io/v1/ValidatingAdmissionPolicy//tfjob-validation";
const POD_MONITOR: &str = "monitoring.coreos.com/v1/PodMonitor/tfjob-operator/tfjob-operator";

/// Each value changes what values.yaml says: (values, object, JSON pointer in it, the value
/// there, or None: the object is not rendered).
#[test]
fn values_change_what_they_document() -> Result<()> {
    let defaults_args = json!(["--leader-elect", "--log-format=json"]);
    let rows: Vec<(Vec<&str>, &str, String, Option<Value>)> = vec![
        (vec![], DEPLOYMENT, format!("{CONTAINER}/args"), Some(defaults_args)),
        (vec![], SERVICE_MONITOR, String::new(), None),
        (vec![], POD_MONITOR, String::new(), None),
        (vec!["kueuePolicies.enabled=false"], KUEUE_POLICY, String::new(), None),
        (vec![], KUEUE_POLICY, "/spec/failurePolicy".into(), Some(json!("Fail"))),
        (vec!["validationPolicy.enabled=false"], VALIDATION_POLICY, String::new(), None),
        (vec![], VALIDATION_POLICY, "/spec/failurePolicy".into(), Some(json!("Fail"))),
        (
            vec!["gangScheduling=native", "logFormat=text", "extraArgs={--concurrency=32}"],
            DEPLOYMENT,
            format!("{CONTAINER}/args"),
            Some(json!([
                "--leader-elect",
                "--log-format=text",
                "--gang-scheduling=native",
                "--concurrency=32"
            ])),
        ),
        (
            vec!["kueueWorkloads=operator"],
            DEPLOYMENT,
            format!("{CONTAINER}/args"),
            Some(json!(["--leader-elect", "--log-format=json", "--kueue-workloads=operator"])),
        ),
        (
            vec!["leaderElection.namespace=infra"],
            "rbac.authorization.k8s.io/v1/Role/infra/tfjob-operator-leader-election",
            "/rules/0/resources".into(),
            Some(json!(["leases"])),
        ),
        (
            vec!["leaderElection.namespace=infra"],
            DEPLOYMENT,
            format!("{CONTAINER}/args/1"),
            Some(json!("--leader-election-namespace=infra")),
        ),
        (vec!["replicas=1", "leaderElection.enabled=false"], LEASE_ROLE, String::new(), None),
        (
            vec!["replicas=1", "leaderElection.enabled=false"],
            DEPLOYMENT,
            format!("{CONTAINER}/args"),
            Some(json!(["--log-format=json"])),
        ),
        (vec!["watchNamespace=team-a"], CLUSTER_ROLE, String::new(), None),
        (
            vec!["watchNamespace=team-a"],
            "rbac.authorization.k8s.io/v1/RoleBinding/team-a/tfjob-operator",
            "/subjects".into(),
            Some(
                json!([{"kind": "ServiceAccount", "name": "tfjob-operator", "namespace": "tfjob-operator"}]),
            ),
        ),
        (
            vec!["watchNamespace=team-a"],
            DEPLOYMENT,
            format!("{CONTAINER}/env/2"),
            Some(json!({"name": "TFJOB_NAMESPACE", "value": "team-a"})),
        ),
        (
            vec!["image.repository=registry.example/tfjob-operator", "image.tag=v0.1.0"],
            DEPLOYMENT,
            format!("{CONTAINER}/image"),
            Some(json!("registry.example/tfjob-operator:v0.1.0")),
        ),
        (
            vec!["image.digest=sha256:0123"],
            DEPLOYMENT,
            format!("{CONTAINER}/image"),
            Some(json!("tfjob-operator@sha256:0123")),
        ),
        (
            vec!["resources.limits.memory=1Gi"],
            DEPLOYMENT,
            format!("{CONTAINER}/resources/limits"),
            Some(json!({"cpu": "1", "memory": "1Gi"})),
        ),
        (vec!["replicas=3"], DEPLOYMENT, "/spec/replicas".into(), Some(json!(3))),
        (
            vec!["fullnameOverride=team-a-tfjobs"],
            "apps/v1/Deployment/tfjob-operator/team-a-tfjobs",
            "/spec/template/spec/serviceAccountName".into(),
            Some(json!("team-a-tfjobs")),
        ),
        (
            vec!["metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prometheus"],
            SERVICE_MONITOR,
            "/spec".into(),
            Some(json!({
                "namespaceSelector": {"matchNames": ["tfjob-operator"]},
                "selector": {"matchLabels": {"app.kubernetes.io/name": "tfjob-operator"}},
                "endpoints": [{"port": "http-metrics", "path": "/metrics", "interval": "30s"}]
            })),
        ),
        (
            vec!["metrics.serviceMonitor.enabled=true", "metrics.serviceMonitor.labels.release=prometheus"],
            SERVICE_MONITOR,
            "/metadata/labels/release".into(),
            Some(json!("prometheus")),
        ),
        (
            vec!["metrics.podMonitor.enabled=true"],
            POD_MONITOR,
            "/spec/podMetricsEndpoints".into(),
            Some(json!([{"port": "http", "path": "/metrics", "interval": "30s"}])),
        ),
    ];
    let mut failures = Vec::new();
    for (sets, object, pointer, want) in &rows {
        let objects = keyed(template(sets)?)?;
        let got = objects.get(*object).map(|o| o.pointer(pointer).cloned().unwrap_or(Value::Null));
        if &got != want {
            failures.push(format!("{sets:?}: {object}{pointer}: got {got:?}, want {want:?}"));
        }
    }
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

/// Values that cannot work together stop the render with the reason.
#[test]
fn values_that_cannot_work_are_refused() -> Result<()> {
    let rows: &[(&[&str], &str)] = &[
        (&["leaderElection.enabled=false"], "replicas > 1 needs leaderElection.enabled"),
        (&["gangScheduling=volcano"], "gangScheduling must be none or native, not \"volcano\""),
        (&["kueueWorkloads=builtin"], "kueueWorkloads must be kueue or operator, not \"builtin\""),
        (&["logFormat=xml"], "logFormat must be json or text"),
        (
            &["metrics.serviceMonitor.enabled=true", "metrics.service.enabled=false"],
            "metrics.serviceMonitor.enabled needs metrics.service.enabled",
        ),
    ];
    for (sets, message) in rows {
        match template(sets) {
            Ok(_) => bail!("{sets:?} rendered"),
            Err(e) => ensure!(format!("{e:#}").contains(message), "{sets:?}: {e:#}"),
        }
    }
    Ok(())
}
