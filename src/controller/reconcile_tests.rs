//! The whole `reconcile` without a cluster: observe, plan, apply and report against a mock
//! API server (tower-test), with the context's own bookkeeping. What only the reconcile itself
//! does is checked here: the job found gone, the follow-up status write, the backoff records,
//! and status write coalescing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, Request, Response};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, store::Writer as StoreWriter};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tower_test::mock;

use super::cached_job::CachedJob;
use super::observe::{CachedPod, CachedService, Caches};
use super::tests::{respond, status_body};
use super::{Context, Settings, error_policy, reconcile};
use crate::api::{JobView, ReplicaSpec, ReplicaType, TFJob, TFJobSpec};
use crate::error::Error;
use crate::leader::Gate;
use crate::metrics::Metrics;
use crate::objects::Builder;
use crate::plan::coalesce::only_counts;
use crate::plan::{self, ReplicaId};
use crate::writer::{Writer, events};

type Handle = mock::Handle<Request<Body>, Response<Body>>;
type Reconcile = tokio::task::JoinHandle<Result<Action, Error>>;

/// A context whose client is the mock, and the writers of its pod and service caches.
struct Fixture {
    ctx: Arc<Context>,
    handle: Handle,
    pods: StoreWriter<CachedPod>,
    services: StoreWriter<CachedService>,
    metrics: Arc<Metrics>,
}

fn fixture() -> Fixture {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let metrics = Arc::new(Metrics::default());
    let (queue, _publisher) = events::queue("test".into(), metrics.clone());
    let gate = Gate::always_open();
    let (pods, pod_writer) = reflector::store();
    let (services, service_writer) = reflector::store();
    let caches =
        Caches { pods, services, pod_index: Arc::default(), service_index: Arc::default(), pod_groups: None };
    let settings = Settings { concurrency: 4, writes_in_flight: 16, ..Settings::default() };
    let writer = Writer::new(client, gate.clone(), queue);
    let ctx = Context::new(writer, caches, reflector::store().0, settings, metrics.clone(), gate, None);
    // The job cache follows the API server: apply need not read the job back before creating.
    ctx.jobs_fresh.store(true, std::sync::atomic::Ordering::SeqCst);
    Fixture { ctx: Arc::new(ctx), handle, pods: pod_writer, services: service_writer, metrics }
}

impl Fixture {
    fn reconcile(&self, job: &TFJob) -> Reconcile {
        tokio::spawn(reconcile(Arc::new(job.clone()), self.ctx.clone()))
    }

    /// Puts `pod` in the cache, as the pod watch would.
    fn cache_pod(&mut self, pod: Pod) {
        self.ctx.caches.pod_index.lock().expect("lock").applied(&pod.metadata);
        self.pods.apply_watcher_event(&watcher::Event::Apply(CachedPod::from(pod)));
    }

    fn cache_service(&mut self, service: Service) {
        self.ctx.caches.service_index.lock().expect("lock").applied(&service.metadata);
        self.services.apply_watcher_event(&watcher::Event::Apply(CachedService::from(service)));
    }

    /// The next request, its JSON body and its responder.
    async fn next(&mut self) -> (Method, String, Value, mock::SendResponse<Response<Body>>) {
        let next = tokio::time::timeout(Duration::from_secs(10), self.handle.next_request());
        let (req, send) = next.await.expect("a request within 10 s").expect("a request");
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let bytes = req.into_body().collect_bytes().await.expect("body");
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON") };
        (method, path, body, send)
    }

    /// What the reconcile returned; a request sent instead fails the test, named.
    async fn ended(&mut self, mut task: Reconcile, what: &str) -> Result<Action, Error> {
        tokio::select! {
            biased;
            r = &mut task => r.expect("task"),
            req = self.handle.next_request() => match req {
                Some((req, _)) => panic!("{what}: {} {} was sent", req.method(), req.uri().path()),
                None => task.await.expect("task"),
            },
        }
    }

    fn held(&self) -> f64 {
        self.metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("tfjob_operator_status_writes_held"))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

fn job() -> TFJob {
    job_of(2)
}

/// A job of `workers` workers.
fn job_of(workers: i32) -> TFJob {
    let mut spec = TFJobSpec::default();
    let template =
        serde_json::from_value(json!({"spec": {"containers": [{"name": "tensorflow", "image": "tf"}]}}))
            .expect("template");
    spec.tf_replica_specs
        .insert("Worker".into(), ReplicaSpec { replicas: Some(workers), template, restart_policy: None });
    let mut j = TFJob::new("j", spec);
    j.metadata.namespace = Some("ns".into());
    j.metadata.uid = Some("uid-j".into());
    j.metadata.resource_version = Some("10".into());
    j.metadata.creation_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::now()));
    j
}

