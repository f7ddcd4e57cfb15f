//! Timing, alone on the plane: activeDeadlineSeconds and ttlSecondsAfterFinished acted on at
//! their published instants, and no duplicate or idle writes across an operator restart.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use serde_json::json;
use tfjob_operator::api::{ConditionType, TFJob};
use tfjob_testsupport::bench::footprint;
use tfjob_testsupport::bench::stats::lateness;

use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        test!(active_deadline_set_at_create_is_exact).serial(),
        test!(active_deadline_shortened_into_the_past_acts_at_once).serial(),
        test!(active_deadline_lengthened_fails_at_the_new_instant).serial(),
        test!(active_deadline_removed_never_fails).serial(),
        test!(ttl_deletes_the_finished_job_then_its_pods_and_services).serial(),
        test!(ttl_lowered_deletes_at_the_new_instant).serial(),
        test!(ttl_raised_before_expiry_keeps_the_job).serial(),
        test!(ttl_added_after_finish_is_honoured).serial(),
        test!(no_duplicates_no_chatter).serial(),
    ]
}

fn failed(j: &TFJob) -> bool {
    has_condition(j, ConditionType::Failed)
}

fn deadline(j: &TFJob) -> Option<Timestamp> {
    status_time(j, |s| s.deadline.as_ref())
}

fn expires(j: &TFJob) -> Option<Timestamp> {
    status_time(j, |s| s.expires.as_ref())
}

/// A job with one worker that runs until something stops it.
fn runs_until_stopped(name: &str, spec_extra: serde_json::Value) -> serde_json::Value {
    job(name, &[replica("Worker", 1)], spec_extra)
}

/// The Failed condition's arrival must be 0-2 s past the deadline.
fn deadline_lateness_ok(at: Timestamp, deadline: Timestamp) -> Result<()> {
    let l = lateness(at, deadline);
    println!("    deadline lateness: {l:.3}s");
    ensure!((0.0..=2.0).contains(&l), "lateness {l:.3}s outside [0, 2]");
    Ok(())
}

async fn active_deadline_set_at_create_is_exact(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    create(&ctx, runs_until_stopped("ads", json!({"activeDeadlineSeconds": 4}))).await?;
    let (at, j) =
        watch_until(&jobs(&ctx), "ads", WAIT, "Failed", failed).await.with_context(|| op.log_tail())?;
    ensure!(last_reason(&j).as_deref() == Some("DeadlineExceeded"), "reason {:?}", last_reason(&j));
    deadline_lateness_ok(at, deadline(&j).context("published deadline")?)
}

/// Shortened into the past while running: fails within 2 s.
async fn active_deadline_shortened_into_the_past_acts_at_once(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    create(&ctx, runs_until_stopped("short", json!({"runPolicy": {"activeDeadlineSeconds": 600}}))).await?;
    wait_job(&ctx, "short", WAIT, "Running", |j| has_condition(j, ConditionType::Running))
        .await
        .with_context(|| op.log_tail())?;
    let t0 = Timestamp::now();
    merge_patch_job(&ctx, "short", json!({"spec": {"runPolicy": {"activeDeadlineSeconds": 1}}})).await?;
    let (at, j) = watch_until(&jobs(&ctx), "short", WAIT, "Failed", failed).await?;
    ensure!(last_reason(&j).as_deref() == Some("DeadlineExceeded"), "reason {:?}", last_reason(&j));
    ensure!(lateness(at, t0) < 2.0, "shortened deadline acted on after {:.2}s", lateness(at, t0));
    Ok(())
}

/// Lengthened: survives the old instant, fails at the new one.
async fn active_deadline_lengthened_fails_at_the_new_instant(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    create(&ctx, runs_until_stopped("long", json!({"activeDeadlineSeconds": 3}))).await?;
    let j = wait_job(&ctx, "long", WAIT, "deadline published", |j| deadline(j).is_some())
        .await
        .with_context(|| op.log_tail())?;
    let old = deadline(&j).context("deadline")?;
    merge_patch_job(&ctx, "long", json!({"spec": {"activeDeadlineSeconds": 7}})).await?;
    let (at, j) = watch_until(&jobs(&ctx), "long", WAIT, "Failed", failed).await?;
    let new = deadline(&j).context("deadline")?;
    ensure!(new.duration_since(old).as_secs() == 4, "deadline moved from {old} to {new}");
    deadline_lateness_ok(at, new)
}

