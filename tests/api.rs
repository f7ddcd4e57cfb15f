//! The API's shape: the committed CRD matches the generator, the seed's response object
//! round-trips, and every spec field is either updatable or guarded by an immutability rule.

use std::collections::BTreeSet;

use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};
use tfjob_operator::api::{self, ReplicaType, TFJob, rules};

#[test]
fn committed_crd_matches_the_generator() {
    let committed = std::fs::read_to_string("crds/kubeflow.org_tfjobs.yaml").unwrap_or_default();
    let generated = api::crd_yaml().expect("CRD renders");
    assert!(committed == generated, "crds/kubeflow.org_tfjobs.yaml is stale: run `make crds` and commit it");
}

#[test]
fn committed_update_validation_policy_matches_the_generator() {
    let committed = std::fs::read_to_string("crds/tfjob-validation.yaml").unwrap_or_default();
    let generated = api::validation_policy_yaml().expect("policy renders");
    assert!(committed == generated, "crds/tfjob-validation.yaml is stale: run `make crds` and commit it");
    let kustomization = std::fs::read_to_string("crds/kustomization.yaml").unwrap_or_default();
    assert!(kustomization.contains("- tfjob-validation.yaml"), "crds/kustomization.yaml installs it");
}

/// The CRD has no CEL rule (a status write would evaluate them all); the policy has every
/// rule, the shape rules on creates and the update contract on updates, each as the same text
/// on the whole object, refusing with its own message and reason Invalid (HTTP 422), on
/// `tfjobs` only (not their status).
#[test]
fn every_rule_is_the_policys_and_not_the_crds() {
    let crd = serde_json::to_value(api::crd().unwrap()).unwrap();
    let text = serde_json::to_string(&crd).unwrap();
    assert!(!text.contains("x-kubernetes-validations"), "the CRD keeps no CEL rule");
    let schema = crd.pointer("/spec/versions/0/schema/openAPIV3Schema").unwrap();
    let shape = rules::rules();
    let contract = rules::contract_rules(schema).unwrap();
    let [policy, binding] = api::validation_policy().unwrap();
    let validations = policy["spec"]["validations"].as_array().unwrap();
    assert_eq!(validations.len(), shape.len() + contract.len());
    assert_eq!(contract.len(), rules::IMMUTABLE_SPEC_FIELDS.len() + rules::IMMUTABLE_RUN_POLICY_FIELDS.len());
    let ops = shape.iter().map(|r| ("CREATE", r)).chain(contract.iter().map(|r| ("UPDATE", r)));
    for (v, (op, r)) in validations.iter().zip(ops) {
        assert_eq!(r.rule.contains("oldSelf"), op == "UPDATE", "{}", r.rule);
        let expr = v["expression"].as_str().unwrap();
        let lifted = rules::policy_expression(schema, r.path, &r.rule).unwrap();
        assert_eq!(expr, format!("request.operation != '{op}' || ({lifted})"));
        assert!(
            !expr.contains("self.") && !expr.contains("oldSelf") && !expr.contains("object.specLink"),
            "{expr}"
        );
        assert_eq!(expr.matches("selfLink").count(), r.rule.matches("selfLink").count());
        assert_eq!(v["message"], json!(r.message));
        if op == "UPDATE" {
            assert!(r.message.ends_with(rules::CONTRACT), "{}", r.message);
        }
        assert_eq!(v["reason"], "Invalid");
    }
    assert_eq!(
        policy["spec"]["matchConstraints"]["resourceRules"],
        json!([{"apiGroups": ["kubeflow.org"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["tfjobs"]}]),
        "creates and updates of the job itself, not of its status"
    );
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    assert_eq!(
        binding["spec"],
        json!({"policyName": rules::VALIDATION_POLICY, "validationActions": ["Deny"]})
    );
}

/// Timestamps become instants, so `.000Z` and `Z` compare equal.
fn normalize(v: &mut Value) {
    match v {
        Value::String(s) => {
            if let Ok(t) = s.parse::<Timestamp>() {
                *s = t.to_string();
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        Value::Object(o) => o.values_mut().for_each(normalize),
        _ => {}
    }
}

#[test]
fn seed_response_round_trips() {
    let raw: Value = serde_json::from_str(include_str!("fixtures/seed-response.json")).unwrap();
    let job: TFJob = serde_json::from_value(raw.clone()).expect("the seed's response deserializes");
    let mut back = serde_json::to_value(&job).unwrap();
    let mut want = raw;
    normalize(&mut back);
    normalize(&mut want);
    assert_eq!(back, want);

    let st = job.status.as_ref().unwrap();
    assert_eq!(st.replica_statuses[&ReplicaType::PS].active, 1);
    assert_eq!(st.replica_statuses[&ReplicaType::Worker].active, 1);
    let replicas = job.spec.replicas().unwrap();
    assert_eq!(replicas.keys().copied().collect::<Vec<_>>(), [ReplicaType::PS, ReplicaType::Worker]);
    assert_eq!(job.spec.effective_policy().backoff_limit, Some(6));
}

fn properties(schema: &Value, pointer: &str) -> BTreeSet<String> {
    schema.pointer(pointer).and_then(Value::as_object).unwrap().keys().cloned().collect()
}

#[test]
fn every_spec_field_is_updatable_or_immutable() {
    let crd = serde_json::to_value(api::crd().unwrap()).unwrap();
    let root = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties";
    let spec = properties(&crd, root);
    let run_policy = properties(&crd, &format!("{root}/runPolicy/properties"));
    let mut classified: BTreeSet<String> =
        rules::MUTABLE_FIELDS.iter().chain(&rules::IMMUTABLE_SPEC_FIELDS).map(|s| s.to_string()).collect();
    classified.insert("runPolicy".into());
    assert_eq!(spec, classified, "a new spec field must be added to MUTABLE_FIELDS or IMMUTABLE_SPEC_FIELDS");
    let classified: BTreeSet<String> = rules::MUTABLE_FIELDS
        .iter()
        .chain(&rules::MUTABLE_RUN_POLICY_FIELDS)
        .chain(&rules::IMMUTABLE_RUN_POLICY_FIELDS)
        .map(|s| s.to_string())
        .collect();
    assert_eq!(run_policy, classified, "a new runPolicy field must be classified too");
}

#[test]
fn schema_enums_bounds_and_metadata() {
    let crd = serde_json::to_value(api::crd().unwrap()).unwrap();
    let spec = crd.pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec").unwrap();
    let p = |ptr: &str| spec.pointer(ptr).cloned().unwrap_or(Value::Null);
    assert_eq!(p("/properties/cleanPodPolicy/enum"), json!(["All", "Running", "None"]));
    assert_eq!(p("/properties/runPolicy/properties/cleanPodPolicy/enum"), json!(["All", "Running", "None"]));
    assert_eq!(p("/properties/successPolicy/enum"), json!(["", "AllWorkers"]));
    let replica = "/properties/tfReplicaSpecs/additionalProperties";
    assert_eq!(
        p(&format!("{replica}/properties/restartPolicy/enum")),
        json!(["Always", "OnFailure", "Never", "ExitCode"])
    );
    assert_eq!(p(&format!("{replica}/properties/replicas/minimum")), json!(0.0));
    assert_eq!(p("/properties/activeDeadlineSeconds/minimum"), json!(1.0));
    assert_eq!(p("/properties/runPolicy/properties/activeDeadlineSeconds/minimum"), json!(1.0));
    assert_eq!(p("/properties/ttlSecondsAfterFinished/minimum"), json!(0.0));
    assert_eq!(p("/properties/backoffLimit/minimum"), json!(0.0));
    assert_eq!(p("/properties/tfReplicaSpecs/maxProperties"), json!(5));
    assert_eq!(
        p(&format!("{replica}/properties/template/properties/spec/properties/containers/maxItems")),
        json!(rules::MAX_CONTAINERS)
    );
    assert_eq!(p("/required"), json!(["tfReplicaSpecs"]));

    let names = crd.pointer("/spec/names").unwrap();
    assert_eq!(
        names,
        &json!({"kind": "TFJob", "plural": "tfjobs", "singular": "tfjob", "shortNames": ["tfj"], "categories": ["kubeflow"]})
    );
    let version = crd.pointer("/spec/versions/0").unwrap();
    assert_eq!(version["subresources"], json!({"status": {}}));
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, ["State", "Deadline", "Expires", "Not-Started", "Workers", "PS", "Age"]);
    let wide: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["priority"] == json!(1))
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        wide,
        ["Not-Started", "Workers", "PS"],
        "kubectl get stays narrow: extra columns only with -o wide"
    );
    assert_eq!(crd.pointer("/spec/scope"), Some(&json!("Namespaced")));
}

