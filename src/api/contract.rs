//! The update contract of `spec.tfReplicaSpecs`, generated from the schema: fixed once the job
//! exists, except the scheduling directives Kueue writes while the job is suspended.
//!
//! CEL in a CRD cannot copy an object minus some fields, so the rule compares every other
//! field of each replica, its pod template, the template's metadata and its pod spec one by
//! one, presence included; the lists come from the generated schema, so a field added by a
//! newer k8s-openapi is guarded without anyone editing this file.

use serde_json::Value;

/// Template metadata fields that may change while the job is suspended.
pub const SCHEDULING_METADATA: [&str; 2] = ["labels", "annotations"];

/// Pod spec fields of a template that may change while the job is suspended.
pub const SCHEDULING_SPEC: [&str; 3] = ["nodeSelector", "tolerations", "schedulingGates"];

/// True when the stored job or the update has `runPolicy.suspend: true`.
const SUSPENDED: &str = "((has(self.runPolicy) && has(self.runPolicy.suspend) && self.runPolicy.suspend) || \
(has(oldSelf.runPolicy) && has(oldSelf.runPolicy.suspend) && oldSelf.runPolicy.suspend))";

fn properties(node: &Value) -> Vec<String> {
    node.get("properties").and_then(Value::as_object).map(|p| p.keys().cloned().collect()).unwrap_or_default()
}

/// `path` below a replica is the same in the update as in the stored job: present in both
/// with equal values, or absent in both. Every segment may be absent.
///
/// The values are compared wrapped in one-element lists. The API server estimates the cost
/// of `a == b` from the largest size `a` and `b` could have, and a pod spec's strings and
/// lists have no bound in the schema, so comparing them bare is estimated at about 9.2e18
/// (kube-apiserver 1.36 refuses the CRD: over 100 times the whole CRD's budget of 1e8); a
/// one-element list has size 1, and the whole rule is estimated at 22,247 (the per-rule
/// limit is 1e6). The comparison itself is the same and, on objects bounded by the request
/// size, cheap.
fn same(path: &[&str]) -> String {
    let has = |o: &str| {
        (1..=path.len())
            .map(|n| format!("has({o}.tfReplicaSpecs[k].{})", path[..n].join(".")))
            .collect::<Vec<_>>()
            .join(" && ")
    };
    let (new, old, p) = (has("self"), has("oldSelf"), path.join("."));
    format!(
        "({new}) == ({old}) && (!({new}) || [self.tfReplicaSpecs[k].{p}] == [oldSelf.tfReplicaSpecs[k].{p}])"
    )
}

/// The CEL rule on `spec` that keeps `tfReplicaSpecs` fixed, with the suspended-job
/// allowances; `replica` is the schema of one replica (`tfReplicaSpecs.*`).
pub fn replica_specs_rule(replica: &Value) -> Result<String, String> {
    let template = replica.pointer("/properties/template").ok_or("the replica schema has no template")?;
    let mut checks = Vec::new();
    for field in properties(replica).iter().filter(|f| *f != "template") {
        checks.push(same(&[field.as_str()]));
    }
    for part in properties(template) {
        let allowed: &[&str] = match part.as_str() {
            "metadata" => &SCHEDULING_METADATA,
            "spec" => &SCHEDULING_SPEC,
            _ => {
                checks.push(same(&["template", &part]));
                continue;
            }
        };
        let node = &template["properties"][&part];
        let fields = properties(node);
        if fields.is_empty() {
            return Err(format!("the template's {part} schema lists no fields"));
        }
        for field in fields.iter().filter(|f| !allowed.contains(&f.as_str())) {
            checks.push(same(&["template", &part, field]));
        }
    }
    Ok(format!(
        "has(self.tfReplicaSpecs) == has(oldSelf.tfReplicaSpecs) && (!has(self.tfReplicaSpecs) || \
         self.tfReplicaSpecs == oldSelf.tfReplicaSpecs || ({SUSPENDED} && \
         self.tfReplicaSpecs.size() == oldSelf.tfReplicaSpecs.size() && \
         self.tfReplicaSpecs.all(k, k in oldSelf.tfReplicaSpecs && {})))",
        checks.join(" && ")
    ))
}
