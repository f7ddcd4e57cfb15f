//! The job's PodGroup through its life: it follows suspend, finish and deletion; a resume
//! waits for the old one to go; a name someone else's PodGroup holds stops the pods; a job
//! started without gang scheduling is left so until it has no pods.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tfjob_operator::api::ConditionType;
use tfjob_operator::api::PodGroup;

use super::{NATIVE, foreign_pod_group, pod_groups};
use crate::Ctx;
use crate::support::*;

pub(super) async fn gang_pod_group_follows_suspend_finish_and_deletion(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[NATIVE])?;
    let groups = pod_groups(&ctx);
    // Running, then suspended: the PodGroup goes with the pods.
    create(&ctx, job("s", &[replica("Worker", 2)], json!({}))).await?;
    let g = wait_for(&groups, "s", WAIT, "the PodGroup", |_| true).await.with_context(|| op.log_tail())?;
    ensure!(g.min_count() == Some(2), "{g:?}");
    wait_job(&ctx, "s", WAIT, "Running", |j| has_condition(j, ConditionType::Running)).await?;
    merge_patch_job(&ctx, "s", json!({"spec": {"runPolicy": {"suspend": true}}})).await?;
    wait_gone(&groups, "s", WAIT).await.context("suspended: the PodGroup stays")?;
    // Resumed: a new one, and the pods run again.
    merge_patch_job(&ctx, "s", json!({"spec": {"runPolicy": {"suspend": false}}})).await?;
    let again = wait_for(&groups, "s", WAIT, "the PodGroup again", |_| true).await?;
    ensure!(again.metadata.uid != g.metadata.uid, "the same PodGroup");
    wait_job(&ctx, "s", WAIT, "running again", |j| {
        has_condition(j, ConditionType::Running) && !has_condition(j, ConditionType::Suspended)
    })
    .await?;
    // The TFJob's deletion: the garbage collector removes the PodGroup (owner reference).
    jobs(&ctx).delete("s", &DeleteParams::background()).await?;
    wait_gone(&groups, "s", Duration::from_secs(90)).await.context("deleted TFJob: the PodGroup stays")?;

    // Finished: the PodGroup goes, the pods stay (cleanPodPolicy None).
    let extra = json!({"runPolicy": {"cleanPodPolicy": "None"}});
    create(&ctx, job("f", &[replica("Worker", 1).fate(succeed("2s"))], extra)).await?;
    wait_for(&groups, "f", WAIT, "the PodGroup", |_| true).await?;
    wait_job(&ctx, "f", WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded)).await?;
    wait_gone(&groups, "f", WAIT).await.context("finished: the PodGroup stays")?;
    ensure!(live_pods(&ctx).await?.contains(&"f-worker-0".to_string()), "the pod was deleted");
    for reason in ["SuccessfulCreatePodGroup", "SuccessfulDeletePodGroup"] {
        eventually(WAIT, reason, || async {
            ensure!(count_events(&ctx, "f", reason).await? == 1, "{:?}", events(&ctx, "f").await?);
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// A finalizer of the test's, holding the job's old PodGroup terminating.
const HOLD: &str = "tfjob.test/hold";

/// Adds (`hold`) or removes [`HOLD`] from the PodGroup's finalizers, as they are now.
async fn hold(groups: &Api<PodGroup>, name: &str, hold: bool) -> Result<()> {
    let mut finalizers = groups.get(name).await?.metadata.finalizers.unwrap_or_default();
    finalizers.retain(|f| f != HOLD);
    if hold {
        finalizers.push(HOLD.into());
    }
    let patch = json!({"metadata": {"finalizers": finalizers}});
    groups.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

pub(super) async fn gang_resume_waits_for_the_jobs_terminating_pod_group(ctx: Ctx) -> Result<()> {
    use crate::suspend::{Recorder, rv_of};
    let op = Operator::start(&ctx, &[NATIVE])?;
    let groups = pod_groups(&ctx);
    // With a grace period, a deleted pod stays terminating for 4 s (kwok's stage reads the
    // annotation): time enough to resume before the old pods end, even on a loaded machine.
    let mut j = job("r", &[replica("Worker", 2)], json!({}));
    j["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(30);
    j["spec"]["tfReplicaSpecs"]["Worker"]["template"]["metadata"]["annotations"]["kwok.test/terminate-for"] =
        json!("4s");
    create(&ctx, j).await?;
    let old = wait_for(&groups, "r", WAIT, "the PodGroup", |_| true).await.with_context(|| op.log_tail())?;
    wait_job(&ctx, "r", WAIT, "Running", |j| has_condition(j, ConditionType::Running)).await?;
    // kube-controller-manager keeps a PodGroup terminating while pods of it remain (its
    // podgroup-protection finalizer); a finalizer of the test's keeps it so for as long as the
    // test needs.
    hold(&groups, "r", true).await?;
    let (pod_watch, group_watch) =
        (Recorder::start(pods(&ctx)).await?, Recorder::start(groups.clone()).await?);
    merge_patch_job(&ctx, "r", json!({"spec": {"runPolicy": {"suspend": true}}})).await?;
    watch_until(&groups, "r", WAIT, "the PodGroup terminating", |g| g.metadata.deletion_timestamp.is_some())
        .await
        .with_context(|| op.log_tail())?;
    // Resumed at once, while the old pods still end (kwok ends them 4 s after their delete).
    let resumed =
        rv_of(&merge_patch_job(&ctx, "r", json!({"spec": {"runPolicy": {"suspend": false}}})).await?);
    assert_stays(Duration::from_secs(5), "nothing created while the job's PodGroup terminates", || async {
        let g = groups.get("r").await?;
        ensure!(g.metadata.uid == old.metadata.uid && g.metadata.deletion_timestamp.is_some(), "{g:?}");
        let pods = live_pods(&ctx).await?;
        ensure!(pods.is_empty(), "pods {pods:?} created to join the PodGroup being deleted");
        Ok(())
    })
    .await
    .with_context(|| op.log_tail())?;
    let gone_after: Vec<_> = pod_watch
        .events()?
        .into_iter()
        .filter(|e| e.kind == "DELETED" && e.rv() > resumed)
        .filter_map(|e| e.obj.metadata.name)
        .collect();
    ensure!(!gone_after.is_empty(), "every old pod was gone before the resume: not the case under test");

    // The old PodGroup goes: a new one, then the pods, which run.
    hold(&groups, "r", false).await?;
    let new = wait_for(&groups, "r", WAIT, "a new PodGroup", |g| g.metadata.uid != old.metadata.uid).await?;
    wait_job(&ctx, "r", WAIT, "running again", |j| {
        has_condition(j, ConditionType::Running) && !has_condition(j, ConditionType::Suspended)
    })
    .await?;
    let groups_seen = group_watch.events()?;
    let created = groups_seen.iter().find(|e| e.kind == "ADDED" && e.obj.metadata.uid == new.metadata.uid);
    let created = created.context("the new PodGroup's creation was not seen")?.rv();
    let old_gone = groups_seen.iter().find(|e| e.kind == "DELETED").context("the old PodGroup's end")?.rv();
    let new_pods: Vec<_> =
        pod_watch.events()?.into_iter().filter(|e| e.kind == "ADDED" && e.rv() > resumed).collect();
    ensure!(
        new_pods.len() == 2,
        "pods of the resumed run: {:?}",
        new_pods.iter().map(|e| e.rv()).collect::<Vec<_>>()
    );
    for p in &new_pods {
        ensure!(
            p.rv() > created && created > old_gone,
            "pod {:?} (rv {}) before the new PodGroup (rv {created}, old gone at {old_gone})",
            p.obj.metadata.name,
            p.rv()
        );
    }
    let n = count_events(&ctx, "r", "SuccessfulCreatePodGroup").await?;
    ensure!(n == 2, "{n} SuccessfulCreatePodGroup events: {:?}", events(&ctx, "r").await?);
    Ok(())
}

pub(super) async fn gang_pod_group_that_cannot_be_created_stops_the_pods(ctx: Ctx) -> Result<()> {
    // Someone else's PodGroup holds the job's name.
    let foreign = foreign_pod_group("x");
    pod_groups(&ctx).create(&PostParams::default(), &foreign).await?;
    let op = Operator::start(&ctx, &[NATIVE])?;
    create(&ctx, job("x", &[replica("Worker", 2)], json!({}))).await?;
    let j = wait_job(&ctx, "x", WAIT, "ReplicaFailure", |j| has_condition(j, ConditionType::ReplicaFailure))
        .await
        .with_context(|| op.log_tail())?;
    let msg = j
        .status
        .as_ref()
        .and_then(|s| s.condition(ConditionType::ReplicaFailure))
        .and_then(|c| c.message.clone());
    ensure!(
        msg.as_deref().is_some_and(|m| m.contains("PodGroup x already exists and is not controlled")),
        "{msg:?}"
    );
    // Events are published by their own task, so the condition may be seen first.
    eventually(Duration::from_secs(10), "a FailedCreatePodGroup event", || async {
        ensure!(
            count_events(&ctx, "x", "FailedCreatePodGroup").await? >= 1,
            "{:?}",
            events(&ctx, "x").await?
        );
        Ok(())
    })
    .await?;
    assert_stays(Duration::from_secs(5), "no pods without the gang", || async {
        let p = live_pods(&ctx).await?;
        ensure!(p.is_empty(), "pods {p:?}");
        Ok(())
    })
    .await?;
    // Gone: the job's own PodGroup, then its pods.
    pod_groups(&ctx).delete("x", &DeleteParams::default()).await?;
    let g = wait_for(&pod_groups(&ctx), "x", Duration::from_secs(90), "the job's own PodGroup", |g| {
        g.metadata.owner_references.is_some()
    })
    .await?;
    ensure!(g.min_count() == Some(2), "{g:?}");
    wait_job(&ctx, "x", Duration::from_secs(90), "Running", |j| has_condition(j, ConditionType::Running))
        .await?;
    Ok(())
}

/// The operator switched from `none` to `native` while a job runs: the job gets no PodGroup
/// while its pods live, and a pod re-created meanwhile is scheduled alone (in a gang its
/// running peer is not part of, it would wait forever); after a suspension it is a gang.
pub(super) async fn gang_a_job_started_without_it_is_left_so_until_it_has_no_pods(ctx: Ctx) -> Result<()> {
    let mut op = Operator::start(&ctx, &[])?;
    create(&ctx, job("old", &[replica("Worker", 2)], json!({}))).await?;
    wait_job(&ctx, "old", WAIT, "Running", |j| has_condition(j, ConditionType::Running)).await?;
    op.proc.stop(Duration::from_secs(10));
    let op = Operator::start_as(&ctx, "tfjob-operator-native", &ctx.cluster.kubeconfig, &[NATIVE])?;
    let before = pods(&ctx).get("old-worker-1").await?.metadata.uid;
    pods(&ctx).delete("old-worker-1", &DeleteParams::default()).await?;
    let bound = |p: &Pod| p.metadata.uid != before && p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    let p = wait_for(&pods(&ctx), "old-worker-1", WAIT, "re-created and bound", bound)
        .await
        .with_context(|| op.log_tail())?;
    ensure!(p.spec.and_then(|s| s.scheduling_group).is_none(), "the new pod joined a gang");
    ensure!(pod_groups(&ctx).get_opt("old").await?.is_none(), "a PodGroup for a job started without one");
    merge_patch_job(&ctx, "old", json!({"spec": {"runPolicy": {"suspend": true}}})).await?;
    wait_job(&ctx, "old", WAIT, "Suspended", |j| has_condition(j, ConditionType::Suspended)).await?;
    merge_patch_job(&ctx, "old", json!({"spec": {"runPolicy": {"suspend": false}}})).await?;
    let g = wait_for(&pod_groups(&ctx), "old", WAIT, "the PodGroup after the resume", |_| true).await?;
    ensure!(g.min_count() == Some(2), "{g:?}");
    eventually(WAIT, "both pods in the gang and bound", || async {
        let all = pods(&ctx).list(&ListParams::default()).await?.items;
        let members = all
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.spec.as_ref().is_some_and(|s| {
                    s.node_name.is_some()
                        && s.scheduling_group.as_ref().and_then(|g| g.pod_group_name.as_deref())
                            == Some("old")
                })
            })
            .count();
        ensure!(members == 2, "{members} bound members");
        Ok(())
    })
    .await
}
