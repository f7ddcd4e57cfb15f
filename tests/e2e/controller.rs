//! The controller end to end: pods run and finish through kwok, the operator reacts.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tfjob_operator::api::{ConditionType, ReplicaType, TFJob};

use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        test!(seed_job_gets_pods_services_tf_config_and_status),
        test!(success_cleans_running_pods_and_success_rules),
        test!(failures_restarts_and_backoff_limit),
        test!(disrupted_pods_are_recreated_without_cost),
        test!(clean_pod_policy_after_finish_and_patched),
        test!(refused_pod_template_gets_replica_failure_and_backs_off),
        test!(sigterm_finishes_in_flight_work_and_exits_zero),
        test!(contract_through_kubectl_patch),
        test!(active_deadline_is_exact_and_follows_patches).serial(),
        test!(ttl_deletes_the_finished_job_and_follows_patches).serial(),
        test!(no_duplicates_no_chatter).serial(),
    ]
}

const T: Duration = Duration::from_secs(60);

fn with_kwok_templates(mut job: Value) -> Value {
    if let Some(specs) = job["spec"]["tfReplicaSpecs"].as_object_mut() {
        for r in specs.values_mut() {
            crate::smoke::on_kwok(&mut r["template"]["spec"]);
        }
    }
    job
}

fn example(name: &str) -> Result<Value> {
    let path = tfjob_testsupport::repo_root().join("examples").join(name);
    Ok(with_kwok_templates(serde_saphyr::from_str(&std::fs::read_to_string(path)?)?))
}

fn tf_config(pod: &k8s_openapi::api::core::v1::Pod) -> Option<Value> {
    let c = pod.spec.as_ref()?.containers.iter().find(|c| c.name == "tensorflow")?;
    let v = c.env.as_ref()?.iter().find(|e| e.name == "TF_CONFIG")?.value.as_ref()?;
    serde_json::from_str(v).ok()
}

async fn seed_job_gets_pods_services_tf_config_and_status(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    for (n, file) in ["tfjob-seed.yaml", "tfjob-kubeflow.yaml"].into_iter().enumerate() {
        let name = format!("tfjob-test{}", if n == 0 { "" } else { "-kf" });
        let mut job = example(file)?;
        job["metadata"]["name"] = json!(name);
        create(&ctx, job).await?;
        let j = wait_job(&ctx, &name, T, "Running with both replicas active", |j| {
            is(j, ConditionType::Running)
                && j.status.as_ref().is_some_and(|s| {
                    s.replica_statuses.get(&ReplicaType::PS).is_some_and(|r| r.active == 1)
                        && s.replica_statuses.get(&ReplicaType::Worker).is_some_and(|r| r.active == 1)
                })
        })
        .await
        .with_context(|| op.log_tail())?;
        let st = j.status.clone().context("status")?;
        let conds: Vec<(String, String, String)> = st
            .conditions
            .iter()
            .map(|c| {
                (
                    format!("{:?}", c.type_),
                    c.reason.clone().unwrap_or_default(),
                    c.message.clone().unwrap_or_default(),
                )
            })
            .collect();
        ensure!(
            conds
                == [
                    ("Created".into(), "TFJobCreated".into(), format!("TFJob {name} is created.")),
                    ("Running".into(), "TFJobRunning".into(), format!("TFJob {name} is running.")),
                ],
            "{file}: conditions {conds:?}"
        );
        ensure!(st.start_time.is_some(), "startTime");
        let evs = events(&ctx, &name).await?;
        ensure!(
            evs.iter().filter(|(r, _)| r == "SetPodTemplateRestartPolicy").count() == 1,
            "one warning: {evs:?}"
        );
        let rs = serde_json::to_value(&st.replica_statuses)?;
        ensure!(rs == json!({"PS": {"active": 1}, "Worker": {"active": 1}}), "{file}: replicaStatuses {rs}");
        for (t, i) in [("ps", 0), ("worker", 0)] {
            let pod_name = format!("{name}-{t}-{i}");
            let pod = pods(&ctx).get(&pod_name).await?;
            let want = json!({
                "cluster": {"ps": [format!("{name}-ps-0.{}.svc:2222", ctx.ns)], "worker": [format!("{name}-worker-0.{}.svc:2222", ctx.ns)]},
                "task": {"type": t, "index": i},
                "environment": "cloud"
            });
            ensure!(
                tf_config(&pod) == Some(want.clone()),
                "{pod_name}: TF_CONFIG {:?}, want {want}",
                tf_config(&pod)
            );
            // The replica's restartPolicy (default Never) replaces the template's OnFailure.
            ensure!(pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("Never"));
            let svc = services(&ctx).get(&pod_name).await?;
            ensure!(
                svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None"),
                "{pod_name}: headless"
            );
        }
    }
    Ok(())
}

