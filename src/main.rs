//! The `tfjob-operator` binary: flags, logging, the API client, the health endpoint and the
//! controller, stopped by SIGTERM or Ctrl-C after in-flight reconciles finish.

use std::time::Duration;

use anyhow::Context;
use kube::client::ClientBuilder;
use tfjob_operator::cli::{self, LogFormat};
use tfjob_operator::controller::{self, Settings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// Answers `/healthz` and `/readyz` with 200 while the process runs.
async fn serve_health(listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .ok()
                .and_then(Result::ok);
            let request = String::from_utf8_lossy(&buf[..n.unwrap_or(0)]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let reply = match path {
                "/healthz" | "/readyz" => {
                    "HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
                }
                _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 10\r\nconnection: close\r\n\r\nnot found\n",
            };
            let _ = stream.write_all(reply.as_bytes()).await;
        });
    }
}

async fn client(opts: &cli::Options) -> anyhow::Result<kube::Client> {
    let config =
        kube::Config::infer().await.context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let builder = ClientBuilder::try_from(config)?;
    if opts.kube_api_qps == 0 {
        return Ok(builder.build());
    }
    // `burst` requests per `burst / qps` seconds: the rate is qps, bursts up to `burst`.
    let per = Duration::from_secs_f64(f64::from(opts.kube_api_burst) / f64::from(opts.kube_api_qps));
    Ok(builder.with_layer(&tower::limit::RateLimitLayer::new(u64::from(opts.kube_api_burst), per)).build())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match cli::parse(&args, |k| std::env::var(k).ok()) {
        Ok(o) => o,
        Err(msg) if msg.starts_with("tfjob-operator:") => {
            print!("{msg}");
            return Ok(());
        }
        Err(msg) => anyhow::bail!(msg),
    };
    init_logging(opts.log_format);
    let client = client(&opts).await?;
    let listener = tokio::net::TcpListener::bind(opts.http_addr)
        .await
        .with_context(|| format!("binding {}", opts.http_addr))?;
    info!(addr = %listener.local_addr()?, "serving /healthz and /readyz");
    tokio::spawn(serve_health(listener));

    let mut term = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: finishing in-flight work"),
            _ = tokio::signal::ctrl_c() => info!("interrupted: finishing in-flight work"),
        }
    };
    let settings = Settings {
        namespace: opts.namespace.clone(),
        concurrency: opts.concurrency,
        cluster_domain: opts.cluster_domain.clone(),
        instance: std::env::var("POD_NAME").ok(),
    };
    if opts.kube_api_qps > 0 {
        warn!(qps = opts.kube_api_qps, burst = opts.kube_api_burst, "client-side rate limit on");
    }
    controller::run(client, settings, shutdown).await;
    Ok(())
}
