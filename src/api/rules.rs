//! The API server's validation of TFJobs: the CRD's CEL rules and schema bounds, and the
//! update contract's rules, which a ValidatingAdmissionPolicy serves, in one table.
//!
//! The seed's update contract lives here: only `metadata.labels`, `metadata.annotations`,
//! the three updatable run-policy fields and `runPolicy.suspend` may change, plus, while the
//! job is suspended, the scheduling directives of the pod templates ([`super::contract`]).
//! Each immutable field is guarded by a rule on its parent (`spec`, which always exists) that
//! compares presence as well as value. These rules compare an update with the stored job, so
//! they are served by the policy [`CONTRACT_POLICY`] on `tfjobs` updates and not by the CRD:
//! the API server evaluates every rule of a CRD on every status write as well, where the spec
//! cannot change, and comparing the pod templates was half of what a status write cost it
//! (BENCHMARKS.md, "Where the API server's CPU goes"). The rules of
//! `runPolicy.schedulingPolicy` accept what native gang scheduling reads and refuse what only
//! other gang schedulers read.

use serde_json::{Value, json};

use super::contract;

/// The `spec` (and `spec.runPolicy`) fields a user may change on an existing TFJob.
pub const MUTABLE_FIELDS: [&str; 3] = ["activeDeadlineSeconds", "ttlSecondsAfterFinished", "cleanPodPolicy"];

/// The fields directly under `spec` that are fixed once the job exists.
pub const IMMUTABLE_SPEC_FIELDS: [&str; 4] =
    ["tfReplicaSpecs", "successPolicy", "enableDynamicWorker", "backoffLimit"];

/// The fields only under `spec.runPolicy` that a user (or Kueue) may change at any time.
pub const MUTABLE_RUN_POLICY_FIELDS: [&str; 1] = ["suspend"];

/// The fields under `spec.runPolicy` that are fixed once the job exists.
pub const IMMUTABLE_RUN_POLICY_FIELDS: [&str; 3] = ["backoffLimit", "schedulingPolicy", "managedBy"];

/// The `managedBy` values accepted: this operator (also empty or unset) and Kueue's
/// MultiKueue, which runs the job in another cluster.
pub const MANAGED_BY_US: &str = "kubeflow.org/training-operator";
pub const MANAGED_BY_MULTIKUEUE: &str = "kueue.x-k8s.io/multikueue";

/// What the refusal of a forbidden update says may change.
pub const CONTRACT: &str = "only metadata.labels, metadata.annotations, activeDeadlineSeconds, \
ttlSecondsAfterFinished and cleanPodPolicy (directly under spec or under spec.runPolicy) and \
spec.runPolicy.suspend may be changed on an existing TFJob, and, while the job is suspended (before \
or after the update), each replica template's metadata.labels, metadata.annotations, \
spec.nodeSelector, spec.tolerations and spec.schedulingGates";

/// Upper bound on containers per pod template, so that rules iterating them stay within the
/// API server's CEL cost budget.
pub const MAX_CONTAINERS: u32 = 64;

/// The most replicas a TFJob may have in all (the sum over its replica types). Every pod's
/// `TF_CONFIG` lists every replica's address, so one pod grows with the job and the job's
/// pods together with its square; README ("Job size") gives the measurements behind it.
pub const MAX_TOTAL_REPLICAS: i32 = 1000;

const TYPES: &str = "['ps', 'worker', 'chief', 'master', 'evaluator']";
const CHIEFS: &str = "['chief', 'master']";

/// One CEL rule and the schema node it sits on (a path of property names from the root;
/// `*` is a map's values).
#[derive(Clone, Debug)]
pub struct SchemaRule {
    pub path: &'static [&'static str],
    pub rule: String,
    pub message: String,
    pub field_path: Option<String>,
}

fn rule(path: &'static [&'static str], rule: impl Into<String>, message: impl Into<String>) -> SchemaRule {
    SchemaRule { path, rule: rule.into(), message: message.into(), field_path: None }
}

/// The name of the ValidatingAdmissionPolicy (and of its binding) that serves the update
/// contract ([`contract_policy`], committed as `crds/tfjob-update-contract.yaml`).
pub const CONTRACT_POLICY: &str = "tfjob-update-contract";

