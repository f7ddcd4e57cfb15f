//! The API client's own tower layers, around kube's stack (whose retry layer is off: a failed
//! request goes back to the reconcile, which backs off, so every attempt passes these layers):
//! a deadline for every request and every response body but a watch's ([`DeadlineLayer`]), and
//! the leadership gate for every write but the Lease's ([`GateLayer`]). The request counter is
//! [`crate::metrics::requests::CountLayer`]. A watch's body is bounded by
//! [`WATCH_TIMEOUT_SECS`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{BoxError, Layer, Service};

use crate::leader::Gate;
use crate::metrics::requests::classify;

/// How long the API server keeps a watch open (`timeoutSeconds`). kube's watcher gives up on a
/// watch silent for this plus 5 s, and watches again from where it was: a watch whose
/// connection hangs (a black hole: no answer, no reset) is replaced within a minute, not
/// kube's default 295 s. The price is one re-watch per watch per 55 s.
pub const WATCH_TIMEOUT_SECS: u32 = 55;

/// Whether the request is a watch (which lives as long as the server keeps it open).
pub fn is_watch<B>(req: &Request<B>) -> bool {
    req.uri().query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
}

/// Whether the leadership gate holds this request back: writes, except the Lease's (which a
/// follower must write to take over).
pub fn gated(method: &Method, resource: &str) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) && resource != "leases"
}

/// Gives every request `timeout` for its answer to start (a watch's comes at once), and every
/// response body but a watch's the same deadline to complete.
#[derive(Clone, Copy, Debug)]
pub struct DeadlineLayer(pub Duration);

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner, timeout: self.0 }
    }
}

#[derive(Clone, Debug)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

/// A boxed future of a client layer (here, in `fence.rs` and in the test-only fault points).
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

impl<S, B, RB> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    RB: Body + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<DeadlineBody<RB>>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (at, watch) = (tokio::time::Instant::now() + self.timeout, is_watch(&req));
        let (timeout, fut) = (self.timeout, self.inner.call(req));
        Box::pin(async move {
            // A watch sent on a connection that hangs is cut here too.
            let response = tokio::time::timeout_at(at, fut)
                .await
                .map_err(|_| BoxError::from(format!("no response within {timeout:?}")))?
                .map_err(Into::into)?;
            Ok(response.map(|body| DeadlineBody {
                inner: Box::pin(body),
                deadline: (!watch).then(|| Box::pin(tokio::time::sleep_until(at))),
            }))
        })
    }
}

