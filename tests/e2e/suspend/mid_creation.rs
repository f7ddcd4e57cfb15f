//! A 300-replica job suspended mid-creation: no further batch after the stored suspension,
//! and `active: 0` only after a delete of every pod it had, both by resourceVersion.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use tfjob_operator::api::{ConditionType, TFJob};

use super::{Recorder, Seen, all_inactive, rv_of};
use crate::Ctx;
use crate::support::*;

/// The most creates of one job in flight at once (one slow-start batch): those sent before the
/// operator saw a suspension may land after it.
const ONE_BATCH: usize = 16;

/// The pods the watch saw added: resourceVersion and name, in the order they came.
fn added(events: &[Seen<Pod>]) -> Vec<(u64, Option<String>)> {
    events
        .iter()
        .filter(|e| e.kind == "ADDED")
        .map(|e| (e.rv(), e.obj.metadata.name.clone()))
        .collect::<Vec<_>>()
}

/// The stored suspension: its resourceVersion, the job once Suspended with active 0, and how
/// long that took after the patch.
struct Suspension {
    at: u64,
    job: TFJob,
    to_inactive: Duration,
}

/// Suspends "big" and waits until it shows Suspended and active 0, then until its pods are
/// gone.
async fn suspend(ctx: &Ctx, op: &Operator) -> Result<Suspension> {
    let clock = Instant::now();
    let suspended = merge_patch_job(ctx, "big", json!({"spec": {"runPolicy": {"suspend": true}}})).await?;
    let at = rv_of(&suspended);
    let (_, job) = watch_until(&jobs(ctx), "big", WAIT, "Suspended, active 0", |j| {
        has_condition(j, ConditionType::Suspended) && all_inactive(j)
    })
    .await
    .with_context(|| op.log_tail())?;
    let to_inactive = clock.elapsed();
    wait_pods(ctx, &[], WAIT).await?;
    Ok(Suspension { at, job, to_inactive })
}

/// `active: 0` (the first version after the suspension to show it) comes after a delete of
/// every pod the job had.
fn active_0_after_every_delete(
    job_events: Vec<Seen<TFJob>>,
    pods_seen: &[Seen<Pod>],
    created: &[(u64, Option<String>)],
    at: u64,
) -> Result<()> {
    let zero = job_events.into_iter().find(|e| e.rv() > at && all_inactive(&e.obj));
    let zero = zero.context("no version after the suspension showed active 0")?;
    ensure!(
        has_condition(&zero.obj, ConditionType::Suspended),
        "active 0 without Suspended: {:?}",
        zero.obj.status
    );
    let undeleted: Vec<_> = created
        .iter()
        .filter(|(_, name)| {
            let deleted = pods_seen.iter().find(|e| e.obj.metadata.name == *name && e.deleting());
            deleted.is_none_or(|d| d.rv() > zero.rv())
        })
        .collect();
    let first: Vec<_> = undeleted.iter().take(5).collect();
    ensure!(
        undeleted.is_empty(),
        "active 0 (rv {}) before a delete of {} pods, first {first:?}",
        zero.rv(),
        undeleted.len()
    );
    Ok(())
}

pub async fn a_300_replica_job_suspended_mid_creation_gets_no_further_batch_and_active_0_after_its_deletes(
    ctx: Ctx,
) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    let (pod_watch, job_watch) = (Recorder::start(pods(&ctx)).await?, Recorder::start(jobs(&ctx)).await?);
    create(&ctx, job("big", &[replica("PS", 1), replica("Worker", 299)], json!({}))).await?;
    // Mid-creation: the 300 services are there and the pods' batches of 16 have begun.
    eventually(WAIT, "20 pods created", || async {
        let n = added(&pod_watch.events()?).len();
        ensure!(n >= 20, "{n} pods");
        Ok(())
    })
    .await
    .with_context(|| op.log_tail())?;
    let Suspension { at, job: j, to_inactive } = suspend(&ctx, &op).await?;

    // No batch after the suspension: only the one in flight when it landed.
    let pods_seen = pod_watch.events()?;
    let created = added(&pods_seen);
    let (before, after): (Vec<_>, Vec<_>) = created.iter().partition(|(rv, _)| *rv < at);
    let first: Vec<_> = after.iter().take(5).collect();
    ensure!(
        after.len() <= ONE_BATCH,
        "{} pods created after the stored suspend (rv {at}), first {first:?}",
        after.len()
    );
    ensure!(
        before.len() >= 20 && created.len() < 300,
        "{} pods before the suspend, {} in all",
        before.len(),
        created.len()
    );
    active_0_after_every_delete(job_watch.events()?, &pods_seen, &created, at)?;
    ensure!(has_condition(&j, ConditionType::Suspended) && all_inactive(&j));
    println!(
        "    suspended mid-creation: {} pods before the suspend, {} after it (the batch in flight); active 0 {:.0} ms \
         after the patch, after {} pod deletes",
        before.len(),
        after.len(),
        to_inactive.as_secs_f64() * 1e3,
        created.len()
    );
    Ok(())
}
