//! End-to-end tests against a real control plane: one plane for the whole run (or the user's
//! cluster with `USE_EXISTING_CLUSTER=true`), one namespace per test, deleted afterwards.
//!
//! A `harness = false` binary: the plane is started from the main thread, which outlives every
//! test, so a test's panic never stops it, and the plane's processes die with this process.
//! `cargo test --test e2e -- <substring>` runs the matching tests only.

mod bench;
mod controller;
mod faults;
mod gang;
mod huge;
mod install;
mod kueue;
mod kueue_env;
mod kueue_keys;
mod kueue_workloads;
mod multikueue;
mod replica_keys;
mod smoke;
mod stuck;
mod support;
mod suspend;
mod tensorflow;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use futures::StreamExt;
use tfjob_testsupport::Cluster;

/// What a test gets: the cluster and its own namespace.
pub struct Ctx {
    pub cluster: Arc<Cluster>,
    pub ns: String,
}

type TestFuture = Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// One test. `serial` tests run alone (timing, faults); a test with `local_only` (the
/// reason) needs the local plane and is skipped on an existing cluster.
pub struct Test {
    pub name: &'static str,
    pub run: fn(Ctx) -> TestFuture,
    pub serial: bool,
    pub local_only: Option<&'static str>,
    /// Skipped everywhere, for this reason (what it needs is not on this machine).
    pub skip: Option<&'static str>,
}

impl Test {
    /// Runs alone, after the parallel tests (timing).
    pub fn serial(mut self) -> Test {
        self.serial = true;
        self
    }

    /// Needs Kueue, which the suite starts on its local plane only (see `kueue_env`).
    pub fn kueue(mut self) -> Test {
        self.local_only = Some("needs Kueue, which the suite starts on its local control plane only");
        self
    }

    /// Skipped, for `why`: what it needs is not on this machine.
    pub fn skip(mut self, why: &'static str) -> Test {
        self.skip = Some(why);
        self
    }

    /// Injects faults into the local plane: runs alone, and only on the local plane.
    pub fn fault(mut self) -> Test {
        self.serial = true;
        self.local_only = Some("it stops and starts control-plane processes: local plane only");
        self
    }
}

#[macro_export]
macro_rules! test {
    ($f:path) => {
        $crate::Test {
            name: concat!(module_path!(), "::", stringify!($f)),
            run: |ctx| Box::pin($f(ctx)),
            serial: false,
            local_only: None,
            skip: None,
        }
    };
}

fn tests() -> Vec<Test> {
    let mut all = smoke::tests();
    all.extend(controller::tests());
    all.extend(install::tests());
    all.extend(suspend::tests());
    all.extend(huge::tests());
    all.extend(replica_keys::tests());
    all.extend(bench::tests());
    all.extend(kueue::tests());
    all.extend(kueue_keys::tests());
    all.extend(multikueue::tests());
    all.extend(gang::tests());
    all.extend(tensorflow::tests());
    // After every test of Kueue's own TFJob integration: it switches Kueue's off.
    all.extend(kueue_workloads::tests());
    // Last: serial tests run in this order, and the faults leave a plane that was restarted.
    all.extend(faults::tests());
    all.extend(stuck::tests());
    all
}

const TEST_TIMEOUT: Duration = Duration::from_secs(240);
const PARALLEL: usize = 4;

