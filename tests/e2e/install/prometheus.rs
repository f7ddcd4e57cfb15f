//! Monitoring proven against real Prometheus (`hack/build-prometheus.sh`): Prometheus on
//! loopback scrapes the test's operator every 500 ms while one job succeeds (and is deleted
//! for its TTL) and one restarts and fails; Prometheus then holds the two new histograms with
//! exactly what the jobs did, and every PromQL expression of `deploy/monitoring/dashboard.json`
//! parses and returns data for the test's namespace through Prometheus' HTTP API.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use tfjob_operator::api::ConditionType;
use tfjob_testsupport::process::Proc;
use tfjob_testsupport::{free_port, http_get};

use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![test!(prometheus_evaluates_every_dashboard_expression)]
}

/// What Grafana's `$__rate_interval` becomes: four scrape intervals at least, as Grafana has it.
const RATE_INTERVAL: &str = "1m";

/// The families the dashboard must chart (issue 23: jobs by state, time to Running and to
/// Succeeded, restarts, API requests by code, reconcile errors by kind, watch restarts,
/// write-slot wait).
const CHARTED: &[&str] = &[
    "training_operator_jobs_created_total",
    "training_operator_jobs_successful_total",
    "training_operator_jobs_failed_total",
    "training_operator_jobs_deleted_total",
    "training_operator_jobs_restarted_total",
    "tfjob_operator_job_time_to_running_seconds_bucket",
    "tfjob_operator_job_time_to_succeeded_seconds_bucket",
    "tfjob_operator_api_requests_total",
    "tfjob_operator_reconcile_errors_total",
    "tfjob_operator_watch_restarts_total",
    "tfjob_operator_jobs_queued_to_create",
];

async fn prometheus_evaluates_every_dashboard_expression(ctx: Ctx) -> Result<()> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(repo_file("deploy/monitoring/dashboard.json"))?)?;
    let exprs = expressions(&dashboard);
    for family in CHARTED {
        ensure!(exprs.iter().any(|(_, e)| e.contains(family)), "no panel of the dashboard charts {family}");
    }

    let op = Operator::start(&ctx, &[])?;
    let prom = Prometheus::start(&ctx, op.http_port)?;
    eventually(WAIT, "Prometheus scraping the operator", || async {
        ensure!(
            prom.scalar(r#"up{job="tfjob-operator"}"#).await? == Some(1.0),
            "target not up (or not alone)"
        );
        Ok(())
    })
    .await
    .with_context(|| prom.log_tail())?;

    one_success_and_one_restarted_failure(&ctx, &op).await?;

    // What Prometheus stored: each job observed once, with its namespace only.
    prometheus_holds_what_the_jobs_did(&prom, &ctx.ns).await?;

    // A counter born at the jobs' end (deleted) has a rate once Prometheus holds two samples.
    every_expression_returns_data(&prom, &exprs, &ctx.ns).await?;
    drop(prom);
    drop(op);
    Ok(())
}

/// Job "ok" succeeds and is deleted for its TTL; job "r" restarts once and fails.
async fn one_success_and_one_restarted_failure(ctx: &Ctx, op: &Operator) -> Result<()> {
    let ok = [replica("PS", 1), replica("Worker", 1).fate(succeed("2s"))];
    create(ctx, job("ok", &ok, json!({"runPolicy": {"ttlSecondsAfterFinished": 1}}))).await?;
    let crashes = replica("Worker", 1).restart("OnFailure").fate(fail("1s", 1));
    create(ctx, job("r", &[crashes], json!({"runPolicy": {"backoffLimit": 1}}))).await?;
    let r = wait_job(ctx, "r", WAIT, "Failed", |j| has_condition(j, ConditionType::Failed))
        .await
        .with_context(|| op.log_tail())?;
    wait_job_gone(ctx, "ok", WAIT).await.with_context(|| op.log_tail())?;
    let restarts: i32 =
        r.status.as_ref().map(|s| s.replica_statuses.values().map(|v| v.restarts).sum()).unwrap_or(0);
    ensure!(restarts >= 1, "r restarted {restarts} times");
    Ok(())
}

