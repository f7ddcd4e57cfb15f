//! The API server's validation of TFJobs in one table: the CRD's schema bounds, and the CEL
//! rules that a ValidatingAdmissionPolicy serves, the shape rules on creates and the update
//! contract on updates.
//!
//! The seed's update contract lives here: only `metadata.labels`, `metadata.annotations`,
//! the three updatable run-policy fields and `runPolicy.suspend` may change, plus, while the
//! job is suspended, the scheduling directives of the pod templates ([`super::contract`]).
//! Each immutable field is guarded by a rule on its parent (`spec`, which always exists) that
//! compares presence as well as value. The rules are written as a CRD's rules are, each on
//! the schema node it reads, and served by the policy [`VALIDATION_POLICY`] on `tfjobs` (not
//! `tfjobs/status`) rather than by the CRD: the API server evaluates every rule of a CRD on
//! every status write as well, where the spec cannot change; they were 17 of the 34 CPU
//! seconds our status writes cost it at 1000 jobs (BENCHMARKS.md, "Where the API server's CPU
//! goes"). The rules of `runPolicy.schedulingPolicy` accept what native gang scheduling reads
//! and refuse what only other gang schedulers read.

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

/// The name of the ValidatingAdmissionPolicy (and of its binding) that serves every rule of
/// this module ([`validation_policy`], committed as `crds/tfjob-validation.yaml`).
pub const VALIDATION_POLICY: &str = "tfjob-validation";

/// The rules every new TFJob must meet, each on the schema node it reads (the update
/// contract's are [`contract_rules`]).
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
             + size(string(has(self.spec.tfReplicaSpecs[k].replicas) && self.spec.tfReplicaSpecs[k].replicas != null \
             && self.spec.tfReplicaSpecs[k].replicas > 1 ? self.spec.tfReplicaSpecs[k].replicas - 1 : 0)) <= 63)",
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
                "self.map(k, has(self[k].replicas) && self[k].replicas != null ? self[k].replicas : 1).sum() \
                 <= {MAX_TOTAL_REPLICAS}"
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
                 !has(self.tfReplicaSpecs[k].replicas) || self.tfReplicaSpecs[k].replicas == null || \
                 self.tfReplicaSpecs[k].replicas == 1)"
            ),
            "a Chief or Master must have exactly 1 replica",
        ),
        rule(
            &["spec"],
            format!(
                "self.tfReplicaSpecs.exists(k, k.lowerAscii() in {CHIEFS}) || self.tfReplicaSpecs.exists(k, \
                 k.lowerAscii() == 'worker' && (!has(self.tfReplicaSpecs[k].replicas) || \
                 self.tfReplicaSpecs[k].replicas == null || self.tfReplicaSpecs[k].replicas >= 1))"
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

/// `rule`, written for the schema node at `path`, as an admission policy's expression on the
/// whole object: `self` becomes that node of `object` and `oldSelf` of `oldObject`. Under a
/// field that `schema` (the CRD's `openAPIV3Schema`) does not require, the rule holds when the
/// field is unset, as a CRD's rule does; under a map's values (`*`) it must hold for each.
pub fn policy_expression(schema: &Value, path: &[&str], rule: &str) -> Result<String, String> {
    let (mut cur, mut old) = ("object".to_string(), Some("oldObject".to_string()));
    let mut node = schema;
    let (mut open, mut close) = (String::new(), String::new());
    for (depth, seg) in path.iter().enumerate() {
        if *seg == "*" {
            let var = format!("r{depth}");
            open.push_str(&format!("{cur}.all({var}, "));
            close.insert(0, ')');
            cur = format!("{cur}[{var}]");
            old = None;
            node = node.get("additionalProperties").ok_or_else(|| format!("no {}", path.join(".")))?;
            continue;
        }
        let required = node
            .get("required")
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|f| f.as_str() == Some(seg)));
        node = node.pointer(&format!("/properties/{seg}")).ok_or_else(|| format!("no {}", path.join(".")))?;
        if !required {
            open.push_str(&format!("!has({cur}.{seg}) || ("));
            close.insert(0, ')');
        }
        cur = format!("{cur}.{seg}");
        old = old.map(|o| format!("{o}.{seg}"));
    }
    let old = match old {
        Some(o) => o,
        None if on_objects(rule, "self", "") == rule => String::new(),
        None => return Err(format!("a rule under a map's values cannot read oldSelf: {rule}")),
    };
    Ok(format!("{open}{}{close}", on_objects(rule, &cur, &old)))
}

