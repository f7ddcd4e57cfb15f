//! The chart's monitoring values render `deploy/monitoring`: its ServiceMonitor and dashboard
//! ConfigMap, and the PodMonitor it offers instead, compared object by object; the chart's
//! copy of the dashboard is the repository's.

use anyhow::{Result, bail, ensure};

use super::{NAMESPACE, compare, keyed, kustomize, parse, root, template};

const SETS: &[&str] = &[
    "metrics.serviceMonitor.enabled=true",
    "metrics.podMonitor.enabled=true",
    "metrics.dashboard.enabled=true",
];

#[test]
fn monitoring_values_render_deploy_monitoring() -> Result<()> {
    let mut want = kustomize("deploy/monitoring")?;
    // The PodMonitor is offered in place of the ServiceMonitor, outside the kustomization.
    let mut pod_monitor =
        parse(&std::fs::read_to_string(root().join("deploy/monitoring/pod-monitor.yaml"))?)?;
    for d in &mut pod_monitor {
        d["metadata"]["namespace"] = NAMESPACE.into();
    }
    want.extend(pod_monitor);
    let want = keyed(want)?;
    let kinds: Vec<&str> = want.values().filter_map(|o| o["kind"].as_str()).collect();
    ensure!(kinds == ["PodMonitor", "ServiceMonitor", "ConfigMap"], "deploy/monitoring holds {kinds:?}");
    let monitoring_kinds = ["ConfigMap", "PodMonitor", "ServiceMonitor"];
    let chart = keyed(template(SETS)?)?
        .into_iter()
        .filter(|(_, o)| monitoring_kinds.contains(&o["kind"].as_str().unwrap_or_default()))
        .collect();
    let diff = compare(&chart, &want);
    if !diff.is_empty() {
        bail!("the chart with {SETS:?} differs from deploy/monitoring:\n{}", diff.join("\n"));
    }
    Ok(())
}

#[test]
fn the_charts_dashboard_is_the_repositorys() -> Result<()> {
    let copy = std::fs::read(root().join("charts/tfjob-operator/files/dashboard.json"))?;
    let original = std::fs::read(root().join("deploy/monitoring/dashboard.json"))?;
    ensure!(
        copy == original,
        "charts/tfjob-operator/files/dashboard.json differs: cp deploy/monitoring/dashboard.json charts/tfjob-operator/files/"
    );
    Ok(())
}