/// Where a description joins two parts of one sentence with a line break, or is not trimmed:
/// a description is paragraphs split by exactly "\n\n", each a line of text or lines of which
/// every one after the first is a list item ("- ").
fn broken_lines(description: &str) -> Option<String> {
    if description.trim() != description {
        return Some("surrounding whitespace".into());
    }
    for paragraph in description.split("\n\n") {
        for (i, line) in paragraph.split('\n').enumerate() {
            if line.is_empty() || line.trim() != line {
                return Some(format!("blank or indented line {line:?}"));
            }
            if i > 0 && !line.starts_with("- ") {
                return Some(format!("a line break inside a sentence, before {line:?}"));
            }
        }
    }
    None
}

/// Checks the descriptions of our schema nodes below `node` (at `path`); the pod template's
/// schema is Kubernetes', and so are map values that are not objects of ours (Quantity).
fn check_descriptions(node: &Value, path: &str, visited: &mut BTreeSet<String>, problems: &mut Vec<String>) {
    let description = node.get("description").and_then(Value::as_str).unwrap_or_default();
    if let Some(why) = broken_lines(description) {
        problems.push(format!("{path}: {why}"));
    }
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        for value in values.iter().filter_map(Value::as_str) {
            let mention = if value.is_empty() { "\"\"".to_string() } else { format!("`{value}`") };
            if !description.contains(&mention) {
                problems.push(format!("{path}: the enum value {mention} is not described"));
            }
        }
        if !description.to_lowercase().contains("default") {
            problems.push(format!("{path}: an enum field that does not say its default"));
        }
    }
    if path.ends_with(".template") {
        return;
    }
    for (name, child) in node.get("properties").and_then(Value::as_object).into_iter().flatten() {
        let child_path = format!("{path}.{name}");
        if child.get("description").and_then(Value::as_str).unwrap_or_default().trim().is_empty() {
            problems.push(format!("{child_path}: no description"));
        }
        visited.insert(child_path.clone());
        check_descriptions(child, &child_path, visited, problems);
    }
    for (keyword, suffix) in [("additionalProperties", ".*"), ("items", "[]")] {
        if let Some(child) = node.get(keyword).filter(|c| c.get("properties").is_some()) {
            check_descriptions(child, &format!("{path}{suffix}"), visited, problems);
        }
    }
}

