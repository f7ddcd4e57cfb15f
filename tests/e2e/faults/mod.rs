//! Faults injected into the real local plane while jobs run: the API server and etcd killed
//! and restarted, a forced 410 Gone, a paused leader, a kill between creates and the status
//! write, and a namespace or a TFJob deleted under running work. Each test proves that its
//! fault landed and checks the fleet's invariants (`fleet.rs`). They run alone, on the local
//! plane only.

mod fleet;
mod hung;
mod relist;
mod split;
mod webhook;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tfjob_testsupport::ControlPlane;

use crate::support::*;
use crate::{Ctx, Test, test};
use fleet::{Fleet, PodUids, check_idle, requests};

pub fn tests() -> Vec<Test> {
    vec![
        test!(api_server_killed_and_restarted).fault(),
        test!(relist::api_server_restarted_then_a_deleted_pod_is_recreated_at_once).fault(),
        test!(etcd_killed_and_restarted).fault(),
        test!(forced_410_gone_relists_and_loses_nothing).fault(),
        test!(split::paused_leader_writes_nothing_that_sticks_and_steps_down).fault(),
        test!(split::paused_leader_holding_a_write_sends_nothing_when_it_wakes).fault(),
        test!(split::killed_between_creates_and_status_write).fault(),
        test!(split::namespace_and_job_deleted_under_running_work).fault(),
        test!(webhook::a_webhook_down_is_the_clusters_failure_and_nothing_is_lost).serial(),
        test!(hung::a_hung_reconcile_request_is_cut_at_the_request_timeout).fault(),
        test!(hung::hung_watches_come_back).fault(),
        test!(hung::a_leader_whose_renewals_hang_stops_at_its_renew_deadline).fault(),
        test!(hung::a_follower_takes_over_while_lease_answers_take_3_s).fault(),
        test!(hung::a_rate_limited_leader_renews_on_time_under_a_300_replica_job).fault(),
    ]
}

/// Jobs of each fate in a fault test's fleet (five fates: 30 jobs).
const PER_FATE: usize = 6;
/// How long the fleet may take to end once the plane is back.
const SETTLE: Duration = Duration::from_secs(150);

pub fn plane(ctx: &Ctx) -> Result<&ControlPlane> {
    ctx.cluster.plane.as_ref().context("fault tests need the local plane")
}

/// Waits until the API server answers `/readyz` again; returns when it did.
pub async fn api_back(ctx: &Ctx) -> Result<Instant> {
    tfjob_testsupport::wait(Duration::from_secs(120), "the API server to answer again", || async {
        let req = http::Request::get("/readyz").body(Vec::new()).ok();
        match req {
            Some(r) => ctx.cluster.client.request_text(r).await.is_ok_and(|t| t.trim() == "ok"),
            None => false,
        }
    })
    .await?;
    Ok(Instant::now())
}

/// Requests the operator sent that got an answer (any HTTP status).
async fn answered(op: &Operator) -> Result<f64> {
    let m = op.metrics().await?;
    Ok(metric_sum(&m, "tfjob_operator_api_requests_total", &[]) - failed_requests_in(&m))
}

fn failed_requests_in(metrics: &str) -> f64 {
    metric_sum(metrics, "tfjob_operator_api_requests_total", &["code=\"error\""])
}

/// Starts the fleet and the uid watch, and waits until the first pods exist (jobs in flight).
async fn fleet_in_flight(ctx: &Ctx) -> Result<(Fleet, PodUids)> {
    let uids = PodUids::start(ctx);
    let fleet = Fleet::create(ctx, PER_FATE).await?;
    tfjob_testsupport::wait(WAIT, "the fleet's first pods", || async {
        live_pods(ctx).await.is_ok_and(|p| p.len() >= 10)
    })
    .await?;
    Ok((fleet, uids))
}

/// `component` down for `down`, then started again; the fleet must end as it would have.
/// Returns (requests/s while down, seconds from the API answering to the operator's first
/// answered request).
async fn outage(ctx: &Ctx, op: &mut Operator, component: &str, down: Duration) -> Result<(f64, f64)> {
    let plane = plane(ctx)?;
    let (fleet, uids) = fleet_in_flight(ctx).await?;
    let sent_before = requests(op).await?;
    plane.kill(component)?;
    // The outage itself, as long as asked; not an assertion.
    tokio::time::sleep(down).await;
    let sent_down = requests(op).await? - sent_before;
    plane.restart(component)?;
    let back = api_back(ctx).await?;
    // A restarted API server refuses (403) until its authorizer has loaded RBAC; from here on
    // a refusal is the operator's RBAC's doing.
    op.forgive_refusals_so_far().await?;
    let answered_at_back = answered(op).await?;
    tfjob_testsupport::wait(
        Duration::from_secs(60),
        "the operator's first answered request after the outage",
        || async { answered(op).await.is_ok_and(|n| n > answered_at_back) },
    )
    .await
    .with_context(|| op.log_tail())?;
    let recovery = back.elapsed().as_secs_f64();
    let _supervisor = nudge_kwok_after_outage(ctx).await?;
    fleet.check_outcomes(ctx, &uids, SETTLE).await.with_context(|| op.log_tail())?;
    // The fault landed: requests that got no answer, or 5xx answers (the API server without
    // etcd), while it lasted.
    let m = op.metrics().await?;
    let hit = failed_requests_in(&m)
        + ["500", "503", "504"]
            .iter()
            .map(|c| metric_sum(&m, "tfjob_operator_api_requests_total", &[&format!("code=\"{c}\"")]))
            .sum::<f64>();
    ensure!(hit >= 1.0, "the operator never saw the {component} outage: {}", op.log_tail());
    fleet.check_counters(ctx, &[m])?;
    let idle = check_idle(op, 0.5).await?;
    let rate = sent_down / down.as_secs_f64();
    println!(
        "    {component} down {:.0} s: {rate:.1} requests/s while down; {recovery:.1} s from the API answering to the operator's first answered request; {idle:.1} requests/s once settled",
        down.as_secs_f64()
    );
    Ok((rate, recovery))
}