async fn annotate(ctx: &Ctx, pod: &str, ann: Value) -> Result<()> {
    pods(ctx)
        .patch(pod, &PatchParams::default(), &Patch::Merge(json!({"metadata": {"annotations": ann}})))
        .await?;
    Ok(())
}

/// Waits until one worker of `name` has succeeded, then checks the job has not, 2 s later.
async fn one_worker_done_job_still_running(ctx: &Ctx, name: &str) -> Result<()> {
    wait_job(ctx, name, T, "a worker to succeed", |j| {
        j.status
            .as_ref()
            .and_then(|s| s.replica_statuses.get(&ReplicaType::Worker))
            .is_some_and(|r| r.succeeded == 1)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(!is(&jobs(ctx).get(name).await?, ConditionType::Succeeded), "{name} succeeded too early");
    Ok(())
}

async fn success_cleans_running_pods_and_success_rules(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    // Worker 0 decides; cleanPodPolicy Running (the default) removes the PS.
    create(
        &ctx,
        job("basic", &[R("PS", 1, None, json!({})), R("Worker", 1, None, succeed("3s"))], json!({})),
    )
    .await?;
    let j = wait_job(&ctx, "basic", T, "Succeeded", |j| is(j, ConditionType::Succeeded))
        .await
        .with_context(|| op.log_tail())?;
    ensure!(j.status.as_ref().and_then(|s| s.completion_time.as_ref()).is_some(), "completionTime");
    ensure!(!is(&j, ConditionType::Running), "Running turned False");
    wait_pods(&ctx, &["basic-worker-0"], T)
        .await
        .context("the PS pod is removed, the finished worker stays")?;
    // The service goes after its pod, in the same reconcile.
    tfjob_testsupport::wait(Duration::from_secs(5), "the PS service to go with its pod", || async {
        service_names(&ctx).await.is_ok_and(|s| s == ["basic-worker-0"])
    })
    .await?;

    // AllWorkers: worker 0's success is not enough.
    create(&ctx, job("all", &[R("Worker", 2, None, json!({}))], json!({"successPolicy": "AllWorkers"})))
        .await?;
    wait_job(&ctx, "all", T, "Running", |j| is(j, ConditionType::Running)).await?;
    annotate(&ctx, "all-worker-0", succeed("0s")).await?;
    one_worker_done_job_still_running(&ctx, "all").await.context("AllWorkers must wait for worker 1")?;
    annotate(&ctx, "all-worker-1", succeed("0s")).await?;
    wait_job(&ctx, "all", T, "Succeeded", |j| is(j, ConditionType::Succeeded)).await?;

    // With a chief, the chief decides.
    create(
        &ctx,
        job("chief", &[R("Chief", 1, None, json!({})), R("Worker", 1, None, succeed("1s"))], json!({})),
    )
    .await?;
    one_worker_done_job_still_running(&ctx, "chief").await.context("the chief decides, not the workers")?;
    annotate(&ctx, "chief-chief-0", succeed("0s")).await?;
    wait_job(&ctx, "chief", T, "Succeeded", |j| is(j, ConditionType::Succeeded)).await?;
    Ok(())
}

async fn failures_restarts_and_backoff_limit(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    create(&ctx, job("never", &[R("Worker", 1, None, fail("1s", 1))], json!({}))).await?;
    create(&ctx, job("exit1", &[R("Worker", 1, Some("ExitCode"), fail("1s", 1))], json!({}))).await?;
    create(
        &ctx,
        job("exit137", &[R("Worker", 1, Some("ExitCode"), fail("2s", 137))], json!({"backoffLimit": 2})),
    )
    .await?;
    create(
        &ctx,
        job(
            "crash",
            &[R("Worker", 1, Some("OnFailure"), fail("2s", 3))],
            json!({"runPolicy": {"backoffLimit": 2}}),
        ),
    )
    .await?;

    let j = wait_job(&ctx, "never", T, "Failed", |j| is(j, ConditionType::Failed))
        .await
        .with_context(|| op.log_tail())?;
    let msg = j.status.as_ref().and_then(|s| s.conditions.last()?.message.clone()).unwrap_or_default();
    ensure!(msg.contains("pod never-worker-0") && msg.contains("exited with code 1"), "message {msg:?}");
    ensure!(last_reason(&j).as_deref() == Some("TFJobFailed"));
    let j = wait_job(&ctx, "exit1", T, "Failed", |j| is(j, ConditionType::Failed)).await?;
    ensure!(last_reason(&j).as_deref() == Some("TFJobFailed"), "ExitCode 1 is permanent");

    // ExitCode 137: re-created with new uids; the third failure exceeds backoffLimit 2.
    let j = wait_job(&ctx, "exit137", Duration::from_secs(90), "BackoffLimitExceeded", |j| {
        is(j, ConditionType::Failed)
    })
    .await?;
    let show = serde_json::to_string(&j.status)?;
    ensure!(
        last_reason(&j).as_deref() == Some("BackoffLimitExceeded"),
        "reason {:?}: {show}",
        last_reason(&j)
    );
    let restarts =
        j.status.as_ref().and_then(|s| s.replica_statuses.get(&ReplicaType::Worker)).map(|r| r.restarts);
    ensure!(restarts == Some(3), "{show}");
    let evs = events(&ctx, "exit137").await?;
    let created = evs.iter().filter(|(r, _)| r == "SuccessfulCreatePod").count();
    ensure!(created == 3, "three runs of the pod (two re-creations): {evs:?} {show}");

    // OnFailure: restarts in place; the third restart exceeds the limit.
    let j = wait_job(&ctx, "crash", Duration::from_secs(90), "BackoffLimitExceeded", |j| {
        is(j, ConditionType::Failed)
    })
    .await?;
    ensure!(last_reason(&j).as_deref() == Some("BackoffLimitExceeded"), "reason {:?}", last_reason(&j));
    let evs = events(&ctx, "crash").await?;
    ensure!(
        evs.iter().filter(|(r, _)| r == "SuccessfulCreatePod").count() == 1,
        "restarted in place, never re-created: {evs:?}"
    );
    ensure!(evs.iter().any(|(r, _)| r == "TFJobRestarting"), "Restarting announced: {evs:?}");
    Ok(())
}

/// Waits until pod `name` exists again, live, with a uid other than `old`.
async fn wait_recreated(ctx: &Ctx, name: &str, old: Option<String>) -> Result<()> {
    tfjob_testsupport::wait(T, &format!("{name} re-created"), || async {
        let live = pods(ctx).get_opt(name).await.ok().flatten();
        live.is_some_and(|p| p.metadata.uid != old && p.metadata.deletion_timestamp.is_none())
    })
    .await
}

async fn disrupted_pods_are_recreated_without_cost(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    create(
        &ctx,
        job("d", &[R("PS", 1, None, json!({})), R("Worker", 2, None, json!({}))], json!({"backoffLimit": 0})),
    )
    .await?;
    wait_job(&ctx, "d", T, "Running", |j| is(j, ConditionType::Running))
        .await
        .with_context(|| op.log_tail())?;
    wait_pods(&ctx, &["d-ps-0", "d-worker-0", "d-worker-1"], T).await?;
    let old = pods(&ctx).get("d-worker-1").await?.metadata.uid;
    pods(&ctx).delete("d-worker-1", &DeleteParams::default()).await?;
    wait_recreated(&ctx, "d-worker-1", old).await?;
    // Evicted: the status says Failed with a DisruptionTarget condition, as the eviction path writes.
    let old = pods(&ctx).get("d-ps-0").await?.metadata.uid;
    let status = json!({"status": {"phase": "Failed", "reason": "Evicted", "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI", "message": "evicted"}]}});
    pods(&ctx).patch_status("d-ps-0", &PatchParams::default(), &Patch::Merge(status)).await?;
    wait_recreated(&ctx, "d-ps-0", old).await?;
    let j = jobs(&ctx).get("d").await?;
    ensure!(!is(&j, ConditionType::Failed), "a disruption is not a failure: {:?}", j.status);
    let restarts: i32 =
        j.status.as_ref().map(|s| s.replica_statuses.values().map(|r| r.restarts).sum()).unwrap_or(0);
    ensure!(restarts == 0, "no backoff spent");
    // Under OnFailure as under Never: a deleted running pod comes back at no cost.
    create(&ctx, job("o", &[R("Worker", 1, Some("OnFailure"), json!({}))], json!({"backoffLimit": 0})))
        .await?;
    wait_job(&ctx, "o", T, "Running", |j| is(j, ConditionType::Running)).await?;
    let old = pods(&ctx).get("o-worker-0").await?.metadata.uid;
    pods(&ctx).delete("o-worker-0", &DeleteParams::default()).await?;
    wait_recreated(&ctx, "o-worker-0", old).await?;
    ensure!(
        !is(&jobs(&ctx).get("o").await?, ConditionType::Failed),
        "OnFailure: a disruption is not a failure"
    );
    // A succeeded worker's pod deleted while the job runs is not run again.
    create(&ctx, job("s", &[R("Worker", 2, None, json!({}))], json!({"successPolicy": "AllWorkers"})))
        .await?;
    wait_job(&ctx, "s", T, "Running", |j| is(j, ConditionType::Running)).await?;
    annotate(&ctx, "s-worker-0", succeed("0s")).await?;
    one_worker_done_job_still_running(&ctx, "s").await?;
    pods(&ctx).delete("s-worker-0", &DeleteParams::default()).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    ensure!(pods(&ctx).get_opt("s-worker-0").await?.is_none(), "the succeeded replica was run again");
    let j = jobs(&ctx).get("s").await?;
    let done = j
        .status
        .as_ref()
        .and_then(|s| s.replica_statuses.get(&ReplicaType::Worker))
        .map(|r| r.succeeded_indexes.clone());
    ensure!(done == Some(vec![0]) && !is(&j, ConditionType::Succeeded), "{:?}", j.status);
    // A deleted TFJob takes its pods and services with it.
    for name in ["d", "o", "s"] {
        jobs(&ctx).delete(name, &DeleteParams::background()).await?;
    }
    wait_pods(&ctx, &[], Duration::from_secs(120)).await.context("garbage collection of the pods")?;
    tfjob_testsupport::wait(Duration::from_secs(60), "garbage collection of the services", || async {
        service_names(&ctx).await.is_ok_and(|s| s.is_empty())
    })
    .await?;
    Ok(())
}