enum Outcome {
    Passed,
    Failed(String),
    Skipped(&'static str),
}

async fn run_one(cluster: Arc<Cluster>, t: &Test, n: usize) -> Outcome {
    if let Some(why) = t.skip {
        return Outcome::Skipped(why);
    }
    if let (Some(why), None) = (t.local_only, &cluster.plane) {
        return Outcome::Skipped(why);
    }
    // The test's name, shortened to keep the namespace within 63 characters; the number keeps
    // it unique (install tests use it to prefix cluster-scoped names).
    let short: String =
        t.name.rsplit("::").next().unwrap_or("t").replace('_', "-").chars().take(50).collect();
    let ns = format!("e2e-{}-{n}", short.trim_end_matches('-'));
    if let Err(e) = cluster.namespace(&ns).await {
        return Outcome::Failed(format!("setup: {e:#}"));
    }
    let ctx = Ctx { cluster: cluster.clone(), ns: ns.clone() };
    let mut handle = tokio::spawn((t.run)(ctx));
    let outcome = match tokio::time::timeout(TEST_TIMEOUT, &mut handle).await {
        Ok(Ok(Ok(()))) => Outcome::Passed,
        Ok(Ok(Err(e))) => Outcome::Failed(format!("{e:#}")),
        Ok(Err(join)) => Outcome::Failed(format!("panicked: {join}")),
        Err(_) => {
            // Stop it: its operator processes stop as the task drops them.
            handle.abort();
            let _ = handle.await;
            Outcome::Failed(format!("timed out after {TEST_TIMEOUT:?}"))
        }
    };
    support::deploy::forget_identities(&Ctx { cluster: cluster.clone(), ns: ns.clone() });
    cluster.delete_namespace(&ns).await;
    outcome
}

async fn run(filter: Option<String>) -> Result<(usize, usize, usize)> {
    let started = Instant::now();
    let cluster = Arc::new(Cluster::from_env().await?);
    if let (Some(plane), Some(path)) = (&cluster.plane, std::env::var_os("TFJOB_E2E_STATE")) {
        let pids: Vec<String> = plane.pids().iter().map(u32::to_string).collect();
        let ports: Vec<String> = plane.ports.iter().map(u16::to_string).collect();
        std::fs::write(path, format!("pids {}\nports {}\n", pids.join(" "), ports.join(" ")))?;
    }
    let crd = tfjob_operator::api::crd()?;
    cluster.install_crd(&crd).await?;
    eprintln!("e2e: cluster ready in {:.1}s", started.elapsed().as_secs_f64());

    let all: Vec<Test> =
        tests().into_iter().filter(|t| filter.as_deref().is_none_or(|f| t.name.contains(f))).collect();
    let (serial, parallel): (Vec<&Test>, Vec<&Test>) = all.iter().partition(|t| t.serial);
    let (mut passed, mut failed, mut skipped) = (0, 0, 0);
    let mut report = |name: &str, outcome: Outcome, took: Duration| match outcome {
        Outcome::Passed => {
            passed += 1;
            println!("test {name} ... ok ({:.1}s)", took.as_secs_f64());
        }
        Outcome::Failed(why) => {
            failed += 1;
            println!(
                "test {name} ... FAILED ({:.1}s)\n    {}",
                took.as_secs_f64(),
                why.replace('\n', "\n    ")
            );
        }
        Outcome::Skipped(why) => {
            skipped += 1;
            println!("test {name} ... skipped: {why}");
        }
    };
    // PARALLEL tests running at all times, each reported as it finishes; then the serial ones.
    let runs = parallel.iter().enumerate().map(|(i, t)| {
        let cluster = cluster.clone();
        async move {
            let t0 = Instant::now();
            (t.name, run_one(cluster, t, i + 1).await, t0.elapsed())
        }
    });
    let mut finished = futures::stream::iter(runs).buffer_unordered(PARALLEL);
    while let Some((name, outcome, took)) = finished.next().await {
        report(name, outcome, took);
    }
    drop(finished);
    for (i, t) in serial.iter().enumerate() {
        let t0 = Instant::now();
        let outcome = run_one(cluster.clone(), t, parallel.len() + i + 1).await;
        report(t.name, outcome, t0.elapsed());
    }
    // The RBAC audit over every operator process of the run (see `support::audit`).
    let t0 = Instant::now();
    let audit_ctx = Ctx { cluster: cluster.clone(), ns: "e2e-audit-0".into() };
    let no_refusals = support::audit::check_no_refusals(filter.is_none());
    let both_ways = support::audit::check_rbac_both_ways(&audit_ctx, filter.is_none()).await;
    for (name, result) in [
        ("audit::no_operator_was_refused", no_refusals),
        ("audit::rbac_is_exactly_what_the_code_sends", both_ways),
    ] {
        match result {
            Ok(summary) => {
                println!("    {summary}");
                report(name, Outcome::Passed, t0.elapsed());
            }
            Err(e) => report(name, Outcome::Failed(format!("{e:#}")), t0.elapsed()),
        }
    }
    if let Err(e) = kueue_env::shutdown().await {
        failed += 1;
        println!("test kueue shutdown ... FAILED\n    {e:#}");
    }
    drop(cluster);
    eprintln!("e2e: done in {:.1}s", started.elapsed().as_secs_f64());
    Ok((passed, failed, skipped))
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        for t in tests() {
            println!("{}: test", t.name);
        }
        return ExitCode::SUCCESS;
    }
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("e2e: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        tokio::select! {
            r = run(filter) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // Dropping the runtime drops the cluster, which stops every plane process.
    drop(rt);
    match result {
        None => {
            eprintln!("e2e: interrupted; the control plane was stopped");
            ExitCode::from(130)
        }
        Some(Err(e)) => {
            eprintln!("e2e: {e:#}");
            println!("0 passed, 1 failed");
            ExitCode::FAILURE
        }
        Some(Ok((passed, failed, skipped))) => {
            println!("\ne2e: {passed} passed, {failed} failed, {skipped} skipped");
            if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
    }
}