/// `rule` with the variables `self` and `oldSelf` replaced by `this` and `old`. Only whole
/// identifiers that are not a field name (after a `.`) are replaced: `metadata.selfLink` stays.
pub fn on_objects(rule: &str, this: &str, old: &str) -> String {
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
                "self" if variable => out.push_str(this),
                "oldSelf" if variable => out.push_str(old),
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

/// The operation a policy's validation applies to: the shape rules to creates (the update
/// contract keeps what they check from changing), the contract to updates.
fn only_on(operation: &str, expression: &str) -> String {
    format!("request.operation != '{operation}' || ({expression})")
}

/// The ValidatingAdmissionPolicy that serves every rule of this module, from the CRD's
/// `schema`, and its binding: the shape rules ([`rules`]) on creates and the update contract
/// ([`contract_rules`]) on updates, of a TFJob and not of its status. None sits in the CRD,
/// whose rules the API server evaluates on every status write as well.
pub fn validation_policy(schema: &Value) -> Result<[Value; 2], String> {
    let validation = |op: &str, r: SchemaRule| -> Result<Value, String> {
        let expression = only_on(op, &policy_expression(schema, r.path, &r.rule)?);
        Ok(json!({ "expression": expression, "message": r.message, "reason": "Invalid" }))
    };
    let mut validations: Vec<Value> =
        rules().into_iter().map(|r| validation("CREATE", r)).collect::<Result<_, String>>()?;
    for r in contract_rules(schema)? {
        validations.push(validation("UPDATE", r)?);
    }
    Ok([
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": { "name": VALIDATION_POLICY },
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": { "resourceRules": [{
                    "apiGroups": ["kubeflow.org"],
                    "apiVersions": ["v1"],
                    "operations": ["CREATE", "UPDATE"],
                    "resources": ["tfjobs"],
                }]},
                "validations": validations,
            },
        }),
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": { "name": VALIDATION_POLICY },
            "spec": { "policyName": VALIDATION_POLICY, "validationActions": ["Deny"] },
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
                   self.runPolicy.schedulingPolicy.minAvailable == null || \
                   self.runPolicy.schedulingPolicy.minAvailable <= self.tfReplicaSpecs.map(k, \
                   has(self.tfReplicaSpecs[k].replicas) && self.tfReplicaSpecs[k].replicas != null ? \
                   self.tfReplicaSpecs[k].replicas : 1).sum()"
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

/// Adds the bounds to the generated `openAPIV3Schema`. The CRD gets no CEL rule: they are
/// the policy's ([`validation_policy`]).
pub fn add_to_schema(schema: &mut Value) -> Result<(), String> {
    for (path, keyword, value) in bounds() {
        let n = node(schema, path)?;
        n.as_object_mut().ok_or("schema node is not an object")?.insert(keyword.into(), value);
    }
    Ok(())
}

/// Adds `rules` to the schema nodes they sit on, as `x-kubernetes-validations` (tests evaluate
/// the policy's rules this way, with a CRD's CEL evaluator).
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
            assert_eq!(on_objects(rule, "object.spec", "oldObject.spec"), want, "{rule}");
        }
    }

    /// A rule keeps its meaning on the whole object: it holds where its node is unset (a
    /// field not required), and for each value of a map.
    #[test]
    fn rules_are_lifted_to_the_object() {
        let schema = json!({"required": ["spec"], "properties": {"spec": {
            "required": ["m"],
            "properties": {
                "m": {"additionalProperties": {"properties": {"t": {}}}},
                "o": {"properties": {"p": {}}},
            },
        }}});
        let cases: [(&[&str], &str, Result<&str, ()>); 6] = [
            (&[], "has(self.metadata.name)", Ok("has(object.metadata.name)")),
            (&["spec"], "self.a == oldSelf.a", Ok("object.spec.a == oldObject.spec.a")),
            (&["spec", "m"], "self.all(k, k != '')", Ok("object.spec.m.all(k, k != '')")),
            (
                &["spec", "o", "p"],
                "!has(self.q)",
                Ok("!has(object.spec.o) || (!has(object.spec.o.p) || (!has(object.spec.o.p.q)))"),
            ),
            (&["spec", "m", "*"], "has(self.t)", Ok("object.spec.m.all(r2, has(object.spec.m[r2].t))")),
            (&["spec", "m", "*"], "self.t == oldSelf.t", Err(())),
        ];
        for (path, rule, want) in cases {
            let got = policy_expression(&schema, path, rule);
            assert_eq!(got.as_deref().map_err(|_| ()), want, "{path:?} {rule}");
        }
        assert!(policy_expression(&schema, &["spec", "x"], "true").is_err(), "no such node");
    }
}
