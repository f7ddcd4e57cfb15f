//! Smoke tests that prove the harness is real: the CRD on a real API server, the seed's update
//! contract enforced there, kwok pod fates, and the garbage collector.

use std::time::{Duration, Instant};

use crate::support::{WAIT, example, pods, wait_for, wait_gone, watch_state};
use crate::{Ctx, Test, test};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use serde_json::{Value, json};
use tfjob_operator::api::rules::{self, CONTRACT};

pub fn tests() -> Vec<Test> {
    vec![
        test!(crd_is_established_and_its_rules_are_the_policys),
        test!(seed_job_round_trips_and_the_update_contract_holds),
        test!(null_optional_fields_pass_the_policy),
        test!(pods_meet_the_fate_their_annotations_choose),
        test!(deleted_pod_terminates_then_disappears),
        test!(garbage_collector_deletes_what_a_tfjob_owns),
    ]
}

fn tfjobs(ctx: &Ctx) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kubeflow.org", "v1", "TFJob");
    Api::namespaced_with(
        ctx.cluster.client.clone(),
        &ctx.ns,
        &ApiResource::from_gvk_with_plural(&gvk, "tfjobs"),
    )
}

/// The served CRD is the committed one, with no CEL rule (the API server would evaluate them
/// on every status write), and the served admission policy has the committed rules.
async fn crd_is_established_and_its_rules_are_the_policys(ctx: Ctx) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(ctx.cluster.client.clone());
    let crd = api.get("tfjobs.kubeflow.org").await?;
    let conditions = crd.status.clone().and_then(|s| s.conditions).unwrap_or_default();
    for want in ["NamesAccepted", "Established"] {
        ensure!(
            conditions.iter().any(|c| c.type_ == want && c.status == "True"),
            "CRD not {want}: {conditions:?}"
        );
    }
    let committed: CustomResourceDefinition = serde_saphyr::from_str(&std::fs::read_to_string(
        tfjob_testsupport::repo_root().join("crds/kubeflow.org_tfjobs.yaml"),
    )?)?;
    let served = serde_json::to_value(&crd.spec.versions[0].schema)?;
    ensure!(
        served == serde_json::to_value(&committed.spec.versions[0].schema)?,
        "the served CRD is the committed one"
    );
    ensure!(!served.to_string().contains("x-kubernetes-validations"), "the served CRD has no CEL rule");
    let gvk = GroupVersionKind::gvk("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy");
    let policies: Api<DynamicObject> = Api::all_with(
        ctx.cluster.client.clone(),
        &ApiResource::from_gvk_with_plural(&gvk, "validatingadmissionpolicies"),
    );
    let policy = serde_json::to_value(policies.get(rules::VALIDATION_POLICY).await?)?;
    let [want, _] = tfjob_operator::api::validation_policy()?;
    ensure!(
        policy["spec"]["validations"] == want["spec"]["validations"],
        "the served policy has the committed rules: {}",
        policy["spec"]["validations"]
    );
    // The API server adds defaults (`scope`) to each resource rule.
    let mut served_rules = policy["spec"]["matchConstraints"]["resourceRules"].clone();
    served_rules.as_array_mut().into_iter().flatten().for_each(|r| {
        r.as_object_mut().map(|r| r.remove("scope"));
    });
    ensure!(
        served_rules == want["spec"]["matchConstraints"]["resourceRules"],
        "the served policy applies to creates and updates of tfjobs: {served_rules}"
    );
    Ok(())
}

