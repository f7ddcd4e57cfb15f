//! The connection-level fence of the controller's API client: once this process has lost the
//! lease ([`Gate::lost`]), no byte leaves its connections, so a write that passed the
//! [`GateLayer`](crate::transport::GateLayer) just before the process was paused (SIGSTOP, a
//! stalled VM) and still sat in the client's buffers cannot land when it wakes, after another
//! process took over. The gate layer decides at the request; this decides at the socket, the
//! last point before the API server. The elector's client is not fenced: it writes the Lease.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Request, Response, Uri};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioExecutor;
use kube::client::{Body, ClientBuilder, ConfigExt, DynBody};
use tower::util::BoxService;
use tower::{BoxError, Service, ServiceBuilder, ServiceExt};

use crate::leader::Gate;
use crate::transport::BoxFuture;

/// What the fence answers a write it holds back.
pub const REFUSED: &str = "not sent: this process lost the leader lease (connection fenced)";

/// kube's default client stack, boxed (the same type as `ClientBuilder::try_from` gives).
pub type Stack = BoxService<Request<Body>, Response<Box<DynBody>>, BoxError>;

/// The client stack kube builds by default ([`ClientBuilder::try_from`]), the same layers in
/// the same order (base URI, auth, extra headers; no retry layer: `default_retry` is off),
/// over connections that pass the fence. kube's tracing layer is left out. A configuration
/// with a proxy gets kube's own stack, unfenced, and a warning: the fence sits on the TCP
/// connection, which a proxy's tunnel hides.
pub fn fenced_client(config: kube::Config, gate: Gate) -> Result<ClientBuilder<Stack>, kube::Error> {
    if config.proxy_url.is_some() {
        tracing::warn!("an API proxy is configured: the controller's connections are not fenced");
        return ClientBuilder::try_from(config);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(config.connect_timeout);
    let tls = config.rustls_https_connector_with_connector(Fenced { inner: http, gate })?;
    let client: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Builder::new(TokioExecutor::new()).build(tls);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(BoxError::from)
        .service(client)
        .map_response(|r: Response<hyper::body::Incoming>| {
            r.map(|body| Box::new(http_body_util::BodyExt::map_err(body, BoxError::from)) as Box<DynBody>)
        });
    Ok(ClientBuilder::new(BoxService::new(service), config.default_namespace.clone()))
}

/// A connector (`inner`) whose connections, and the connecting itself, stop once the gate
/// is lost. Also the connection type it makes.
#[derive(Clone, Debug)]
pub struct Fenced<T> {
    inner: T,
    gate: Gate,
}

impl<T> Fenced<T> {
    fn refused(&self) -> Option<io::Error> {
        if !self.gate.lost() {
            return None;
        }
        // Rare: only between the loss and the process's exit.
        tracing::warn!("{REFUSED}");
        Some(io::Error::new(io::ErrorKind::PermissionDenied, REFUSED))
    }
}

impl<C> Service<Uri> for Fenced<C>
where
    C: Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
    C::Response: Send + 'static,
{
    type Response = Fenced<C::Response>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        if let Some(e) = self.refused() {
            return Box::pin(std::future::ready(Err(e.into())));
        }
        let (connecting, gate) = (self.inner.call(uri), self.gate.clone());
        Box::pin(async move { Ok(Fenced { inner: connecting.await.map_err(Into::into)?, gate }) })
    }
}

impl<T: Read + Unpin> Read for Fenced<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

/// Every write asks the gate at the moment its bytes would go to the socket.
impl<T: Write + Unpin> Write for Fenced<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(e) = self.refused() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(e) = self.refused() {
            return Poll::Ready(Err(e));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for Fenced<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A connection that records what was written to it.
    #[derive(Default)]
    struct Sink(Vec<u8>);

    impl Write for Sink {
        fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            self.0.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn write(conn: &mut Fenced<Sink>, bytes: &[u8]) -> io::Result<usize> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(conn).poll_write(&mut cx, bytes) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("a sink is always ready"),
        }
    }

    #[test]
    fn a_connection_sends_nothing_once_the_lease_is_lost() {
        // (what the elector did, whether a write leaves)
        type Step = fn(&Gate);
        let cases: [(&str, Step, bool); 5] = [
            ("a follower (reads before it leads)", |_| {}, true),
            ("closed before it ever led", |g| g.set(false), true),
            ("leading, renewal valid", |g| g.renewed(Instant::now() + Duration::from_secs(60)), true),
            ("paused past the renew deadline", |g| g.renewed(Instant::now()), false),
            (
                "stepped down",
                |g| {
                    g.renewed(Instant::now() + Duration::from_secs(60));
                    g.set(false);
                },
                false,
            ),
        ];
        for (what, step, sends) in cases {
            let gate = Gate::elected();
            step(&gate);
            let mut conn = Fenced { inner: Sink::default(), gate };
            let r = write(&mut conn, b"POST /api/v1/namespaces/ns/pods");
            assert_eq!(r.is_ok(), sends, "{what}: {r:?}");
            assert_eq!(conn.inner.0.is_empty(), !sends, "{what}");
            if !sends {
                let e = r.expect_err("refused");
                assert_eq!(e.to_string(), REFUSED);
            }
        }
    }

    #[test]
    fn a_renewal_missed_mid_connection_stops_the_next_write() {
        let gate = Gate::elected();
        gate.renewed(Instant::now() + Duration::from_secs(60));
        let mut conn = Fenced { inner: Sink::default(), gate: gate.clone() };
        assert!(write(&mut conn, b"GET").is_ok());
        gate.renewed(Instant::now());
        assert!(write(&mut conn, b"POST").is_err());
        assert_eq!(conn.inner.0, b"GET", "only what was sent while leading");
    }

    #[tokio::test]
    async fn no_connection_is_made_once_the_lease_is_lost() {
        let gate = Gate::elected();
        gate.renewed(Instant::now());
        let mut connector =
            Fenced { inner: tower::service_fn(|_: Uri| async { Ok::<_, io::Error>(Sink::default()) }), gate };
        let r = connector.call(Uri::from_static("https://127.0.0.1:6443")).await;
        assert!(r.is_err_and(|e| e.to_string() == REFUSED));
    }
}
