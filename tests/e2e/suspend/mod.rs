//! `runPolicy.suspend` and `managedBy` end to end, without Kueue: a job created suspended and
//! resumed with the scheduling directives Kueue would add, a running job suspended (pods and
//! services gone, `active: 0` at once, timed) and resumed without re-running a succeeded
//! worker, a 300-replica job suspended mid-creation (no further batch, `active: 0` only after
//! every pod delete, both by resourceVersion), a MultiKueue job left alone, and the grown
//! update contract through the API server.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tfjob_operator::api::rules::CONTRACT;
use tfjob_operator::api::{ConditionType, ReplicaType, TFJob};
use tfjob_testsupport::kwok_pod_spec;

use crate::support::*;
use crate::{Ctx, Test, test};

mod mid_creation;
mod recorder;

use mid_creation::a_300_replica_job_suspended_mid_creation_gets_no_further_batch_and_active_0_after_its_deletes;
pub use recorder::{Recorder, Seen, rv_of};

pub fn tests() -> Vec<Test> {
    vec![
        test!(created_suspended_then_resumed_with_kueue_style_templates),
        test!(suspending_a_running_job_frees_it_at_once_and_resume_skips_succeeded_workers).serial(),
        test!(a_300_replica_job_suspended_mid_creation_gets_no_further_batch_and_active_0_after_its_deletes)
            .serial(),
        test!(a_multikueue_job_is_left_alone),
        test!(template_directives_change_only_while_suspended),
    ]
}

fn condition(j: &TFJob, c: ConditionType) -> Option<(String, String)> {
    let c = j.status.as_ref()?.condition(c)?;
    Some((c.status.as_str().to_string(), c.reason.clone().unwrap_or_default()))
}

fn all_inactive(j: &TFJob) -> bool {
    j.status
        .as_ref()
        .is_some_and(|s| !s.replica_statuses.is_empty() && s.replica_statuses.values().all(|r| r.active == 0))
}

/// The directives Kueue's admission adds to a template (the kwok placement kept): a label, an
/// annotation (here a kwok fate), a node selector every kwok node matches and a toleration.
fn admission(fate: Value) -> Value {
    let mut annotations = fate;
    annotations["example.com/admitted"] = json!("yes");
    let mut tolerations = kwok_pod_spec()["tolerations"].clone();
    if let Some(t) = tolerations.as_array_mut() {
        t.push(json!({"key": "example.com/flavor", "operator": "Exists", "effect": "NoSchedule"}));
    }
    json!({
        "metadata": {"labels": {"kueue.x-k8s.io/podset": "worker"}, "annotations": annotations},
        "spec": {"nodeSelector": {"kubernetes.io/os": "linux"}, "tolerations": tolerations}
    })
}

