//! A tower layer on the API client that counts every request by verb, resource and HTTP
//! status, with the pure classification of a request's method and path.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Method, Request, Response, Uri};
use tower::{Layer, Service};

use super::{Metrics, RequestLabels};

/// Counts the client's requests into [`Metrics`].
#[derive(Clone)]
pub struct CountLayer(pub Arc<Metrics>);

impl<S> Layer<S> for CountLayer {
    type Service = Counted<S>;
    fn layer(&self, inner: S) -> Counted<S> {
        Counted { inner, metrics: self.0.clone() }
    }
}

/// The counting service.
#[derive(Clone)]
pub struct Counted<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S, B, RB> Service<Request<B>> for Counted<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (verb, resource) = classify(req.method(), req.uri());
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let code = match &res {
                Ok(r) => r.status().as_u16().to_string(),
                Err(_) => "error".to_string(),
            };
            metrics.request(&RequestLabels { verb, resource, code });
            res
        })
    }
}

/// The resources the operator touches; anything else is `other`.
const RESOURCES: [&str; 11] = [
    "pods",
    "services",
    "tfjobs",
    "events",
    "leases",
    "podgroups",
    "namespaces",
    "nodes",
    "workloads",
    "resourceflavors",
    "workloadpriorityclasses",
];

/// A request's Kubernetes verb and resource (`tfjobs/status` for the subresource,
/// `discovery` for a group version's list of resources), from its method and path.
pub fn classify(method: &Method, uri: &Uri) -> (&'static str, &'static str) {
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return (verb(method, uri, false), "other"),
    };
    // `namespaces/<ns>/<resource>...` is namespaced; `namespaces[/<name>]` is the namespace itself.
    let rest = match rest {
        ["namespaces", _ns, tail @ ..] if !tail.is_empty() => tail,
        other => other,
    };
    let (resource, named, sub) = match rest {
        [r] => (*r, false, None),
        [r, _name] => (*r, true, None),
        [r, _name, sub, ..] => (*r, true, Some(*sub)),
        // `/api/v1`, `/apis/<group>/<version>`: what a group serves (open to every user).
        [] => return (verb(method, uri, false), "discovery"),
    };
    let resource = match (resource, sub) {
        ("tfjobs", Some("status")) => "tfjobs/status",
        ("workloads", Some("status")) => "workloads/status",
        (_, Some(_)) => "other",
        (r, None) => RESOURCES.iter().find(|k| **k == r).copied().unwrap_or("other"),
    };
    (verb(method, uri, named), resource)
}

fn verb(method: &Method, uri: &Uri, named: bool) -> &'static str {
    let watch = uri.query().is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
    match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_and_resources() {
        let cases = [
            ("GET", "/api/v1/pods?labelSelector=x&watch=true&resourceVersion=5", ("watch", "pods")),
            ("GET", "/api/v1/namespaces/ns/pods?labelSelector=x", ("list", "pods")),
            ("GET", "/api/v1/namespaces/ns/pods/p-1", ("get", "pods")),
            ("POST", "/api/v1/namespaces/ns/services?fieldManager=f", ("create", "services")),
            ("DELETE", "/api/v1/namespaces/ns/pods/p-1", ("delete", "pods")),
            ("DELETE", "/api/v1/namespaces/ns/pods", ("deletecollection", "pods")),
            ("POST", "/apis/scheduling.k8s.io/v1alpha2/namespaces/ns/podgroups", ("create", "podgroups")),
            (
                "PATCH",
                "/apis/kueue.x-k8s.io/v1beta2/namespaces/ns/workloads/w/status",
                ("patch", "workloads/status"),
            ),
            ("GET", "/apis/kueue.x-k8s.io/v1beta2/resourceflavors/f", ("get", "resourceflavors")),
            ("GET", "/apis/scheduling.k8s.io/v1alpha2", ("list", "discovery")),
            (
                "PATCH",
                "/apis/kubeflow.org/v1/namespaces/ns/tfjobs/j/status?force=true",
                ("patch", "tfjobs/status"),
            ),
            ("GET", "/apis/kubeflow.org/v1/tfjobs?watch=1", ("watch", "tfjobs")),
            ("DELETE", "/apis/kubeflow.org/v1/namespaces/ns/tfjobs/j", ("delete", "tfjobs")),
            ("POST", "/apis/events.k8s.io/v1/namespaces/ns/events", ("create", "events")),
            ("PUT", "/apis/coordination.k8s.io/v1/namespaces/op/leases/tfjob-operator", ("update", "leases")),
            ("GET", "/api/v1/namespaces/ns", ("get", "namespaces")),
            ("GET", "/api/v1/namespaces/ns/pods/p/log", ("get", "other")),
            ("GET", "/apis/apps/v1/namespaces/ns/deployments", ("list", "other")),
            ("GET", "/version", ("list", "other")),
        ];
        for (method, uri, want) in cases {
            let got = classify(&method.parse().unwrap(), &uri.parse().unwrap());
            assert_eq!(got, want, "{method} {uri}");
        }
    }
}
