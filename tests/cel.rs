//! The policy's CEL rules (the shape rules and the update contract), evaluated locally by kube's
//! CEL evaluator on the committed schema: every accepted and refused create, and the seed's
//! update contract on updates.

use std::sync::OnceLock;

use kube::core::cel::{CompiledSchema, Validator, compile_schema};
use serde_json::{Value, json};
use tfjob_operator::api::{self, rules::CONTRACT};

/// The CRD's schema with the policy's rules put back on the nodes they read, where they sat
/// before they moved to the ValidatingAdmissionPolicy: the policy evaluates the same rules on
/// the whole object (`self` as the node in `object`, `oldSelf` in `oldObject`; tests/api.rs
/// checks it), so one evaluator covers both.
fn schema() -> Value {
    let crd = serde_json::to_value(api::crd().expect("CRD builds")).unwrap();
    let mut schema = crd.pointer("/spec/versions/0/schema/openAPIV3Schema").unwrap().clone();
    let contract = api::rules::contract_rules(&schema).expect("contract rules");
    api::rules::add_rules(&mut schema, api::rules::rules()).expect("rules added");
    api::rules::add_rules(&mut schema, contract).expect("rules added");
    schema
}

/// The committed schema's rules, compiled once for all tests.
fn compiled() -> &'static CompiledSchema {
    static COMPILED: OnceLock<CompiledSchema> = OnceLock::new();
    COMPILED.get_or_init(|| {
        let c = compile_schema(&schema());
        assert!(!c.has_errors(), "rules that do not compile: {:?}", c.compilation_errors());
        c
    })
}