async fn created_suspended_then_resumed_with_kueue_style_templates(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    let extra = json!({"runPolicy": {"suspend": true, "activeDeadlineSeconds": 10}});
    create(&ctx, job("s", &[replica("Worker", 1)], extra)).await?;
    let j = wait_job(&ctx, "s", WAIT, "Suspended", |j| has_condition(j, ConditionType::Suspended))
        .await
        .with_context(|| op.log_tail())?;
    ensure!(condition(&j, ConditionType::Created).is_some_and(|c| c.0 == "True"), "{:?}", j.status);
    ensure!(condition(&j, ConditionType::Suspended) == Some(("True".into(), "TFJobSuspended".into())));
    // Suspended for longer than the deadline: no pods, services or clock.
    assert_stays(Duration::from_secs(11), "no pods, services or clock while suspended", || async {
        let (p, s) = (live_pods(&ctx).await?, service_names(&ctx).await?);
        ensure!(p.is_empty() && s.is_empty(), "pods {p:?}, services {s:?}");
        let j = jobs(&ctx).get("s").await?;
        let st = j.status.clone().unwrap_or_default();
        ensure!(st.start_time.is_none() && st.deadline.is_none(), "clock runs: {st:?}");
        ensure!(!st.is_finished(), "finished while suspended: {st:?}");
        Ok(())
    })
    .await?;
    // Kueue's admission: one merge patch resumes and adds the directives.
    let resumed_at = Timestamp::now();
    let patch = json!({"spec": {"runPolicy": {"suspend": false},
        "tfReplicaSpecs": {"Worker": {"template": admission(succeed("4s"))}}}});
    merge_patch_job(&ctx, "s", patch).await?;
    let j = wait_job(&ctx, "s", WAIT, "resumed", |j| {
        condition(j, ConditionType::Suspended).is_some_and(|c| c.0 == "False")
    })
    .await?;
    ensure!(condition(&j, ConditionType::Suspended) == Some(("False".into(), "TFJobResumed".into())));
    let st = j.status.clone().unwrap_or_default();
    let start = st.start_time.clone().context("no startTime after the resume")?.0;
    ensure!(
        start >= resumed_at - SignedDuration::from_secs(1) && start <= Timestamp::now(),
        "startTime {start} is not the resume ({resumed_at})"
    );
    ensure!(
        st.deadline.as_ref().map(|d| d.0) == Some(start + SignedDuration::from_secs(10)),
        "deadline {st:?}"
    );
    let pod = eventually_pod(&ctx, "s-worker-0").await?;
    let (meta, spec) = (&pod.metadata, pod.spec.clone().unwrap_or_default());
    ensure!(
        meta.labels.as_ref().is_some_and(|l| l.get("kueue.x-k8s.io/podset").is_some_and(|v| v == "worker"))
    );
    ensure!(meta.annotations.as_ref().is_some_and(|a| a.contains_key("example.com/admitted")));
    ensure!(spec.node_selector.is_some_and(|n| n.get("kubernetes.io/os").is_some_and(|v| v == "linux")));
    ensure!(
        spec.tolerations.unwrap_or_default().iter().any(|t| t.key.as_deref() == Some("example.com/flavor"))
    );
    // Suspended for 11 s and then run for 4 s: within the deadline counted from the resume.
    let j =
        wait_job(&ctx, "s", WAIT, "finished", |j| j.status.as_ref().is_some_and(|s| s.is_finished())).await?;
    ensure!(has_condition(&j, ConditionType::Succeeded), "not Succeeded: {:?}", j.status);
    for reason in ["TFJobSuspended", "TFJobResumed"] {
        let n = count_events(&ctx, "s", reason).await?;
        ensure!(n == 1, "{n} {reason} events: {:?}", events(&ctx, "s").await?);
    }
    Ok(())
}

async fn eventually_pod(ctx: &Ctx, name: &str) -> Result<k8s_openapi::api::core::v1::Pod> {
    wait_for(&pods(ctx), name, WAIT, "to exist", |_| true).await
}