/// Optional objects and numbers written as `null` (an emptied `runPolicy:` in YAML) are as
/// good as unset to the policy (`replicas: null` counts as 1, as unset): such jobs are created, take a label, and still have the
/// update contract. (A `null` enum, such as `successPolicy: null`, is refused by the CRD's
/// schema, naming the values it takes; `managedBy: null` and the Volcano-only fields set to
/// `null` are refused by the policy's rules for them, naming the field.)
async fn null_optional_fields_pass_the_policy(ctx: Ctx) -> Result<()> {
    let api = tfjobs(&ctx);
    let worker = json!({"replicas": 1, "template": {"metadata": null, "spec": {
        "containers": [{"name": "tensorflow", "image": "tensorflow/tensorflow:2.16.1"}], "initContainers": null}}});
    let cases = [
        ("nulls-run-policy", json!({"runPolicy": null, "tfReplicaSpecs": {"Worker": worker}})),
        (
            "nulls-inside",
            json!({"runPolicy": {"suspend": true, "schedulingPolicy": null, "backoffLimit": null},
                   "tfReplicaSpecs": {"Worker": worker}}),
        ),
        (
            "nulls-scheduling",
            json!({"runPolicy": {"suspend": true, "schedulingPolicy": {"minAvailable": null, "priorityClass": null}},
                   "tfReplicaSpecs": {"Worker": worker}}),
        ),
        (
            // Each counts as 1: the gang of 2 fits, and the Chief has exactly 1.
            "nulls-replicas",
            json!({"runPolicy": {"suspend": true, "schedulingPolicy": {"minAvailable": 2}},
                   "tfReplicaSpecs": {"Chief": null_replicas(&worker), "Worker": null_replicas(&worker)}}),
        ),
    ];
    for (name, spec) in cases {
        let obj: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": name}, "spec": spec}))?;
        api.create(&PostParams::default(), &obj).await.with_context(|| format!("{name}: create refused"))?;
        let label = json!({"metadata": {"labels": {"team": "a"}}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&label))
            .await
            .with_context(|| format!("{name}: a label refused"))?;
        let forbidden = json!({"spec": {"successPolicy": "AllWorkers"}});
        let err = api.patch(name, &PatchParams::default(), &Patch::Merge(&forbidden)).await.err();
        let (code, message) =
            err.as_ref().and_then(status_of).context(format!("{name}: successPolicy accepted"))?;
        ensure!(
            code == 422 && message.contains("spec.successPolicy cannot be changed"),
            "{name}: {code} {message}"
        );
    }
    Ok(())
}

fn null_replicas(replica: &serde_json::Value) -> serde_json::Value {
    let mut r = replica.clone();
    r["replicas"] = serde_json::Value::Null;
    r
}

fn status_of(e: &kube::Error) -> Option<(u16, String)> {
    match e {
        kube::Error::Api(s) => Some((s.code, s.message.clone())),
        _ => None,
    }
}

async fn seed_job_round_trips_and_the_update_contract_holds(ctx: Ctx) -> Result<()> {
    let api = tfjobs(&ctx);
    let sent = example("tfjob-seed.yaml")?;
    let obj: DynamicObject = serde_json::from_value(sent.clone())?;
    api.create(&PostParams::default(), &obj).await.context("creating the seed's TFJob")?;
    let got = serde_json::to_value(api.get("tfjob-test").await?)?;
    // Everything sent comes back; the server adds only these, and no schema defaults.
    ensure!(got["spec"] == sent["spec"], "spec changed on the way in:\n{}\n{}", got["spec"], sent["spec"]);
    ensure!(got["metadata"]["labels"] == sent["metadata"]["labels"], "labels changed");
    let mut meta_keys: Vec<&str> =
        got["metadata"].as_object().context("metadata")?.keys().map(String::as_str).collect();
    meta_keys.sort();
    let server_set = [
        "creationTimestamp",
        "generation",
        "labels",
        "managedFields",
        "name",
        "namespace",
        "resourceVersion",
        "uid",
    ];
    ensure!(meta_keys == server_set, "unexpected metadata fields {meta_keys:?}");
    ensure!(got.get("status").is_none_or(Value::is_null), "no status before an operator writes one");

    // A label: 200 with the whole object.
    let patched = api
        .patch(
            "tfjob-test",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "test2"}}})),
        )
        .await?;
    let patched = serde_json::to_value(patched)?;
    ensure!(
        patched["metadata"]["labels"]["app"] == "test2"
            && patched["spec"] == sent["spec"]
            && patched["kind"] == "TFJob"
    );

    refused_patches_change_nothing(&api, &patched["metadata"]["resourceVersion"]).await?;
    updatable_fields_are_stored(&api).await?;
    Ok(())
}

