//! The Helm chart `charts/tfjob-operator` against `deploy/`: `helm template` with the default
//! values renders the objects of `kubectl kustomize deploy/`, and with the release namespace
//! as the watched namespace those of `deploy/namespaced`, compared object by object (not as
//! text); its `crds/` are the repository's; and each value changes what it says it changes.
//! No cluster: `helm` comes from `TFJOB_HELM_DIR` (else `hack/build-helm.sh`), `kubectl` from
//! the control-plane binaries.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

mod monitoring;
mod values;

/// The labels Helm's convention adds to every object of a release (`metadata.labels` only,
/// never a selector or a pod's labels): the only differences allowed with `deploy/`.
const HELM_LABELS: &[&str] = &["helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"];

/// Objects of `deploy/` the chart does not render, and why.
const NOT_IN_CHART: &[(&str, &str)] = &[(
    "v1/Namespace//tfjob-operator",
    "Helm stores its release in the release namespace, so the namespace exists before any \
     object of the chart; README's \"Install with Helm\" creates it with deploy/'s labels",
)];

const RELEASE: &str = "tfjob-operator";
const NAMESPACE: &str = "tfjob-operator";

fn root() -> PathBuf {
    tfjob_testsupport::repo_root()
}

fn helm_bin() -> Result<PathBuf> {
    Ok(tfjob_testsupport::built_dir("TFJOB_HELM_DIR", "hack/build-helm.sh")?.join("helm"))
}

/// Helm's config, cache and data directories in a temporary one: nothing of the user's.
fn helm() -> Result<Command> {
    let home = std::env::temp_dir().join(format!("tfjob-chart-test-helm-{}", std::process::id()));
    let mut c = Command::new(helm_bin()?);
    for (var, sub) in
        [("HELM_CONFIG_HOME", "config"), ("HELM_CACHE_HOME", "cache"), ("HELM_DATA_HOME", "data")]
    {
        c.env(var, home.join(sub));
    }
    c.env_remove("KUBECONFIG");
    Ok(c)
}

fn output(mut c: Command, what: &str) -> Result<String> {
    let out = c.output().with_context(|| format!("running {what}"))?;
    ensure!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// The documents of a multi-document YAML stream, empty ones dropped.
fn parse(text: &str) -> Result<Vec<Value>> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).context("parsing YAML")?;
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// `helm template` of the chart (CRDs included) with `--set` values.
fn template(sets: &[&str]) -> Result<Vec<Value>> {
    let mut c = helm()?;
    c.args(["template", RELEASE]).arg(root().join("charts/tfjob-operator"));
    c.args(["--namespace", NAMESPACE, "--include-crds"]);
    for s in sets {
        c.args(["--set", s]);
    }
    Ok(cluster_scoped_without_namespace(parse(&output(c, &format!("helm template {sets:?}"))?)?))
}

/// `kubectl kustomize` of a directory of the repository.
fn kustomize(dir: &str) -> Result<Vec<Value>> {
    let kubectl = tfjob_testsupport::bin_dir()?.join("kubectl");
    let mut c = Command::new(kubectl);
    c.arg("kustomize").arg(root().join(dir));
    Ok(cluster_scoped_without_namespace(parse(&output(c, &format!("kubectl kustomize {dir}"))?)?))
}