async fn suspending_a_running_job_frees_it_at_once_and_resume_skips_succeeded_workers(
    ctx: Ctx,
) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    let uids = UidWatch::start(&ctx);
    let extra = json!({"backoffLimit": 0, "cleanPodPolicy": "None"});
    let reps = [replica("PS", 1).restart("Never"), replica("Worker", 2).restart("Never")];
    create(&ctx, job("r", &reps, extra)).await?;
    wait_job(&ctx, "r", WAIT, "3 pods active", |j| {
        j.status.as_ref().is_some_and(|s| s.replica_statuses.values().map(|r| r.active).sum::<i32>() == 3)
    })
    .await
    .with_context(|| op.log_tail())?;
    annotate(&ctx, "r-worker-1", succeed("500ms")).await?;
    wait_job(&ctx, "r", WAIT, "worker 1 succeeded", |j| {
        j.status
            .as_ref()
            .and_then(|s| s.replica_statuses.get(&ReplicaType::Worker))
            .is_some_and(|w| w.completed_indexes.to_string() == "1")
    })
    .await?;

    // Suspend, timed from the patch to `active: 0` everywhere as a watch sees it.
    let api = jobs(&ctx);
    let watch =
        tokio::spawn(
            async move { watch_until(&api, "r", WAIT, "active 0 for every type", all_inactive).await },
        );
    // Not an assertion: gives the watch time to start before the patch it times.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (sent, clock) = (Timestamp::now(), Instant::now());
    merge_patch_job(&ctx, "r", json!({"spec": {"runPolicy": {"suspend": true}}})).await?;
    let patched = clock.elapsed();
    let (seen, j) = watch.await??;
    let to_inactive = seen.duration_since(sent);
    wait_pods(&ctx, &[], Duration::from_secs(10)).await?;
    let to_no_pods = clock.elapsed();
    wait_services(&ctx, &[], Duration::from_secs(10)).await?;
    println!(
        "suspend: patch answered in {:.0} ms; active 0 seen by a watch {:.0} ms after the patch was sent; \
         pods gone after {:.0} ms",
        patched.as_secs_f64() * 1e3,
        to_inactive.as_secs_f64() * 1e3,
        to_no_pods.as_secs_f64() * 1e3
    );
    ensure!(to_inactive < SignedDuration::from_secs(2), "active 0 took {to_inactive}");
    ensure!(has_condition(&j, ConditionType::Suspended), "active 0 came without Suspended: {:?}", j.status);
    ensure!(condition(&j, ConditionType::Running) == Some(("False".into(), "TFJobSuspended".into())));
    let st = j.status.clone().unwrap_or_default();
    ensure!(st.deadline.is_none() && !st.is_finished(), "{st:?}");
    // The deletions are no failure: with backoffLimit 0 and restartPolicy Never it stays suspended.
    assert_stays(Duration::from_secs(3), "suspended, no failure counted", || async {
        let j = jobs(&ctx).get("r").await?;
        let st = j.status.clone().unwrap_or_default();
        ensure!(!st.is_finished() && st.is_true(ConditionType::Suspended), "{st:?}");
        ensure!(st.replica_statuses.values().all(|r| r.restarts == 0 && r.failed == 0), "{st:?}");
        ensure!(live_pods(&ctx).await?.is_empty(), "pods came back");
        Ok(())
    })
    .await?;

    // Resume with worker 0 set to succeed: the job succeeds, worker 1 never runs again.
    let patch = json!({"spec": {"runPolicy": {"suspend": false},
        "tfReplicaSpecs": {"Worker": {"template": admission(succeed("1s"))}}}});
    merge_patch_job(&ctx, "r", patch).await?;
    let j = wait_job(&ctx, "r", WAIT, "finished", |j| j.status.as_ref().is_some_and(|s| s.is_finished()))
        .await
        .with_context(|| op.log_tail())?;
    ensure!(has_condition(&j, ConditionType::Succeeded), "not Succeeded: {:?}", j.status);
    let reused = uids.reused_names()?;
    ensure!(!reused.iter().any(|(n, _)| n == "r-worker-1"), "worker 1 ran again: {reused:?}");
    ensure!(reused.iter().any(|(n, _)| n == "r-worker-0"), "worker 0 was not re-created: {reused:?}");
    for reason in ["TFJobSuspended", "TFJobResumed"] {
        let n = count_events(&ctx, "r", reason).await?;
        ensure!(n == 1, "{n} {reason} events: {:?}", events(&ctx, "r").await?);
    }
    Ok(())
}

async fn a_multikueue_job_is_left_alone(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    let extra = json!({"runPolicy": {"managedBy": "kueue.x-k8s.io/multikueue"}, "backoffLimit": 1});
    create(&ctx, job("remote", &[replica("Worker", 1)], extra)).await?;
    // A job of our own in the same namespace shows the operator is at work meanwhile.
    create(&ctx, job("local", &[replica("Worker", 1)], json!({}))).await?;
    wait_job(&ctx, "local", WAIT, "Running", |j| has_condition(j, ConditionType::Running))
        .await
        .with_context(|| op.log_tail())?;
    assert_stays(Duration::from_secs(5), "the MultiKueue job left alone", || async {
        let j = jobs(&ctx).get("remote").await?;
        ensure!(j.status.is_none(), "status written: {:?}", j.status);
        let pods = live_pods(&ctx).await?;
        ensure!(pods == ["local-worker-0"], "pods {pods:?}");
        let services = service_names(&ctx).await?;
        ensure!(services == ["local-worker-0"], "services {services:?}");
        let evs = events(&ctx, "remote").await?;
        ensure!(evs.is_empty(), "events {evs:?}");
        Ok(())
    })
    .await
}

