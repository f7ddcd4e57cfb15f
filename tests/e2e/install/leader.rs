//! The operator's `/metrics` across restarts, and leader election across processes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use tfjob_operator::api::ConditionType;

use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        test!(metrics_count_each_job_once_across_restarts),
        test!(leader_election_hands_over_on_sigkill_and_sigterm).serial(),
    ]
}

/// Waits until `op` answers `/readyz` with 200 (caches synced, or waiting to lead).
async fn ready(op: &Operator) -> Result<()> {
    eventually(WAIT, &format!("{}: /readyz", op.proc.name), || async {
        let code = op.http_status("/readyz").await;
        ensure!(code == Some(200), "/readyz: {code:?}");
        Ok(())
    })
    .await
}

/// The job counters of the test's namespace are exactly `want`.
fn job_counts(m: &str, ns: &str, want: &[(&str, f64)]) -> Result<()> {
    for (name, want) in want {
        let got = metric_sum(m, name, &[ns, "framework=\"tensorflow\""]);
        ensure!(got == *want, "{name} {got}, want {want}:\n{m}");
    }
    Ok(())
}

async fn metrics_count_each_job_once_across_restarts(ctx: Ctx) -> Result<()> {
    let mut op = Operator::start(&ctx, &[])?;
    ready(&op).await?;
    create(&ctx, job("m", &[replica("Worker", 1).fate(succeed("1s"))], json!({}))).await?;
    let crashes = replica("Worker", 1).restart("OnFailure").fate(fail("1s", 1));
    create(&ctx, job("r", &[crashes], json!({"backoffLimit": 2}))).await?;
    wait_job(&ctx, "m", WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded))
        .await
        .with_context(|| op.log_tail())?;
    let r = wait_job(&ctx, "r", WAIT, "Failed", |j| has_condition(j, ConditionType::Failed)).await?;
    let restarts: i32 =
        r.status.as_ref().map(|s| s.replica_statuses.values().map(|v| v.restarts).sum()).unwrap_or(0);
    ensure!(restarts >= 2, "r restarted {restarts} times: the once-per-job check needs several");
    let ns = format!("job_namespace=\"{}\"", ctx.ns);
    // Each job counted once: reached within 1 s, and kept.
    let counted = || async {
        let m = op.metrics().await?;
        job_counts(
            &m,
            &ns,
            &[
                ("training_operator_jobs_created_total", 2.0),
                ("training_operator_jobs_successful_total", 1.0),
                ("training_operator_jobs_failed_total", 1.0),
                ("training_operator_jobs_restarted_total", 1.0),
                ("training_operator_jobs_deleted_total", 0.0),
            ],
        )?;
        ensure!(metric_sum(&m, "tfjob_operator_reconciles_total", &[]) >= 2.0, "reconciles:\n{m}");
        let creates = ["verb=\"create\"", "resource=\"pods\"", "code=\"201\""];
        ensure!(metric_sum(&m, "tfjob_operator_api_requests_total", &creates) == 2.0, "pod creates:\n{m}");
        Ok(())
    };
    eventually(Duration::from_secs(1), "each job counted once", counted).await?;
    assert_stays(Duration::from_secs(1), "each job counted once", counted).await?;
    // Bounded labels only: never a pod or job name (`size` is a create batch's, 1 to 16).
    let m = op.metrics().await?;
    let keys: BTreeSet<&str> = m
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('{')?.1.split_once('}').map(|(labels, _)| labels))
        .flat_map(|labels| labels.split(',').filter_map(|kv| kv.split_once('=').map(|(k, _)| k)))
        .collect();
    let allowed: BTreeSet<&str> =
        ["job_namespace", "framework", "kind", "verb", "resource", "code", "le", "size"].into();
    ensure!(keys.is_subset(&allowed), "label keys {keys:?}");

    // A restarted operator reads the stored status and counts nothing again.
    op.proc.signal(SIGTERM);
    tokio::task::block_in_place(|| op.proc.wait_exit(Duration::from_secs(20)))
        .context("no exit after SIGTERM")?;
    let op2 = Operator::start_as(&ctx, "tfjob-operator-2", &ctx.cluster.kubeconfig, &[])?;
    eventually(WAIT, "the new process to reconcile both jobs", || async {
        let m = op2.metrics().await?;
        ensure!(metric_sum(&m, "tfjob_operator_reconciles_total", &[]) >= 2.0, "reconciles:\n{m}");
        Ok(())
    })
    .await?;
    assert_stays(Duration::from_secs(1), "nothing counted again", || async {
        let m = op2.metrics().await?;
        ensure!(!m.contains(&ns), "counted again:\n{m}");
        Ok(())
    })
    .await?;
    // Deleted for its TTL: counted once, by the time the deletion shows.
    merge_patch_job(&ctx, "m", json!({"spec": {"ttlSecondsAfterFinished": 0}})).await?;
    wait_job_gone(&ctx, "m", Duration::from_secs(10)).await?;
    let deleted_once = || async {
        let m = op2.metrics().await?;
        let n = metric_sum(&m, "training_operator_jobs_deleted_total", &[&ns]);
        ensure!(n == 1.0, "deleted {n}:\n{m}");
        Ok(())
    };
    eventually(Duration::from_millis(500), "the deletion counted", deleted_once).await?;
    assert_stays(Duration::from_millis(500), "the deletion counted once", deleted_once).await
}