/// `kubectl explain` shows these descriptions to users: each of our fields says what it
/// does, as flowing text; an enum field names every value and its default. Checked on the
/// generator's output and on the committed file.
#[test]
fn field_descriptions_read_well() {
    let generated = serde_json::to_value(api::crd().unwrap()).unwrap();
    let committed = std::fs::read_to_string("crds/kubeflow.org_tfjobs.yaml").unwrap_or_default();
    let committed: Value = serde_saphyr::from_str(&committed).expect("the committed CRD parses");
    for (which, crd) in [("generated", generated), ("committed", committed)] {
        check_field_descriptions(&crd).unwrap_or_else(|e| panic!("the {which} CRD: {e}"));
    }
}

fn check_field_descriptions(crd: &Value) -> Result<(), String> {
    let root = crd.pointer("/spec/versions/0/schema/openAPIV3Schema").ok_or("the CRD has no schema")?;
    let mut visited = BTreeSet::new();
    let mut problems = Vec::new();
    for top in ["spec", "status"] {
        let node = &root["properties"][top];
        visited.insert(top.to_string());
        check_descriptions(node, top, &mut visited, &mut problems);
    }
    let with_defaults = [
        "spec.cleanPodPolicy",
        "spec.successPolicy",
        "spec.enableDynamicWorker",
        "spec.ttlSecondsAfterFinished",
        "spec.activeDeadlineSeconds",
        "spec.backoffLimit",
        "spec.runPolicy.cleanPodPolicy",
        "spec.runPolicy.ttlSecondsAfterFinished",
        "spec.runPolicy.activeDeadlineSeconds",
        "spec.runPolicy.backoffLimit",
        "spec.runPolicy.suspend",
        "spec.runPolicy.managedBy",
        "spec.runPolicy.schedulingPolicy",
        "spec.tfReplicaSpecs.*.replicas",
        "spec.tfReplicaSpecs.*.restartPolicy",
        "status.appliedPolicy.cleanPodPolicy",
    ];
    for path in with_defaults {
        let pointer = format!("/properties/{}/description", path.replace('.', "/properties/"))
            .replace("/properties/*/", "/additionalProperties/");
        let description = root.pointer(&pointer).and_then(Value::as_str).unwrap_or_default();
        if !description.to_lowercase().contains("default") {
            problems.push(format!("{path}: does not say its default"));
        }
    }
    // Kubeflow's training-operator defaults cleanPodPolicy to None: both places say ours differs.
    for path in ["cleanPodPolicy", "runPolicy/properties/cleanPodPolicy"] {
        let description = root
            .pointer(&format!("/properties/spec/properties/{path}/description"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !description.contains("training-operator defaults to `None`") {
            problems.push(format!("spec.{path}: does not say that Kubeflow defaults to `None`"));
        }
    }
    if !problems.is_empty() {
        return Err(format!("descriptions to fix:\n{}", problems.join("\n")));
    }

    // The walk reached every level of our types, and stopped at the pod template.
    for path in [
        "spec.runPolicy.schedulingPolicy.queue",
        "spec.tfReplicaSpecs.*.restartPolicy",
        "spec.tfReplicaSpecs.*.template",
        "status.conditions[].type",
        "status.replicaStatuses.Worker.countedRestarts[].uid",
        "status.appliedPolicy.cleanPodPolicy",
    ] {
        if !visited.contains(path) {
            return Err(format!("the walk missed {path}"));
        }
    }
    if visited.iter().any(|p| p.contains(".template.")) {
        return Err("the walk went into the pod template".into());
    }
    if visited.len() < 70 {
        return Err(format!("only {} fields checked", visited.len()));
    }
    Ok(())
}