async fn clean_pod_policy_after_finish_and_patched(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    let reps = |w: Value| vec![R("PS", 1, None, json!({})), R("Worker", 1, None, w)];
    create(&ctx, job("all", &reps(succeed("1s")), json!({"cleanPodPolicy": "All"}))).await?;
    create(&ctx, job("none", &reps(succeed("1s")), json!({"runPolicy": {"cleanPodPolicy": "None"}}))).await?;
    create(&ctx, job("fail", &reps(fail("1s", 1)), json!({}))).await?;
    for name in ["all", "none", "fail"] {
        wait_job(&ctx, name, T, "finished", |j| j.status.as_ref().is_some_and(|s| s.is_finished()))
            .await
            .with_context(|| op.log_tail())?;
    }
    wait_pods(&ctx, &["fail-worker-0", "none-ps-0", "none-worker-0"], T).await?;
    // None -> All on the finished job: the rest goes, within 2 s.
    let t0 = std::time::Instant::now();
    jobs(&ctx)
        .patch("none", &PatchParams::default(), &Patch::Merge(json!({"spec": {"cleanPodPolicy": "All"}})))
        .await?;
    wait_pods(&ctx, &["fail-worker-0"], Duration::from_secs(5)).await?;
    let took = t0.elapsed();
    ensure!(took < Duration::from_secs(3), "cleanup took {took:?}");
    let evs = events(&ctx, "none").await?;
    ensure!(evs.iter().filter(|(r, _)| r == "CleanPodPolicyUpdated").count() == 1, "{evs:?}");
    // All -> None after cleanup: nothing comes back.
    jobs(&ctx)
        .patch("none", &PatchParams::default(), &Patch::Merge(json!({"spec": {"cleanPodPolicy": "None"}})))
        .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(live_pods(&ctx).await? == ["fail-worker-0"], "nothing re-created");
    ensure!(
        service_names(&ctx).await? == ["fail-worker-0"],
        "services follow: {:?}",
        service_names(&ctx).await?
    );
    Ok(())
}