/// Every CEL rule of the CRD (the update contract's are [`contract_rules`]).
pub fn rules() -> Vec<SchemaRule> {
    let mut out = vec![
        rule(
            &[],
            "!has(self.metadata.name) || self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')",
            "metadata.name must be a DNS-1035 label: lowercase letters, digits and '-', starting with a \
             letter and ending with a letter or digit",
        ),
        rule(
            &[],
            "!has(self.metadata.name) || self.spec.tfReplicaSpecs.all(k, size(self.metadata.name) + size(k) + 2 \
             + size(string(has(self.spec.tfReplicaSpecs[k].replicas) && self.spec.tfReplicaSpecs[k].replicas > 1 \
             ? self.spec.tfReplicaSpecs[k].replicas - 1 : 0)) <= 63)",
            "metadata.name is too long: every pod and service name <name>-<replica type>-<index> must be at \
             most 63 characters",
        ),
        rule(
            &["spec", "tfReplicaSpecs"],
            format!("self.all(k, k.lowerAscii() in {TYPES})"),
            "spec.tfReplicaSpecs keys must be PS, Worker, Chief, Master or Evaluator (in any letter case)",
        ),
        rule(
            &["spec", "tfReplicaSpecs"],
            "self.all(k, self.filter(j, j.lowerAscii() == k.lowerAscii()).size() == 1)",
            "spec.tfReplicaSpecs names the same replica type twice (keys ignore letter case: Ps and PS are \
             the same type)",
        ),
        rule(
            &["spec", "tfReplicaSpecs"],
            format!(
                "self.map(k, has(self[k].replicas) ? self[k].replicas : 1).sum() <= {MAX_TOTAL_REPLICAS}"
            ),
            format!(
                "a TFJob may have at most {MAX_TOTAL_REPLICAS} replicas in all (the sum of \
                 spec.tfReplicaSpecs[*].replicas, 1 where unset): every pod's TF_CONFIG lists every replica's \
                 address, so a bigger job makes pods too large for the API server and the operator"
            ),
        ),
        rule(
            &["spec"],
            format!("self.tfReplicaSpecs.filter(k, k.lowerAscii() in {CHIEFS}).size() <= 1"),
            "spec.tfReplicaSpecs may have a Chief or a Master, not both",
        ),
        rule(
            &["spec"],
            format!(
                "self.tfReplicaSpecs.all(k, !(k.lowerAscii() in {CHIEFS}) || \
                 !has(self.tfReplicaSpecs[k].replicas) || self.tfReplicaSpecs[k].replicas == 1)"
            ),
            "a Chief or Master must have exactly 1 replica",
        ),
        rule(
            &["spec"],
            format!(
                "self.tfReplicaSpecs.exists(k, k.lowerAscii() in {CHIEFS}) || self.tfReplicaSpecs.exists(k, \
                 k.lowerAscii() == 'worker' && (!has(self.tfReplicaSpecs[k].replicas) || \
                 self.tfReplicaSpecs[k].replicas >= 1))"
            ),
            "spec.tfReplicaSpecs needs a Chief or a Master, or a Worker with at least one replica",
        ),
        rule(
            &["spec", "tfReplicaSpecs", "*"],
            "has(self.template.spec) && self.template.spec.containers.exists(c, c.name == 'tensorflow')",
            "every replica's pod template needs a container named tensorflow",
        ),
        rule(
            &["spec", "tfReplicaSpecs", "*"],
            "!has(self.template.spec) || (self.template.spec.containers.all(c, has(c.image) && size(c.image) > 0) \
             && (!has(self.template.spec.initContainers) || \
             self.template.spec.initContainers.all(c, has(c.image) && size(c.image) > 0)))",
            "every container of a replica's pod template needs a non-empty image",
        ),
        rule(
            &["spec", "runPolicy"],
            format!(
                "!has(self.managedBy) || self.managedBy in ['', '{MANAGED_BY_US}', '{MANAGED_BY_MULTIKUEUE}']"
            ),
            format!(
                "spec.runPolicy.managedBy must be empty, {MANAGED_BY_US} (this operator runs the job) or \
                 {MANAGED_BY_MULTIKUEUE} (Kueue's MultiKueue runs it in another cluster)"
            ),
        ),
    ];
    out.extend(scheduling_rules()); // runPolicy.schedulingPolicy: gang scheduling
    out
}

