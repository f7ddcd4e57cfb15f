//! Faults of the operator's own processes and of the objects under it: a leader paused past
//! its lease while another takes over, a process killed between a job's creates and its next
//! status write, and a namespace or a TFJob deleted while work is in flight.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;
use tfjob_operator::api::ConditionType;

use super::fleet::{Fleet, PodUids, check_idle};
use super::{PER_FATE, SETTLE};
use crate::Ctx;
use crate::support::*;

fn leads(metrics: &str) -> bool {
    metric_sum(metrics, "tfjob_operator_leader", &[]) == 1.0
}

/// op-a leading, then op-b started beside it (a follower that answers `/readyz`), both with
/// a 4 s lease in the test's namespace.
async fn leader_and_follower(ctx: &Ctx, a_env: &[(&str, &str)]) -> Result<(Operator, Operator)> {
    let kc = ctx.cluster.kubeconfig.clone();
    let lease = format!("--leader-election-namespace={}", ctx.ns);
    let flags = [
        "--leader-elect",
        lease.as_str(),
        "--leader-election-lease-duration=4s",
        "--leader-election-renew-deadline=3s",
        "--leader-election-retry-period=1s",
        super::ANNOUNCE,
    ];
    let env: Vec<(&str, &str)> = [("POD_NAME", "op-a")].into_iter().chain(a_env.iter().copied()).collect();
    let a = Operator::launch(ctx, "op-a", &kc, Some(&ctx.ns), &flags, &env)?;
    tfjob_testsupport::wait(WAIT, "op-a to lead", || async { a.metrics().await.is_ok_and(|m| leads(&m)) })
        .await
        .with_context(|| a.log_tail())?;
    let b = Operator::launch(
        ctx,
        "op-b",
        &kc,
        Some(&ctx.ns),
        &flags,
        &[
            ("POD_NAME", "op-b"),
            ("RUST_LOG", "info,kube=warn,kube_client::client::builder=off,tfjob_operator=debug"),
        ],
    )?;
    tfjob_testsupport::wait(WAIT, "op-b to answer", || async { b.http_status("/readyz").await == Some(200) })
        .await?;
    Ok((a, b))
}

/// The operator's writes to anything but the Lease.
fn writes_but_the_lease(m: &str) -> f64 {
    ["create", "update", "patch", "delete", "deletecollection"]
        .iter()
        .map(|v| {
            let verb = format!("verb=\"{v}\"");
            metric_sum(m, "tfjob_operator_api_requests_total", &[&verb])
                - metric_sum(m, "tfjob_operator_api_requests_total", &[&verb, "resource=\"leases\""])
        })
        .sum::<f64>()
}

/// op-a published no Event dated after it `woke`, and at least one before (it did lead).
async fn op_a_reported_nothing_after(ctx: &Ctx, woke: Timestamp) -> Result<()> {
    let events: Api<Event> = Api::namespaced(ctx.cluster.client.clone(), &ctx.ns);
    let late: Vec<String> = events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.reporting_instance.as_deref() == Some("op-a"))
        .filter(|e| e.event_time.as_ref().is_some_and(|t| t.0 > woke))
        .map(|e| format!("{:?} {:?}", e.reason, e.note))
        .collect();
    ensure!(late.is_empty(), "op-a published events after it woke without the lease: {late:?}");
    let by_a = events
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|e| e.reporting_instance.as_deref() == Some("op-a"))
        .count();
    ensure!(by_a > 0, "op-a never reported anything: the test did not see it lead");
    Ok(())
}

/// The leader is SIGSTOPped past its lease; a second process takes over and runs the jobs;
/// the first is SIGCONTed: it writes nothing that sticks (its gate closed with its lease: no
/// Event it reports is dated after it woke, and every job ends as it should) and steps down
/// (exits non-zero).
pub async fn paused_leader_writes_nothing_that_sticks_and_steps_down(ctx: Ctx) -> Result<()> {
    super::plane(&ctx)?.revive()?;
    let (mut a, b) = leader_and_follower(&ctx, &[]).await?;
    let uids = PodUids::start(&ctx);
    let fleet = Fleet::create(&ctx, PER_FATE).await?;
    tfjob_testsupport::wait(WAIT, "the fleet's first pods", || async {
        live_pods(&ctx).await.is_ok_and(|p| p.len() >= 10)
    })
    .await?;
    let follower_writes = writes_but_the_lease(&b.metrics().await?);
    ensure!(follower_writes == 0.0, "the follower wrote {follower_writes} times before it led");
    a.proc.signal(SIGSTOP);
    tfjob_testsupport::wait(Duration::from_secs(20), "op-b to take over", || async {
        b.metrics().await.is_ok_and(|m| leads(&m))
    })
    .await
    .with_context(|| b.log_tail())?;
    // Not an assertion: op-a sleeps on past op-b's takeover, so it wakes with a lease it lost.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let woke = Timestamp::now();
    a.proc.signal(SIGCONT);
    let status = tokio::task::block_in_place(|| a.proc.wait_exit(Duration::from_secs(10)))
        .context("op-a did not step down within 10 s of waking")?;
    ensure!(!status.success(), "op-a exited {status}, want a failure (it lost the lease)");
    ensure!(a.log_text().contains("stopping"), "op-a did not say why it stopped: {}", a.log_tail());
    fleet
        .check_outcomes(&ctx, &uids, SETTLE)
        .await
        .with_context(|| format!("{}\n{}", b.log_tail(), b.stacks()))?;
    op_a_reported_nothing_after(&ctx, woke).await?;
    check_idle(&b, 2.5).await?;
    Ok(())
}

