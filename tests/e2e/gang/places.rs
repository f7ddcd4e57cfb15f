//! Where gangs land on the test's own node, and how fast: two jobs on six places run one
//! after the other (and deadlock without gang scheduling), `minAvailable` places part of a
//! job, and the binding time of gangs of 4 and 64.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use serde_json::json;
use tfjob_operator::api::ConditionType;

use super::timeline::{PodWatch, eventually_timeline, two_gated_jobs, ungate_alternating};
use super::{NATIVE, on_own_node, placed, pod_groups};
use crate::Ctx;
use crate::support::*;

pub(super) async fn gang_two_jobs_on_six_places_run_one_after_the_other(ctx: Ctx) -> Result<()> {
    on_own_node(&ctx, two_jobs_native(&ctx)).await
}

async fn two_jobs_native(ctx: &Ctx) -> Result<()> {
    let op = Operator::start(ctx, &[NATIVE])?;
    let watch = two_gated_jobs(ctx, succeed("5s")).await.with_context(|| op.log_tail())?;
    // One PodGroup per job, owned by it, a gang of all its pods; every pod names it.
    for name in ["a", "b"] {
        let g = wait_for(&pod_groups(ctx), name, WAIT, "the job's PodGroup", |_| true).await?;
        ensure!(g.min_count() == Some(4), "{g:?}");
        let owner = g.metadata.owner_references.clone().unwrap_or_default();
        let uid = jobs(ctx).get(name).await?.metadata.uid;
        ensure!(
            owner.len() == 1 && owner[0].controller == Some(true) && Some(&owner[0].uid) == uid.as_ref(),
            "{owner:?}"
        );
    }
    for p in pods(ctx).list(&ListParams::default()).await?.items {
        let group = p.spec.and_then(|s| s.scheduling_group).and_then(|g| g.pod_group_name);
        let job = p.metadata.name.unwrap_or_default().split("-worker-").next().map(String::from);
        ensure!(group == job, "pod of {job:?} names PodGroup {group:?}");
    }
    ungate_alternating(ctx, ["a", "b"], 4).await?;
    let (ta, tb) = (Duration::from_secs(120), Duration::from_secs(120));
    wait_job(ctx, "a", ta, "a Succeeded", |j| has_condition(j, ConditionType::Succeeded))
        .await
        .with_context(|| op.log_tail())?;
    wait_job(ctx, "b", tb, "b Succeeded", |j| has_condition(j, ConditionType::Succeeded))
        .await
        .with_context(|| op.log_tail())?;
    let timeline = watch.timeline();
    let partial = timeline.all_or_nothing(4, Instant::now())?;
    println!("gang of 4: the longest partial binding seen took {:.0} ms", partial.as_secs_f64() * 1000.0);
    // One ran, then the other: the second was bound only after the first had pods succeed
    // (before that, only 2 places were free).
    let bound = |j| timeline.first(j, |node, _| node.is_some()).context("never bound");
    let done = |j| timeline.first(j, |_, phase| phase == "Succeeded").context("never succeeded");
    let (first, second) = if bound("a")? <= bound("b")? { ("a", "b") } else { ("b", "a") };
    ensure!(bound(second)? >= done(first)?, "{second} was bound before any pod of {first} succeeded");
    // Finished: the PodGroups are gone, the pods (cleanPodPolicy None) stay.
    for name in ["a", "b"] {
        wait_gone(&pod_groups(ctx), name, WAIT).await?;
    }
    ensure!(live_pods(ctx).await?.len() == 8);
    Ok(())
}

pub(super) async fn gang_none_two_jobs_on_six_places_deadlock(ctx: Ctx) -> Result<()> {
    on_own_node(&ctx, two_jobs_none(&ctx)).await
}

async fn two_jobs_none(ctx: &Ctx) -> Result<()> {
    let _op = Operator::start(ctx, &["--gang-scheduling=none"])?;
    // A TensorFlow worker does not finish before all its peers run; kwok's pods cannot wait
    // for peers, so here they run until deleted (with gang scheduling they succeed after 5 s,
    // which only lets that test end).
    let watch = two_gated_jobs(ctx, json!({})).await?;
    ensure!(
        pod_groups(ctx).list(&ListParams::default()).await?.items.is_empty(),
        "a PodGroup without gang scheduling"
    );
    ungate_alternating(ctx, ["a", "b"], 4).await?;
    let bound = |p: &Pod| p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    let split = || async {
        let all = pods(ctx).list(&ListParams::default()).await?.items;
        let count = |j: &str| {
            all.iter().filter(|p| p.metadata.name.as_deref().unwrap_or("").starts_with(j) && bound(p)).count()
        };
        Ok::<_, anyhow::Error>((count("a-"), count("b-")))
    };
    eventually(WAIT, "3 pods of each job bound", || async {
        let s = split().await?;
        ensure!(s == (3, 3), "bound {s:?}");
        Ok(())
    })
    .await?;
    // The deadlock: each job holds half the node and waits for the other forever.
    assert_stays(Duration::from_secs(10), "3 + 3 bound, 2 Pending", || async {
        let s = split().await?;
        ensure!(s == (3, 3), "bound {s:?}");
        for j in ["a", "b"] {
            ensure!(!has_condition(&jobs(ctx).get(j).await?, ConditionType::Succeeded), "{j} succeeded");
        }
        Ok(())
    })
    .await?;
    // The check that passes with gang scheduling fails here: this run can fail it.
    let err = watch.timeline().all_or_nothing(4, Instant::now()).err().context("no partial gang seen")?;
    ensure!(err.to_string().contains("of its 4 pods bound for"), "{err}");
    Ok(())
}

