//! The `tfjob-operator` binary: flags, logging, the API client, the HTTP port, leader
//! election and the controller, stopped by SIGTERM or Ctrl-C after in-flight reconciles
//! finish (and then the lease is released).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt;
use kube::client::ClientBuilder;
use tfjob_operator::cli::{self, LeaderElection, LogFormat};
use tfjob_operator::controller::{self, Settings};
use tfjob_operator::fence::fenced_client;
use tfjob_operator::http::{self, Readiness};
use tfjob_operator::leader::{Elector, Gate};
use tfjob_operator::metrics::Metrics;
use tfjob_operator::metrics::requests::CountLayer;
use tfjob_operator::plan::gang::GangScheduling;
use tfjob_operator::transport::{DeadlineLayer, GateLayer};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::oneshot;
use tracing::{info, warn};

/// Info for this operator, warnings from kube; kube's own per-request error lines are off: every
/// failed request already reaches a warn line of ours with the job and the operation.
const DEFAULT_LOG_FILTER: &str = "info,kube=warn,kube_client::client::builder=off";

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// The API clients: kube's stack without its retry layer (a failed request returns to the
/// reconcile, which backs off), then, outermost last: every request but a watch bounded in
/// time, every attempt counted, every write but the Lease's held at the gate. The
/// controller's stack sits on fenced connections ([`fenced_client`]). The controller's
/// client adds the optional rate limit; the elector's (second) has none and its own
/// connections: a renewal never waits in kube's queue behind hundreds of rate-limited creates.
async fn clients(
    opts: &cli::Options,
    metrics: Arc<Metrics>,
    gate: &Gate,
) -> anyhow::Result<(kube::Client, kube::Client)> {
    let mut config =
        kube::Config::infer().await.context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    config.default_retry = false;
    let stack = |base: ClientBuilder<_>| {
        base.with_layer(&tfjob_operator::fault_point::hold_layer())
            .with_layer(&DeadlineLayer(opts.request_timeout))
            .with_layer(&CountLayer(metrics.clone()))
            .with_layer(&GateLayer(gate.clone()))
    };
    let elector = stack(ClientBuilder::try_from(config.clone())?).build();
    // The controller's connections are fenced: they send nothing once the lease is lost.
    let builder = stack(fenced_client(config, gate.clone())?);
    if opts.kube_api_qps == 0 {
        return Ok((builder.build(), elector));
    }
    // `burst` requests per `burst / qps` seconds: the rate is qps, bursts up to `burst`.
    let per = Duration::from_secs_f64(f64::from(opts.kube_api_burst) / f64::from(opts.kube_api_qps));
    let limit = tower::limit::RateLimitLayer::new(u64::from(opts.kube_api_burst), per);
    Ok((builder.with_layer(&limit).build(), elector))
}

/// This process's name in the Lease and in its events: the pod name, else host and pid.
fn identity() -> String {
    std::env::var("POD_NAME").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
        format!("{}_{}", host.trim(), std::process::id())
    })
}

fn main() -> anyhow::Result<()> {
    one_malloc_arena();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(run())
}

/// One malloc arena for every thread. glibc gives threads that allocate at once arenas of
/// their own (up to 8 per core), and each keeps what its threads freed: at 1000 jobs, with
/// a forced re-list, one arena keeps the peak resident memory some 5 MiB lower
/// (BENCHMARKS.md, "Memory"). The operator's threads seldom allocate at the same instant.
#[cfg(target_env = "gnu")]
fn one_malloc_arena() {
    // SAFETY: mallopt only sets a parameter of the allocator, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// musl's allocator has a single heap already.
#[cfg(not(target_env = "gnu"))]
fn one_malloc_arena() {}

async fn run() -> anyhow::Result<()> {
    let opts = cli::Options::from_process();
    init_logging(opts.log_format);
    let gate = if opts.leader_election.is_some() { Gate::elected() } else { Gate::always_open() };
    let metrics = Arc::new(Metrics::new(&gate));
    let readiness = Arc::new(Readiness::new(gate.clone()));
    let (client, elector_client) = clients(&opts, metrics.clone(), &gate).await?;
    if opts.gang_scheduling == GangScheduling::Native {
        tfjob_operator::writer::check_pod_groups_served(&client).await?;
        info!("gang scheduling: one scheduling.k8s.io/v1alpha2 PodGroup per TFJob");
    }
    let listener = tokio::net::TcpListener::bind(opts.http_addr)
        .await
        .with_context(|| format!("binding {}", opts.http_addr))?;
    info!(addr = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
    tokio::spawn(http::serve(listener, readiness.clone(), metrics.clone()));

    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: finishing in-flight work"),
            _ = tokio::signal::ctrl_c() => info!("interrupted: finishing in-flight work"),
        }
    }
    .shared();
    let me = identity();
    let settings = Settings {
        namespace: opts.namespace.clone(),
        concurrency: opts.concurrency,
        writes_in_flight: usize::from(opts.writes_in_flight),
        cluster_domain: opts.cluster_domain.clone(),
        announce_creates: opts.announce_creates,
        startup_deadline_seconds: opts.startup_deadline_seconds,
        instance: Some(me.clone()),
        gang: opts.gang_scheduling,
        workloads: opts.kueue_workloads,
    };
    if opts.kube_api_qps > 0 {
        warn!(qps = opts.kube_api_qps, burst = opts.kube_api_burst, "client-side rate limit on");
    }
    let synced = readiness.clone();
    let Some(election) = opts.leader_election else {
        controller::run(client, settings, metrics, gate, synced, shutdown).await;
        return Ok(());
    };
    let clients = [client, elector_client];
    lead(clients, settings, metrics, gate, synced, election, me, shutdown).await
}

/// Waits for the lease, then runs the controller until shutdown (then releases the lease) or
/// until the lease is lost (then exits with an error, to start again as a follower).
#[allow(clippy::too_many_arguments)]
async fn lead(
    [client, elector_client]: [kube::Client; 2],
    settings: Settings,
    metrics: Arc<Metrics>,
    gate: Gate,
    synced: Arc<Readiness>,
    election: LeaderElection,
    me: String,
    shutdown: futures::future::Shared<impl Future<Output = ()> + Send + 'static>,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let elector = Elector::new(elector_client, &election.namespace, me.clone(), election.timings);
    info!(identity = %me, namespace = %election.namespace, lease = tfjob_operator::leader::LEASE_NAME, "waiting for the leader lease");
    let mut elector = tokio::spawn(elector.run(gate.clone(), async move {
        let _ = stop_rx.await;
    }));
    tokio::select! {
        () = gate.wait_until(true) => {}
        _ = &mut elector => anyhow::bail!("leader election stopped before this process led"),
        () = shutdown.clone() => {
            let _ = stop_tx.send(());
            let _ = elector.await;
            return Ok(());
        }
    }
    // The elector closes the gate when the lease is lost: writes stop at once, and the
    // controller stops too.
    let stop = {
        let (shutdown, gate) = (shutdown.clone(), gate.clone());
        async move {
            tokio::select! { () = shutdown => {}, () = gate.wait_until(false) => {} }
        }
    };
    controller::run(client, settings, metrics, gate.clone(), synced, stop).await;
    if !gate.is_open() {
        anyhow::bail!("lost the leader lease; exiting so that this process starts again as a follower");
    }
    let _ = stop_tx.send(());
    let _ = elector.await;
    Ok(())
}