async fn refused_pod_template_gets_replica_failure_and_backs_off(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    // The schema accepts it; the API server refuses the pod (an invalid volume reference).
    let mut j = job("bad", &[R("Worker", 1, None, json!({}))], json!({}));
    j["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "missing", "mountPath": "/data"}]);
    create(&ctx, j).await?;
    let j = wait_job(&ctx, "bad", T, "ReplicaFailure", |j| {
        j.status.as_ref().and_then(|s| s.condition(ConditionType::ReplicaFailure)).is_some()
    })
    .await
    .with_context(|| op.log_tail())?;
    let c =
        j.status.as_ref().and_then(|s| s.condition(ConditionType::ReplicaFailure)).context("condition")?;
    ensure!(c.reason.as_deref() == Some("FailedCreatePod"), "{c:?}");
    ensure!(c.message.as_deref().is_some_and(|m| m.contains("missing")), "the API server's message: {c:?}");
    ensure!(!j.status.as_ref().is_some_and(|s| s.is_finished()), "not terminal");
    // Poke it: label patches trigger reconciles, but creates back off.
    for i in 0..10 {
        jobs(&ctx)
            .patch(
                "bad",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"poke": i.to_string()}}})),
            )
            .await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let evs = events(&ctx, "bad").await?;
    let attempts: i32 = evs.iter().filter(|(r, _)| r == "FailedCreatePod").map(|(_, n)| *n).sum();
    ensure!((1..=3).contains(&attempts), "create attempts in ~6 s: {attempts} ({evs:?})");
    Ok(())
}