/// Whether the operator leads, from its /metrics (None while it does not answer).
async fn leads(op: &Operator) -> Option<bool> {
    let (_, m) = http_get(op.http_port, "/metrics").await?;
    m.lines().find_map(|l| l.strip_prefix("tfjob_operator_leader ")).map(|v| v.trim() == "1")
}

/// The process's writes to the job's objects (the lease excluded), from its /metrics.
fn job_writes(metrics: &str) -> f64 {
    let mut n = 0.0;
    for verb in ["create", "update", "patch", "delete", "deletecollection"] {
        for resource in ["pods", "services", "tfjobs", "tfjobs/status", "events"] {
            n += metric_sum(
                metrics,
                "tfjob_operator_api_requests_total",
                &[&format!("verb=\"{verb}\""), &format!("resource=\"{resource}\"")],
            );
        }
    }
    n
}

/// Waits until `op` leads; returns how long that took.
async fn until_leads(op: &Operator, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    eventually(timeout, &format!("{} to lead", op.proc.name), || async {
        ensure!(leads(op).await == Some(true), "not leading");
        Ok(start.elapsed())
    })
    .await
    .with_context(|| op.log_tail())
}

/// Waits until exactly one of the two leads; returns which.
async fn single_leader(ops: &[Operator]) -> Result<usize> {
    eventually(WAIT, "a single leader", || async {
        match [leads(&ops[0]).await, leads(&ops[1]).await] {
            [Some(true), Some(false)] => Ok(0),
            [Some(false), Some(true)] => Ok(1),
            l => bail!("leading: {l:?}"),
        }
    })
    .await
}

async fn leader_election_hands_over_on_sigkill_and_sigterm(ctx: Ctx) -> Result<()> {
    let ns_flag = format!("--leader-election-namespace={}", ctx.ns);
    let args = ["--leader-elect", ns_flag.as_str()];
    let kc = ctx.cluster.kubeconfig.clone();
    let mut ops =
        vec![Operator::start_as(&ctx, "op-a", &kc, &args)?, Operator::start_as(&ctx, "op-b", &kc, &args)?];
    let leader = single_leader(&ops).await?;
    let follower = 1 - leader;
    // Both ready: the follower while it waits, the leader once its caches synced.
    for op in &ops {
        ready(op).await?;
    }

    // The workers outlast the takeover, so the new leader creates what the old one had not.
    let uids = UidWatch::start(&ctx);
    for i in 0..10 {
        create(&ctx, job(&format!("j{i}"), &[replica("Worker", 2).fate(succeed("25s"))], json!({}))).await?;
    }
    assert_stays(Duration::from_millis(300), "the follower writes nothing", || async {
        let fw = job_writes(&ops[follower].metrics().await?);
        ensure!(fw == 0.0, "follower writes: {fw}");
        Ok(())
    })
    .await?;
    let lw = job_writes(&ops[leader].metrics().await?);
    ensure!(lw > 0.0, "the leader wrote nothing in 300 ms");
    ops[leader].proc.signal(SIGKILL);
    let after_kill = until_leads(&ops[follower], Duration::from_secs(30)).await?;
    // The lease was renewed at most one retry period (2 s) before the kill; the follower saw
    // that renewal at most one retry period later and takes over when the lease (15 s) runs
    // out from there: 13-17 s after the kill, plus its lease requests and our /metrics
    // polling (1 s allowed).
    ensure!(
        after_kill >= Duration::from_secs(12) && after_kill <= Duration::from_secs(18),
        "took over {after_kill:?} after SIGKILL (lease 15 s + retry 2 s)"
    );
    for i in 0..10 {
        wait_job(&ctx, &format!("j{i}"), WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded))
            .await
            .with_context(|| ops[follower].log_tail())?;
    }
    ensure!(uids.names() == 20, "{} pod names, want 20", uids.names());
    let reused = uids.reused_names()?;
    ensure!(reused.is_empty(), "pod names with more than one uid: {reused:?}");

    // SIGTERM: the leader releases the lease and a waiting follower takes it at its next try.
    let third = Operator::start_as(&ctx, "op-c", &kc, &args)?;
    ready(&third).await?;
    // Long enough for op-c to have read the held lease.
    assert_stays(Duration::from_secs(3), "op-c waits while op-b holds the lease", || async {
        let l = leads(&third).await;
        ensure!(l == Some(false), "op-c leads: {l:?}");
        Ok(())
    })
    .await?;
    ops[follower].proc.signal(SIGTERM);
    let after_term = until_leads(&third, Duration::from_secs(10)).await?;
    ensure!(after_term <= Duration::from_millis(3_500), "took over {after_term:?} after SIGTERM (retry 2 s)");
    let status = tokio::task::block_in_place(|| ops[follower].proc.wait_exit(Duration::from_secs(20)))
        .context("op-b still running 20 s after SIGTERM")?;
    ensure!(status.success(), "op-b exit status {status}");
    let log = std::fs::read_to_string(&ops[follower].log)?;
    ensure!(
        log.contains("released the lease"),
        "op-b did not release the lease: {}",
        ops[follower].log_tail()
    );
    eprintln!(
        "e2e: leader takeover {:.2}s after SIGKILL (bound 17 s), {:.2}s after SIGTERM (bound 2 s)",
        after_kill.as_secs_f64(),
        after_term.as_secs_f64()
    );
    Ok(())
}
