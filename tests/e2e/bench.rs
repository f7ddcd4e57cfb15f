//! The benchmark's tiny run: `tfjob-bench`'s code against the suite's shared control plane and
//! the operator already built, checking that it completes and its JSON is well-formed. The
//! numbers themselves are for `make bench` (BENCHMARKS.md), not for a test.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use tfjob_testsupport::bench::{self, OperatorSpec, Options};

use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![test!(tiny_bench_run_completes_with_well_formed_json), test!(relist_row_forces_a_410).fault()]
}

fn tiny_options(ctx: &Ctx) -> Options {
    let mut opts = Options::new(OperatorSpec::Start {
        bin: PathBuf::from(env!("CARGO_BIN_EXE_tfjob-operator")),
        args: bench::default_operator_args(),
        kubeconfig: ctx.cluster.kubeconfig.clone(),
        log_dir: std::env::temp_dir().join(format!("tfjob-e2e-op-{}", ctx.ns)),
    });
    opts.sizes = vec![2];
    // Long enough that a job is seen Running before worker 0 succeeds even on a loaded
    // machine: with 1 s, a CI run's reconcile once came after the workers had finished, the
    // job went from Created to Succeeded (rightly, as Kubeflow's does), and only one of two
    // jobs had a time to Running.
    opts.run_for = "3s".into();
    opts.ttl = 1;
    opts.deadline = 3;
    opts.prefix = ctx.ns.clone();
    opts.timeout = Duration::from_secs(120);
    opts.warmup = false; // the suite's plane is warm
    opts
}

async fn tiny_bench_run_completes_with_well_formed_json(ctx: Ctx) -> Result<()> {
    let mut opts = tiny_options(&ctx);
    opts.huge = Some(12);
    opts.huge_beside = 2;
    let report = bench::run(&ctx.cluster.client, None, &opts, |_| {}).await?;
    let json: Value = serde_json::from_str(&report.to_json()?)?;
    ensure!(json["operator"].as_str().is_some_and(|o| o.contains("tfjob-operator --namespace=")), "{json}");
    let s = &json["sizes"][0];
    ensure!(json["sizes"].as_array().map(Vec::len) == Some(2), "a size and the huge-job row: {json}");
    ensure!(s["jobs"] == 2 && s["deadline_jobs"] == 1 && s["pods"] == 11 && s["services"] == 11, "{s}");
    ensure!(s["operator"] == "tfjob-operator" && s["unfinished_jobs"] == 0, "every job waited for: {s}");
    ensure!(
        json["other_operators"] == serde_json::json!({}) && json["failures"] == serde_json::json!([]),
        "{json}"
    );
    let num = |k: &str| s[k].as_f64().unwrap_or(-1.0);
    ensure!(num("all_created_s") > 0.0 && num("bound_s") > 0.0 && num("ratio") > 0.0, "{s}");
    ensure!(num("jobs_per_second") > 0.0, "{s}");
    for (k, n) in [
        ("create_to_running", 2),
        ("create_to_succeeded", 2),
        ("success_lateness", 2),
        ("deadline_lateness", 1),
        ("ttl_lateness", 3),
    ] {
        ensure!(s[k]["n"] == n, "{k}: {}", s[k]);
        for q in ["median", "p95", "p99", "max"] {
            ensure!(s[k][q].is_f64(), "{k}.{q}: {}", s[k]);
        }
    }
    // Worker 0 of each job, stage by stage: every stage of both jobs seen.
    let stages = s["worker0_stages"].as_array().cloned().unwrap_or_default();
    ensure!(stages.len() == 5, "five stages: {stages:?}");
    for st in &stages {
        ensure!(st[1]["n"] == 2 && st[1]["median"].as_f64().is_some_and(|m| m >= 0.0), "{st}");
    }
    ensure!(report.table().contains("worker 0 of tfjob-operator at 2 jobs"), "{}", report.table());
    ensure!(num("operator_cpu_s") > 0.0 && num("operator_peak_rss_mib") > 1.0, "{s}");
    ensure!(s["operator_requests"]["create pods"] == 11.0, "requests: {}", s["operator_requests"]);
    ensure!(s["operator_requests"]["create services"] == 11.0, "requests: {}", s["operator_requests"]);
    // The huge-job row: the huge job beside the same 2 jobs.
    let h = &json["sizes"][1];
    ensure!(h["jobs"] == 2 && h["pods"] == 23 && h["services"] == 23, "{h}");
    let huge = &h["huge"];
    ensure!(huge["replicas"] == 12, "{huge}");
    let hnum = |k: &str| huge[k].as_f64().unwrap_or(-1.0);
    ensure!(hnum("all_created_s") > 0.0 && hnum("bound_s") > 0.0 && hnum("ratio") > 0.0, "{huge}");
    ensure!(hnum("running_p50_vs_without") > 0.0, "{huge}");
    ensure!(h["operator_requests"]["create pods"] == 23.0, "requests: {}", h["operator_requests"]);
    ensure!(report.table().contains("huge job of 12 replicas beside 2 jobs"), "{}", report.table());
    Ok(())
}

/// The re-list row on the local plane, tiny: three jobs whose pods run, a forced 410 (the
/// API server restarted over a compacted etcd), and the operator's re-list of pods and
/// services seen complete in its log, with its memory before and after.
async fn relist_row_forces_a_410(ctx: Ctx) -> Result<()> {
    let plane = crate::faults::plane(&ctx)?;
    let mut opts = tiny_options(&ctx);
    opts.sizes = vec![];
    opts.prefix = "e2e-rl".into();
    opts.relist = Some(3);
    let report = bench::run(&ctx.cluster.client, Some(plane), &opts, |_| {}).await?;
    let r = report.relist.clone().context("the re-list row")?;
    ensure!(r.jobs == 3 && r.pods == 15, "{r:?}");
    ensure!(r.peak_before_mib.is_some_and(|m| m > 1.0), "{r:?}");
    ensure!(r.peak_after_mib >= r.peak_before_mib, "{r:?}");
    let pods = r.watch_restarts.iter().find(|(res, _)| res == "pods").map(|(_, n)| *n);
    ensure!(pods.is_some_and(|n| n >= 1.0), "the pod watch restarted on the 410: {r:?}");
    ensure!(report.table().contains("forced re-list at 3 jobs"), "{}", report.table());
    crate::faults::api_back(&ctx).await?;
    print!("    {}", r.line());
    Ok(())
}