/// Refused: 422 with the contract's message, and nothing stored (the resourceVersion stays `rv`).
async fn refused_patches_change_nothing(api: &Api<DynamicObject>, rv: &Value) -> Result<()> {
    let refused = [
        ("spec.tfReplicaSpecs", json!({"spec": {"tfReplicaSpecs": {"Worker": {"replicas": 2}}}})),
        ("spec.backoffLimit", json!({"spec": {"backoffLimit": 7}})),
        ("spec.runPolicy.backoffLimit", json!({"spec": {"runPolicy": {"backoffLimit": 3}}})),
    ];
    for (field, patch) in refused {
        let err = api
            .patch("tfjob-test", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .err()
            .context(format!("{field} accepted"))?;
        let (code, message) = status_of(&err).context(format!("{field}: not an API error: {err}"))?;
        ensure!(code == 422, "{field}: status {code}, want 422 ({message})");
        ensure!(
            message.contains(&format!("{field} cannot be changed: {CONTRACT}")),
            "{field}: message {message:?}"
        );
        let now = serde_json::to_value(api.get("tfjob-test").await?)?;
        ensure!(now["metadata"]["resourceVersion"] == *rv, "{field}: the stored object changed");
    }

    Ok(())
}

/// Accepted: each updatable field, in each place.
async fn updatable_fields_are_stored(api: &Api<DynamicObject>) -> Result<()> {
    for (place, field, value) in [
        ("spec", "activeDeadlineSeconds", json!(600)),
        ("spec", "ttlSecondsAfterFinished", json!(60)),
        ("spec", "cleanPodPolicy", json!("All")),
        ("runPolicy", "activeDeadlineSeconds", json!(300)),
        ("runPolicy", "ttlSecondsAfterFinished", json!(30)),
        ("runPolicy", "cleanPodPolicy", json!("None")),
    ] {
        let patch = if place == "spec" {
            json!({"spec": {field: value}})
        } else {
            json!({"spec": {"runPolicy": {field: value}}})
        };
        let got = serde_json::to_value(
            api.patch("tfjob-test", &PatchParams::default(), &Patch::Merge(patch))
                .await
                .with_context(|| format!("{place}.{field}"))?,
        )?;
        let stored = if place == "spec" { &got["spec"][field] } else { &got["spec"]["runPolicy"][field] };
        ensure!(*stored == value, "{place}.{field} not stored: {stored}");
    }
    Ok(())
}

fn plain_pod(name: &str, annotations: Value, restart: &str, containers: Value) -> Result<Pod> {
    let mut spec =
        json!({"restartPolicy": restart, "containers": containers, "terminationGracePeriodSeconds": 0});
    tfjob_testsupport::place_on_kwok(&mut spec);
    Ok(serde_json::from_value(json!({"metadata": {"name": name, "annotations": annotations}, "spec": spec}))?)
}

fn tf_container() -> Value {
    json!([{"name": "tensorflow", "image": "tf"}, {"name": "sidecar", "image": "side"}])
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn container<'a>(p: &'a Pod, name: &str) -> Option<&'a k8s_openapi::api::core::v1::ContainerStatus> {
    p.status.as_ref()?.container_statuses.as_ref()?.iter().find(|c| c.name == name)
}