/// Removed: the deadline is withdrawn and the job never fails, well past the old instant.
async fn active_deadline_removed_never_fails(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    create(&ctx, runs_until_stopped("gone", json!({"activeDeadlineSeconds": 3}))).await?;
    let j = wait_job(&ctx, "gone", WAIT, "deadline published", |j| deadline(j).is_some())
        .await
        .with_context(|| op.log_tail())?;
    let old = deadline(&j).context("deadline")?;
    merge_patch_job(&ctx, "gone", json!({"spec": {"activeDeadlineSeconds": null}})).await?;
    let until = |at: Timestamp| Duration::try_from(at.duration_since(Timestamp::now())).unwrap_or_default();
    let well_past = old.checked_add(SignedDuration::from_secs(5))?;
    let j =
        wait_job(&ctx, "gone", until(well_past), "the deadline withdrawn", |j| deadline(j).is_none()).await?;
    ensure!(!failed(&j), "removed deadline: {:?}", j.status);
    assert_stays(until(well_past), "the job without a deadline keeps running", || async {
        let j = jobs(&ctx).get("gone").await?;
        ensure!(!failed(&j) && deadline(&j).is_none(), "removed deadline: {:?}", j.status);
        Ok(())
    })
    .await
}

/// A finished job with a PS and a worker that succeeds after 1 s.
fn finishes(name: &str, spec_extra: serde_json::Value) -> serde_json::Value {
    job(name, &[replica("PS", 1), replica("Worker", 1).fate(succeed("1s"))], spec_extra)
}

/// The deletion's arrival must be 0-2.2 s past the expiry.
fn ttl_lateness_ok(at: Timestamp, expiry: Timestamp) -> Result<()> {
    let l = lateness(at, expiry);
    println!("    TTL lateness: {l:.3}s");
    ensure!((0.0..=2.2).contains(&l), "TTL lateness {l:.3}s");
    Ok(())
}

async fn ttl_deletes_the_finished_job_then_its_pods_and_services(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    create(&ctx, finishes("ttl", json!({"ttlSecondsAfterFinished": 3}))).await?;
    let j = wait_job(&ctx, "ttl", WAIT, "expiry published", |j| expires(j).is_some())
        .await
        .with_context(|| op.log_tail())?;
    let expiry = expires(&j).context("expires")?;
    let done = status_time(&j, |s| s.completion_time.as_ref()).context("completionTime")?;
    ensure!(expiry.duration_since(done).as_secs() == 3, "expires {expiry}, completed {done}");
    let at = wait_job_gone(&ctx, "ttl", WAIT).await?;
    ttl_lateness_ok(at, expiry)?;
    // Its pods and services are then garbage-collected.
    wait_pods(&ctx, &[], Duration::from_secs(90)).await.context("the deleted job's pods")?;
    wait_services(&ctx, &[], Duration::from_secs(60)).await.context("the deleted job's services")?;
    Ok(())
}

/// Lowered on a finished job: deleted at the new instant (at once if that has passed).
async fn ttl_lowered_deletes_at_the_new_instant(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    create(&ctx, finishes("lower", json!({"ttlSecondsAfterFinished": 600}))).await?;
    let j = wait_job(&ctx, "lower", WAIT, "expiry published", |j| expires(j).is_some())
        .await
        .with_context(|| op.log_tail())?;
    let done = status_time(&j, |s| s.completion_time.as_ref()).context("completionTime")?;
    merge_patch_job(&ctx, "lower", json!({"spec": {"ttlSecondsAfterFinished": 4}})).await?;
    let new_expiry = done.checked_add(SignedDuration::from_secs(4))?;
    let at = wait_job_gone(&ctx, "lower", Duration::from_secs(15)).await.context("the lowered TTL")?;
    ttl_lateness_ok(at, new_expiry)
}

/// Raised a moment before expiry: survives.
async fn ttl_raised_before_expiry_keeps_the_job(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    create(&ctx, finishes("raise", json!({"runPolicy": {"ttlSecondsAfterFinished": 3}}))).await?;
    let j = wait_job(&ctx, "raise", WAIT, "expiry published", |j| expires(j).is_some())
        .await
        .with_context(|| op.log_tail())?;
    let expiry = expires(&j).context("expires")?;
    let before = Duration::try_from(expiry.duration_since(Timestamp::now()))
        .unwrap_or_default()
        .saturating_sub(Duration::from_millis(800));
    // Not an assertion: waits until 0.8 s before the expiry, to raise the TTL just in time.
    tokio::time::sleep(before).await;
    merge_patch_job(&ctx, "raise", json!({"spec": {"ttlSecondsAfterFinished": 60}})).await?;
    assert_stays(Duration::from_secs(3), "a raised TTL keeps the job", || async {
        ensure!(jobs(&ctx).get_opt("raise").await?.is_some(), "raise was deleted");
        Ok(())
    })
    .await
}

/// Added after finish: honoured.
async fn ttl_added_after_finish_is_honoured(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[])?;
    create(&ctx, finishes("late", json!({}))).await?;
    wait_job(&ctx, "late", WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded))
        .await
        .with_context(|| op.log_tail())?;
    merge_patch_job(&ctx, "late", json!({"spec": {"ttlSecondsAfterFinished": 1}})).await?;
    wait_job_gone(&ctx, "late", Duration::from_secs(10)).await?;
    Ok(())
}

