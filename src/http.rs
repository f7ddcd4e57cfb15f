//! The operator's one HTTP port: `/healthz`, `/readyz` and `/metrics` (served by axum), and
//! the readiness state behind `/readyz`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::controller::freshness::Watches;
use crate::leader::Gate;
use crate::metrics::{self, Metrics};

/// Readiness: whether the caches have synced and every watch still follows the API server,
/// read with the leadership gate.
#[derive(Debug)]
pub struct Readiness {
    gate: Gate,
    synced: AtomicBool,
    watches: Arc<Watches>,
}

impl Readiness {
    pub fn new(gate: Gate) -> Readiness {
        Readiness { gate, synced: AtomicBool::new(false), watches: Arc::default() }
    }

    /// Ready: a follower waiting for the lease is ready; the leader once its caches synced,
    /// and while no watch has been unsynced for longer than [`crate::controller::freshness::UNSYNCED_LIMIT`].
    pub fn ready(&self) -> bool {
        self.not_ready().is_none()
    }

    /// Why the process is not ready, if it is not.
    pub fn not_ready(&self) -> Option<String> {
        let unsynced = self.watches.unsynced();
        let synced = self.synced.load(Ordering::Relaxed);
        if self.gate.ready(synced && unsynced.is_empty()) {
            return None;
        }
        if !synced {
            return Some("leader: caches not synced yet\n".into());
        }
        let names: Vec<String> = unsynced.iter().map(|(n, d)| format!("{n} for {}s", d.as_secs())).collect();
        Some(format!("leader: watches not synced: {}\n", names.join(", ")))
    }

    /// The watches the controller runs, followed for readiness.
    pub fn watches(&self) -> Arc<Watches> {
        self.watches.clone()
    }

    /// Records that the controller's caches have synced.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }
}

/// What the handlers read.
#[derive(Clone)]
struct Served {
    readiness: Arc<Readiness>,
    metrics: Arc<Metrics>,
}

/// `/healthz`: the process answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// `/readyz`: [`Readiness::ready`], and why not.
async fn readyz(State(s): State<Served>) -> (StatusCode, String) {
    match s.readiness.not_ready() {
        None => (StatusCode::OK, "ok\n".into()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// `/metrics`: the registry in the OpenMetrics text format.
async fn encode_metrics(State(s): State<Served>) -> impl IntoResponse {
    ([(CONTENT_TYPE, metrics::CONTENT_TYPE)], s.metrics.encode())
}

/// Any other path.
async fn not_found() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "not found\n")
}

/// The three paths; 404 for any other.
fn router(readiness: Arc<Readiness>, metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(encode_metrics))
        .fallback(not_found)
        .with_state(Served { readiness, metrics })
}

/// Serves the port until the process ends.
pub async fn serve(listener: TcpListener, readiness: Arc<Readiness>, metrics: Arc<Metrics>) {
    if let Err(e) = axum::serve(listener, router(readiness, metrics)).await {
        tracing::error!(error = %e, "the HTTP port stopped");
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[test]
    fn readiness_reads_the_gate() {
        let gate = Gate::elected();
        let h = Readiness::new(gate.clone());
        assert!(h.ready(), "a follower is ready");
        gate.set(true);
        assert!(!h.ready(), "the leader, before its caches synced");
        h.set_synced();
        assert!(h.ready());
    }

    /// The answer to `request`, sent in `parts` writes, read until the server closes.
    async fn exchange(addr: std::net::SocketAddr, parts: &[&str]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        for part in parts {
            s.write_all(part.as_bytes()).await.unwrap();
            s.flush().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let mut out = String::new();
        tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_string(&mut out))
            .await
            .expect("the server closes the connection")
            .unwrap();
        out
    }

    #[tokio::test]
    async fn serves_the_three_paths() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Gate::elected();
        gate.set(true);
        let readiness = Arc::new(Readiness::new(gate.clone()));
        tokio::spawn(serve(listener, readiness.clone(), Arc::new(Metrics::new(&gate))));
        let get = |path: &'static str| async move {
            exchange(addr, &[&format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")]).await
        };
        let ok = get("/healthz").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nok\n"), "{ok}");
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503 "), "leader before its caches synced");
        readiness.set_synced();
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(get("/readyz?verbose").await.starts_with("HTTP/1.1 200 OK\r\n"), "a query is ignored");
        let m = get("/metrics").await;
        assert!(m.contains("content-type: application/openmetrics-text"), "{m}");
        assert!(m.contains("\r\n\r\n# HELP tfjob_operator_reconciles "), "{m}");
        assert!(m.ends_with("# EOF\n"), "{m}");
        assert!(get("/nope").await.starts_with("HTTP/1.1 404 "));
        // A request line and headers that arrive in two writes.
        let split =
            exchange(addr, &["GET /heal", "thz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"]).await;
        assert!(split.starts_with("HTTP/1.1 200 OK\r\n"), "{split}");
    }
}