/// The plane's own components after an outage: any that exited is started again, and kwok
/// (the kubelet's stand-in, which drops a stage whose status patch failed while the API server
/// or etcd was away and does not retry it) is restarted so it plays every pod's stage afresh;
/// 5 and 15 s later the unfinished pods are touched as well. The operator has no part in this:
/// a kubelet retries its status updates.
pub(super) async fn nudge_kwok_after_outage(ctx: &Ctx) -> Result<Supervisor> {
    let plane = plane(ctx)?;
    let revived = plane.revive()?;
    if !revived.is_empty() {
        println!("    plane components that had exited, started again: {revived:?}");
    }
    if !revived.iter().any(|n| n == "kwok") {
        plane.kill("kwok")?;
        plane.restart("kwok")?;
    }
    for wait in [5, 10] {
        // Paces the nudges (5 and 15 s after the restart); not an assertion.
        tokio::time::sleep(Duration::from_secs(wait)).await;
        nudge_kwok(ctx, wait).await?;
    }
    Ok(supervise(ctx))
}

/// Starts again, every second until dropped, any plane component that exits, as a node's
/// kubelet restarts a static pod: kube-scheduler exits on purpose (`FlushAndExit`, "Scheduler
/// cache is corrupted") when the re-list after a compaction contradicts its cache, sometimes
/// half a minute after the API server is back.
pub(super) struct Supervisor(tokio::task::JoinHandle<()>);

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn supervise(ctx: &Ctx) -> Supervisor {
    let cluster = ctx.cluster.clone();
    Supervisor(tokio::spawn(async move {
        loop {
            // A supervisor's period; not an assertion.
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Some(Ok(revived)) = cluster.plane.as_ref().map(|p| p.revive())
                && !revived.is_empty()
            {
                println!("    plane components that exited, started again: {revived:?}");
            }
        }
    }))
}

/// Annotates every pod of the namespace that has not finished, so kwok looks at it again.
async fn nudge_kwok(ctx: &Ctx, n: u64) -> Result<()> {
    use kube::api::{ListParams, Patch, PatchParams};
    for p in pods(ctx).list(&ListParams::default()).await?.items {
        let phase = p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" || p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let name = p.metadata.name.unwrap_or_default();
        let patch = serde_json::json!({"metadata": {"annotations": {"kwok.test/nudge": n.to_string()}}});
        // A pod deleted meanwhile is fine.
        let _ = pods(ctx).patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await;
    }
    Ok(())
}

/// The fleet's operators announce their creates: a pod created and removed while the test's
/// own watch is down is known from its announcement ([`fleet::Fleet::check_outcomes`]).
pub const ANNOUNCE: &str = "--announce-creates";

/// kube-apiserver SIGKILLed for 15 s and restarted on the same address; the operator runs
/// cluster-wide, as `deploy/` installs it.
async fn api_server_killed_and_restarted(ctx: Ctx) -> Result<()> {
    other_test_namespaces_gone(&ctx).await?;
    let mut op = Operator::start_cluster_wide(&ctx, "tfjob-operator", &[ANNOUNCE])?;
    outage(&ctx, &mut op, "kube-apiserver", Duration::from_secs(15)).await?;
    Ok(())
}

/// etcd SIGKILLed for 10 s and restarted from its data directory.
async fn etcd_killed_and_restarted(ctx: Ctx) -> Result<()> {
    let mut op = Operator::start(&ctx, &[ANNOUNCE])?;
    outage(&ctx, &mut op, "etcd", Duration::from_secs(10)).await?;
    Ok(())
}

/// A 410 Gone on the pod watch, provoked for real: with the API server down, etcd's revision
/// is moved on and compacted up to it, so the API server comes back with a watch cache that
/// starts after the operator's last seen resourceVersion and etcd no longer has the history:
/// the re-watch is answered 410 and the operator re-lists.
async fn forced_410_gone_relists_and_loses_nothing(ctx: Ctx) -> Result<()> {
    let plane = plane(&ctx)?;
    let mut op = Operator::start(&ctx, &[ANNOUNCE])?;
    let (fleet, uids) = fleet_in_flight(&ctx).await?;
    let revision = plane.force_410().await?;
    api_back(&ctx).await?;
    op.forgive_refusals_so_far().await?;
    tfjob_testsupport::wait(
        Duration::from_secs(60),
        "the operator's pod watch to re-list after the 410",
        || async {
            op.metrics().await.is_ok_and(|m| {
                metric_sum(&m, "tfjob_operator_watch_restarts_total", &["resource=\"pods\""]) >= 1.0
            }) && op.log_text().contains("re-listing")
        },
    )
    .await
    .with_context(|| op.log_tail())?;
    let _supervisor = nudge_kwok_after_outage(&ctx).await?;
    fleet.check_outcomes(&ctx, &uids, SETTLE).await.with_context(|| op.log_tail())?;
    fleet.check_counters(&ctx, &[op.metrics().await?])?;
    check_idle(&op, 0.5).await?;
    println!(
        "    etcd compacted to revision {revision} while the API server was down; the pod watch re-listed"
    );
    Ok(())
}