/// The leader holds a pod create just past its leadership gate (a test-only fault point: the
/// window in which a paused process keeps a write it already let through) and is SIGSTOPped
/// there; a second process takes over, runs the job to success and cleans its pod; the first
/// is SIGCONTed with the create still to send. Its connections are fenced since it lost the
/// lease: the create never reaches the API server (one pod create answered 201, one uid for
/// the pod name, no pod left), and op-a says so in its log before it steps down.
pub async fn paused_leader_holding_a_write_sends_nothing_when_it_wakes(ctx: Ctx) -> Result<()> {
    super::plane(&ctx)?.revive()?;
    let (mut a, b) = leader_and_follower(&ctx, &[("TFJOB_FAULT_POINT", "held-create:held-worker-0")]).await?;
    let uids = PodUids::start(&ctx);
    let posts_before = apiserver_posts_by_code(&ctx, "pods").await?;
    let manifest = job(
        "held",
        &[replica("Worker", 1).fate(succeed("1s"))],
        json!({"runPolicy": {"cleanPodPolicy": "All"}}),
    );
    create(&ctx, manifest).await?;
    tfjob_testsupport::wait(WAIT, "op-a to hold held-worker-0's create", || async {
        a.log_text().contains("fault point held-create reached")
    })
    .await
    .with_context(|| a.log_tail())?;
    // The hold lasts 3 s; the log is read every few ms.
    a.proc.signal(SIGSTOP);
    let pid = a.proc.pid();
    tfjob_testsupport::wait(Duration::from_secs(2), "op-a to stop (SIGSTOP)", || async {
        process_state(pid).as_deref() == Some("T")
    })
    .await?;
    ensure!(
        !a.log_text().contains(tfjob_operator::fence::REFUSED),
        "op-a's fence refused a write before it was paused: {}",
        a.log_tail()
    );
    tfjob_testsupport::wait(Duration::from_secs(20), "op-b to take over", || async {
        b.metrics().await.is_ok_and(|m| leads(&m))
    })
    .await
    .with_context(|| b.log_tail())?;
    wait_job(&ctx, "held", WAIT, "Succeeded under op-b", |j| has_condition(j, ConditionType::Succeeded))
        .await
        .with_context(|| b.log_tail())?;
    tfjob_testsupport::wait(WAIT, "held-worker-0 cleaned (cleanPodPolicy All)", || async {
        live_pods(&ctx).await.is_ok_and(|p| p.is_empty())
    })
    .await?;
    ensure!(
        uids.names_with_uids().get("held-worker-0").map(|u| u.len()) == Some(1),
        "op-b did not create held-worker-0 once: {:?}",
        uids.names_with_uids()
    );
    a.proc.signal(SIGCONT);
    let status = tokio::task::block_in_place(|| a.proc.wait_exit(Duration::from_secs(10)))
        .context("op-a did not step down within 10 s of waking")?;
    ensure!(!status.success(), "op-a exited {status}, want a failure (it lost the lease)");
    // A create that got out would land within a second of op-a waking; give it five.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let posts = apiserver_posts_by_code(&ctx, "pods").await?;
    let created = posts.get("201").copied().unwrap_or(0.0) - posts_before.get("201").copied().unwrap_or(0.0);
    ensure!(
        created == 1.0,
        "pods created {created} times, want 1 (op-b's; op-a's held create landed): {posts:?}"
    );
    ensure!(
        uids.names_with_uids().get("held-worker-0").map(|u| u.len()) == Some(1),
        "held-worker-0 was created again after op-a woke: {:?}",
        uids.names_with_uids()
    );
    ensure!(live_pods(&ctx).await?.is_empty(), "a pod is left: {:?}", live_pods(&ctx).await?);
    ensure!(
        a.log_text().contains(tfjob_operator::fence::REFUSED),
        "op-a's fence did not refuse anything: {}",
        a.log_tail()
    );
    Ok(())
}

/// A process's state letter from `/proc/<pid>/stat` (`T`: stopped).
fn process_state(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(") ")?.1.split_whitespace().next().map(str::to_string)
}