pub(super) async fn gang_min_available_places_part_of_the_job(ctx: Ctx) -> Result<()> {
    on_own_node(&ctx, min_available(&ctx)).await
}

/// Pods of 30 CPUs: 2 fit on the node. A gang of all 4 gets none; `minAvailable: 2` gets 2.
async fn min_available(ctx: &Ctx) -> Result<()> {
    let op = Operator::start(ctx, &[NATIVE])?;
    let bound_of = |job: &'static str| async move {
        let all = pods(ctx).list(&ListParams::default()).await?.items;
        Ok::<_, anyhow::Error>(
            all.iter()
                .filter(|p| p.metadata.name.as_deref().unwrap_or("").starts_with(&format!("{job}-")))
                .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
                .count(),
        )
    };
    create(ctx, placed(ctx, "all", 4, "30", json!({}), json!({}), false)).await?;
    wait_pods(ctx, &["all-worker-0", "all-worker-1", "all-worker-2", "all-worker-3"], WAIT)
        .await
        .with_context(|| op.log_tail())?;
    assert_stays(Duration::from_secs(8), "a gang of 4 where 2 fit: none bound", || async {
        let n = bound_of("all").await?;
        ensure!(n == 0, "{n} bound");
        Ok(())
    })
    .await?;
    jobs(ctx).delete("all", &DeleteParams::foreground()).await?;
    wait_job_gone(ctx, "all", WAIT).await?;
    eventually(WAIT, "the first job's pods gone", || async {
        ensure!(live_pods(ctx).await?.is_empty());
        Ok(())
    })
    .await?;

    create(
        ctx,
        placed(ctx, "part", 4, "30", json!({}), json!({"schedulingPolicy": {"minAvailable": 2}}), false),
    )
    .await?;
    let g = wait_for(&pod_groups(ctx), "part", WAIT, "the PodGroup", |_| true).await?;
    ensure!(g.min_count() == Some(2), "{g:?}");
    eventually(WAIT, "2 of 4 bound", || async {
        let n = bound_of("part").await?;
        ensure!(n == 2, "{n} bound");
        Ok(())
    })
    .await?;
    assert_stays(Duration::from_secs(5), "2 bound, 2 Pending", || async {
        let n = bound_of("part").await?;
        ensure!(n == 2, "{n} bound");
        Ok(())
    })
    .await
}

pub(super) async fn gang_binding_time_of_4_and_64_pods(ctx: Ctx) -> Result<()> {
    on_own_node(&ctx, binding_times(&ctx)).await
}

/// From the watch: the last pod's creation to all its pods bound, for gangs of 4 and 64
/// (1-CPU pods: 64 fill the node).
async fn binding_times(ctx: &Ctx) -> Result<()> {
    let op = Operator::start(ctx, &[NATIVE])?;
    for (name, n) in [("g4", 4usize), ("g64", 64)] {
        let watch = PodWatch::start(ctx);
        create(ctx, placed(ctx, name, n as i32, "1", json!({}), json!({}), false)).await?;
        let timeline = eventually_timeline(&watch, name, n).await.with_context(|| op.log_tail())?;
        let prefix = format!("{name}-worker-");
        let mine = || timeline.events.iter().filter(|e| e.1.starts_with(&prefix));
        let mut first_seen: BTreeMap<&str, Instant> = BTreeMap::new();
        for e in mine() {
            first_seen.entry(e.1.as_str()).or_insert(e.0);
        }
        let last_created = first_seen.values().max().copied().context("no pods")?;
        let mut bound_at: BTreeMap<&str, Instant> = BTreeMap::new();
        for e in mine().filter(|e| e.2.is_some()) {
            bound_at.entry(e.1.as_str()).or_insert(e.0);
        }
        let all_bound = bound_at.values().max().copied().context("none bound")?;
        let first_bound = bound_at.values().min().copied().context("none bound")?;
        ensure!(first_bound >= last_created, "{name}: a pod was bound before the last was created");
        let took = all_bound.saturating_duration_since(last_created);
        println!(
            "gang binding time: {n} pods: last pod created -> all bound {:.0} ms (first to last binding {:.0} ms)",
            took.as_secs_f64() * 1000.0,
            all_bound.duration_since(first_bound).as_secs_f64() * 1000.0
        );
        ensure!(took < Duration::from_secs(60), "{name}: {took:?}");
        jobs(ctx).delete(name, &DeleteParams::foreground()).await?;
        wait_job_gone(ctx, name, Duration::from_secs(120)).await?;
        eventually(Duration::from_secs(120), "the pods gone", || async {
            ensure!(live_pods(ctx).await?.is_empty());
            Ok(())
        })
        .await?;
    }
    Ok(())
}