fn instant(
    j: &TFJob,
    f: impl Fn(&tfjob_operator::api::TFJobStatus) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
) -> Option<Timestamp> {
    j.status.as_ref().and_then(f).map(|t| t.0)
}

/// Watches the job and returns the moment the predicate first held (watch arrival).
async fn arrival(
    ctx: &Ctx,
    name: &str,
    timeout: Duration,
    pred: impl Fn(&TFJob) -> bool,
) -> Result<(Timestamp, TFJob)> {
    use futures::StreamExt;
    let cfg = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = std::pin::pin!(watcher::watcher(jobs(ctx), cfg));
    let end = tokio::time::Instant::now() + timeout;
    loop {
        let ev = tokio::time::timeout_at(end, stream.next())
            .await
            .context("timed out")?
            .context("watch ended")??;
        let objs = match ev {
            watcher::Event::Apply(j) | watcher::Event::InitApply(j) => vec![j],
            _ => vec![],
        };
        for j in objs {
            if pred(&j) {
                return Ok((Timestamp::now(), j));
            }
        }
    }
}

fn lateness(actual: Timestamp, expected: Timestamp) -> f64 {
    actual.duration_since(expected).as_secs_f64()
}

async fn active_deadline_is_exact_and_follows_patches(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    let mut late = Vec::new();
    let reps = || vec![R("Worker", 1, None, json!({}))];
    // Set at create.
    create(&ctx, job("ads", &reps(), json!({"activeDeadlineSeconds": 4}))).await?;
    let (at, j) =
        arrival(&ctx, "ads", T, |j| is(j, ConditionType::Failed)).await.with_context(|| op.log_tail())?;
    ensure!(last_reason(&j).as_deref() == Some("DeadlineExceeded"));
    let deadline = instant(&j, |s| s.deadline.as_ref()).context("published deadline")?;
    late.push(lateness(at, deadline));
    // Shortened into the past while running: fails within 2 s.
    create(&ctx, job("short", &reps(), json!({"runPolicy": {"activeDeadlineSeconds": 600}}))).await?;
    wait_job(&ctx, "short", T, "Running", |j| is(j, ConditionType::Running)).await?;
    let t0 = Timestamp::now();
    jobs(&ctx)
        .patch(
            "short",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runPolicy": {"activeDeadlineSeconds": 1}}})),
        )
        .await?;
    let (at, j) = arrival(&ctx, "short", T, |j| is(j, ConditionType::Failed)).await?;
    ensure!(last_reason(&j).as_deref() == Some("DeadlineExceeded"));
    ensure!(lateness(at, t0) < 2.0, "shortened deadline acted on after {:.2}s", lateness(at, t0));
    // Lengthened: survives the old instant, fails at the new one.
    create(&ctx, job("long", &reps(), json!({"activeDeadlineSeconds": 3}))).await?;
    let j =
        wait_job(&ctx, "long", T, "deadline published", |j| instant(j, |s| s.deadline.as_ref()).is_some())
            .await?;
    let old = instant(&j, |s| s.deadline.as_ref()).context("deadline")?;
    jobs(&ctx)
        .patch("long", &PatchParams::default(), &Patch::Merge(json!({"spec": {"activeDeadlineSeconds": 7}})))
        .await?;
    let (at, j) = arrival(&ctx, "long", T, |j| is(j, ConditionType::Failed)).await?;
    let new = instant(&j, |s| s.deadline.as_ref()).context("deadline")?;
    ensure!(new.duration_since(old).as_secs() == 4, "deadline moved from {old} to {new}");
    late.push(lateness(at, new));
    // Removed: never fails.
    create(&ctx, job("gone", &reps(), json!({"activeDeadlineSeconds": 3}))).await?;
    let j =
        wait_job(&ctx, "gone", T, "deadline published", |j| instant(j, |s| s.deadline.as_ref()).is_some())
            .await?;
    let old = instant(&j, |s| s.deadline.as_ref()).context("deadline")?;
    jobs(&ctx)
        .patch(
            "gone",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"activeDeadlineSeconds": null}})),
        )
        .await?;
    let wait_until = old.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(5))?;
    tokio::time::sleep(Duration::try_from(wait_until.duration_since(Timestamp::now())).unwrap_or_default())
        .await;
    let j = jobs(&ctx).get("gone").await?;
    ensure!(
        !is(&j, ConditionType::Failed) && instant(&j, |s| s.deadline.as_ref()).is_none(),
        "removed deadline: {:?}",
        j.status
    );
    for l in &late {
        ensure!((0.0..=2.0).contains(l), "lateness {l:.3}s outside [0, 2]");
    }
    println!(
        "    deadline lateness: {}",
        late.iter().map(|l| format!("{l:.3}s")).collect::<Vec<_>>().join(", ")
    );
    Ok(())
}

