//! Whether each watch (tfjobs, pods, services, podgroups) follows the API server, for
//! `/readyz`. A watch is synced once its list is complete and its watch request was answered:
//! kube's watcher sends a watch only after a whole list, and lists again when it cannot
//! resume, so a watch is synced exactly while its last request is a watch answered 2xx. Each
//! watch gets its own client ([`watch_client`]) that records its requests; the rules are pure
//! ([`WatchSync::after`], [`unsynced_too_long`]).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use http::{Request, Response};
use kube::Client;
use kube::client::Body;

/// How long a watch may stay unsynced before `/readyz` answers 503. Long enough that nothing
/// routine trips it: a first list or a re-list after a 410 (the TFJob list comes in pages of
/// 500, each allowed `--request-timeout`), an API server restart (watches retry at least once a
/// second, [`super::watch_backoff`], and are back within seconds of it answering). Short
/// enough that a cache that has stopped following the cluster (a list refused or failing, a
/// watch that cannot start) shows within a minute, a dozen readiness probes of `deploy/`.
pub const UNSYNCED_LIMIT: Duration = Duration::from_secs(60);

/// One request of a watch, as its client sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchRequest {
    /// A list (a page of one): the cache is being (re)filled.
    ListSent,
    /// A watch request sent; its answer is not in yet.
    WatchSent,
    /// The answer to a watch request: 2xx (`true`), or an error status or no answer.
    WatchAnswered(bool),
}

/// One watch's state: since when it has not been synced (`None`: synced).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchSync {
    pub unsynced_since: Option<Instant>,
}

impl WatchSync {
    /// A watch that has not listed yet, from `now`.
    pub fn new(now: Instant) -> WatchSync {
        WatchSync { unsynced_since: Some(now) }
    }

    /// The state after `request` at `now`: a list or a pending watch unsyncs it (from the
    /// first such moment), a watch answered 2xx syncs it, a failed one leaves it unsynced.
    pub fn after(self, request: WatchRequest, now: Instant) -> WatchSync {
        let unsynced = WatchSync { unsynced_since: Some(self.unsynced_since.unwrap_or(now)) };
        match request {
            WatchRequest::ListSent | WatchRequest::WatchSent | WatchRequest::WatchAnswered(false) => unsynced,
            WatchRequest::WatchAnswered(true) => WatchSync { unsynced_since: None },
        }
    }
}