/// A response body that fails once its request's deadline passes.
#[derive(Debug)]
pub struct DeadlineBody<B> {
    inner: Pin<Box<B>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> Body for DeadlineBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Some(d) = self.deadline.as_mut()
            && d.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err("the response body did not arrive before the deadline".into())));
        }
        self.inner.as_mut().poll_frame(cx).map(|f| f.map(|r| r.map_err(Into::into)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Refuses every gated request (see [`gated`]) while `Gate` is closed, at the moment it would
/// be sent: a write planned while leading never leaves after leadership is lost.
#[derive(Clone, Debug)]
pub struct GateLayer(pub Gate);

impl<S> Layer<S> for GateLayer {
    type Service = Gated<S>;
    fn layer(&self, inner: S) -> Gated<S> {
        Gated { inner, gate: self.0.clone() }
    }
}

#[derive(Clone, Debug)]
pub struct Gated<S> {
    inner: S,
    gate: Gate,
}

impl<S, B> Service<Request<B>> for Gated<S>
where
    S: Service<Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (_, resource) = classify(req.method(), req.uri());
        if gated(req.method(), resource) && !self.gate.is_open() {
            return Box::pin(std::future::ready(Err(BoxError::from(
                "not sent: this process no longer holds the leader lease",
            ))));
        }
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn req(method: &str, uri: &str) -> Request<String> {
        Request::builder().method(method).uri(uri).body(String::new()).unwrap()
    }

    #[test]
    fn what_is_gated_and_what_is_a_watch() {
        let cases = [
            ("POST", "/api/v1/namespaces/ns/pods", true),
            ("PATCH", "/apis/kubeflow.org/v1/namespaces/ns/tfjobs/j/status", true),
            ("DELETE", "/api/v1/namespaces/ns/services/s", true),
            ("POST", "/apis/events.k8s.io/v1/namespaces/ns/events", true),
            ("PUT", "/apis/coordination.k8s.io/v1/namespaces/op/leases/tfjob-operator", false),
            ("POST", "/apis/coordination.k8s.io/v1/namespaces/op/leases", false),
            ("GET", "/api/v1/namespaces/ns/pods/p", false),
            ("GET", "/api/v1/pods?watch=true", false),
        ];
        for (m, uri, want) in cases {
            let r = req(m, uri);
            let (_, resource) = classify(r.method(), r.uri());
            assert_eq!(gated(r.method(), resource), want, "{m} {uri}");
        }
        assert!(is_watch(&req("GET", "/api/v1/pods?labelSelector=a&watch=true&resourceVersion=1")));
        assert!(is_watch(&req("GET", "/api/v1/pods?watch=1")));
        assert!(!is_watch(&req("GET", "/api/v1/pods?labelSelector=watch%3Dtrue")));
    }

    /// A service that counts calls and answers after `delay`.
    #[derive(Clone)]
    struct Slow {
        calls: Arc<AtomicUsize>,
        delay: Duration,
    }

    impl Service<Request<String>> for Slow {
        type Response = Response<String>;
        type Error = BoxError;
        type Future = BoxFuture<Response<String>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<String>) -> Self::Future {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(Response::new("ok".to_string()))
            })
        }
    }

    /// A body whose one frame comes after `0`.
    struct LateBody(Pin<Box<tokio::time::Sleep>>, bool);

    impl Body for LateBody {
        type Data = &'static [u8];
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            if self.1 {
                return Poll::Ready(None);
            }
            std::task::ready!(self.0.as_mut().poll(cx));
            self.1 = true;
            Poll::Ready(Some(Ok(Frame::data(b"{}".as_slice()))))
        }
    }

    /// Answers at once with a body that takes 30 s.
    #[derive(Clone)]
    struct SlowBody;

    impl Service<Request<String>> for SlowBody {
        type Response = Response<LateBody>;
        type Error = BoxError;
        type Future = BoxFuture<Response<LateBody>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<String>) -> Self::Future {
            let body = LateBody(Box::pin(tokio::time::sleep(Duration::from_secs(30))), false);
            Box::pin(std::future::ready(Ok(Response::new(body))))
        }
    }

    async fn read_body<B: Body<Error = BoxError> + Unpin>(mut body: B) -> Result<(), BoxError> {
        while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            frame?;
        }
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn requests_but_watches_meet_their_deadline() {
        let calls = Arc::new(AtomicUsize::new(0));
        let slow = Slow { calls: calls.clone(), delay: Duration::from_secs(30) };
        let mut svc = DeadlineLayer(Duration::from_secs(10)).layer(slow);
        let err = svc.call(req("GET", "/api/v1/namespaces/ns/pods/p")).await.expect_err("timed out");
        assert!(err.to_string().contains("no response within 10s"), "{err}");
        let err = svc.call(req("GET", "/api/v1/pods?watch=true")).await.expect_err("hung watch");
        assert!(err.to_string().contains("no response within 10s"), "a watch's answer must start: {err}");
        let mut fast = DeadlineLayer(Duration::from_secs(10))
            .layer(Slow { calls: calls.clone(), delay: Duration::from_secs(1) });
        assert!(fast.call(req("POST", "/api/v1/namespaces/ns/pods")).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        let mut bodies = DeadlineLayer(Duration::from_secs(10)).layer(SlowBody);
        let get = bodies.call(req("GET", "/api/v1/pods")).await.expect("answered at once");
        let err = read_body(get.into_body()).await.expect_err("the body is late");
        assert!(err.to_string().contains("did not arrive before the deadline"), "{err}");
        let watch = bodies.call(req("GET", "/api/v1/pods?watch=true")).await.expect("answered at once");
        read_body(watch.into_body()).await.expect("a watch's body has no deadline");
    }

    #[tokio::test]
    async fn a_closed_gate_stops_writes_at_the_moment_they_would_leave() {
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Gate::elected();
        let mut svc = GateLayer(gate.clone()).layer(Slow { calls: calls.clone(), delay: Duration::ZERO });
        let err = svc.call(req("POST", "/api/v1/namespaces/ns/pods")).await.expect_err("refused");
        assert!(err.to_string().contains("no longer holds the leader lease"), "{err}");
        assert!(svc.call(req("GET", "/api/v1/namespaces/ns/pods/p")).await.is_ok(), "reads pass");
        assert!(svc.call(req("PUT", "/apis/coordination.k8s.io/v1/namespaces/o/leases/l")).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the refused write never reached the inner service");
        gate.set(true);
        assert!(svc.call(req("DELETE", "/api/v1/namespaces/ns/pods/p")).await.is_ok());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }
}