/// The update contract: the rules on `spec` that compare an update with the stored job
/// (`oldSelf`), one per immutable field, `tfReplicaSpecs`' generated from `schema` (the CRD's
/// `openAPIV3Schema`).
pub fn contract_rules(schema: &Value) -> Result<Vec<SchemaRule>, String> {
    let mut out: Vec<SchemaRule> = IMMUTABLE_SPEC_FIELDS
        .into_iter()
        .filter(|f| *f != "tfReplicaSpecs")
        .map(|f| immutable(None, f))
        .collect();
    out.extend(IMMUTABLE_RUN_POLICY_FIELDS.into_iter().map(|f| immutable(Some("runPolicy"), f)));
    let mut replica = schema;
    for seg in ["spec", "tfReplicaSpecs", "*"] {
        let next = if seg == "*" {
            replica.get("additionalProperties")
        } else {
            replica.pointer(&format!("/properties/{seg}"))
        };
        replica = next.ok_or("the CRD schema has no spec.tfReplicaSpecs.*")?;
    }
    out.push(SchemaRule {
        path: &["spec"],
        rule: contract::replica_specs_rule(replica)?,
        message: format!("spec.tfReplicaSpecs cannot be changed: {CONTRACT}"),
        field_path: Some(".tfReplicaSpecs".into()),
    });
    Ok(out)
}

/// A rule on `spec` as an admission policy's expression: the variable `self` is
/// `object.spec` and `oldSelf` is `oldObject.spec`. Only whole identifiers that are not a
/// field name (after a `.`) are replaced: `metadata.selfLink` stays.
pub fn on_objects(rule: &str) -> String {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = String::with_capacity(rule.len() * 2);
    let mut rest = rule;
    let mut prev: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        let word_len = rest.find(|c: char| !ident(c)).unwrap_or(rest.len());
        if ident(c) && word_len > 0 {
            let word = &rest[..word_len];
            let variable = prev != Some('.') && !prev.is_some_and(ident);
            match word {
                "self" if variable => out.push_str("object.spec"),
                "oldSelf" if variable => out.push_str("oldObject.spec"),
                _ => out.push_str(word),
            }
            prev = word.chars().last();
            rest = &rest[word_len..];
        } else {
            out.push(c);
            prev = Some(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The ValidatingAdmissionPolicy that serves the update contract on every update of a TFJob
/// (not of its status), and its binding, from the CRD's `schema`.
pub fn contract_policy(schema: &Value) -> Result<[Value; 2], String> {
    let validations: Vec<Value> = contract_rules(schema)?
        .into_iter()
        .map(|r| {
            if r.path != ["spec"] {
                return Err(format!("contract rule not on spec: {}", r.rule));
            }
            Ok(json!({ "expression": on_objects(&r.rule), "message": r.message, "reason": "Invalid" }))
        })
        .collect::<Result<_, String>>()?;
    Ok([
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": { "name": CONTRACT_POLICY },
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": { "resourceRules": [{
                    "apiGroups": ["kubeflow.org"],
                    "apiVersions": ["v1"],
                    "operations": ["UPDATE"],
                    "resources": ["tfjobs"],
                }]},
                "validations": validations,
            },
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": { "name": CONTRACT_POLICY },
            "spec": { "policyName": CONTRACT_POLICY, "validationActions": ["Deny"] },
        }),
    ])
}

/// The rule on `spec` that keeps `spec.[parent.]field` as it was: present as before, and equal.
fn immutable(parent: Option<&str>, field: &str) -> SchemaRule {
    let path = parent.map_or_else(|| field.to_string(), |p| format!("{p}.{field}"));
    let present = |o: &str| match parent {
        None => format!("has({o}.{path})"),
        Some(p) => format!("(has({o}.{p}) && has({o}.{path}))"),
    };
    SchemaRule {
        path: &["spec"],
        rule: format!(
            "{new} == {old} && (!{new} || self.{path} == oldSelf.{path})",
            new = present("self"),
            old = present("oldSelf"),
        ),
        message: format!("spec.{path} cannot be changed: {CONTRACT}"),
        field_path: Some(format!(".{path}")),
    }
}

const SCHEDULING_POLICY: &[&str] = &["spec", "runPolicy", "schedulingPolicy"];

const NATIVE: &str = "this operator gang-schedules only with Kubernetes' own PodGroup (--gang-scheduling=native), \
which has no such setting; leave it unset";