/// The kinds of `deploy/` that are cluster-scoped: the API server clears a namespace given
/// to them, and kustomize gives one to those its schema does not know (the admission
/// policies), so it is dropped on both sides.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// `apiVersion/kind/namespace/name`.
fn key(doc: &Value) -> String {
    let m = &doc["metadata"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    format!("{}/{}/{}/{}", s(&doc["apiVersion"]), s(&doc["kind"]), s(&m["namespace"]), s(&m["name"]))
}

/// The documents with a cluster-scoped kind's namespace removed.
fn cluster_scoped_without_namespace(mut docs: Vec<Value>) -> Vec<Value> {
    for d in &mut docs {
        if CLUSTER_SCOPED.contains(&d["kind"].as_str().unwrap_or_default())
            && let Some(m) = d["metadata"].as_object_mut()
        {
            m.remove("namespace");
        }
    }
    docs
}

/// The documents keyed by [`key`]; a key rendered twice is an error.
fn keyed(docs: Vec<Value>) -> Result<BTreeMap<String, Value>> {
    let mut out = BTreeMap::new();
    for d in docs {
        let k = key(&d);
        ensure!(out.insert(k.clone(), d).is_none(), "{k} rendered twice");
    }
    Ok(out)
}

/// The chart's objects with [`HELM_LABELS`] removed from their `metadata.labels`.
fn without_helm_labels(mut objects: BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    for o in objects.values_mut() {
        if let Some(labels) = o["metadata"]["labels"].as_object_mut() {
            labels.retain(|k, _| !HELM_LABELS.contains(&k.as_str()));
        }
    }
    objects
}

/// Every path where `a` and `b` differ, with both values.
fn differences(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (va, vb) = (x.get(k).unwrap_or(&Value::Null), y.get(k).unwrap_or(&Value::Null));
                differences(&format!("{path}.{k}"), va, vb, out);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                differences(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        // YAML's 1 and 1.0 are the same number (kustomize re-serializes the CRD's 1.0 as 1).
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => {}
        _ if a != b => out.push(format!("{path}: chart {a}, kustomize {b}")),
        _ => {}
    }
}

/// What differs between the chart's objects and kustomize's, beyond the allowed differences.
fn compare(chart: &BTreeMap<String, Value>, kustomize: &BTreeMap<String, Value>) -> Vec<String> {
    let chart = without_helm_labels(chart.clone());
    let skipped: BTreeSet<&str> = NOT_IN_CHART.iter().map(|(k, _)| *k).collect();
    let mut out = Vec::new();
    for (k, want) in kustomize.iter().filter(|(k, _)| !skipped.contains(k.as_str())) {
        match chart.get(k) {
            None => out.push(format!("{k}: not rendered by the chart")),
            Some(got) => differences(k, got, want, &mut out),
        }
    }
    out.extend(
        chart.keys().filter(|k| !kustomize.contains_key(*k)).map(|k| format!("{k}: not in kustomize")),
    );
    out
}

fn assert_same(sets: &[&str], dir: &str) -> Result<()> {
    let chart = keyed(template(sets)?)?;
    let want = keyed(kustomize(dir)?)?;
    for (k, why) in NOT_IN_CHART {
        ensure!(
            want.contains_key(*k),
            "{k} is listed as not in the chart ({why}), but {dir} has no such object"
        );
    }
    // Every object of the chart's templates carries Helm's labels, so removing them is not a
    // no-op (those copied from the repository's files are rendered as they are).
    let copied = copied_keys()?;
    for (k, o) in chart.iter().filter(|(k, _)| !copied.contains(*k)) {
        let labels = &o["metadata"]["labels"];
        ensure!(labels["app.kubernetes.io/managed-by"] == "Helm", "{k}: labels {labels}");
        ensure!(labels["app.kubernetes.io/instance"] == RELEASE, "{k}: labels {labels}");
        ensure!(labels["helm.sh/chart"] == "tfjob-operator-0.1.0", "{k}: labels {labels}");
    }
    let diff = compare(&chart, &want);
    if !diff.is_empty() {
        bail!("the chart with {sets:?} differs from {dir}:\n{}", diff.join("\n"));
    }
    Ok(())
}

/// The chart's copies of the repository's files: (in the chart, in the repository).
const COPIES: &[(&str, &str)] = &[
    ("crds/kubeflow.org_tfjobs.yaml", "crds/kubeflow.org_tfjobs.yaml"),
    ("files/kueue-policies.yaml", "crds/kueue-policies.yaml"),
    ("files/tfjob-validation.yaml", "crds/tfjob-validation.yaml"),
];

/// The keys of the objects the chart renders from [`COPIES`] as they are (no Helm labels).
fn copied_keys() -> Result<BTreeSet<String>> {
    let mut keys = BTreeSet::new();
    for (f, _) in COPIES {
        let text = std::fs::read_to_string(root().join("charts/tfjob-operator").join(f))?;
        keys.extend(parse(&text)?.iter().map(key));
    }
    Ok(keys)
}

#[test]
fn chart_copies_are_the_repository_files() -> Result<()> {
    let crds = root().join("charts/tfjob-operator/crds");
    let files: Vec<String> = std::fs::read_dir(&crds)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    ensure!(
        files == ["kubeflow.org_tfjobs.yaml"],
        "{} holds {files:?}: only the CRD goes there",
        crds.display()
    );
    for (copy, original) in COPIES {
        let a = std::fs::read(root().join("charts/tfjob-operator").join(copy))?;
        let b = std::fs::read(root().join(original))?;
        ensure!(
            a == b,
            "charts/tfjob-operator/{copy} differs from {original}: cp {original} charts/tfjob-operator/{copy}"
        );
    }
    Ok(())
}

#[test]
fn default_values_render_deploy() -> Result<()> {
    assert_same(&[], "deploy")
}

#[test]
fn release_namespace_watched_renders_deploy_namespaced() -> Result<()> {
    assert_same(&[&format!("watchNamespace={NAMESPACE}")], "deploy/namespaced")
}

/// The comparison finds what it must: a Role rule changed, a label that is not Helm's, an
/// object missing on either side; and it lets through only Helm's labels.
#[test]
fn the_comparison_catches_a_changed_rule_a_stray_label_and_a_missing_object() -> Result<()> {
    let want = keyed(kustomize("deploy")?)?;
    let mut chart = want.clone();
    chart.retain(|k, _| !NOT_IN_CHART.iter().any(|(n, _)| n == k));
    for o in chart.values_mut() {
        if let Some(labels) = o["metadata"]["labels"].as_object_mut() {
            labels.insert("helm.sh/chart".into(), "tfjob-operator-0.1.0".into());
            labels.insert("app.kubernetes.io/managed-by".into(), "Helm".into());
        }
    }
    ensure!(compare(&chart, &want).is_empty(), "{:?}", compare(&chart, &want));

    let role = "rbac.authorization.k8s.io/v1/ClusterRole//tfjob-operator";
    let mut changed = chart.clone();
    changed.get_mut(role).context("no ClusterRole")?["rules"][3]["verbs"][4] = "patch".into();
    let diff = compare(&changed, &want);
    ensure!(diff == [format!("{role}.rules[3].verbs[4]: chart \"patch\", kustomize \"delete\"")], "{diff:?}");

    let mut stray = chart.clone();
    stray.get_mut(role).context("no ClusterRole")?["metadata"]["labels"]["team"] = "a".into();
    let diff = compare(&stray, &want);
    ensure!(diff == [format!("{role}.metadata.labels.team: chart \"a\", kustomize null")], "{diff:?}");

    let mut missing = chart.clone();
    missing.remove(role);
    missing.insert("v1/ConfigMap/tfjob-operator/extra".into(), Value::Null);
    let diff = compare(&missing, &want);
    ensure!(
        diff == [
            format!("{role}: not rendered by the chart"),
            "v1/ConfigMap/tfjob-operator/extra: not in kustomize".to_string()
        ],
        "{diff:?}"
    );
    Ok(())
}