fn w(index: i32) -> ReplicaId {
    ReplicaId { rtype: ReplicaType::Worker, index }
}

fn running_pod(j: &TFJob, i: i32, phase: &str) -> Pod {
    let view = JobView::new(j).expect("view");
    let mut pod = Builder::new(&view, None).pod(w(i)).expect("pod");
    pod.metadata.uid = Some(format!("uid-p{i}"));
    pod.metadata.resource_version = Some("5".into());
    pod.status = Some(serde_json::from_value(json!({"phase": phase})).expect("status"));
    pod
}

fn service(j: &TFJob, i: i32) -> Service {
    let view = JobView::new(j).expect("view");
    let mut svc = Builder::new(&view, None).service(w(i)).expect("service");
    svc.metadata.uid = Some(format!("uid-s{i}"));
    svc.metadata.resource_version = Some("5".into());
    svc
}

/// The job as stored after a first status write whose body (a merge patch) was `patch`, at
/// `version`.
fn stored_with(patch: &Value, version: &str) -> Value {
    stored_after(&serde_json::to_value(job()).expect("json"), patch, version)
}

/// `before` as stored after a status write whose body (a merge patch) was `patch`, at `version`.
fn stored_after(before: &Value, patch: &Value, version: &str) -> Value {
    let mut j = before.clone();
    j["status"] = crate::writer::merge_patch::apply(&before["status"], &patch["status"]);
    j["metadata"]["resourceVersion"] = json!(version);
    j
}

const STATUS: &str = "/apis/kubeflow.org/v1/namespaces/ns/tfjobs/j/status";

#[tokio::test]
async fn a_job_found_gone_is_dropped_and_its_stale_cache_sends_nothing() {
    let mut f = fixture();
    let j = job();
    f.ctx.backoffs().failed("uid-j");
    let task = f.reconcile(&j);
    let (m, path, _, send) = f.next().await;
    assert_eq!((m, path.as_str()), (Method::PATCH, STATUS), "a new job's status is written first");
    respond(send, 404, status_body(404, "NotFound"));
    let action = f.ended(task, "after the 404").await.expect("a job gone is no error");
    assert_eq!(action, Action::await_change());
    assert_eq!(f.ctx.backoffs().failed("uid-j"), super::backoff::error_delay(1), "its records were dropped");
    // The cache still shows the job: nothing is planned from it.
    let again = f.reconcile(&j);
    assert_eq!(f.ended(again, "the stale cache").await.expect("ok"), Action::await_change());
}