/// The operator is SIGKILLed exactly between a job's creates and its next status write (a
/// test-only fault point, compiled in with the `fault-points` feature, stops the reconcile
/// there and logs it); a new process carries the job to success with every pod created once.
pub async fn killed_between_creates_and_status_write(ctx: Ctx) -> Result<()> {
    super::plane(&ctx)?.revive()?;
    let kc = ctx.cluster.kubeconfig.clone();
    let uids = PodUids::start(&ctx);
    let posts_before = apiserver_posts_by_code(&ctx, "pods").await?;
    let mut first = Operator::launch(
        &ctx,
        "op-1",
        &kc,
        Some(&ctx.ns),
        &[super::ANNOUNCE],
        &[("TFJOB_FAULT_POINT", "after-creates:cut")],
    )?;
    create(&ctx, job("cut", &[replica("PS", 1), replica("Worker", 2).fate(succeed("6s"))], json!({})))
        .await?;
    tfjob_testsupport::wait(WAIT, "the fault point after the creates", || async {
        first.log_text().contains("fault point after-creates reached for cut")
    })
    .await
    .with_context(|| {
        format!(
            "build the e2e suite with --features tfjob-operator/fault-points (make test does): {}",
            first.log_tail()
        )
    })?;
    wait_pods(&ctx, &["cut-ps-0", "cut-worker-0", "cut-worker-1"], WAIT)
        .await
        .context("the creates before the fault point")?;
    let j = jobs(&ctx).get("cut").await?;
    ensure!(
        !has_condition(&j, ConditionType::Running),
        "the status write after the creates already happened: {:?}",
        j.status
    );
    first.proc.signal(SIGKILL);
    ensure!(
        tokio::task::block_in_place(|| first.proc.wait_exit(Duration::from_secs(10))).is_some(),
        "op-1 still runs after SIGKILL"
    );
    let second = Operator::start(&ctx, &[super::ANNOUNCE])?;
    wait_job(&ctx, "cut", WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded))
        .await
        .with_context(|| second.log_tail())?;
    let posts = apiserver_posts_by_code(&ctx, "pods").await?;
    let created = posts.get("201").copied().unwrap_or(0.0) - posts_before.get("201").copied().unwrap_or(0.0);
    ensure!(created == 3.0, "pods created {created} times, want 3 (each once): {posts:?}");
    let seen = uids.names_with_uids();
    for pod in ["cut-ps-0", "cut-worker-0", "cut-worker-1"] {
        ensure!(seen.get(pod).map(|u| u.len()) == Some(1), "{pod}: uids {:?}", seen.get(pod));
    }
    ensure!(
        count_events(&ctx, "cut", "SuccessfulCreatePod").await? <= 3,
        "an event twice: {:?}",
        events(&ctx, "cut").await?
    );
    Ok(())
}

/// A TFJob deleted while its creates are in flight leaves no pod behind; then the namespace is
/// deleted under running jobs: creates stop, nothing loops, the operator goes idle.
pub async fn namespace_and_job_deleted_under_running_work(ctx: Ctx) -> Result<()> {
    super::plane(&ctx)?.revive()?;
    let mut op = Operator::start(&ctx, &[])?;
    op.expect_refusals("its namespace is deleted under running work: pod creates there are refused (403, NamespaceTerminating)");
    create(&ctx, job("big", &[replica("Worker", 60)], json!({}))).await?;
    tfjob_testsupport::wait(WAIT, "big's first pods", || async {
        !live_pods(&ctx).await.unwrap_or_default().is_empty()
    })
    .await?;
    jobs(&ctx).delete("big", &DeleteParams::background()).await?;
    tfjob_testsupport::wait(Duration::from_secs(120), "no pod of the deleted job left", || async {
        pods(&ctx).list(&ListParams::default()).await.is_ok_and(|l| l.items.is_empty())
    })
    .await
    .with_context(|| op.log_tail())?;
    assert_stays(Duration::from_secs(5), "no pod of the deleted job comes back", || async {
        let left = pods(&ctx).list(&ListParams::default()).await?.items;
        ensure!(left.is_empty(), "{} pods", left.len());
        Ok(())
    })
    .await?;

    for i in 0..3 {
        create(&ctx, job(&format!("ns-{i}"), &[replica("PS", 1), replica("Worker", 5)], json!({}))).await?;
    }
    for i in 0..3 {
        wait_job(&ctx, &format!("ns-{i}"), WAIT, "Running", |j| has_condition(j, ConditionType::Running))
            .await?;
    }
    let namespaces: Api<Namespace> = Api::all(ctx.cluster.client.clone());
    namespaces.delete(&ctx.ns, &DeleteParams::background()).await?;
    tfjob_testsupport::wait(Duration::from_secs(120), "the namespace to be gone", || async {
        namespaces.get_opt(&ctx.ns).await.is_ok_and(|n| n.is_none())
    })
    .await?;
    let idle = check_idle(&op, 0.5).await.with_context(|| op.log_tail())?;
    let m = op.metrics().await?;
    let refused_pods =
        metric_sum(&m, "tfjob_operator_api_requests_total", &["resource=\"pods\"", "code=\"403\""]);
    if refused_pods > 6.0 {
        bail!("{refused_pods} pod creates refused in the terminating namespace: creates did not stop");
    }
    println!(
        "    namespace deleted under 3 running jobs: {refused_pods} refused creates, {idle:.1} requests/s after"
    );
    Ok(())
}