async fn pods_meet_the_fate_their_annotations_choose(ctx: Ctx) -> Result<()> {
    let api = pods(&ctx);
    let fates = [
        ("runs", json!({}), "Never"),
        ("succeeds", json!({"kwok.test/outcome": "succeed", "kwok.test/run-for": "3s"}), "Never"),
        (
            "fails",
            json!({"kwok.test/outcome": "fail", "kwok.test/run-for": "2s", "kwok.test/exit-code": "137",
                "kwok.test/reason": "OOMKilled"}),
            "Never",
        ),
        (
            "crashes",
            json!({"kwok.test/outcome": "fail", "kwok.test/run-for": "2s", "kwok.test/exit-code": "3"}),
            "OnFailure",
        ),
        (
            "sidecar-fails",
            json!({"kwok.test/outcome": "fail", "kwok.test/run-for": "1s", "kwok.test/failed-container": "sidecar"}),
            "Never",
        ),
    ];
    for (name, annotations, restart) in fates {
        api.create(&PostParams::default(), &plain_pod(name, annotations, restart, tf_container())?).await?;
    }

    let t = WAIT;
    let ok = wait_for(&api, "succeeds", t, "Succeeded", |p| phase(p) == "Succeeded").await?;
    for c in ["tensorflow", "sidecar"] {
        let code = container(&ok, c).and_then(|s| s.state.as_ref()?.terminated.as_ref()).map(|t| t.exit_code);
        ensure!(code == Some(0), "succeeds/{c}: exit code {code:?}");
    }
    let st = ok.status.as_ref().context("status")?;
    let started = st.start_time.as_ref().context("startTime")?.0;
    let finished = container(&ok, "tensorflow")
        .and_then(|s| s.state.as_ref()?.terminated.as_ref()?.finished_at.clone())
        .context("finishedAt")?
        .0;
    let ran = finished.duration_since(started).as_secs_f64();
    ensure!((3.0..6.0).contains(&ran), "succeeds ran {ran}s, want 3s from startTime");

    let failed = wait_for(&api, "fails", t, "Failed", |p| phase(p) == "Failed").await?;
    let term = container(&failed, "tensorflow")
        .and_then(|s| s.state.as_ref()?.terminated.clone())
        .context("terminated")?;
    ensure!(term.exit_code == 137 && term.reason.as_deref() == Some("OOMKilled"), "fails: {term:?}");
    let side = wait_for(&api, "sidecar-fails", t, "Failed", |p| phase(p) == "Failed").await?;
    let code = |c| {
        container(&side, c)
            .and_then(|s| s.state.as_ref()?.terminated.as_ref())
            .map(|t| (t.exit_code, t.reason.clone()))
    };
    ensure!(code("sidecar") == Some((1, Some("Error".into()))), "sidecar: {:?}", code("sidecar"));
    ensure!(code("tensorflow").map(|c| c.0) == Some(0), "tensorflow: {:?}", code("tensorflow"));

    let crash = wait_for(&api, "crashes", t, "restarted twice in place", |p| {
        container(p, "tensorflow").is_some_and(|c| c.restart_count >= 2)
    })
    .await?;
    ensure!(phase(&crash) == "Running", "a crash loop keeps the pod Running, got {}", phase(&crash));
    let c = container(&crash, "tensorflow").context("tensorflow status")?;
    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()).context("lastState.terminated")?;
    ensure!(last.exit_code == 3, "lastState exit code {}", last.exit_code);
    ensure!(
        container(&crash, "sidecar").is_some_and(|c| c.restart_count == 0),
        "only the failing container restarts"
    );

    let runs = api.get("runs").await?;
    ensure!(phase(&runs) == "Running", "a pod without an outcome keeps running: {}", phase(&runs));
    Ok(())
}

async fn deleted_pod_terminates_then_disappears(ctx: Ctx) -> Result<()> {
    let api = pods(&ctx);
    let mut pod = plain_pod("doomed", json!({}), "Never", tf_container())?;
    if let Some(spec) = pod.spec.as_mut() {
        spec.termination_grace_period_seconds = Some(30);
    }
    api.create(&PostParams::default(), &pod).await?;
    wait_for(&api, "doomed", WAIT, "Running", |p| phase(p) == "Running").await?;
    let t0 = Instant::now();
    api.delete("doomed", &DeleteParams::default()).await?;
    let terminating = api.get_opt("doomed").await?.context("gone at once")?;
    ensure!(terminating.metadata.deletion_timestamp.is_some(), "not terminating");
    wait_gone(&api, "doomed", Duration::from_secs(30)).await?;
    let took = t0.elapsed().as_secs_f64();
    ensure!((0.5..5.0).contains(&took), "terminating for {took:.1}s, want about a second");
    Ok(())
}

async fn garbage_collector_deletes_what_a_tfjob_owns(ctx: Ctx) -> Result<()> {
    let api = tfjobs(&ctx);
    let obj: DynamicObject = serde_json::from_value(example("tfjob-kubeflow.yaml")?)?;
    let job = api.create(&PostParams::default(), &obj).await?;
    let uid = job.metadata.uid.clone().context("uid")?;
    let pods = pods(&ctx);
    let mut pod = plain_pod("owned", json!({}), "Never", tf_container())?;
    pod.metadata.owner_references =
        Some(vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "kubeflow.org/v1".into(),
            kind: "TFJob".into(),
            name: "tfjob-test".into(),
            uid,
            controller: Some(true),
            block_owner_deletion: Some(true),
        }]);
    pods.create(&PostParams::default(), &pod).await?;
    api.delete("tfjob-test", &DeleteParams::background()).await?;
    // The garbage collector learns of a new CRD's kind at its next discovery resync (30 s).
    watch_state(&pods, "owned", Duration::from_secs(120), "the owned pod to be collected", |p| {
        p.is_none_or(|p| p.metadata.deletion_timestamp.is_some())
    })
    .await
    .context("the garbage collector did not delete the pod owned by the deleted TFJob")?;
    Ok(())
}