#[tokio::test]
async fn a_refused_create_writes_the_follow_up_status_and_backs_off() {
    let mut f = fixture();
    let j = job();
    let task = f.reconcile(&j);
    let (m, path, body, send) = f.next().await;
    assert_eq!((m, path.as_str()), (Method::PATCH, STATUS));
    let stored = stored_with(&body, "11");
    respond(send, 200, stored.clone());
    let (m, path, body, send) = f.next().await;
    assert_eq!((m, path.as_str()), (Method::POST, "/api/v1/namespaces/ns/services"));
    let mut svc = body.clone();
    svc["metadata"]["uid"] = json!("uid-s0");
    svc["metadata"]["resourceVersion"] = json!("12");
    respond(send, 201, svc);
    let (m, path, _, send) = f.next().await;
    assert_eq!((m, path.as_str()), (Method::POST, "/api/v1/namespaces/ns/pods"));
    respond(send, 422, status_body(422, "Invalid"));
    // The refusal follows as a second status write, over the first one's version.
    let (m, path, body, send) = f.next().await;
    assert_eq!((m, path.as_str()), (Method::PATCH, STATUS), "the follow-up status write");
    let conditions = body["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let failure = conditions.iter().find(|c| c["type"] == "ReplicaFailure").expect("ReplicaFailure");
    assert_eq!(failure["status"], "True");
    assert!(failure["message"].as_str().is_some_and(|m| m.contains("Invalid (test)")), "{failure}");
    assert_eq!(body["metadata"]["resourceVersion"], "11", "fenced on the first write's version");
    respond(send, 200, stored_after(&stored, &body, "13"));
    let action = f.ended(task, "after the follow-up write").await.expect("reconciled");
    assert_eq!(action, Action::requeue(super::backoff::CREATE_BACKOFF_FIRST), "the first create backoff");

    // Reconciled again at once: the creates wait out the backoff, nothing is sent.
    let again = f.reconcile(&j);
    let action = f.ended(again, "within the backoff").await.expect("reconciled");
    let wait = action_wait(&action);
    assert!(
        wait <= super::backoff::CREATE_BACKOFF_FIRST && wait > Duration::from_secs(4),
        "woken when the backoff ends: {wait:?}"
    );
}

fn action_wait(action: &Action) -> Duration {
    // `Action` shows its wait only through Debug.
    let shown = format!("{action:?}");
    let secs = |s: &str| s.parse::<f64>().ok().map(Duration::from_secs_f64);
    let inner = shown.split("Some(").nth(1).and_then(|s| s.split(')').next()).unwrap_or("");
    inner
        .strip_suffix("ms")
        .and_then(|ms| secs(ms).map(|d| d / 1000))
        .or_else(|| inner.strip_suffix('s').and_then(secs))
        .unwrap_or_else(|| panic!("no wait in {shown}"))
}

#[tokio::test]
async fn failed_reconciles_back_off_until_one_succeeds() {
    let mut f = fixture();
    let j = job();
    let mut waits = Vec::new();
    for _ in 0..3 {
        let task = f.reconcile(&j);
        let (_, path, _, send) = f.next().await;
        assert_eq!(path, STATUS);
        respond(send, 500, status_body(500, "InternalError"));
        let err = f.ended(task, "after the 500").await.expect_err("a 500 fails the reconcile");
        waits.push(action_wait(&error_policy(Arc::new(CachedJob::new(&j)), &err, f.ctx.clone())));
    }
    assert_eq!(
        waits,
        [1, 2, 3].map(super::backoff::error_delay).to_vec(),
        "errors counted per job, doubling"
    );
    // A reconcile that succeeds starts the count again.
    let task = f.reconcile(&j);
    let (_, path, body, send) = f.next().await;
    assert_eq!(path, STATUS);
    respond(send, 200, stored_with(&body, "11"));
    for _ in 0..4 {
        let (_, _, body, send) = f.next().await;
        let mut obj = body.clone();
        obj["metadata"]["uid"] = json!(format!("uid-{}", obj["metadata"]["name"].as_str().unwrap_or("")));
        obj["metadata"]["resourceVersion"] = json!("12");
        respond(send, 201, obj);
    }
    f.ended(task, "after the creates").await.expect("reconciled");
    assert_eq!(f.ctx.backoffs().failed("uid-j"), super::backoff::error_delay(1), "counted from one again");
}

#[tokio::test]
async fn a_status_that_only_moves_active_counts_is_held_then_written() {
    let mut f = fixture();
    let mut j = job_of(3);
    // The job as last written: worker 0 running, workers 1 and 2 pending; now worker 1 runs
    // too (worker 2 still pending, so the time all pods started is not set yet).
    let pod = |i, phase| running_pod(&j, i, phase);
    let (p0, p1, p2) = (pod(0, "Running"), pod(1, "Running"), pod(2, "Pending"));
    let services = [service(&j, 0), service(&j, 1), service(&j, 2)];
    let at = Timestamp::now();
    let before = plan::plan(&j, &[p0.clone(), pod(1, "Pending"), p2.clone()], &services, at);
    let after = plan::plan(&j, &[p0.clone(), p1.clone(), p2.clone()], &services, at);
    j.status = before.status.clone();
    let (old, new) = (j.status.clone().expect("status"), after.status.clone().expect("a status change"));
    assert!(only_counts(&old, &new), "the setup moves active counts only: {old:?} -> {new:?}");
    for obj in [p0, p1, p2] {
        f.cache_pod(obj);
    }
    for obj in services {
        f.cache_service(obj);
    }
    // Written a moment ago: the change waits for the rest of the window, and nothing is sent.
    f.ctx.status_writes().wrote("uid-j", Instant::now());
    let task = f.reconcile(&j);
    let action = f.ended(task, "within the window").await.expect("reconciled");
    let wait = action_wait(&action);
    // Woken when the window ends (rounded up to the next millisecond, never early).
    let hold = crate::plan::coalesce::COUNTS_HOLD;
    assert!(wait <= hold + Duration::from_millis(1) && wait > hold / 2, "{wait:?}");
    assert_eq!(f.held(), 1.0, "counted as held");
    assert!(f.ctx.status_writes().held_since("uid-j").is_some(), "the hold's window started");
    // Once the window is over, the same change is written.
    let before = Instant::now() - hold;
    f.ctx.status_writes().wrote("uid-j", before - hold);
    f.ctx.status_writes().planned("uid-j", true, before);
    let task = f.reconcile(&j);
    let (m, path, body, send) = f.next().await;
    assert_eq!((m, path.as_str()), (Method::PATCH, STATUS), "written after the window");
    assert_eq!(body["status"]["replicaStatuses"]["Worker"]["active"], 2, "{body}");
    respond(send, 200, stored_with(&body, "11"));
    f.ended(task, "after the write").await.expect("reconciled");
    assert_eq!(f.held(), 1.0);
}