/// The rules of `runPolicy.schedulingPolicy`: what native gang scheduling reads (`minAvailable`,
/// `priorityClass`) is accepted; the fields only Volcano or scheduler-plugins read are refused,
/// naming the backend that would need them (on `spec.runPolicy.schedulingPolicy`, and on `spec`
/// for `minAvailable`).
fn scheduling_rules() -> Vec<SchemaRule> {
    let refuse = |field: &str, backend: &str| SchemaRule {
        path: SCHEDULING_POLICY,
        rule: format!("!has(self.{field})"),
        message: format!("spec.runPolicy.schedulingPolicy.{field} is read only by {backend}: {NATIVE}"),
        field_path: Some(format!(".{field}")),
    };
    vec![
        refuse("queue", "Volcano's gang scheduler (its queues; Kueue queues TFJobs here)"),
        refuse("minResources", "Volcano's and scheduler-plugins' gang schedulers"),
        refuse(
            "scheduleTimeoutSeconds",
            "scheduler-plugins' coscheduling (kube-scheduler's GangScheduling plugin waits a fixed 5 minutes)",
        ),
        SchemaRule {
            path: &["spec"],
            rule: "!has(self.runPolicy) || !has(self.runPolicy.schedulingPolicy) || \
                   !has(self.runPolicy.schedulingPolicy.minAvailable) || \
                   self.runPolicy.schedulingPolicy.minAvailable <= self.tfReplicaSpecs.map(k, \
                   has(self.tfReplicaSpecs[k].replicas) ? self.tfReplicaSpecs[k].replicas : 1).sum()"
                .into(),
            message:
                "spec.runPolicy.schedulingPolicy.minAvailable cannot be more than the job's replicas of \
                      all types together: such a gang would never be scheduled"
                    .into(),
            field_path: Some(".runPolicy.schedulingPolicy.minAvailable".into()),
        },
    ]
}

/// Schema bounds the generated types lack: (path, keyword, value).
fn bounds() -> Vec<(&'static [&'static str], &'static str, Value)> {
    vec![
        (&["spec", "tfReplicaSpecs"], "maxProperties", json!(5)),
        (&["spec", "tfReplicaSpecs", "*", "replicas"], "maximum", json!(MAX_TOTAL_REPLICAS)),
        (
            &["spec", "tfReplicaSpecs", "*", "template", "spec", "containers"],
            "maxItems",
            json!(MAX_CONTAINERS),
        ),
        (
            &["spec", "tfReplicaSpecs", "*", "template", "spec", "initContainers"],
            "maxItems",
            json!(MAX_CONTAINERS),
        ),
    ]
}

/// The schema node at `path`, or an error naming the path.
fn node<'a>(schema: &'a mut Value, path: &[&str]) -> Result<&'a mut Value, String> {
    let mut cur = schema;
    for seg in path {
        let next = if *seg == "*" {
            cur.get_mut("additionalProperties")
        } else {
            cur.get_mut("properties").and_then(|p| p.get_mut(*seg))
        };
        cur = next.ok_or_else(|| format!("the CRD schema has no {}", path.join(".")))?;
    }
    Ok(cur)
}

/// Adds the bounds and the CRD's CEL rules to the generated `openAPIV3Schema`.
pub fn add_to_schema(schema: &mut Value) -> Result<(), String> {
    for (path, keyword, value) in bounds() {
        let n = node(schema, path)?;
        n.as_object_mut().ok_or("schema node is not an object")?.insert(keyword.into(), value);
    }
    add_rules(schema, rules())
}

/// Adds `rules` to the schema nodes they sit on, as `x-kubernetes-validations`.
pub fn add_rules(schema: &mut Value, rules: Vec<SchemaRule>) -> Result<(), String> {
    for r in rules {
        let n = node(schema, r.path)?.as_object_mut().ok_or("schema node is not an object")?;
        let list = n.entry("x-kubernetes-validations").or_insert_with(|| json!([]));
        let mut entry = json!({ "rule": r.rule, "message": r.message });
        if let Some(fp) = r.field_path {
            entry["fieldPath"] = json!(fp);
        }
        list.as_array_mut().ok_or("x-kubernetes-validations is not a list")?.push(entry);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_become_expressions_on_the_objects() {
        let cases = [
            ("self.a == oldSelf.a", "object.spec.a == oldObject.spec.a"),
            (
                "has(self.x) && [self.m.selfLink] == [oldSelf.m.selfLink]",
                "has(object.spec.x) && [object.spec.m.selfLink] == [oldObject.spec.m.selfLink]",
            ),
            ("self.all(k, k in oldSelf)", "object.spec.all(k, k in oldObject.spec)"),
            ("myself.self", "myself.self"),
            ("'self' == x", "'object.spec' == x"),
        ];
        for (rule, want) in cases {
            assert_eq!(on_objects(rule), want, "{rule}");
        }
    }
}