/// The messages of the rules `new` breaks (as an update of `old` when given).
fn refusals(new: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate_compiled(compiled(), new, old) {
        Ok(()) => Vec::new(),
        Err(errs) => errs.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

fn replica(n: Option<i64>) -> Value {
    let mut r = json!({"template": {"spec": {"containers": [{"name": "tensorflow", "image": "tf:2"}]}}});
    if let Some(n) = n {
        r["replicas"] = json!(n);
    }
    r
}

fn tfjob(name: &str, replicas: Value) -> Value {
    json!({
        "apiVersion": "kubeflow.org/v1", "kind": "TFJob",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": {"tfReplicaSpecs": replicas}
    })
}

fn seed() -> Value {
    let mut v: Value = serde_json::from_str(include_str!("fixtures/seed-response.json")).unwrap();
    v.as_object_mut().unwrap().remove("status");
    v
}

fn with(mut v: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let mut cur = &mut v;
    for seg in parent.split('/').skip(1) {
        cur = cur.as_object_mut().unwrap().entry(seg).or_insert_with(|| json!({}));
    }
    cur[key] = value;
    v
}

fn without(mut v: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    v.pointer_mut(parent).unwrap().as_object_mut().unwrap().remove(key);
    v
}

#[test]
fn valid_jobs_are_accepted() {
    let long_ok = "a".repeat(63 - "-worker-9".len());
    let cases = [
        ("the seed's job", seed()),
        ("chief only", tfjob("j", json!({"Chief": replica(None)}))),
        (
            "master and zero workers",
            tfjob("j", json!({"Master": replica(Some(1)), "Worker": replica(Some(0))})),
        ),
        (
            "workers with PS and evaluator",
            tfjob(
                "j",
                json!({"PS": replica(Some(2)), "worker": replica(Some(3)), "EVALUATOR": replica(Some(1))}),
            ),
        ),
        ("name at the length limit", tfjob(&long_ok, json!({"Worker": replica(Some(10))}))),
        ("suspend false", with(seed(), "/spec/runPolicy/suspend", json!(false))),
        (
            "managedBy ours",
            with(seed(), "/spec/runPolicy/managedBy", json!("kubeflow.org/training-operator")),
        ),
        ("managedBy empty", with(seed(), "/spec/runPolicy/managedBy", json!(""))),
        (
            "managedBy MultiKueue",
            with(seed(), "/spec/runPolicy/managedBy", json!("kueue.x-k8s.io/multikueue")),
        ),
        ("created suspended", with(seed(), "/spec/runPolicy/suspend", json!(true))),
        ("gang scheduling with its defaults", with(seed(), "/spec/runPolicy/schedulingPolicy", json!({}))),
        (
            "gang of all replicas (a default of 1 counted), with a priority class",
            with(
                tfjob("j", json!({"PS": replica(Some(2)), "Worker": replica(None)})),
                "/spec/runPolicy/schedulingPolicy",
                json!({"minAvailable": 3, "priorityClass": "high"}),
            ),
        ),
        (
            "replicas written as null (1 each), with a gang that counts them",
            with(
                tfjob(
                    "j",
                    json!({"Chief": with(replica(None), "/replicas", Value::Null),
                           "Worker": with(replica(None), "/replicas", Value::Null)}),
                ),
                "/spec/runPolicy/schedulingPolicy",
                json!({"minAvailable": 2}),
            ),
        ),
        (
            "both places set",
            with(
                with(seed(), "/spec/runPolicy/backoffLimit", json!(2)),
                "/spec/runPolicy/cleanPodPolicy",
                json!("All"),
            ),
        ),
    ];
    for (name, job) in cases {
        assert_eq!(refusals(&job, None), Vec::<String>::new(), "{name}");
    }
    for example in ["tfjob-seed.yaml", "tfjob-kubeflow.yaml", "tfjob-finishes.yaml"] {
        let text = std::fs::read_to_string(format!("examples/{example}")).unwrap();
        let mut job: Value = serde_saphyr::from_str(&text).unwrap();
        job["metadata"]["namespace"] = json!("ns");
        assert_eq!(refusals(&job, None), Vec::<String>::new(), "{example}");
    }
}

#[test]
fn invalid_jobs_are_refused_with_their_message() {
    let no_tf = json!({"template": {"spec": {"containers": [{"name": "main", "image": "x"}]}}});
    let no_image = json!({"template": {"spec": {"containers": [{"name": "tensorflow"}]}}});
    let empty_image = json!({"template": {"spec": {"containers": [{"name": "tensorflow", "image": ""}]}}});
    let init_no_image = json!({"template": {"spec": {"containers": [{"name": "tensorflow", "image": "x"}],
        "initContainers": [{"name": "init"}]}}});
    let no_spec = json!({"template": {"metadata": {"labels": {"a": "b"}}}});
    let too_long = "a".repeat(63 - "-worker-9".len());
    let cases = [
        (
            "unknown type",
            tfjob("j", json!({"Worker": replica(None), "Launcher": replica(None)})),
            "spec.tfReplicaSpecs keys must be PS, Worker, Chief, Master or Evaluator (in any letter case)",
        ),
        (
            "same type twice",
            tfjob("j", json!({"Worker": replica(None), "Ps": replica(None), "PS": replica(None)})),
            "spec.tfReplicaSpecs names the same replica type twice (keys ignore letter case: Ps and PS are the same type)",
        ),
        (
            "chief and master",
            tfjob("j", json!({"Chief": replica(None), "Master": replica(None)})),
            "spec.tfReplicaSpecs may have a Chief or a Master, not both",
        ),
        (
            "two chiefs",
            tfjob("j", json!({"Chief": replica(Some(2))})),
            "a Chief or Master must have exactly 1 replica",
        ),
        (
            "zero masters",
            tfjob("j", json!({"master": replica(Some(0)), "Worker": replica(None)})),
            "a Chief or Master must have exactly 1 replica",
        ),
        (
            "PS only",
            tfjob("j", json!({"PS": replica(None)})),
            "spec.tfReplicaSpecs needs a Chief or a Master, or a Worker with at least one replica",
        ),
        (
            "zero workers",
            tfjob("j", json!({"Worker": replica(Some(0)), "PS": replica(None)})),
            "spec.tfReplicaSpecs needs a Chief or a Master, or a Worker with at least one replica",
        ),
        (
            "no tensorflow container",
            tfjob("j", json!({"Worker": no_tf})),
            "every replica's pod template needs a container named tensorflow",
        ),
        (
            "no pod spec",
            tfjob("j", json!({"Worker": no_spec})),
            "every replica's pod template needs a container named tensorflow",
        ),
        (
            "no image",
            tfjob("j", json!({"Worker": no_image})),
            "every container of a replica's pod template needs a non-empty image",
        ),
        (
            "empty image",
            tfjob("j", json!({"Worker": empty_image})),
            "every container of a replica's pod template needs a non-empty image",
        ),
        (
            "init container without image",
            tfjob("j", json!({"Worker": init_no_image})),
            "every container of a replica's pod template needs a non-empty image",
        ),
        (
            "upper case name",
            tfjob("Tf-Job", json!({"Worker": replica(None)})),
            "metadata.name must be a DNS-1035 label: lowercase letters, digits and '-', starting with a letter and ending with a letter or digit",
        ),
        (
            "name starting with a digit",
            tfjob("1job", json!({"Worker": replica(None)})),
            "metadata.name must be a DNS-1035 label",
        ),
        (
            "name with a dot",
            tfjob("a.b", json!({"Worker": replica(None)})),
            "metadata.name must be a DNS-1035 label",
        ),
        (
            "derived name too long",
            tfjob(&too_long, json!({"Worker": replica(Some(11))})),
            "metadata.name is too long: every pod and service name <name>-<replica type>-<index> must be at most 63 characters",
        ),
        (
            "Volcano's queue",
            with(seed(), "/spec/runPolicy/schedulingPolicy", json!({"queue": "default"})),
            "spec.runPolicy.schedulingPolicy.queue is read only by Volcano's gang scheduler",
        ),
        (
            "minResources",
            with(seed(), "/spec/runPolicy/schedulingPolicy", json!({"minResources": {"cpu": "4"}})),
            "spec.runPolicy.schedulingPolicy.minResources is read only by Volcano's and scheduler-plugins'",
        ),
        (
            "scheduler-plugins' timeout",
            with(seed(), "/spec/runPolicy/schedulingPolicy", json!({"scheduleTimeoutSeconds": 60})),
            "spec.runPolicy.schedulingPolicy.scheduleTimeoutSeconds is read only by scheduler-plugins' coscheduling",
        ),
        (
            "a gang larger than the job",
            with(
                tfjob("j", json!({"PS": replica(Some(1)), "Worker": replica(None)})),
                "/spec/runPolicy/schedulingPolicy",
                json!({"minAvailable": 3}),
            ),
            "spec.runPolicy.schedulingPolicy.minAvailable cannot be more than the job's replicas",
        ),
        (
            "managedBy another",
            with(seed(), "/spec/runPolicy/managedBy", json!("example.com/other")),
            "spec.runPolicy.managedBy must be empty, kubeflow.org/training-operator (this operator runs the job) or kueue.x-k8s.io/multikueue (Kueue's MultiKueue runs it in another cluster)",
        ),
    ];
    for (name, job, want) in cases {
        let got = refusals(&job, None);
        assert!(got.iter().any(|m| m.starts_with(want)), "{name}: want {want:?}, got {got:?}");
    }
}

#[test]
fn allowed_updates_in_either_place_are_accepted() {
    let seed = seed();
    let kubeflow =
        with(without(seed.clone(), "/spec/backoffLimit"), "/spec/runPolicy/backoffLimit", json!(6));
    let cases = [
        ("label added", with(seed.clone(), "/metadata/labels/team", json!("a"))),
        ("label changed", with(seed.clone(), "/metadata/labels/app", json!("other"))),
        ("annotation added", with(seed.clone(), "/metadata/annotations/note", json!("x"))),
        ("activeDeadlineSeconds added", with(seed.clone(), "/spec/activeDeadlineSeconds", json!(30))),
        ("ttlSecondsAfterFinished added", with(seed.clone(), "/spec/ttlSecondsAfterFinished", json!(0))),
        ("cleanPodPolicy added", with(seed.clone(), "/spec/cleanPodPolicy", json!("All"))),
        (
            "runPolicy ttl added to the seed",
            with(seed.clone(), "/spec/runPolicy/ttlSecondsAfterFinished", json!(5)),
        ),
        ("empty runPolicy added", with(seed.clone(), "/spec/runPolicy", json!({}))),
        ("suspended", with(seed.clone(), "/spec/runPolicy/suspend", json!(true))),
        ("suspend false added", with(seed.clone(), "/spec/runPolicy/suspend", json!(false))),
    ];
    for (name, new) in cases {
        assert_eq!(refusals(&new, Some(&seed)), Vec::<String>::new(), "{name}");
    }
    let set = with(
        with(
            with(seed.clone(), "/spec/activeDeadlineSeconds", json!(30)),
            "/spec/ttlSecondsAfterFinished",
            json!(9),
        ),
        "/spec/cleanPodPolicy",
        json!("None"),
    );
    for (name, new) in [
        (
            "values changed",
            with(
                with(
                    with(set.clone(), "/spec/activeDeadlineSeconds", json!(60)),
                    "/spec/ttlSecondsAfterFinished",
                    json!(1),
                ),
                "/spec/cleanPodPolicy",
                json!("All"),
            ),
        ),
        (
            "values removed",
            without(
                without(without(set.clone(), "/spec/activeDeadlineSeconds"), "/spec/ttlSecondsAfterFinished"),
                "/spec/cleanPodPolicy",
            ),
        ),
    ] {
        assert_eq!(refusals(&new, Some(&set)), Vec::<String>::new(), "{name}");
    }
    for (name, new) in [
        (
            "runPolicy values added",
            with(
                with(kubeflow.clone(), "/spec/runPolicy/activeDeadlineSeconds", json!(30)),
                "/spec/runPolicy/cleanPodPolicy",
                json!("All"),
            ),
        ),
        (
            "seed fields added on a Kubeflow job",
            with(kubeflow.clone(), "/spec/ttlSecondsAfterFinished", json!(30)),
        ),
    ] {
        assert_eq!(refusals(&new, Some(&kubeflow)), Vec::<String>::new(), "{name}");
    }
    let rp = with(kubeflow.clone(), "/spec/runPolicy/ttlSecondsAfterFinished", json!(30));
    assert_eq!(
        refusals(&without(rp.clone(), "/spec/runPolicy/ttlSecondsAfterFinished"), Some(&rp)),
        Vec::<String>::new()
    );
}

#[test]
fn forbidden_updates_are_refused_naming_the_contract() {
    let seed = seed();
    let kubeflow =
        with(without(seed.clone(), "/spec/backoffLimit"), "/spec/runPolicy/backoffLimit", json!(6));
    let worker = |v: &Value| v["spec"]["tfReplicaSpecs"]["Worker"].clone();
    let cases = [
        (&seed, with(seed.clone(), "/spec/tfReplicaSpecs/Worker/replicas", json!(2)), "spec.tfReplicaSpecs"),
        (&seed, with(seed.clone(), "/spec/tfReplicaSpecs/Evaluator", worker(&seed)), "spec.tfReplicaSpecs"),
        (&seed, without(seed.clone(), "/spec/tfReplicaSpecs/Ps"), "spec.tfReplicaSpecs"),
        (
            &seed,
            with(
                seed.clone(),
                "/spec/tfReplicaSpecs/Worker/template/metadata",
                json!({"labels": {"a": "b"}}),
            ),
            "spec.tfReplicaSpecs",
        ),
        (
            &seed,
            with(seed.clone(), "/spec/tfReplicaSpecs/Worker/restartPolicy", json!("Never")),
            "spec.tfReplicaSpecs",
        ),
        (&seed, with(seed.clone(), "/spec/backoffLimit", json!(7)), "spec.backoffLimit"),
        (&seed, without(seed.clone(), "/spec/backoffLimit"), "spec.backoffLimit"),
        (&seed, with(seed.clone(), "/spec/runPolicy/backoffLimit", json!(3)), "spec.runPolicy.backoffLimit"),
        (&seed, with(seed.clone(), "/spec/successPolicy", json!("AllWorkers")), "spec.successPolicy"),
        (&seed, with(seed.clone(), "/spec/successPolicy", json!("")), "spec.successPolicy"),
        (&seed, with(seed.clone(), "/spec/enableDynamicWorker", json!(false)), "spec.enableDynamicWorker"),
        (&seed, with(seed.clone(), "/spec/runPolicy/managedBy", json!("")), "spec.runPolicy.managedBy"),
        (
            &kubeflow,
            with(kubeflow.clone(), "/spec/runPolicy/backoffLimit", json!(0)),
            "spec.runPolicy.backoffLimit",
        ),
        (&kubeflow, without(kubeflow.clone(), "/spec/runPolicy"), "spec.runPolicy.backoffLimit"),
        (&kubeflow, with(kubeflow.clone(), "/spec/backoffLimit", json!(6)), "spec.backoffLimit"),
    ];
    for (old, new, field) in cases {
        let want = format!("{field} cannot be changed: {CONTRACT}");
        let got = refusals(&new, Some(old));
        assert!(got.contains(&want), "{field}: want {want:?}, got {got:?}");
    }
    assert!(CONTRACT.contains("metadata.labels, metadata.annotations, activeDeadlineSeconds, ttlSecondsAfterFinished and cleanPodPolicy"));
}

fn suspended(v: Value, on: bool) -> Value {
    with(v, "/spec/runPolicy/suspend", json!(on))
}

/// A seed job whose Worker template carries Kueue-style scheduling directives.
fn admitted(v: Value) -> Value {
    let w = "/spec/tfReplicaSpecs/Worker/template";
    let v = with(v, &format!("{w}/metadata/labels/kueue.x-k8s.io~1podset"), json!("worker"));
    let v = with(v, &format!("{w}/metadata/annotations/note"), json!("x"));
    let v = with(v, &format!("{w}/spec/nodeSelector"), json!({"pool": "a"}));
    let v = with(v, &format!("{w}/spec/tolerations"), json!([{"key": "pool", "operator": "Exists"}]));
    with(v, &format!("{w}/spec/schedulingGates"), json!([{"name": "kueue.x-k8s.io/topology"}]))
}

#[test]
fn scheduling_directives_may_change_while_suspended() {
    let w = "/spec/tfReplicaSpecs/Worker/template";
    let plain = seed();
    let directives = admitted(seed());
    // (stored suspend, updated suspend): Kueue admits (true → false), stops (false → true),
    // or a user edits a job that stays suspended (true → true).
    for (old_on, new_on) in [(true, false), (false, true), (true, true)] {
        let pairs = [
            ("added", plain.clone(), directives.clone()),
            ("removed", directives.clone(), plain.clone()),
            (
                "changed",
                directives.clone(),
                with(
                    with(directives.clone(), &format!("{w}/spec/nodeSelector/pool"), json!("b")),
                    &format!("{w}/metadata/labels/kueue.x-k8s.io~1podset"),
                    json!("other"),
                ),
            ),
        ];
        for (name, old, new) in pairs {
            let (old, new) = (suspended(old, old_on), suspended(new, new_on));
            assert_eq!(
                refusals(&new, Some(&old)),
                Vec::<String>::new(),
                "{name}, suspend {old_on} → {new_on}"
            );
        }
        for (field, value) in [
            ("metadata/labels/a", json!("b")),
            ("metadata/annotations/a", json!("b")),
            ("spec/nodeSelector", json!({"pool": "a"})),
            ("spec/tolerations", json!([{"key": "t", "operator": "Exists", "effect": "NoSchedule"}])),
            ("spec/schedulingGates", json!([{"name": "g"}])),
        ] {
            let (old, new) = (
                suspended(plain.clone(), old_on),
                suspended(with(plain.clone(), &format!("{w}/{field}"), value), new_on),
            );
            assert_eq!(
                refusals(&new, Some(&old)),
                Vec::<String>::new(),
                "{field} added, suspend {old_on} → {new_on}"
            );
            assert_eq!(
                refusals(&old, Some(&new)),
                Vec::<String>::new(),
                "{field} removed, suspend {new_on} → {old_on}"
            );
        }
    }
}

#[test]
fn everything_else_stays_fixed_while_suspended() {
    let w = "/spec/tfReplicaSpecs/Worker/template";
    let want = format!("spec.tfReplicaSpecs cannot be changed: {CONTRACT}");
    let running = admitted(seed());
    // Running before and after: the scheduling directives themselves are fixed.
    for (name, new) in [
        ("label added", with(running.clone(), &format!("{w}/metadata/labels/a"), json!("b"))),
        ("nodeSelector changed", with(running.clone(), &format!("{w}/spec/nodeSelector/pool"), json!("b"))),
        ("tolerations removed", without(running.clone(), &format!("{w}/spec/tolerations"))),
        ("schedulingGates removed", without(running.clone(), &format!("{w}/spec/schedulingGates"))),
        ("annotation removed", without(running.clone(), &format!("{w}/metadata/annotations"))),
        (
            "suspend false written, label added",
            suspended(with(running.clone(), &format!("{w}/metadata/labels/a"), json!("b")), false),
        ),
    ] {
        let got = refusals(&new, Some(&running));
        assert!(got.contains(&want), "running, {name}: got {got:?}");
    }
    // Suspended: every other part of a replica is fixed.
    let old = suspended(seed(), true);
    for (name, new) in [
        ("replicas", with(old.clone(), "/spec/tfReplicaSpecs/Worker/replicas", json!(2))),
        ("restartPolicy", with(old.clone(), "/spec/tfReplicaSpecs/Worker/restartPolicy", json!("Never"))),
        (
            "a replica type added",
            with(
                old.clone(),
                "/spec/tfReplicaSpecs/Evaluator",
                old["spec"]["tfReplicaSpecs"]["Worker"].clone(),
            ),
        ),
        ("a replica type removed", without(old.clone(), "/spec/tfReplicaSpecs/Ps")),
        ("image", {
            let mut v = old.clone();
            *v.pointer_mut(&format!("{w}/spec/containers/0/image")).unwrap() = json!("other");
            v
        }),
        ("affinity added", with(old.clone(), &format!("{w}/spec/affinity"), json!({"nodeAffinity": {}}))),
        ("priorityClassName", with(old.clone(), &format!("{w}/spec/priorityClassName"), json!("high"))),
        ("imagePullSecrets removed", without(old.clone(), &format!("{w}/spec/imagePullSecrets"))),
        ("template name", with(old.clone(), &format!("{w}/metadata/name"), json!("x"))),
        ("template finalizers", with(old.clone(), &format!("{w}/metadata/finalizers"), json!(["x"]))),
    ] {
        for new_on in [true, false] {
            let got = refusals(&suspended(new.clone(), new_on), Some(&old));
            assert!(got.contains(&want), "suspended → {new_on}, {name}: got {got:?}");
        }
    }
}

#[test]
fn the_job_size_rule_counts_every_replica_type() {
    use tfjob_operator::api::rules::MAX_TOTAL_REPLICAS as MAX;
    let max = i64::from(MAX);
    let cases = [
        ("at the maximum", json!({"PS": replica(Some(1)), "Worker": replica(Some(max - 1))}), false),
        ("one over, in all", json!({"PS": replica(Some(2)), "Worker": replica(Some(max - 1))}), true),
        ("unset counts as 1", json!({"PS": replica(None), "Worker": replica(Some(max))}), true),
        (
            "three types",
            json!({"Chief": replica(None), "Evaluator": replica(Some(1)), "Worker": replica(Some(max - 2))}),
            false,
        ),
    ];
    for (name, replicas, refused) in cases {
        let got = refusals(&tfjob("j", replicas), None);
        let size = got.iter().any(|m| m.contains(&format!("at most {MAX} replicas in all")));
        assert_eq!(size, refused, "{name}: {got:?}");
    }
}