async fn ttl_deletes_the_finished_job_and_follows_patches(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    let reps = || vec![R("PS", 1, None, json!({})), R("Worker", 1, None, succeed("1s"))];
    create(&ctx, job("ttl", &reps(), json!({"ttlSecondsAfterFinished": 3}))).await?;
    let j = wait_job(&ctx, "ttl", T, "expiry published", |j| instant(j, |s| s.expires.as_ref()).is_some())
        .await
        .with_context(|| op.log_tail())?;
    let expires = instant(&j, |s| s.expires.as_ref()).context("expires")?;
    let done = instant(&j, |s| s.completion_time.as_ref()).context("completionTime")?;
    ensure!(expires.duration_since(done).as_secs() == 3);
    tfjob_testsupport::wait(T, "the job to be deleted", || async {
        jobs(&ctx).get_opt("ttl").await.is_ok_and(|j| j.is_none())
    })
    .await?;
    let l = lateness(Timestamp::now(), expires);
    ensure!((0.0..=2.2).contains(&l), "TTL lateness {l:.3}s");
    // Its pods and services are then garbage-collected.
    wait_pods(&ctx, &[], Duration::from_secs(90)).await.context("the deleted job's pods")?;
    tfjob_testsupport::wait(Duration::from_secs(60), "the deleted job's services to go", || async {
        service_names(&ctx).await.is_ok_and(|s| s.is_empty())
    })
    .await?;
    // Lowered on a finished job: deleted at the new instant (at once if that has passed).
    create(&ctx, job("lower", &reps(), json!({"ttlSecondsAfterFinished": 600}))).await?;
    let j = wait_job(&ctx, "lower", T, "expiry published", |j| instant(j, |s| s.expires.as_ref()).is_some())
        .await?;
    let done = instant(&j, |s| s.completion_time.as_ref()).context("completionTime")?;
    jobs(&ctx)
        .patch(
            "lower",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ttlSecondsAfterFinished": 4}})),
        )
        .await?;
    let new_expiry = done.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(4))?;
    tfjob_testsupport::wait(Duration::from_secs(15), "the lowered TTL to delete the job", || async {
        jobs(&ctx).get_opt("lower").await.is_ok_and(|j| j.is_none())
    })
    .await?;
    let l = lateness(Timestamp::now(), new_expiry);
    ensure!((0.0..=2.2).contains(&l), "lowered TTL lateness {l:.3}s");
    // Raised a moment before expiry: survives.
    create(&ctx, job("raise", &reps(), json!({"runPolicy": {"ttlSecondsAfterFinished": 3}}))).await?;
    let j = wait_job(&ctx, "raise", T, "expiry published", |j| instant(j, |s| s.expires.as_ref()).is_some())
        .await?;
    let expires = instant(&j, |s| s.expires.as_ref()).context("expires")?;
    let before = Duration::try_from(expires.duration_since(Timestamp::now()))
        .unwrap_or_default()
        .saturating_sub(Duration::from_millis(800));
    tokio::time::sleep(before).await;
    jobs(&ctx)
        .patch(
            "raise",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ttlSecondsAfterFinished": 60}})),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(jobs(&ctx).get_opt("raise").await?.is_some(), "a raised TTL keeps the job");
    // Added after finish: honoured.
    create(&ctx, job("late", &reps(), json!({}))).await?;
    wait_job(&ctx, "late", T, "Succeeded", |j| is(j, ConditionType::Succeeded)).await?;
    jobs(&ctx)
        .patch(
            "late",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ttlSecondsAfterFinished": 1}})),
        )
        .await?;
    tfjob_testsupport::wait(Duration::from_secs(10), "the job to be deleted", || async {
        jobs(&ctx).get_opt("late").await.is_ok_and(|j| j.is_none())
    })
    .await?;
    Ok(())
}

