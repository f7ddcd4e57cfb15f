//! The operator's one HTTP port: `/healthz`, `/readyz` and `/metrics`, and the readiness state
//! behind `/readyz`.
//!
//! A deliberately small HTTP/1.1 responder: every answer closes the connection, and requests
//! are read only up to their request line.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::leader::Gate;
use crate::metrics::{self, Metrics};

/// Readiness: whether the caches have synced, read with the leadership gate.
#[derive(Debug)]
pub struct Health {
    gate: Gate,
    synced: AtomicBool,
}

impl Health {
    pub fn new(gate: Gate) -> Health {
        Health { gate, synced: AtomicBool::new(false) }
    }

    /// Ready: a follower waiting for the lease is ready; the leader once its caches synced.
    pub fn ready(&self) -> bool {
        self.gate.ready(self.synced.load(Ordering::Relaxed))
    }

    /// Records that the controller's caches have synced.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }
}

/// The response to a request line's path.
fn respond(path: &str, health: &Health, metrics: &Metrics) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    match path.split('?').next().unwrap_or("") {
        "/healthz" => (200, TEXT, "ok\n".into()),
        "/readyz" if health.ready() => (200, TEXT, "ok\n".into()),
        "/readyz" => (503, TEXT, "leader: caches not synced yet\n".into()),
        "/metrics" => (200, metrics::CONTENT_TYPE, metrics.encode()),
        _ => (404, TEXT, "not found\n".into()),
    }
}

/// Serves the port until the process ends.
pub async fn serve(listener: TcpListener, health: Arc<Health>, metrics: Arc<Metrics>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else { continue };
        let (health, metrics) = (health.clone(), metrics.clone());
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("");
            let (code, content_type, body) = respond(path, &health, &metrics);
            let reason = match code {
                200 => "OK",
                503 => "Service Unavailable",
                _ => "Not Found",
            };
            let head = format!(
                "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_reads_the_gate() {
        let gate = Gate::elected();
        let h = Health::new(gate.clone());
        assert!(h.ready(), "a follower is ready");
        gate.set(true);
        assert!(!h.ready(), "the leader, before its caches synced");
        h.set_synced();
        assert!(h.ready());
    }

    #[tokio::test]
    async fn serves_the_three_paths() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gate = Gate::elected();
        gate.set(true);
        let health = Arc::new(Health::new(gate.clone()));
        tokio::spawn(serve(listener, health.clone(), Arc::new(Metrics::new(&gate))));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/healthz").await.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(get("/readyz").await.starts_with("HTTP/1.1 503 "), "leader before its caches synced");
        health.set_synced();
        assert!(get("/readyz").await.starts_with("HTTP/1.1 200 OK\r\n"));
        let m = get("/metrics").await;
        assert!(m.contains("content-type: application/openmetrics-text"), "{m}");
        assert!(m.contains("\r\n\r\n# HELP tfjob_operator_reconciles "), "{m}");
        assert!(m.ends_with("# EOF\n"), "{m}");
        assert!(get("/nope").await.starts_with("HTTP/1.1 404 "));
    }
}
