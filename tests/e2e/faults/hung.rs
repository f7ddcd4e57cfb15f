//! Hung connections and a slow API server, made by a loopback proxy between the operator (under
//! `deploy/`'s ServiceAccount) and the API server: a reconcile request that hangs, watches whose
//! connections hang, a leader whose renewals hang, a follower whose lease answers take 3 s, and
//! a rate-limited leader under a 300-replica job.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tfjob_operator::api::ConditionType;
use tfjob_testsupport::proxy::{Mode, Proxy};

use crate::Ctx;
use crate::support::*;

/// The request timeout the operators here run with.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The default leader election timings (15 s, 10 s, 2 s).
const LEASE: Duration = Duration::from_secs(15);
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY: Duration = Duration::from_secs(2);
/// How long a hung watch may go unnoticed: the watch timeout (55 s) plus kube's 5 s.
const WATCH_BOUND: Duration = Duration::from_secs(60);

/// `deploy/`'s identity, and a kubeconfig for it through a new proxy (passing); returns the
/// proxy, the proxied kubeconfig and the direct one.
async fn proxied_service_account(ctx: &Ctx) -> Result<(Proxy, PathBuf, PathBuf)> {
    let (_, direct) = crate::install::as_deploy_service_account(ctx).await?;
    let proxied = direct.with_file_name("sa-proxied.kubeconfig");
    let proxy = Proxy::for_kubeconfig(&direct, &proxied).await?;
    Ok((proxy, proxied, direct))
}

fn failed_requests(metrics: &str) -> f64 {
    metric_sum(metrics, "tfjob_operator_api_requests_total", &["code=\"error\""])
}

fn leads(metrics: &str) -> bool {
    metric_sum(metrics, "tfjob_operator_leader", &[]) == 1.0
}

async fn lease(ctx: &Ctx) -> Result<Option<LeaseSpec>> {
    let api = Api::<Lease>::namespaced(ctx.cluster.client.clone(), &ctx.ns);
    Ok(api.get_opt("tfjob-operator").await?.and_then(|l| l.spec))
}