async fn sigterm_finishes_in_flight_work_and_exits_zero(ctx: Ctx) -> Result<()> {
    let mut op = Operator::start(&ctx, &[])?;
    let port = op.http_port;
    tfjob_testsupport::wait(T, "/healthz to answer", || async move {
        http_status(port, "/healthz").await == Some(200)
    })
    .await?;
    create(&ctx, job("t", &[R("Worker", 2, None, json!({}))], json!({}))).await?;
    wait_job(&ctx, "t", T, "Running", |j| is(j, ConditionType::Running))
        .await
        .with_context(|| op.log_tail())?;
    op.proc.signal(SIGTERM);
    let status = tokio::task::block_in_place(|| op.proc.wait_exit(Duration::from_secs(20)))
        .context("still running 20 s after SIGTERM")?;
    ensure!(status.success(), "exit status {status}: {}", op.log_tail());
    Ok(())
}

async fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).await.map(|(code, _)| code)
}

/// `kubectl -n <ns> patch tfjob <name> --type merge -p <patch> -o json`: (success, stdout, stderr).
fn kubectl_patch(ctx: &Ctx, name: &str, patch: &Value) -> Result<(bool, Value, String)> {
    let out = ctx
        .cluster
        .kubectl()
        .args([
            "-n",
            &ctx.ns,
            "patch",
            "tfjob",
            name,
            "--type",
            "merge",
            "-o",
            "json",
            "-p",
            &patch.to_string(),
        ])
        .output()?;
    let body = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    Ok((out.status.success(), body, String::from_utf8_lossy(&out.stderr).into_owned()))
}

fn applied_policy(j: &TFJob) -> Value {
    j.status.as_ref().and_then(|s| serde_json::to_value(&s.applied_policy).ok()).unwrap_or(Value::Null)
}

