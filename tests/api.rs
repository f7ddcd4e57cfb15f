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
    assert_eq!(columns, ["State", "Deadline", "Expires", "Workers", "PS", "Age"]);
    assert_eq!(crd.pointer("/spec/scope"), Some(&json!("Namespaced")));
}