fn renewed_at(spec: &LeaseSpec) -> Option<Timestamp> {
    spec.renew_time.as_ref().map(|t| t.0)
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// A job's write at its deadline hangs (black hole): the attempt fails at the request timeout,
/// is counted and logged, nothing reaches the API server, and once the proxy passes again the
/// job ends as it should. A user labels the job in the dark: the operator's next status write,
/// planned from the version before, is refused as stale, and the job (read again, not waited
/// for on a watch still hung for up to a minute) ends within seconds all the same. The same
/// holds for a write of the operator's own that landed while its answer was lost.
pub async fn a_hung_reconcile_request_is_cut_at_the_request_timeout(ctx: Ctx) -> Result<()> {
    let (proxy, kubeconfig, _) = proxied_service_account(&ctx).await?;
    let op = Operator::launch(
        &ctx,
        "tfjob-operator-sa",
        &kubeconfig,
        Some(&ctx.ns),
        &["--request-timeout=2s"],
        &[],
    )?;
    // At its deadline the operator must write: delete the pod, then the Failed status.
    let policy = json!({"runPolicy": {"activeDeadlineSeconds": 10}});
    create(&ctx, job("late", &[replica("Worker", 1)], policy)).await?;
    let running = wait_job(&ctx, "late", WAIT, "Running with a deadline", |j| {
        has_condition(j, ConditionType::Running) && status_time(j, |s| s.deadline.as_ref()).is_some()
    })
    .await
    .with_context(|| op.log_tail())?;
    let deadline = status_time(&running, |s| s.deadline.as_ref()).context("no deadline")?;
    let left = Duration::try_from(deadline.duration_since(Timestamp::now())).unwrap_or_default();
    ensure!(
        left >= Duration::from_secs(2),
        "only {left:?} before the deadline: too late to black-hole first"
    );
    let before = failed_requests(&op.metrics().await?);
    proxy.set(Mode::BlackHole);
    eventually(
        left + REQUEST_TIMEOUT + Duration::from_secs(5),
        "a failed request after the deadline",
        || async {
            let now = failed_requests(&op.metrics().await?);
            ensure!(now > before, "failed requests: {now}");
            Ok(())
        },
    )
    .await
    .with_context(|| op.log_tail())?;
    let cut = Duration::try_from(Timestamp::now().duration_since(deadline)).unwrap_or_default();
    ensure!(
        cut <= REQUEST_TIMEOUT + Duration::from_millis(1500),
        "the hung request failed {cut:?} after the deadline (request timeout 2 s)"
    );
    ensure!(op.log_text().contains("no response within 2s"), "no log of the cut request: {}", op.log_tail());
    let stored = jobs(&ctx).get("late").await?;
    ensure!(
        !has_condition(&stored, ConditionType::Failed),
        "a write reached the API server through the black hole"
    );
    ensure!(
        live_pods(&ctx).await? == ["late-worker-0"],
        "a delete reached the API server through the black hole"
    );

    // Changed by another writer meanwhile: a version the operator's hung watch cannot show.
    let label = json!({"metadata": {"labels": {"team": "vision"}}});
    jobs(&ctx).patch("late", &PatchParams::default(), &Patch::Merge(&label)).await?;

    proxy.set(Mode::Pass);
    let passed = Instant::now();
    // Well inside the minute the hung watch may take to come back (WATCH_BOUND), with room for
    // a retry or two on pooled connections still black-holed (each cut at REQUEST_TIMEOUT).
    let failed = wait_job(&ctx, "late", Duration::from_secs(25), "Failed", |j| {
        has_condition(j, ConditionType::Failed)
    })
    .await
    .with_context(|| op.log_tail())?;
    ensure!(last_reason(&failed).as_deref() == Some("DeadlineExceeded"), "{:?}", last_reason(&failed));
    ensure!(
        op.log_text().contains("it changed since it was read"),
        "no status write was refused as stale: {}",
        op.log_tail()
    );
    ensure!(
        failed.metadata.labels.as_ref().and_then(|l| l.get("team")).map(String::as_str) == Some("vision")
    );
    eventually(Duration::from_secs(30), "late's pod deleted", || async {
        let pods = live_pods(&ctx).await?;
        ensure!(pods.is_empty(), "pods {pods:?}");
        Ok(())
    })
    .await?;
    println!(
        "    hung request cut {:.1} s after the job's deadline (request timeout 2 s); job Failed {:.1} s after the proxy passed again",
        secs(cut),
        secs(passed.elapsed())
    );
    Ok(())
}

/// Every connection is black-holed for 65 s, then the proxy passes again. Each of the
/// operator's watches, hung on a dead connection, is given up within 60 s of its last event
/// (watch timeout 55 s, plus kube's 5 s); its re-watch, sent into the black hole, is cut at the
/// request timeout and retried with backoff. Once the proxy passes, a job whose pod succeeded in
/// the dark (seen only through the pod watch) ends, and a job created in the dark (seen only
/// through the TFJob watch) gets its pod, within 35 s (kube's watch backoff is at most 30 s).
pub async fn hung_watches_come_back(ctx: Ctx) -> Result<()> {
    let (proxy, kubeconfig, _) = proxied_service_account(&ctx).await?;
    let flags = ["--request-timeout=2s"];
    let op = Operator::launch(&ctx, "tfjob-operator-sa", &kubeconfig, Some(&ctx.ns), &flags, &[])?;
    create(&ctx, job("first", &[replica("Worker", 1).fate(succeed("10s"))], json!({}))).await?;
    wait_job(&ctx, "first", WAIT, "Running", |j| has_condition(j, ConditionType::Running))
        .await
        .with_context(|| op.log_tail())?;
    let restarts = |m: &str| metric_sum(m, "tfjob_operator_watch_restarts_total", &[]);
    let before = restarts(&op.metrics().await?);
    proxy.set(Mode::BlackHole);
    create(&ctx, job("second", &[replica("Worker", 1)], json!({}))).await?;
    assert_stays(WATCH_BOUND + Duration::from_secs(5), "the black hole", || async {
        let pods = live_pods(&ctx).await?;
        ensure!(pods == ["first-worker-0"], "a create reached the API server through it: {pods:?}");
        Ok(())
    })
    .await?;
    let cut = restarts(&op.metrics().await?) - before;
    ensure!(cut >= 1.0, "no watch was given up and restarted in 65 s of black hole: {}", op.log_tail());

    proxy.set(Mode::Pass);
    let passed = Instant::now();
    let recovery = Duration::from_secs(35);
    wait_job(&ctx, "first", recovery, "Succeeded", |j| has_condition(j, ConditionType::Succeeded))
        .await
        .with_context(|| op.log_tail())?;
    let pod_watch = passed.elapsed();
    eventually(recovery.saturating_sub(passed.elapsed()), "second's pod", || async {
        let pods = live_pods(&ctx).await?;
        ensure!(pods.iter().any(|p| p == "second-worker-0"), "pods {pods:?}");
        Ok(())
    })
    .await
    .with_context(|| op.log_tail())?;
    let job_watch = passed.elapsed();
    println!(
        "    65 s black hole: {cut} watch restarts in the dark; once it passed, a pod's success seen after {:.1} s, a new job's pod created after {:.1} s",
        secs(pod_watch),
        secs(job_watch)
    );
    Ok(())
}

/// The leader's connections are black-holed: it stops (gate closed, process exit) at its renew
/// deadline, and nothing it sends after reaches the API server (its lease keeps the last
/// renewal from before the black hole, neither renewed nor released).
pub async fn a_leader_whose_renewals_hang_stops_at_its_renew_deadline(ctx: Ctx) -> Result<()> {
    let (proxy, kubeconfig, _) = proxied_service_account(&ctx).await?;
    let ns_flag = format!("--leader-election-namespace={}", ctx.ns);
    let flags = ["--leader-elect", ns_flag.as_str(), "--request-timeout=2s"];
    let mut op =
        Operator::launch(&ctx, "op-hung", &kubeconfig, Some(&ctx.ns), &flags, &[("POD_NAME", "op-hung")])?;
    tfjob_testsupport::wait(WAIT, "op-hung to lead", || async {
        op.metrics().await.is_ok_and(|m| leads(&m))
    })
    .await
    .with_context(|| op.log_tail())?;
    create(&ctx, job("busy", &[replica("Worker", 2)], json!({}))).await?;
    wait_pods(&ctx, &["busy-worker-0", "busy-worker-1"], WAIT).await.with_context(|| op.log_tail())?;

    let holed_at = Timestamp::now();
    proxy.set(Mode::BlackHole);
    let holed = Instant::now();
    // Stopped: exited, or answering that it does not lead (a GET that fails as it exits is
    // polled again, and then it has exited).
    // No answer counts as stopped: the process exits as its gate closes (checked below).
    let stopped = eventually(RENEW_DEADLINE + Duration::from_secs(5), "op-hung to stop leading", || async {
        ensure!(!op.metrics().await.is_ok_and(|m| leads(&m)), "still leading");
        Ok(holed.elapsed())
    })
    .await
    .with_context(|| op.log_tail())?;
    // Its last renewal was at most a retry period (and a little) before the black hole.
    let earliest = RENEW_DEADLINE - RETRY - Duration::from_millis(500);
    ensure!(
        stopped >= earliest && stopped <= RENEW_DEADLINE + Duration::from_secs(1),
        "stopped leading {stopped:?} into the black hole; renew deadline 10 s"
    );
    let status = tokio::task::block_in_place(|| op.proc.wait_exit(Duration::from_secs(5)))
        .context("the leader did not exit within 5 s of closing its gate")?;
    ensure!(!status.success(), "exit status {status}");
    ensure!(
        op.log_text().contains("could not renew the lease before the renew deadline"),
        "{}",
        op.log_tail()
    );

    proxy.set(Mode::Pass);
    let spec = lease(&ctx).await?.context("no lease")?;
    ensure!(spec.holder_identity.as_deref() == Some("op-hung"), "holder {:?}", spec.holder_identity);
    let last = renewed_at(&spec).context("no renewTime")?;
    ensure!(last <= holed_at, "a renewal dated {last} landed after the black hole began at {holed_at}");
    println!(
        "    renewals hung: the leader stopped {:.1} s into the black hole (renew deadline 10 s)",
        secs(stopped)
    );
    Ok(())
}

/// Lease answers take 3 s (every byte from the API server delayed): when the leader is
/// SIGKILLed, the follower still takes over, not before the lease expires, and keeps leading.
pub async fn a_follower_takes_over_while_lease_answers_take_3_s(ctx: Ctx) -> Result<()> {
    let (proxy, slow, direct) = proxied_service_account(&ctx).await?;
    let ns_flag = format!("--leader-election-namespace={}", ctx.ns);
    let flags = ["--leader-elect", ns_flag.as_str()];
    let mut a = Operator::launch(&ctx, "op-a", &direct, Some(&ctx.ns), &flags, &[("POD_NAME", "op-a")])?;
    eventually(WAIT, "op-a to hold the lease", || async {
        let holder = lease(&ctx).await?.and_then(|s| s.holder_identity);
        ensure!(holder.as_deref() == Some("op-a"), "holder {holder:?}");
        Ok(())
    })
    .await
    .with_context(|| a.log_tail())?;
    proxy.set(Mode::Delay(Duration::from_secs(3)));
    let b = Operator::launch(&ctx, "op-b", &slow, Some(&ctx.ns), &flags, &[("POD_NAME", "op-b")])?;
    // The follower has read the lease (answers counted) through the slow proxy.
    let lease_answers = |m: &str| {
        metric_sum(m, "tfjob_operator_api_requests_total", &["resource=\"leases\""]) - failed_requests(m)
    };
    tfjob_testsupport::wait(Duration::from_secs(30), "op-b to read the lease", || async {
        b.metrics().await.is_ok_and(|m| lease_answers(&m) >= 1.0)
    })
    .await
    .with_context(|| b.log_tail())?;

    a.proc.signal(SIGKILL);
    let killed = Instant::now();
    tokio::task::block_in_place(|| a.proc.wait_exit(Duration::from_secs(5)))
        .context("op-a survived SIGKILL")?;
    eventually(LEASE + Duration::from_secs(25), "op-b to take over", || async {
        let holder = lease(&ctx).await?.and_then(|s| s.holder_identity);
        ensure!(holder.as_deref() == Some("op-b") && leads(&b.metrics().await?), "holder {holder:?}");
        Ok(())
    })
    .await
    .with_context(|| b.log_tail())?;
    let took = killed.elapsed();
    // op-a renewed at most a retry period before it died; op-b saw that record 3 s late.
    ensure!(
        took >= LEASE - RETRY - Duration::from_secs(1),
        "op-b took over {took:?} after the kill: before expiry"
    );

    let first = lease(&ctx).await?.as_ref().and_then(renewed_at).context("no renewTime")?;
    assert_stays(Duration::from_secs(30), "op-b keeps leading through the slow proxy", || async {
        ensure!(leads(&b.metrics().await?), "op-b stopped leading: {}", b.log_tail());
        let holder = lease(&ctx).await?.and_then(|s| s.holder_identity);
        ensure!(holder.as_deref() == Some("op-b"), "holder {holder:?}");
        Ok(())
    })
    .await?;
    let last = lease(&ctx).await?.as_ref().and_then(renewed_at).context("no renewTime")?;
    let advanced = Duration::try_from(last.duration_since(first)).unwrap_or_default();
    ensure!(advanced >= Duration::from_secs(20), "renewTime advanced {advanced:?} in 30 s");
    ensure!(!b.log_text().contains("could not renew"), "{}", b.log_tail());
    println!(
        "    lease answers delayed 3 s: the follower took over {:.1} s after the leader was SIGKILLed (lease 15 s) and kept leading 30 s",
        secs(took)
    );
    Ok(())
}

/// `--kube-api-qps=5 --kube-api-burst=5` and a 300-replica job: hundreds of creates wait for
/// the rate limit, yet the lease is renewed on time throughout, the leader never exits, and
/// the creates really go out at the limited rate.
pub async fn a_rate_limited_leader_renews_on_time_under_a_300_replica_job(ctx: Ctx) -> Result<()> {
    let (_, kubeconfig) = crate::install::as_deploy_service_account(&ctx).await?;
    let ns_flag = format!("--leader-election-namespace={}", ctx.ns);
    let flags = ["--leader-elect", ns_flag.as_str(), "--kube-api-qps=5", "--kube-api-burst=5"];
    let mut op = Operator::launch(
        &ctx,
        "op-limited",
        &kubeconfig,
        Some(&ctx.ns),
        &flags,
        &[("POD_NAME", "op-limited")],
    )?;
    tfjob_testsupport::wait(WAIT, "op-limited to lead", || async {
        op.metrics().await.is_ok_and(|m| leads(&m))
    })
    .await
    .with_context(|| op.log_tail())?;
    create(&ctx, job("big", &[replica("PS", 1), replica("Worker", 299)], json!({}))).await?;
    let creates = |m: &str| metric_sum(m, "tfjob_operator_api_requests_total", &["verb=\"create\""]);
    let (qps, burst) = (5.0, 5.0);
    let start = Instant::now();
    let first_creates = creates(&op.metrics().await?);
    // (renewals seen, the longest time seen without one)
    let seen: Mutex<(Vec<Timestamp>, Duration)> = Mutex::default();
    let window = Duration::from_secs(45);
    // A leader that exits stops answering /metrics: that breaks the window too.
    let held = assert_stays(window, "op-limited under the rate limit", || async {
        let m = op.metrics().await?;
        let sent = creates(&m) - first_creates;
        let allowed = burst + qps * secs(start.elapsed()) + 2.0;
        ensure!(sent <= allowed, "{sent} creates: over the limit ({allowed})");
        ensure!(leads(&m), "op-limited stopped leading: {}", op.log_tail());
        let now = Timestamp::now();
        let renewed = lease(&ctx).await?.as_ref().and_then(renewed_at).context("no renewTime")?;
        let since = Duration::try_from(now.duration_since(renewed)).unwrap_or_default();
        let mut seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        if seen.0.last() != Some(&renewed) {
            seen.0.push(renewed);
        }
        seen.1 = seen.1.max(since);
        ensure!(since < RENEW_DEADLINE, "the lease went {since:?} without renewal (renew deadline 10 s)");
        Ok(())
    })
    .await;
    if let Err(e) = held {
        let exited = op.proc.exited();
        return Err(e.context(format!("op-limited exit status {exited:?}: {}", op.log_tail())));
    }
    let (renewals, worst_gap) = seen.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))?;
    let sent = creates(&op.metrics().await?) - first_creates;
    println!(
        "    qps 5: {sent} creates in {} s ({:.1}/s), {} renewals, worst time without a renewal {:.1} s",
        window.as_secs(),
        sent / secs(window),
        renewals.len(),
        secs(worst_gap)
    );
    // On time: a renewal every retry period, give or take 1.5 s (one queued behind the creates
    // waits 5 s: 7 s without a renewal).
    ensure!(
        worst_gap <= RETRY + Duration::from_millis(1500),
        "worst renewal gap {worst_gap:?} (retry period 2 s)"
    );
    ensure!(renewals.len() >= 18, "only {} renewals in {window:?}", renewals.len());
    ensure!(sent >= 150.0, "only {sent} creates in {window:?}: the limit was not under pressure");
    let objects = live_pods(&ctx).await?.len() + service_names(&ctx).await?.len();
    ensure!(objects < 600, "{objects} of 600 objects already exist: the rate limit did not land");
    Ok(())
}
