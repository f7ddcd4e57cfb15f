//! Test-only fault points, compiled in only with the cargo feature `fault-points` (the e2e
//! suite's build; the release binary has none): when the environment variable
//! `TFJOB_FAULT_POINT` names a point and a job (`after-creates:<job>`), the reconcile that
//! reaches it logs `fault point <point> reached for <job>` and stops there for good, so a test
//! can kill the process exactly in that window. `held-create:<pod>` ([`hold_layer`]) holds
//! one create just past the leadership gate instead.

/// Stops here if the environment names this point for this job.
#[cfg(feature = "fault-points")]
pub fn reached(point: &str, job: &str) {
    let armed = std::env::var("TFJOB_FAULT_POINT").ok();
    if armed.as_deref() == Some(format!("{point}:{job}").as_str()) {
        tracing::warn!(point, job, "fault point {point} reached for {job}: stopping here");
        // The other tasks move off this worker; this reconcile never goes on.
        tokio::task::block_in_place(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        })
    }
}

/// Without the feature: nothing.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub fn reached(_point: &str, _job: &str) {}

/// `held-create:<pod>`: the first create of the pod named `<pod>` is handed, past the
/// leadership gate and the request deadline, to a task of its own that sends it 3 s later,
/// whether or not anyone still waits for the answer: the state of a write already queued on a
/// connection (hyper's connection task sends it) when the process is paused (SIGSTOP). Only
/// the fence can stop it ([`crate::fence`]). The layer is the innermost of the operator's.
#[cfg(feature = "fault-points")]
pub fn hold_layer() -> held::HoldLayer {
    held::HoldLayer::default()
}

/// Without the feature: a layer that adds nothing.
#[cfg(not(feature = "fault-points"))]
pub fn hold_layer() -> tower::layer::util::Identity {
    tower::layer::util::Identity::new()
}

#[cfg(feature = "fault-points")]
mod held {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Poll};

    use futures::FutureExt;
    use http::{Method, Request};
    use kube::client::Body;
    use tower::{BoxError, Layer, Service};

    use crate::transport::BoxFuture;

    /// Holds the armed pod's first create (see [`super::hold_layer`]).
    #[derive(Clone, Debug, Default)]
    pub struct HoldLayer {
        fired: Arc<AtomicBool>,
    }

    impl<S> Layer<S> for HoldLayer {
        type Service = Hold<S>;
        fn layer(&self, inner: S) -> Hold<S> {
            let pod = std::env::var("TFJOB_FAULT_POINT")
                .ok()
                .and_then(|a| a.strip_prefix("held-create:").map(|p| format!("\"name\":\"{p}\"")));
            Hold { inner, pod, fired: self.fired.clone() }
        }
    }

    #[derive(Clone, Debug)]
    pub struct Hold<S> {
        inner: S,
        /// The armed pod's name as it appears in a create's body.
        pod: Option<String>,
        fired: Arc<AtomicBool>,
    }

    impl<S> Hold<S> {
        /// Whether `req` is the armed pod's create (and the first one).
        fn holds(&self, req: &Request<Body>) -> bool {
            let Some(pod) = &self.pod else { return false };
            if req.method() != Method::POST || !req.uri().path().ends_with("/pods") {
                return false;
            }
            // A create's body is one buffer: read at once from a copy.
            let body = req.body().try_clone().and_then(|b| b.collect_bytes().now_or_never());
            let named = body.and_then(Result::ok).is_some_and(|b| String::from_utf8_lossy(&b).contains(pod));
            named && !self.fired.swap(true, Ordering::SeqCst)
        }
    }

    impl<S> Service<Request<Body>> for Hold<S>
    where
        S: Service<Request<Body>>,
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

        fn call(&mut self, req: Request<Body>) -> Self::Future {
            let hold = self.holds(&req);
            // The inner stack sends nothing until its future is polled.
            let sending = self.inner.call(req);
            if !hold {
                return Box::pin(async move { sending.await.map_err(Into::into) });
            }
            tracing::warn!("fault point held-create reached: a create past the gate is sent in 3 s");
            let detached = tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_secs(3)).await;
                sending.await.map_err(Into::into)
            });
            Box::pin(async move { detached.await.map_err(BoxError::from)? })
        }
    }
}