async fn contract_through_kubectl_patch(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    let mut seed = example("tfjob-seed.yaml")?;
    seed["metadata"]["name"] = json!("seed");
    let mut kf = example("tfjob-kubeflow.yaml")?;
    kf["metadata"]["name"] = json!("kf");
    create(&ctx, seed).await?;
    create(&ctx, kf).await?;
    for name in ["seed", "kf"] {
        wait_job(&ctx, name, T, "Running", |j| is(j, ConditionType::Running))
            .await
            .with_context(|| op.log_tail())?;
    }
    // Each allowed field, in the shape's own place: the whole object back, and in effect.
    for (name, place) in [("seed", None), ("kf", Some("runPolicy"))] {
        let wrap = |field: &str, v: Value| match place {
            None => json!({"spec": {field: v}}),
            Some(p) => json!({"spec": {p: {field: v}}}),
        };
        for (field, value, event) in [
            ("activeDeadlineSeconds", json!(900), "DeadlineUpdated"),
            ("ttlSecondsAfterFinished", json!(120), "TTLUpdated"),
            ("cleanPodPolicy", json!("All"), "CleanPodPolicyUpdated"),
        ] {
            let (ok, body, err) = kubectl_patch(&ctx, name, &wrap(field, value.clone()))?;
            ensure!(ok, "{name}: patch {field} refused: {err}");
            ensure!(
                body["kind"] == "TFJob" && body["spec"]["tfReplicaSpecs"].is_object(),
                "{name}: the whole object comes back"
            );
            let j = wait_job(&ctx, name, Duration::from_secs(5), "the new value in effect", |j| {
                applied_policy(j)[field] == value
            })
            .await?;
            ensure!(applied_policy(&j)[field] == value);
            // The event follows the status write that records the new value.
            let count =
                || async { events(&ctx, name).await.map(|e| e.iter().filter(|(r, _)| r == event).count()) };
            tfjob_testsupport::wait(Duration::from_secs(5), event, || async {
                count().await.is_ok_and(|n| n >= 1)
            })
            .await?;
            ensure!(count().await? == 1, "{name}: one {event}: {:?}", events(&ctx, name).await?);
        }
    }
    // A runPolicy value shadowed by the seed's: accepted, nothing effective changes, no event.
    let before = jobs(&ctx).get("seed").await?;
    let (ok, _, err) =
        kubectl_patch(&ctx, "seed", &json!({"spec": {"runPolicy": {"activeDeadlineSeconds": 5}}}))?;
    ensure!(ok, "shadowed patch refused: {err}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = jobs(&ctx).get("seed").await?;
    ensure!(
        applied_policy(&after) == applied_policy(&before) && !is(&after, ConditionType::Failed),
        "shadowed value acted on"
    );
    let deadline_events = events(&ctx, "seed").await?.iter().filter(|(r, _)| r == "DeadlineUpdated").count();
    ensure!(deadline_events == 1, "no event for a shadowed change");
    // Refused patches change nothing, and the operator writes nothing in response.
    let rv = jobs(&ctx).get("kf").await?.metadata.resource_version;
    for patch in [
        json!({"spec": {"tfReplicaSpecs": {"Worker": {"replicas": 3}}}}),
        json!({"spec": {"runPolicy": {"backoffLimit": 1}}}),
        json!({"spec": {"successPolicy": "AllWorkers"}}),
    ] {
        let (ok, _, err) = kubectl_patch(&ctx, "kf", &patch)?;
        ensure!(!ok && err.contains("cannot be changed"), "{patch} accepted or unclear: {err}");
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(jobs(&ctx).get("kf").await?.metadata.resource_version == rv, "a refused patch led to a write");
    Ok(())
}

/// apiserver_request_total for POSTs of `resource`, by response code, from the API server's /metrics.
async fn posts(ctx: &Ctx, resource: &str) -> Result<std::collections::BTreeMap<String, f64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = ctx.cluster.client.request_text(req).await?;
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        if line.contains(&format!("resource=\"{resource}\""))
            && line.contains("verb=\"POST\"")
            && line.contains("subresource=\"\"")
        {
            let code =
                line.split("code=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("").to_string();
            let n: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            *out.entry(code).or_default() += n;
        }
    }
    Ok(out)
}

fn delta(
    after: &std::collections::BTreeMap<String, f64>,
    before: &std::collections::BTreeMap<String, f64>,
    code: &str,
) -> f64 {
    after.get(code).copied().unwrap_or(0.0) - before.get(code).copied().unwrap_or(0.0)
}

async fn no_duplicates_no_chatter(ctx: Ctx) -> Result<()> {
    // Every pod uid per name, over the whole test.
    let uids = UidWatch::start(&ctx);
    let (pods_before, svcs_before) = (posts(&ctx, "pods").await?, posts(&ctx, "services").await?);
    let op = Operator::start(&ctx, &[])?;
    let reps = || vec![R("PS", 1, None, json!({})), R("Worker", 1, None, json!({}))];
    let creates = (0..20).map(|i| create(&ctx, job(&format!("j{i}"), &reps(), json!({}))));
    for r in futures::future::join_all(creates).await {
        r?;
    }
    for i in 0..20 {
        wait_job(&ctx, &format!("j{i}"), T, "Running", |j| is(j, ConditionType::Running))
            .await
            .with_context(|| op.log_tail())?;
    }
    let (pods_after, svcs_after) = (posts(&ctx, "pods").await?, posts(&ctx, "services").await?);
    ensure!(
        delta(&pods_after, &pods_before, "201") == 40.0,
        "pod creates: {pods_before:?} -> {pods_after:?}"
    );
    ensure!(delta(&pods_after, &pods_before, "409") == 0.0, "duplicate pod creates: {pods_after:?}");
    ensure!(
        delta(&svcs_after, &svcs_before, "201") == 40.0 && delta(&svcs_after, &svcs_before, "409") == 0.0,
        "services: {svcs_after:?}"
    );
    // Quiet: a Running job with nothing happening is not written to.
    let rv = jobs(&ctx).get("j0").await?.metadata.resource_version;
    // Killed mid-way through a second batch and restarted: status carries on, names keep one uid.
    for i in 20..30 {
        create(&ctx, job(&format!("j{i}"), &reps(), json!({}))).await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut op = op;
    op.proc.signal(SIGKILL);
    tokio::task::block_in_place(|| op.proc.wait_exit(Duration::from_secs(5)));
    let op2 = Operator::start(&ctx, &[])?;
    for i in 0..30 {
        wait_job(&ctx, &format!("j{i}"), T, "Running", |j| is(j, ConditionType::Running))
            .await
            .with_context(|| op2.log_tail())?;
    }
    tokio::time::sleep(Duration::from_secs(30)).await;
    ensure!(
        jobs(&ctx).get("j0").await?.metadata.resource_version == rv,
        "a quiet Running job was written to"
    );
    let multi = uids.reused_names();
    ensure!(multi.is_empty(), "pod names with more than one uid: {multi:?}");
    // Each event once, no repeat series. A job of the batch the kill interrupted may miss an
    // event the killed process had not published yet, but never gets one twice.
    for (name, exact) in [("j0", true), ("j25", false)] {
        let evs = events(&ctx, name).await?;
        ensure!(evs.iter().all(|(_, n)| *n == 1), "{name}: repeated events {evs:?}");
        for (reason, want) in [
            ("TFJobCreated", 1),
            ("TFJobRunning", 1),
            ("SuccessfulCreatePod", 2),
            ("SuccessfulCreateService", 2),
        ] {
            let n = evs.iter().filter(|(r, _)| r == reason).count();
            ensure!(if exact { n == want } else { n <= want }, "{name}: {reason} {n} times: {evs:?}");
        }
    }
    Ok(())
}
