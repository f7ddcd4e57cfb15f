//! Events about TFJobs: a bounded queue and a publisher task, so creates never wait behind
//! events.
//!
//! Hand-written on purpose: kube-runtime's `Recorder` awaits each publish and folds repeats
//! into a series with PATCH. This operator creates one Event per happening (the plan decides
//! when something happened, so there is nothing to fold) and never patches one, so its RBAC
//! needs `create` only; and a full queue drops events (counted) instead of slowing reconciles,
//! as client-go's broadcaster does.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, Resource, ResourceExt};
use tokio::sync::mpsc;
use tracing::warn;

use super::{FIELD_MANAGER, api_message, namespace_gone};
use crate::api::TFJob;
use crate::leader::Gate;
use crate::metrics::Metrics;
use crate::plan::PlannedEvent;

/// Events waiting for the publisher. When it is full (the API server is slower than the
/// events come), new events are dropped and counted.
pub const EVENT_QUEUE: usize = 8192;
/// Events published at once.
const EVENTS_IN_FLIGHT: usize = 8;
/// Longest note kept (the API server refuses notes over 1 KiB).
const MAX_NOTE: usize = 1000;

/// How long a namespace found terminating gets no events.
const GONE_FOR: Duration = Duration::from_secs(300);

/// Namespaces found terminating, and when (pure; the caller passes the time).
#[derive(Debug, Default)]
struct GoneNamespaces {
    since: HashMap<String, Instant>,
}

impl GoneNamespaces {
    fn insert(&mut self, ns: String, now: Instant) {
        self.since.retain(|_, at| now.duration_since(*at) < GONE_FOR);
        self.since.insert(ns, now);
    }

    fn contains(&self, ns: &str, now: Instant) -> bool {
        self.since.get(ns).is_some_and(|at| now.duration_since(*at) < GONE_FOR)
    }
}

fn lock(g: &Mutex<GoneNamespaces>) -> MutexGuard<'_, GoneNamespaces> {
    g.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The sending side: builds Events and queues them.
#[derive(Clone)]
pub struct EventQueue {
    tx: mpsc::Sender<Event>,
    instance: String,
    metrics: Arc<Metrics>,
    /// Added to the timestamp in event names, so events stamped with one reconcile's `now`
    /// still get distinct names.
    seq: Arc<AtomicU64>,
}

/// The receiving side: publishes queued events while this process leads. It ends once every
/// [`EventQueue`] is dropped and the queue is empty.
pub struct Publisher {
    rx: mpsc::Receiver<Event>,
}

/// A queue and its publisher. `instance` is the events' reporting instance.
pub fn queue(instance: String, metrics: Arc<Metrics>) -> (EventQueue, Publisher) {
    let (tx, rx) = mpsc::channel(EVENT_QUEUE);
    (EventQueue { tx, instance, metrics, seq: Arc::default() }, Publisher { rx })
}

/// `note` cut to at most [`MAX_NOTE`] bytes, on a character boundary.
fn bounded(note: &str) -> String {
    let mut cut = note.len().min(MAX_NOTE);
    while !note.is_char_boundary(cut) {
        cut -= 1;
    }
    note[..cut].to_string()
}

impl EventQueue {
    /// Queues an event about `job`, stamped `now`. A full queue drops it (counted, logged).
    pub fn push(&self, job: &TFJob, ev: &PlannedEvent, now: Timestamp) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let stamp = u128::try_from(now.as_nanosecond()).unwrap_or_default() + u128::from(seq);
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{stamp:x}", job.name_any())),
                namespace: job.namespace(),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            action: Some("Reconcile".into()),
            reason: Some(ev.reason.clone()),
            note: Some(bounded(&ev.note)),
            type_: Some(ev.type_.as_str().into()),
            regarding: Some(job.object_ref(&())),
            reporting_controller: Some(FIELD_MANAGER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..Default::default()
        };
        match self.tx.try_send(event) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.metrics.event_dropped();
                warn!(reason = %ev.reason, "the event queue is full: event dropped");
            }
        }
    }
}

impl Publisher {
    /// Publishes queued events, [`EVENTS_IN_FLIGHT`] at once, while `gate` is open. A failed
    /// publish is logged; events are informational and never retried. A namespace found
    /// terminating gets no more events.
    pub async fn run(self, client: Client, gate: Gate) {
        let gone = Arc::new(Mutex::new(GoneNamespaces::default()));
        let queue =
            futures::stream::unfold(self.rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) });
        queue
            .for_each_concurrent(EVENTS_IN_FLIGHT, |event| {
                let (client, gate, gone) = (client.clone(), gate.clone(), gone.clone());
                async move {
                    let ns = event.metadata.namespace.clone().unwrap_or_default();
                    if gate.check().is_err() || lock(&gone).contains(&ns, Instant::now()) {
                        return;
                    }
                    let api: Api<Event> = Api::namespaced(client, &ns);
                    if let Err(e) = api.create(&PostParams::default(), &event).await {
                        if namespace_gone(&e) {
                            lock(&gone).insert(ns, Instant::now());
                        } else {
                            warn!(reason = ?event.reason, error = %api_message(&e), "publishing an event failed");
                        }
                    }
                }
            })
            .await;
    }

    /// Takes every event queued so far (tests inspect the queue instead of publishing).
    #[cfg(test)]
    pub fn drain(&mut self) -> Vec<Event> {
        std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_are_bounded_on_char_boundaries() {
        assert_eq!(bounded("short"), "short");
        let exact = "a".repeat(MAX_NOTE);
        assert_eq!(bounded(&exact), exact);
        // 1201 bytes, each "é" two of them from byte 1: byte 1000 falls inside one.
        let long = format!("a{}", "é".repeat(600));
        assert!(!long.is_char_boundary(MAX_NOTE));
        let cut = bounded(&long);
        assert_eq!(cut.len(), MAX_NOTE - 1);
        assert!(long.starts_with(&cut));
    }

    #[test]
    fn names_are_distinct_within_one_instant() {
        let (q, mut p) = queue("me".into(), Arc::new(Metrics::default()));
        let mut job = TFJob::new("j", Default::default());
        job.metadata.namespace = Some("ns".into());
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        for _ in 0..3 {
            q.push(&job, &PlannedEvent::normal("R", "n"), now);
        }
        let names: std::collections::BTreeSet<_> =
            p.drain().into_iter().filter_map(|e| e.metadata.name).collect();
        assert_eq!(names.len(), 3);
        assert!(names.iter().all(|n| n.starts_with("j.")));
    }

    #[test]
    fn a_terminating_namespace_gets_no_events_for_a_while() {
        let t0 = Instant::now();
        let mut g = GoneNamespaces::default();
        assert!(!g.contains("ns", t0));
        g.insert("ns".into(), t0);
        assert!(g.contains("ns", t0 + Duration::from_secs(1)));
        assert!(!g.contains("other", t0));
        assert!(!g.contains("ns", t0 + GONE_FOR), "a namespace of that name may come back");
        g.insert("b".into(), t0 + GONE_FOR);
        assert_eq!(g.since.len(), 1, "old entries are dropped");
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let metrics = Arc::new(Metrics::default());
        let (q, mut p) = queue("me".into(), metrics.clone());
        let job = TFJob::new("j", Default::default());
        for _ in 0..EVENT_QUEUE + 2 {
            q.push(&job, &PlannedEvent::warning("R", "n"), Timestamp::UNIX_EPOCH);
        }
        assert_eq!(p.drain().len(), EVENT_QUEUE);
        assert!(metrics.encode().lines().any(|l| l == "tfjob_operator_events_dropped_total 2"));
    }
}