/// The watches unsynced for longer than `limit` at `now`, with how long.
pub fn unsynced_too_long(
    watches: &[(&'static str, WatchSync)],
    now: Instant,
    limit: Duration,
) -> Vec<(&'static str, Duration)> {
    watches
        .iter()
        .filter_map(|(name, w)| Some((*name, now.saturating_duration_since(w.unsynced_since?))))
        .filter(|(_, d)| *d > limit)
        .collect()
}

/// Every watch of the process, by name.
#[derive(Debug, Default)]
pub struct Watches {
    watches: Mutex<Vec<(&'static str, WatchSync)>>,
}

impl Watches {
    /// Starts following watch `name`, unsynced from now.
    fn register(&self, name: &'static str) {
        let mut w = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        w.retain(|(n, _)| *n != name);
        w.push((name, WatchSync::new(Instant::now())));
    }

    fn record(&self, name: &'static str, request: WatchRequest) {
        let now = Instant::now();
        let mut w = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, state)) = w.iter_mut().find(|(n, _)| *n == name) {
            *state = state.after(request, now);
        }
    }

    /// The watches unsynced for longer than [`UNSYNCED_LIMIT`] now.
    pub fn unsynced(&self) -> Vec<(&'static str, Duration)> {
        let w = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        unsynced_too_long(&w, Instant::now(), UNSYNCED_LIMIT)
    }
}

/// Whether a request is a watch (kube sends `watch=true`).
fn is_watch(req: &Request<Body>) -> bool {
    req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"))
}

/// `client` for watch `name`: the same connection and layers, and every request of the watch
/// recorded in `watches`.
pub fn watch_client(client: &Client, watches: Arc<Watches>, name: &'static str) -> Client {
    watches.register(name);
    let inner = client.clone();
    let service = tower::service_fn(move |req: Request<Body>| {
        let (inner, watches) = (inner.clone(), watches.clone());
        async move {
            let watch = is_watch(&req);
            watches.record(name, if watch { WatchRequest::WatchSent } else { WatchRequest::ListSent });
            let answer = inner.send(req).await;
            if watch {
                let ok = answer.as_ref().is_ok_and(|r: &Response<Body>| r.status().is_success());
                watches.record(name, WatchRequest::WatchAnswered(ok));
            }
            answer
        }
    });
    Client::new(service, client.default_namespace().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use WatchRequest::*;

    #[test]
    fn a_watch_is_synced_while_its_last_request_is_an_answered_watch() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let synced = WatchSync { unsynced_since: None };
        let since = |n: u64| WatchSync { unsynced_since: Some(s(n)) };
        // (case, state before, request, at, state after)
        let cases = [
            ("a list unsyncs", synced, ListSent, s(5), since(5)),
            ("a further list page keeps the first moment", since(5), ListSent, s(7), since(5)),
            ("the watch after the list: still unsynced", since(5), WatchSent, s(8), since(5)),
            ("the watch answered 200: synced", since(5), WatchAnswered(true), s(8), synced),
            ("a watch refused (403) or unanswered: unsynced", since(5), WatchAnswered(false), s(9), since(5)),
            ("a synced watch restarting: unsynced until answered", synced, WatchSent, s(290), since(290)),
            ("its answer: synced again", since(290), WatchAnswered(true), s(290), synced),
            ("a watch that fails to resume", synced, WatchAnswered(false), s(300), since(300)),
        ];
        for (name, before, request, at, want) in cases {
            assert_eq!(before.after(request, at), want, "{name}");
        }
    }

    #[test]
    fn unready_when_a_watch_is_unsynced_for_longer_than_the_limit() {
        let t0 = Instant::now();
        let s = |n: u64| t0 + Duration::from_secs(n);
        let at = |n: u64| WatchSync { unsynced_since: Some(s(n)) };
        let synced = WatchSync { unsynced_since: None };
        let limit = UNSYNCED_LIMIT;
        type Case = (&'static str, Vec<(&'static str, WatchSync)>, u64, Vec<(&'static str, u64)>);
        let cases: Vec<Case> = vec![
            ("all synced", vec![("pods", synced), ("tfjobs", synced)], 1000, vec![]),
            ("unsynced for exactly the limit: still ready", vec![("tfjobs", at(0))], 60, vec![]),
            ("unsynced past the limit", vec![("pods", synced), ("tfjobs", at(0))], 61, vec![("tfjobs", 61)]),
            ("a re-list under the limit", vec![("services", at(100))], 130, vec![]),
            (
                "each watch on its own",
                vec![("pods", at(0)), ("services", at(50)), ("podgroups", at(10))],
                100,
                vec![("pods", 100), ("podgroups", 90)],
            ),
            ("no watches yet", vec![], 1000, vec![]),
        ];
        for (name, watches, now, want) in cases {
            let want: Vec<(&str, Duration)> =
                want.into_iter().map(|(n, secs)| (n, Duration::from_secs(secs))).collect();
            assert_eq!(unsynced_too_long(&watches, s(now), limit), want, "{name}");
        }
    }

    #[test]
    fn watches_are_told_from_lists_by_their_query() {
        let req = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
        assert!(is_watch(&req("/api/v1/pods?labelSelector=a&watch=true&resourceVersion=5")));
        assert!(!is_watch(&req("/api/v1/pods?labelSelector=a&limit=100")));
        assert!(!is_watch(&req("/apis/kubeflow.org/v1/tfjobs")));
        assert!(!is_watch(&req("/api/v1/pods?labelSelector=watch%3Dtrue")));
    }
}