/// The refusal of an update, or an error if it was accepted.
async fn refused(ctx: &Ctx, name: &str, patch: Value) -> Result<(u16, String)> {
    match merge_patch_job(ctx, name, patch.clone()).await {
        Ok(_) => bail!("{name}: {patch} accepted"),
        Err(e) => match e.downcast_ref::<kube::Error>() {
            Some(kube::Error::Api(s)) => Ok((s.code, s.message.clone())),
            _ => bail!("{name}: not an API error: {e:#}"),
        },
    }
}

async fn template_directives_change_only_while_suspended(ctx: Ctx) -> Result<()> {
    // No operator: only the API server's rules are under test.
    create(&ctx, job("run", &[replica("Worker", 1)], json!({}))).await?;
    create(&ctx, job("held", &[replica("Worker", 1)], json!({"runPolicy": {"suspend": true}}))).await?;
    let directives = |tpl: Value| json!({"spec": {"tfReplicaSpecs": {"Worker": {"template": tpl}}}});
    let want = format!("spec.tfReplicaSpecs cannot be changed: {CONTRACT}");
    let selector = directives(json!({"spec": {"nodeSelector": {"kubernetes.io/os": "linux"}}}));
    let (code, msg) = refused(&ctx, "run", selector.clone()).await?;
    ensure!(code == 422 && msg.contains(&want), "running: {code} {msg}");
    // Suspended: added, changed and removed; the stored object shows each.
    let j = merge_patch_job(&ctx, "held", selector).await?;
    ensure!(
        j.spec.tf_replica_specs["Worker"]
            .template
            .spec
            .as_ref()
            .is_some_and(|s| s.node_selector.as_ref().is_some_and(|n| n.contains_key("kubernetes.io/os")))
    );
    merge_patch_job(&ctx, "held", directives(json!({"metadata": {"labels": {"a": "b"}}}))).await?;
    merge_patch_job(&ctx, "held", directives(json!({"metadata": {"labels": {"a": null}},
        "spec": {"nodeSelector": {"kubernetes.io/os": null}, "schedulingGates": [{"name": "example.com/gate"}]}})))
        .await?;
    // Kueue's stop: suspend and restore the templates in one patch, on a running job.
    merge_patch_job(
        &ctx,
        "run",
        json!({"spec": {"runPolicy": {"suspend": true},
        "tfReplicaSpecs": {"Worker": {"template": {"metadata": {"labels": {"x": "y"}}}}}}}),
    )
    .await
    .context("suspend with a template label refused")?;
    // Everything else stays fixed, also while suspended.
    let image = directives(json!({"spec": {"containers": [{"name": "tensorflow", "image": "other"}]}}));
    let (code, msg) = refused(&ctx, "held", image).await?;
    ensure!(code == 422 && msg.contains(&want), "suspended, image: {code} {msg}");
    let (code, msg) =
        refused(&ctx, "held", json!({"spec": {"tfReplicaSpecs": {"Worker": {"replicas": 2}}}})).await?;
    ensure!(code == 422 && msg.contains(&want), "suspended, replicas: {code} {msg}");
    let (code, msg) =
        refused(&ctx, "held", json!({"spec": {"runPolicy": {"managedBy": "kueue.x-k8s.io/multikueue"}}}))
            .await?;
    ensure!(
        code == 422 && msg.contains("spec.runPolicy.managedBy cannot be changed"),
        "managedBy: {code} {msg}"
    );
    Ok(())
}