/// How many more POSTs answered `code` after than before.
fn more(after: &Posts, before: &Posts, code: &str) -> f64 {
    footprint::delta(after, before).get(code).copied().unwrap_or(0.0)
}

type Posts = BTreeMap<String, f64>;

/// The API server's POSTs of pods and of services so far, by response code.
async fn posts(ctx: &Ctx) -> Result<(Posts, Posts)> {
    Ok((apiserver_posts_by_code(ctx, "pods").await?, apiserver_posts_by_code(ctx, "services").await?))
}

async fn wait_all_running(ctx: &Ctx, op: &Operator, n: usize) -> Result<()> {
    for i in 0..n {
        wait_job(ctx, &format!("j{i}"), WAIT, "Running", |j| has_condition(j, ConditionType::Running))
            .await
            .with_context(|| op.log_tail())?;
    }
    Ok(())
}

async fn no_duplicates_no_chatter(ctx: Ctx) -> Result<()> {
    // Every pod uid per name, over the whole test.
    let uids = UidWatch::start(&ctx);
    let (pods_before, svcs_before) = posts(&ctx).await?;
    let mut op = Operator::start(&ctx, &["--announce-creates"])?;
    let reps = [replica("PS", 1), replica("Worker", 1)];
    let creates = (0..20).map(|i| create(&ctx, job(&format!("j{i}"), &reps, json!({}))));
    for r in futures::future::join_all(creates).await {
        r?;
    }
    wait_all_running(&ctx, &op, 20).await?;
    let (pods_after, svcs_after) = posts(&ctx).await?;
    ensure!(more(&pods_after, &pods_before, "201") == 40.0, "pod creates: {pods_before:?} -> {pods_after:?}");
    ensure!(more(&pods_after, &pods_before, "409") == 0.0, "duplicate pod creates: {pods_after:?}");
    ensure!(
        more(&svcs_after, &svcs_before, "201") == 40.0 && more(&svcs_after, &svcs_before, "409") == 0.0,
        "services: {svcs_before:?} -> {svcs_after:?}"
    );
    // Quiet: a Running job with nothing happening is not written to, once its status is
    // complete. Its active counts and its pods' start time may follow `Running` by up to
    // 10 s (status write coalescing holds a change of nothing else that long).
    let settled = wait_job(&ctx, "j0", WAIT, "every replica active and podsStartedTime", |j| {
        j.status.as_ref().is_some_and(|s| {
            s.pods_started_time.is_some() && s.replica_statuses.values().map(|r| r.active).sum::<i32>() == 2
        })
    })
    .await
    .with_context(|| op.log_tail())?;
    let rv = settled.metadata.resource_version;
    // Killed mid-way through a second batch and restarted: status carries on, names keep one uid.
    for i in 20..30 {
        create(&ctx, job(&format!("j{i}"), &reps, json!({}))).await?;
    }
    // Not an assertion: lets the second batch get under way before the kill.
    tokio::time::sleep(Duration::from_millis(300)).await;
    op.proc.signal(SIGKILL);
    tokio::task::block_in_place(|| op.proc.wait_exit(Duration::from_secs(5)))
        .context("the first operator still runs 5 s after SIGKILL")?;
    let op2 = Operator::start(&ctx, &["--announce-creates"])?;
    wait_all_running(&ctx, &op2, 30).await?;
    assert_stays(Duration::from_secs(30), "a quiet Running job is not written to", || async {
        let now = jobs(&ctx).get("j0").await?.metadata.resource_version;
        ensure!(now == rv, "j0 written to: {rv:?} -> {now:?}");
        Ok(())
    })
    .await?;
    ensure!(uids.names() == 60, "{} pod names seen, want 60", uids.names());
    let multi = uids.reused_names()?;
    ensure!(multi.is_empty(), "pod names with more than one uid: {multi:?}");
    // Each event once, no repeat series. A job of the batch the kill interrupted may miss an
    // event the killed process had not published yet, but never gets one twice.
    for (name, exact) in [("j0", true), ("j25", false)] {
        let evs = events(&ctx, name).await?;
        ensure!(evs.iter().all(|(_, n)| *n == 1), "{name}: repeated events {evs:?}");
        for (reason, want) in [
            // The Created and Running conditions have no events, as in Kubeflow.
            ("TFJobCreated", 0),
            ("TFJobRunning", 0),
            // One event per step and kind, naming both.
            ("SuccessfulCreatePod", 1),
            ("SuccessfulCreateService", 1),
        ] {
            let n = evs.iter().filter(|(r, _)| r == reason).count();
            ensure!(if exact { n == want } else { n <= want }, "{name}: {reason} {n} times: {evs:?}");
        }
    }
    Ok(())
}