/// Each job observed once in the histograms and counters, with `ns` as its only label.
async fn prometheus_holds_what_the_jobs_did(prom: &Prometheus, ns: &str) -> Result<()> {
    let ns = format!(r#"job_namespace="{}""#, ns);
    let want = [
        (format!("sum(tfjob_operator_job_time_to_succeeded_seconds_count{{{ns}}})"), 1.0),
        (format!("sum(training_operator_jobs_deleted_total{{{ns}}})"), 1.0),
        (format!("sum(training_operator_jobs_restarted_total{{{ns}}})"), 1.0),
        (format!("sum(training_operator_jobs_failed_total{{{ns}}})"), 1.0),
    ];
    eventually(Duration::from_secs(10), "Prometheus to scrape the jobs' end", || async {
        for (q, v) in &want {
            ensure!(prom.scalar(q).await? == Some(*v), "{q}: want {v}");
        }
        Ok(())
    })
    .await?;
    // "ok" reached Running; "r" did unless its worker failed before the operator saw it run
    // (its Running condition is gone after a restart, so its final status does not tell).
    let ran = prom.scalar(&format!("sum(tfjob_operator_job_time_to_running_seconds_count{{{ns}}})")).await?;
    ensure!(ran.is_some_and(|n| n == 1.0 || n == 2.0), "time to Running observed {ran:?} times");
    // The succeeded job ran its worker for 2 s; creation and condition times are whole seconds.
    let took = prom.scalar(&format!("sum(tfjob_operator_job_time_to_succeeded_seconds_sum{{{ns}}})")).await?;
    ensure!(took.is_some_and(|s| (1.0..30.0).contains(&s)), "time to Succeeded {took:?}");
    let labels = prom.query(&format!("tfjob_operator_job_time_to_running_seconds_count{{{ns}}}")).await?;
    let keys: Vec<String> = labels
        .iter()
        .flat_map(|s| s["metric"].as_object().into_iter().flat_map(|m| m.keys().cloned()))
        .collect();
    ensure!(
        keys.iter().all(|k| ["__name__", "job_namespace", "instance", "job"].contains(&k.as_str())),
        "labels {keys:?}: namespace only"
    );
    Ok(())
}

/// Every expression of the dashboard, for namespace `ns`, parses and returns data.
async fn every_expression_returns_data(
    prom: &Prometheus,
    exprs: &[(String, String)],
    ns: &str,
) -> Result<()> {
    eventually(Duration::from_secs(5), "every dashboard expression to return data", || async {
        let mut failed = Vec::new();
        for (panel, expr) in exprs {
            let q = expr.replace("$__rate_interval", RATE_INTERVAL).replace("$job_namespace", ns);
            match prom.query(&q).await {
                Ok(result) if !result.is_empty() => {}
                Ok(_) => failed.push(format!("{panel}: {q}: no data")),
                Err(e) => failed.push(format!("{panel}: {q}: {e:#}")),
            }
        }
        ensure!(
            failed.is_empty(),
            "{} of {} expressions failed:\n{}",
            failed.len(),
            exprs.len(),
            failed.join("\n")
        );
        Ok(())
    })
    .await?;
    Ok(())
}

fn repo_file(path: &str) -> std::path::PathBuf {
    tfjob_testsupport::repo_root().join(path)
}

/// Every panel target's PromQL expression, with its panel's title.
fn expressions(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let panels = dashboard["panels"].as_array().into_iter().flatten();
    for p in panels.flat_map(|p| std::iter::once(p).chain(p["panels"].as_array().into_iter().flatten())) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push((p["title"].as_str().unwrap_or_default().to_string(), e.to_string()));
            }
        }
    }
    out
}

/// Prometheus on loopback scraping one operator (static config); stopped on drop.
struct Prometheus {
    _proc: Proc,
    port: u16,
    log: std::path::PathBuf,
}

impl Prometheus {
    fn start(ctx: &Ctx, target_port: u16) -> Result<Prometheus> {
        let bin = tfjob_testsupport::built_dir("TFJOB_PROMETHEUS_DIR", "hack/build-prometheus.sh")?
            .join("prometheus");
        let dir = std::env::temp_dir().join(format!("tfjob-e2e-prometheus-{}", ctx.ns));
        // A fresh TSDB: an earlier run's series (same namespace, another port) would still
        // answer for 5 minutes.
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  scrape_timeout: 500ms\n  evaluation_interval: 1s\n\
                 scrape_configs:\n- job_name: tfjob-operator\n  static_configs:\n  - targets: ['127.0.0.1:{target_port}']\n"
            ),
        )?;
        let port = free_port()?;
        let args = [
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn".to_string(),
        ];
        let proc = Proc::spawn("prometheus", &bin, &args, &dir)?;
        Ok(Prometheus { _proc: proc, port, log: dir.join("prometheus.log") })
    }

    fn log_tail(&self) -> String {
        tail(&self.log)
    }

    /// An instant query's result vector; an error when Prometheus refuses it (a parse error).
    async fn query(&self, promql: &str) -> Result<Vec<Value>> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let (code, body) = http_get(self.port, &path).await.context("Prometheus does not answer")?;
        let v: Value = serde_json::from_str(&body).with_context(|| format!("{code}: {body}"))?;
        if v["status"] != "success" {
            bail!("{code} {}: {}", v["errorType"], v["error"]);
        }
        match v["data"]["resultType"].as_str() {
            Some("vector") | Some("matrix") => {
                Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
            }
            Some("scalar") => Ok(vec![v["data"]["result"].clone()]),
            other => bail!("result type {other:?}"),
        }
    }

    /// The value of a query's only sample, if it has one.
    async fn scalar(&self, promql: &str) -> Result<Option<f64>> {
        let result = self.query(promql).await?;
        Ok(match result.as_slice() {
            [one] => one["value"][1].as_str().and_then(|v| v.parse().ok()),
            _ => None,
        })
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// `s` with every byte but RFC 3986's unreserved characters percent-encoded.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
