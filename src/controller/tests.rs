//! The write layer without a cluster: a mock API server (tower-test) sees every request that
//! applying a plan makes, checks it and answers it, in order. The event queue is inspected
//! instead of published, so "events before deletes" is checked at the moment of each request.

use super::cached_job::CachedJob;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::reflector::{self, Store};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tower_test::mock;

use super::Now;
use super::apply::{Applied, Applier, CreateStep, announcement};
use super::job_counting::JobCounting;
use super::unseen::UnseenWrites;
use super::write_slots::WriteSlots;
use crate::api::{JobView, ReplicaSpec, ReplicaType, TFJob, TFJobSpec, TFJobStatus};
use crate::error::Error;
use crate::leader::Gate;
use crate::metrics::Metrics;
use crate::objects::Builder;
use crate::plan::{Cleanup, ObjectKey, Plan, PlannedEvent, PodSelection, ReplicaId};
use crate::writer::Writer;
use crate::writer::events::{self, Publisher};
use crate::writer::merge_patch;

type Handle = mock::Handle<Request<Body>, Response<Body>>;
/// The apply task: what apply returned and the unseen writes it recorded.
type ApplyTask = tokio::task::JoinHandle<(Result<Applied, Error>, UnseenWrites)>;

fn job() -> TFJob {
    let mut spec = TFJobSpec::default();
    let template =
        serde_json::from_value(json!({"spec": {"containers": [{"name": "tensorflow", "image": "tf"}]}}))
            .expect("template");
    spec.tf_replica_specs
        .insert("Worker".into(), ReplicaSpec { replicas: Some(2), template, restart_policy: None });
    let mut j = TFJob::new("j", spec);
    j.metadata.namespace = Some("ns".into());
    j.metadata.uid = Some("uid-j".into());
    j.metadata.resource_version = Some("10".into());
    j
}

fn pod(i: i32) -> Pod {
    let j = job();
    let view = JobView::new(&j).expect("view");
    Builder::new(&view, None).pod(w(i)).expect("pod")
}

fn w(index: i32) -> ReplicaId {
    ReplicaId { rtype: ReplicaType::Worker, index }
}

fn counting() -> JobCounting {
    JobCounting::new(Gate::always_open(), Arc::new(Metrics::default()))
}

fn applier<'a>(
    writer: &'a Writer,
    unseen: &'a Mutex<UnseenWrites>,
    counting: &'a JobCounting,
) -> Applier<'a> {
    static METRICS: std::sync::LazyLock<Metrics> = std::sync::LazyLock::new(Metrics::default);
    static WRITES: std::sync::LazyLock<WriteSlots> =
        std::sync::LazyLock::new(|| WriteSlots::new(32, 8, None));
    static JOBS: std::sync::LazyLock<Store<CachedJob>> = std::sync::LazyLock::new(|| reflector::store().0);
    Applier {
        writer,
        unseen,
        cluster_domain: None,
        announce_creates: true,
        metrics: &METRICS,
        counting,
        writes: &WRITES,
        jobs: &JOBS,
    }
}

fn now() -> Now {
    Now { wall: Timestamp::from_second(1_700_000_000).expect("time"), mono: Instant::now() }
}

/// Runs `plan` through a writer whose client is the mock; returns the handle that serves the
/// requests, the event queue's receiving end, and the apply task.
fn start(plan: Plan, gate: Gate) -> (Handle, Arc<Mutex<Publisher>>, ApplyTask) {
    let (handle, events, task, _) = start_counted(plan, gate);
    (handle, events, task)
}

/// [`start`], with the applier's own metrics, returned.
fn start_counted(plan: Plan, gate: Gate) -> (Handle, Arc<Mutex<Publisher>>, ApplyTask, Arc<Metrics>) {
    start_with(plan, gate, reflector::store().0)
}

/// [`start_counted`], with `jobs` as the job cache.
fn start_with(
    plan: Plan,
    gate: Gate,
    jobs: Store<CachedJob>,
) -> (Handle, Arc<Mutex<Publisher>>, ApplyTask, Arc<Metrics>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (queue, publisher) = events::queue("test".into(), Arc::new(Metrics::default()));
    let writer = Writer::new(client, gate, queue);
    let metrics = Arc::new(Metrics::default());
    let task_metrics = metrics.clone();
    let task = tokio::spawn(async move {
        let (unseen, counting, writes) = (Mutex::default(), counting(), WriteSlots::new(32, 8, None));
        let a = Applier {
            writer: &writer,
            unseen: &unseen,
            cluster_domain: None,
            announce_creates: true,
            metrics: &task_metrics,
            counting: &counting,
            writes: &writes,
            jobs: &jobs,
        };
        let applied = a.apply_plan(&job(), &plan, None, false, now()).await;
        (applied, unseen.into_inner().expect("lock"))
    });
    (handle, Arc::new(Mutex::new(publisher)), task, metrics)
}

/// The next request: its method, path (without the query) and JSON body, and its responder.
async fn next(handle: &mut Handle) -> (Method, String, Value, mock::SendResponse<Response<Body>>) {
    let (req, send) = handle.next_request().await.expect("a request");
    let (method, path) = (req.method().clone(), req.uri().path().to_string());
    let bytes = req.into_body().collect_bytes().await.expect("body");
    let body =
        if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("JSON body") };
    (method, path, body, send)
}

pub(super) fn respond(send: mock::SendResponse<Response<Body>>, code: u16, body: Value) {
    let response = Response::builder()
        .status(StatusCode::from_u16(code).expect("code"))
        .body(Body::from(serde_json::to_vec(&body).expect("json")))
        .expect("response");
    send.send_response(response);
}

pub(super) fn status_body(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": format!("{reason} (test)"), "reason": reason, "code": code})
}

/// `obj` as stored: with a uid and resourceVersion.
fn stored(mut obj: Value, uid: &str) -> Value {
    obj["metadata"]["uid"] = json!(uid);
    obj["metadata"]["resourceVersion"] = json!("11");
    obj
}

fn queued_reasons(p: &Arc<Mutex<Publisher>>, into: &mut Vec<String>) -> Vec<String> {
    into.extend(p.lock().expect("lock").drain().into_iter().filter_map(|e| e.reason));
    into.clone()
}

fn written_status() -> TFJobStatus {
    serde_json::from_value(
        json!({"conditions": [{"type": "Created", "status": "True", "reason": "TFJobCreated"}]}),
    )
    .expect("status")
}

/// A plan with one write of every kind: status, event, pod and service deletes and creates,
/// and the job's deletion.
fn plan_with_every_write() -> Plan {
    Plan {
        status: Some(written_status()),
        events: vec![PlannedEvent::normal("TFJobCreated", "created")],
        delete_pods: vec![ObjectKey { name: "j-worker-1".into(), uid: "uid-p1".into() }],
        delete_services: vec![ObjectKey { name: "j-worker-1".into(), uid: "uid-s1".into() }],
        create_services: vec![w(0)],
        create_pods: vec![w(0)],
        delete_job: true,
        requeue_at: None,
        more: false,
        gang: Default::default(),
        status_after_pod_deletes: None,
        status_held: false,
        cleanup: None,
    }
}

/// The status write first, whole and fenced by the planned version, before any event.
async fn expect_status_write(h: &mut Handle, events: &Arc<Mutex<Publisher>>, seen: &mut Vec<String>) {
    let (m, path, body, send) = next(h).await;
    assert_eq!((m, path.as_str()), (Method::PATCH, "/apis/kubeflow.org/v1/namespaces/ns/tfjobs/j/status"));
    assert_eq!(
        body["status"],
        serde_json::to_value(written_status()).expect("json"),
        "the planned status, whole"
    );
    assert_eq!(body["metadata"]["resourceVersion"], "10", "fenced: the version it was planned from");
    assert!(queued_reasons(events, seen).is_empty(), "no event before the status write");
    let mut written = serde_json::to_value(job()).expect("json");
    written["status"] = serde_json::to_value(written_status()).expect("json");
    written["metadata"]["resourceVersion"] = json!("12");
    respond(send, 200, written);
}

/// Then the deletes, by the uids the plan saw, after the events; a 404 is success.
async fn expect_deletes(h: &mut Handle, events: &Arc<Mutex<Publisher>>, seen: &mut Vec<String>) {
    let (m, path, body, send) = next(h).await;
    assert_eq!((m, path.as_str()), (Method::DELETE, "/api/v1/namespaces/ns/pods/j-worker-1"));
    assert_eq!(body["preconditions"], json!({"uid": "uid-p1"}), "the uid the plan saw");
    assert_eq!(queued_reasons(events, seen), ["TFJobCreated"], "events before deletes");
    respond(send, 200, status_body(200, "Success"));

    let (m, path, body, send) = next(h).await;
    assert_eq!((m, path.as_str()), (Method::DELETE, "/api/v1/namespaces/ns/services/j-worker-1"));
    assert_eq!(body["preconditions"], json!({"uid": "uid-s1"}));
    assert_eq!(queued_reasons(events, seen), ["TFJobCreated", "SuccessfulDeletePod"]);
    respond(send, 404, status_body(404, "NotFound"));
}

/// Then the creates, services before pods, after the deletes.
async fn expect_creates(h: &mut Handle, events: &Arc<Mutex<Publisher>>, seen: &mut Vec<String>) {
    let (m, path, body, send) = next(h).await;
    assert_eq!((m, path.as_str()), (Method::POST, "/api/v1/namespaces/ns/services"), "services before pods");
    assert_eq!(body["metadata"]["name"], "j-worker-0");
    assert_eq!(
        queued_reasons(events, seen),
        ["TFJobCreated", "SuccessfulDeletePod", "SuccessfulDeleteService"],
        "a 404 on delete is success, and deletes before creates"
    );
    respond(send, 201, stored(body, "uid-s0"));

    let (m, path, body, send) = next(h).await;
    assert_eq!((m, path.as_str()), (Method::POST, "/api/v1/namespaces/ns/pods"));
    assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-j");
    respond(send, 201, stored(body, "uid-p0"));
}

/// The TTL deletion last, fenced by the version the status write returned.
async fn expect_job_delete(h: &mut Handle) {
    let (m, path, body, send) = next(h).await;
    assert_eq!(
        (m, path.as_str()),
        (Method::DELETE, "/apis/kubeflow.org/v1/namespaces/ns/tfjobs/j"),
        "the TTL deletion last"
    );
    assert_eq!(
        body["preconditions"],
        json!({"uid": "uid-j", "resourceVersion": "12"}),
        "the version the status write returned"
    );
    assert_eq!(body["propagationPolicy"], "Background");
    respond(send, 200, status_body(200, "Success"));
}

#[tokio::test]
async fn writes_go_in_the_plans_order_with_their_preconditions() {
    let (mut h, events, task) = start(plan_with_every_write(), Gate::always_open());
    let mut seen = Vec::new();
    expect_status_write(&mut h, &events, &mut seen).await;
    expect_deletes(&mut h, &events, &mut seen).await;
    expect_creates(&mut h, &events, &mut seen).await;
    expect_job_delete(&mut h).await;

    let (applied, unseen) = task.await.expect("task");
    let applied = applied.expect("applied");
    assert!(applied.job_deleted);
    assert_eq!(applied.creates, CreateStep::Done);
    assert_eq!(applied.job.metadata.resource_version.as_deref(), Some("12"));
    assert_eq!(applied.status_written_over, Some(None));
    assert_eq!(
        queued_reasons(&events, &mut seen)[3..],
        ["SuccessfulCreateService", "SuccessfulCreatePod"],
        "one event per created object"
    );
    let mut unseen = unseen;
    let shown = unseen.pods.view(&[], Instant::now(), |_| true);
    assert_eq!(shown.len(), 1, "the created pod is overlaid until the cache shows it");
    assert!(h.next_request().await.is_none(), "nothing more was sent");
}

/// Serves one create answered 409 and then the GET of what is there; returns the outcome.
async fn create_conflict(found: Value) -> (CreateStep, Vec<String>) {
    let plan = Plan { create_pods: vec![w(0)], ..Default::default() };
    let (mut h, events, task) = start(plan, Gate::always_open());
    let (m, path, _, send) = next(&mut h).await;
    assert_eq!((m, path.as_str()), (Method::POST, "/api/v1/namespaces/ns/pods"));
    respond(send, 409, status_body(409, "AlreadyExists"));
    let (m, path, _, send) = next(&mut h).await;
    assert_eq!(
        (m, path.as_str()),
        (Method::GET, "/api/v1/namespaces/ns/pods/j-worker-0"),
        "409: read what is there"
    );
    respond(send, 200, found);
    let (applied, _) = task.await.expect("task");
    let mut seen = Vec::new();
    (applied.expect("applied").creates, queued_reasons(&events, &mut seen))
}

/// What the apply task returned; a request sent instead fails the test at once, named.
async fn ended(h: &mut Handle, mut task: ApplyTask, what: &str) -> (Result<Applied, Error>, UnseenWrites) {
    tokio::select! {
        biased;
        r = &mut task => r.expect("task"),
        req = h.next_request() => match req {
            Some((req, _)) => panic!("{what}: {} {} was sent", req.method(), req.uri().path()),
            None => task.await.expect("task"),
        },
    }
}

#[tokio::test]
async fn a_409_from_our_own_object_is_success() {
    let ours = stored(serde_json::to_value(pod(0)).expect("json"), "uid-p0");
    let (creates, events) = create_conflict(ours).await;
    assert_eq!(creates, CreateStep::Done);
    assert!(events.is_empty(), "no second SuccessfulCreatePod for an object created before: {events:?}");
}

#[tokio::test]
async fn a_409_from_a_foreign_object_is_refused_and_left_alone() {
    let mut foreign = stored(serde_json::to_value(pod(0)).expect("json"), "uid-x");
    foreign["metadata"]["ownerReferences"][0]["uid"] = json!("another-job");
    let (creates, events) = create_conflict(foreign).await;
    let CreateStep::Refused(msg) = creates else { panic!("want a refusal, got {creates:?}") };
    assert!(msg.contains("not controlled by this TFJob"), "{msg}");
    assert_eq!(events, ["FailedCreatePod"]);
}

#[tokio::test]
async fn a_409_from_a_terminating_object_waits() {
    let mut terminating = stored(serde_json::to_value(pod(0)).expect("json"), "uid-old");
    terminating["metadata"]["ownerReferences"][0]["uid"] = json!("an-earlier-job");
    terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let (creates, events) = create_conflict(terminating).await;
    assert_eq!(creates, CreateStep::Blocked);
    assert!(events.is_empty(), "{events:?}");
}

#[tokio::test]
async fn a_refused_create_carries_the_api_servers_message_and_stops_the_rest() {
    // Slow start: the first batch is one pod; its refusal stops the other two.
    let plan = Plan { create_pods: vec![w(0), w(1)], ..Default::default() };
    let (mut h, events, task) = start(plan, Gate::always_open());
    let (_, _, body, send) = next(&mut h).await;
    assert_eq!(body["metadata"]["name"], "j-worker-0");
    respond(send, 422, status_body(422, "Invalid"));
    let (applied, _) = task.await.expect("task");
    let creates = applied.expect("applied").creates;
    assert_eq!(creates, CreateStep::Refused("Error creating pod j-worker-0: Invalid (test)".into()));
    assert_eq!(
        queued_reasons(&events, &mut Vec::new()),
        ["FailedCreatePod"],
        "one Warning, not one per replica"
    );
    assert!(h.next_request().await.is_none(), "the second pod was not sent");
}

/// The samples of `tfjob_operator_create_failures_total` (cause, count).
fn create_failures(m: &Metrics) -> Vec<(String, String)> {
    m.encode()
        .lines()
        .filter_map(|l| l.strip_prefix("tfjob_operator_create_failures_total{cause=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(cause, n)| (cause.to_string(), n.to_string()))
        .collect()
}

#[tokio::test]
async fn a_transient_failure_ends_the_step_unreported_and_counted_apart() {
    let plan =
        Plan { create_services: vec![w(0), w(1)], create_pods: vec![w(0), w(1)], ..Default::default() };
    let (mut h, events, task, metrics) = start_counted(plan, Gate::always_open());
    // The first batch: the first service and the first pod; an admission webhook that cannot
    // be called fails the pod with 500.
    let (_, path, body, send) = next(&mut h).await;
    assert_eq!(path, "/api/v1/namespaces/ns/services");
    respond(send, 201, stored(body, "uid-s0"));
    let (_, path, _, send) = next(&mut h).await;
    assert_eq!(path, "/api/v1/namespaces/ns/pods");
    let mut down = status_body(500, "InternalError");
    down["message"] = json!("Internal error occurred: failed calling webhook \"w.test\": connection refused");
    respond(send, 500, down);
    let (applied, mut unseen) = task.await.expect("task");
    let applied = applied.expect("a transient failure is a create step's outcome, not an error");
    assert_eq!(
        applied.creates,
        CreateStep::Transient(
            "Creating pod j-worker-0 failed: the API server answered 500: Internal error occurred: failed \
             calling webhook \"w.test\": connection refused"
                .into()
        )
    );
    assert!(h.next_request().await.is_none(), "no further batch after the failure");
    assert_eq!(
        queued_reasons(&events, &mut Vec::new()),
        ["SuccessfulCreateService"],
        "what was created is announced; no Warning for the user yet (the report decides when)"
    );
    let shown: Vec<_> =
        unseen.services.view(&[], Instant::now(), |_| true).iter().map(|s| s.name_any()).collect();
    assert_eq!(shown, ["j-worker-0"], "the created service is remembered");
    assert_eq!(create_failures(&metrics), [("transient".to_string(), "1".to_string())]);
}

#[tokio::test]
async fn a_refusal_in_the_same_batch_wins_over_a_transient_failure() {
    let plan = Plan { create_services: vec![w(0)], create_pods: vec![w(0)], ..Default::default() };
    let (mut h, events, task, metrics) = start_counted(plan, Gate::always_open());
    let (_, _, _, send) = next(&mut h).await;
    respond(send, 503, status_body(503, "ServiceUnavailable"));
    let (_, _, _, send) = next(&mut h).await;
    respond(send, 422, status_body(422, "Invalid"));
    let (applied, _) = task.await.expect("task");
    assert_eq!(
        applied.expect("applied").creates,
        CreateStep::Refused("Error creating pod j-worker-0: Invalid (test)".into())
    );
    assert_eq!(queued_reasons(&events, &mut Vec::new()), ["FailedCreatePod"]);
    let mut counted = create_failures(&metrics);
    counted.sort();
    assert_eq!(
        counted,
        [("refused".to_string(), "1".to_string()), ("transient".to_string(), "1".to_string())]
    );
}

#[tokio::test]
async fn a_terminating_namespace_stops_creates_silently() {
    let plan = Plan { create_services: vec![w(0)], create_pods: vec![w(0)], ..Default::default() };
    let (mut h, events, task) = start(plan, Gate::always_open());
    let mut refused = status_body(403, "Forbidden");
    refused["details"] = json!({"causes": [{"reason": "NamespaceTerminating"}]});
    // The first batch holds one object of each template: the service and the pod.
    for kind in ["services", "pods"] {
        let (m, path, _, send) = next(&mut h).await;
        assert_eq!((m, path), (Method::POST, format!("/api/v1/namespaces/ns/{kind}")));
        respond(send, 403, refused.clone());
    }
    let (applied, _) = task.await.expect("task");
    assert_eq!(applied.expect("applied").creates, CreateStep::NamespaceGone);
    assert!(h.next_request().await.is_none(), "no create after that");
    assert!(queued_reasons(&events, &mut Vec::new()).is_empty(), "no event");
}

#[tokio::test]
async fn a_closed_gate_writes_nothing() {
    let plan = Plan {
        status: Some(written_status()),
        events: vec![PlannedEvent::normal("TFJobCreated", "created")],
        delete_pods: vec![ObjectKey { name: "j-worker-1".into(), uid: "uid-p1".into() }],
        create_pods: vec![w(0)],
        ..Default::default()
    };
    for plan in [
        plan.clone(),
        Plan { status: None, ..plan.clone() },
        Plan { create_pods: vec![w(0)], ..Default::default() },
    ] {
        let (mut h, events, task) = start(plan, Gate::elected());
        let (applied, _) = task.await.expect("task");
        assert!(matches!(applied, Err(Error::NotLeader)), "{applied:?}");
        assert!(h.next_request().await.is_none(), "no request reached the API server");
        assert!(queued_reasons(&events, &mut Vec::new()).is_empty(), "no event queued");
    }
}

#[tokio::test]
async fn a_status_planned_from_an_old_version_is_refused_and_nothing_follows() {
    let plan = Plan {
        status: Some(written_status()),
        events: vec![PlannedEvent::normal("TFJobCreated", "created")],
        create_pods: vec![w(0)],
        ..Default::default()
    };
    let (mut h, events, task) = start(plan, Gate::always_open());
    let (m, _, body, send) = next(&mut h).await;
    assert_eq!((m, &body["metadata"]["resourceVersion"]), (Method::PATCH, &json!("10")));
    respond(send, 409, status_body(409, "Conflict"));
    // The job is read, and the version found is planned from next, though the cache is older.
    let (m, path, _, send) = next(&mut h).await;
    assert_eq!((m, path.as_str()), (Method::GET, "/apis/kubeflow.org/v1/namespaces/ns/tfjobs/j"));
    let mut found = serde_json::to_value(job()).expect("job");
    found["metadata"]["resourceVersion"] = json!("12");
    found["metadata"]["managedFields"] = json!([{"manager": "tfjob-operator", "operation": "Update"}]);
    respond(send, 200, found);
    let (applied, mut unseen) = ended(&mut h, task, "after a refused status").await;
    assert!(matches!(applied, Err(Error::StaleStatus { .. })), "{applied:?}");
    assert!(queued_reasons(&events, &mut Vec::new()).is_empty(), "no event after a refused status");
    let next = unseen.status.view(Arc::new(job()), Instant::now()).expect("not gone");
    assert_eq!(next.metadata.resource_version.as_deref(), Some("12"));
    assert_eq!(next.metadata.managed_fields, None, "kept as the cache keeps jobs");
}

#[tokio::test]
async fn a_stale_status_whose_job_cannot_be_read_plans_from_the_cache() {
    let plan = Plan { status: Some(written_status()), ..Default::default() };
    for (code, answer) in [(404, status_body(404, "NotFound")), (503, status_body(503, "ServiceUnavailable"))]
    {
        let (mut h, _events, task) = start(plan.clone(), Gate::always_open());
        let (_, _, _, send) = next(&mut h).await;
        respond(send, 409, status_body(409, "Conflict"));
        let (m, _, _, send) = next(&mut h).await;
        assert_eq!(m, Method::GET);
        respond(send, code, answer);
        let (applied, mut unseen) = ended(&mut h, task, "after a refused status").await;
        assert!(matches!(applied, Err(Error::StaleStatus { .. })), "{code}: {applied:?}");
        let next = unseen.status.view(Arc::new(job()), Instant::now()).expect("not gone");
        assert_eq!(next.metadata.resource_version.as_deref(), Some("10"), "{code}");
    }
}

#[tokio::test]
async fn from_a_stale_job_cache_nothing_is_created_for_a_job_that_is_gone() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let (queue, _publisher) = events::queue("test".into(), Arc::new(Metrics::default()));
    let writer = Writer::new(Client::new(service, "default"), Gate::always_open(), queue);
    let task = tokio::spawn(async move {
        let unseen = Mutex::default();
        let plan = Plan { create_pods: vec![w(0)], ..Default::default() };
        applier(&writer, &unseen, &counting()).apply_plan(&job(), &plan, None, true, now()).await
    });
    let (m, path, _, send) = next(&mut handle).await;
    assert_eq!((m, path.as_str()), (Method::GET, "/apis/kubeflow.org/v1/namespaces/ns/tfjobs/j"));
    respond(send, 404, status_body(404, "NotFound"));
    let applied = task.await.expect("task");
    assert!(matches!(applied, Err(Error::JobGone { .. })), "{applied:?}");
    assert!(handle.next_request().await.is_none(), "no create for a job that is gone");
}

#[tokio::test]
async fn creates_wait_out_their_backoff() {
    let plan = Plan { create_pods: vec![w(0)], ..Default::default() };
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let (queue, _publisher) = events::queue("test".into(), Arc::new(Metrics::default()));
    let writer = Writer::new(Client::new(service, "default"), Gate::always_open(), queue);
    let unseen = Mutex::default();
    let until = Instant::now() + std::time::Duration::from_secs(5);
    let applied =
        applier(&writer, &unseen, &counting()).apply_plan(&job(), &plan, Some(until), false, now()).await;
    assert_eq!(applied.expect("applied").creates, CreateStep::Waiting { until });
    drop(writer);
    assert!(handle.next_request().await.is_none(), "nothing sent while the backoff runs");
}

// Gang scheduling (crate::plan::gang): the PodGroup is deleted after the pods and services and
// created before anything else; a refused or foreign PodGroup stops the pods.

fn gang_plan(mode: crate::plan::gang::GangScheduling, observed: Option<&crate::api::PodGroup>) -> Plan {
    let mut plan = Plan { create_services: vec![w(0)], create_pods: vec![w(0)], ..Default::default() };
    plan.gang = crate::plan::gang::decide(mode, &job(), &[], &plan, observed);
    plan
}

#[tokio::test]
async fn the_pod_group_is_created_before_the_services_and_pods() {
    let (mut h, events, task) =
        start(gang_plan(crate::plan::gang::GangScheduling::Native, None), Gate::always_open());
    let (m, path, body, send) = next(&mut h).await;
    assert_eq!(
        (m, path.as_str()),
        (Method::POST, "/apis/scheduling.k8s.io/v1alpha2/namespaces/ns/podgroups")
    );
    assert_eq!(body["kind"], "PodGroup");
    assert_eq!(body["apiVersion"], "scheduling.k8s.io/v1alpha2");
    assert_eq!(body["metadata"]["name"], "j");
    assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-j");
    assert_eq!(body["spec"]["schedulingPolicy"], json!({"gang": {"minCount": 2}}));
    respond(send, 201, stored(body, "uid-pg"));
    // The service and the pod, in one batch, in either order.
    let mut paths = Vec::new();
    for _ in 0..2 {
        let (m, path, body, send) = next(&mut h).await;
        assert_eq!(m, Method::POST);
        if path == "/api/v1/namespaces/ns/pods" {
            assert_eq!(body["spec"]["schedulingGroup"], json!({"podGroupName": "j"}), "every pod names it");
            assert_eq!(body["metadata"]["labels"][crate::plan::gang::LABEL_POD_GROUP], "j");
        }
        paths.push(path);
        respond(send, 201, stored(body, "uid-0"));
    }
    paths.sort();
    assert_eq!(paths, ["/api/v1/namespaces/ns/pods", "/api/v1/namespaces/ns/services"]);
    let (applied, _) = task.await.expect("task");
    assert_eq!(applied.expect("applied").creates, CreateStep::Done);
    let mut seen = Vec::new();
    let reasons = queued_reasons(&events, &mut seen);
    assert_eq!(reasons[0], "SuccessfulCreatePodGroup", "{reasons:?}");
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(h.next_request().await.is_none(), "nothing more was sent");
}

/// Serves the PodGroup create of a gang plan with `code` and `answer` (and, for a 409, the GET
/// with `found`); returns the outcome and the events. No pod is ever created.
async fn pod_group_refused(code: u16, answer: Value, found: Option<Value>) -> (CreateStep, Vec<String>) {
    let mut plan = gang_plan(crate::plan::gang::GangScheduling::Native, None);
    plan.create_services.clear();
    let (mut h, events, task) = start(plan, Gate::always_open());
    let (m, path, _, send) = next(&mut h).await;
    assert_eq!(
        (m, path.as_str()),
        (Method::POST, "/apis/scheduling.k8s.io/v1alpha2/namespaces/ns/podgroups")
    );
    respond(send, code, answer);
    if let Some(found) = found {
        let (m, path, _, send) = next(&mut h).await;
        assert_eq!(
            (m, path.as_str()),
            (Method::GET, "/apis/scheduling.k8s.io/v1alpha2/namespaces/ns/podgroups/j")
        );
        respond(send, 200, found);
    }
    let (applied, _) = task.await.expect("task");
    assert!(h.next_request().await.is_none(), "no pod without its gang");
    let mut seen = Vec::new();
    (applied.expect("applied").creates, queued_reasons(&events, &mut seen))
}

#[tokio::test]
async fn a_pod_group_that_cannot_be_created_stops_the_pods_with_a_warning() {
    let (step, events) = pod_group_refused(422, status_body(422, "Invalid"), None).await;
    let CreateStep::Refused(msg) = step else { panic!("{step:?}") };
    assert!(msg.starts_with("Error creating PodGroup j: Invalid (test)"), "{msg}");
    assert_eq!(events, ["FailedCreatePodGroup"]);

    // The cluster does not serve the API.
    let (step, events) = pod_group_refused(404, status_body(404, "NotFound"), None).await;
    let CreateStep::Refused(msg) = step else { panic!("{step:?}") };
    assert!(msg.contains("does not serve scheduling.k8s.io/v1alpha2 PodGroups"), "{msg}");
    assert_eq!(events, ["FailedCreatePodGroup"]);

    // Someone else's PodGroup of the same name.
    let foreign = json!({"apiVersion": "scheduling.k8s.io/v1alpha2", "kind": "PodGroup",
        "metadata": {"name": "j", "namespace": "ns", "uid": "other"}, "spec": {}});
    let (step, events) =
        pod_group_refused(409, status_body(409, "AlreadyExists"), Some(foreign.clone())).await;
    let CreateStep::Refused(msg) = step else { panic!("{step:?}") };
    assert!(msg.contains("not controlled by this TFJob"), "{msg}");
    assert_eq!(events, ["FailedCreatePodGroup"]);

    // One of the same name still terminating (before a resume): wait.
    let mut terminating = foreign;
    terminating["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let (step, events) = pod_group_refused(409, status_body(409, "AlreadyExists"), Some(terminating)).await;
    assert_eq!(step, CreateStep::Blocked);
    assert!(events.is_empty());
}

#[tokio::test]
async fn a_resume_waits_for_the_jobs_own_terminating_pod_group() {
    // The job's own PodGroup of before the suspension, still terminating: not joined.
    let mut own = crate::plan::gang::pod_group_for(&JobView::new(&job()).expect("view")).expect("group");
    own.metadata.uid = Some("uid-old-pg".into());
    own.metadata.resource_version = Some("11".into());
    own.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::from_second(1_700_000_000).expect("time"),
    ));
    assert!(crate::names::controlled_by(&own.metadata, "uid-j"), "the job's own");
    let (mut h, events, task) =
        start(gang_plan(crate::plan::gang::GangScheduling::Native, None), Gate::always_open());
    let (m, path, _, send) = next(&mut h).await;
    assert_eq!(
        (m, path.as_str()),
        (Method::POST, "/apis/scheduling.k8s.io/v1alpha2/namespaces/ns/podgroups")
    );
    respond(send, 409, status_body(409, "AlreadyExists"));
    let (m, path, _, send) = next(&mut h).await;
    assert_eq!(
        (m, path.as_str()),
        (Method::GET, "/apis/scheduling.k8s.io/v1alpha2/namespaces/ns/podgroups/j")
    );
    respond(send, 200, serde_json::to_value(&own).expect("json"));
    let (applied, _) = ended(&mut h, task, "a create beside the terminating PodGroup").await;
    assert_eq!(applied.expect("applied").creates, CreateStep::Blocked, "the create waits for it to go");
    assert!(queued_reasons(&events, &mut Vec::new()).is_empty());
    // The job's own pod, terminating: waited for too, not taken as created.
    let mut own_pod = stored(serde_json::to_value(pod(0)).expect("json"), "uid-old");
    own_pod["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let (creates, events) = create_conflict(own_pod).await;
    assert_eq!(creates, CreateStep::Blocked);
    assert!(events.is_empty(), "{events:?}");
}

#[tokio::test]
async fn the_pod_group_is_deleted_after_the_pods_with_its_uid() {
    let mut observed = crate::plan::gang::pod_group_for(&JobView::new(&job()).expect("view")).expect("group");
    observed.metadata.uid = Some("uid-pg".into());
    let mut j = job();
    j.spec.run_policy = Some(crate::api::RunPolicy { suspend: Some(true), ..Default::default() });
    let mut plan = Plan {
        delete_pods: vec![ObjectKey { name: "j-worker-0".into(), uid: "uid-p0".into() }],
        ..Default::default()
    };
    plan.gang =
        crate::plan::gang::decide(crate::plan::gang::GangScheduling::Native, &j, &[], &plan, Some(&observed));
    let (mut h, events, task) = start(plan, Gate::always_open());
    let (m, path, _, send) = next(&mut h).await;
    assert_eq!((m, path.as_str()), (Method::DELETE, "/api/v1/namespaces/ns/pods/j-worker-0"));
    respond(send, 200, status_body(200, "Success"));
    let (m, path, body, send) = next(&mut h).await;
    assert_eq!(
        (m, path.as_str()),
        (Method::DELETE, "/apis/scheduling.k8s.io/v1alpha2/namespaces/ns/podgroups/j")
    );
    assert_eq!(body["preconditions"], json!({"uid": "uid-pg"}));
    respond(send, 200, status_body(200, "Success"));
    let (applied, mut unseen) = task.await.expect("task");
    applied.expect("applied");
    let mut seen = Vec::new();
    assert_eq!(queued_reasons(&events, &mut seen), ["SuccessfulDeletePod", "SuccessfulDeletePodGroup"]);
    assert!(h.next_request().await.is_none());
    let shown = unseen.pod_groups.view(&[Arc::new(observed)], Instant::now(), |_| true);
    assert!(shown[0].metadata.deletion_timestamp.is_some(), "shown terminating until the cache shows it");
}

#[tokio::test]
async fn a_pod_group_already_gone_is_not_announced_deleted() {
    let mut observed = crate::plan::gang::pod_group_for(&JobView::new(&job()).expect("view")).expect("group");
    observed.metadata.uid = Some("uid-pg".into());
    let mut done = job();
    done.spec.run_policy = Some(crate::api::RunPolicy { suspend: Some(true), ..Default::default() });
    let mut plan = Plan::default();
    plan.gang = crate::plan::gang::decide(
        crate::plan::gang::GangScheduling::Native,
        &done,
        &[],
        &plan,
        Some(&observed),
    );
    let (mut h, events, task) = start(plan, Gate::always_open());
    let (m, _, _, send) = next(&mut h).await;
    assert_eq!(m, Method::DELETE);
    respond(send, 404, status_body(404, "NotFound"));
    task.await.expect("task").0.expect("a 404 is success");
    assert!(queued_reasons(&events, &mut Vec::new()).is_empty(), "no event for what was gone");
}

#[test]
fn one_event_announces_what_a_step_did_to_one_kind() {
    let names = |n: usize| (0..n).map(|i| format!("j-worker-{i}")).collect::<Vec<_>>();
    let shown: String = names(10).join(", ");
    let cases: [(usize, Option<String>); 5] = [
        (0, None),
        (1, Some("Created pod: j-worker-0".into())),
        (3, Some("Created 3 pods: j-worker-0, j-worker-1, j-worker-2".into())),
        (10, Some(format!("Created 10 pods: {shown}"))),
        (12, Some(format!("Created 12 pods: {shown}, and 2 more"))),
    ];
    for (n, want) in cases {
        assert_eq!(announcement("Created", "pod", &names(n)), want, "{n} pods");
    }
}

/// A TTL delete whose answer is lost (a 503 here) counts the job deleted once it is known
/// gone, from a retry's 404 or from the watch; one that is answered counts at once; a 404 to
/// a first delete (someone else deleted the job) counts nothing.
#[tokio::test]
async fn a_ttl_deletion_whose_answer_is_lost_is_counted_once() {
    let deleted_count = |m: &Metrics| {
        let line = r#"training_operator_jobs_deleted_total{job_namespace="ns",framework="tensorflow"} "#;
        m.encode().lines().find_map(|l| l.strip_prefix(line)?.parse::<u32>().ok()).unwrap_or(0)
    };
    // Each case: the answers to successive deletes, whether the watch then sees the job
    // deleted, and the count.
    let cases: [(&[u16], bool, u32); 6] = [
        (&[200], true, 1),
        (&[503], true, 1),
        (&[503, 404], true, 1),
        (&[503, 200], false, 1),
        (&[404], true, 0),
        (&[409], false, 0),
    ];
    for (answers, watch_sees_it_gone, want) in cases {
        let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
        let (queue, _publisher) = events::queue("test".into(), Arc::new(Metrics::default()));
        let writer = Writer::new(Client::new(service, "default"), Gate::always_open(), queue);
        let metrics = Arc::new(Metrics::default());
        let counting = JobCounting::new(Gate::always_open(), metrics.clone());
        let unseen = Mutex::default();
        let plan = Plan { delete_job: true, ..Default::default() };
        for &code in answers {
            let (a, j) = (applier(&writer, &unseen, &counting), job());
            let apply = a.apply_plan(&j, &plan, None, false, now());
            let serve = async {
                let (m, path, _, send) = next(&mut handle).await;
                assert_eq!(
                    (m, path.as_str()),
                    (Method::DELETE, "/apis/kubeflow.org/v1/namespaces/ns/tfjobs/j")
                );
                let reason = if code == 200 { "Success" } else { "Failure" };
                respond(send, code, status_body(code, reason));
            };
            let (applied, ()) = tokio::join!(apply, serve);
            match code {
                200 => assert!(applied.expect("applied").job_deleted),
                404 => {
                    assert!(matches!(applied, Err(Error::JobGone { .. })), "{applied:?}");
                    counting.gone("uid-j"); // as the reconcile does for a job found gone
                }
                409 => assert!(!applied.expect("applied").job_deleted, "a changed job is not deleted"),
                _ => assert!(matches!(applied, Err(Error::DeleteJob { .. })), "{applied:?}"),
            }
        }
        if watch_sees_it_gone {
            counting.gone("uid-j");
        }
        assert_eq!(deleted_count(&metrics), want, "answers {answers:?}, watch {watch_sees_it_gone}");
    }
}

/// A job whose creates find no room (an older job holds it) is not kept waiting: apply sends
/// its status and deletes, creates nothing, says `Queued`, and the job is woken once the
/// room is set aside for it; its next apply creates in that room.
#[tokio::test]
async fn a_job_without_room_is_queued_not_kept_waiting() {
    assert_eq!(WriteSlots::new(0, 1, None).batch_max(), 1, "0 is taken as 1");
    assert_eq!(WriteSlots::new(8, 1, None).batch_max(), 8);
    assert_eq!(WriteSlots::new(100, 1, None).batch_max(), 16);
    let (wake, mut woken) = tokio::sync::mpsc::unbounded_channel();
    let writes = WriteSlots::new(2, 8, Some(wake));
    let mut older = job();
    older.metadata.name = Some("older".into());
    older.metadata.uid = Some("uid-older".into());
    older.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        Timestamp::from_second(1_600_000_000).expect("time"),
    ));
    let held = writes.take(&older, 2).expect("free room");
    let (service, mut h) = mock::pair::<Request<Body>, Response<Body>>();
    let (queue, _publisher) = events::queue("test".into(), Arc::new(Metrics::default()));
    let writer = Writer::new(Client::new(service, "default"), Gate::always_open(), queue);
    let (unseen, counting) = (Mutex::default(), counting());
    let jobs = reflector::store().0;
    let a = Applier { writes: &writes, jobs: &jobs, ..applier(&writer, &unseen, &counting) };
    let plan = Plan {
        delete_pods: vec![ObjectKey { name: "j-worker-1".into(), uid: "uid-p1".into() }],
        create_pods: vec![w(0)],
        ..Default::default()
    };
    let j = job();
    let apply = a.apply_plan(&j, &plan, None, false, now());
    let serve = async {
        let (m, path, _, send) = next(&mut h).await;
        assert_eq!((m, path.as_str()), (Method::DELETE, "/api/v1/namespaces/ns/pods/j-worker-1"));
        respond(send, 200, json!({"kind": "Status", "status": "Success"}));
    };
    let (applied, ()) =
        tokio::time::timeout(std::time::Duration::from_secs(5), futures::future::join(apply, serve))
            .await
            .expect("apply returns at once, not when the room frees");
    assert_eq!(applied.expect("applied").creates, CreateStep::Queued);
    assert!(woken.try_recv().is_err(), "not woken while the room is held");
    drop(held);
    assert_eq!(woken.try_recv().expect("woken").name, "j", "the room went to j");
    let plan = Plan { create_pods: vec![w(0)], ..Default::default() };
    let apply = a.apply_plan(&j, &plan, None, false, now());
    let serve = async {
        let (m, path, body, send) = next(&mut h).await;
        assert_eq!((m, path.as_str()), (Method::POST, "/api/v1/namespaces/ns/pods"));
        respond(send, 201, stored(body, "uid-0"));
    };
    let (applied, ()) = futures::future::join(apply, serve).await;
    assert_eq!(applied.expect("applied").creates, CreateStep::Done);
}

// Suspension: a reconcile still creating stops once the job cache shows the job suspended,
// and a suspended job's `active: 0` is written only after every pod delete is accepted.

/// `j` as the TFJob watch shows it: with `uid` and `suspend`.
fn shown(uid: &str, suspend: bool) -> kube::runtime::watcher::Event<CachedJob> {
    let mut j = job();
    j.metadata.uid = Some(uid.into());
    j.spec.run_policy = Some(crate::api::RunPolicy { suspend: Some(suspend), ..Default::default() });
    kube::runtime::watcher::Event::Apply(CachedJob::new(&j))
}

#[tokio::test]
async fn a_suspend_seen_between_batches_stops_the_creates() {
    // (what the watch shows after the first batch is sent: uid, suspend; whether the second
    // pod goes)
    let cases = [("uid-j", true, false), ("uid-j", false, true), ("an-earlier-j", true, true)];
    for (uid, suspend, second_sent) in cases {
        let (jobs, mut cache) = reflector::store();
        cache.apply_watcher_event(&shown("uid-j", false));
        let plan = Plan { create_pods: vec![w(0), w(1)], ..Default::default() };
        let (mut h, events, task, _) = start_with(plan, Gate::always_open(), jobs);
        // Slow start: the first batch is one pod.
        let (_, _, body, send) = next(&mut h).await;
        assert_eq!(body["metadata"]["name"], "j-worker-0");
        cache.apply_watcher_event(&shown(uid, suspend));
        respond(send, 201, stored(body, "uid-p0"));
        if second_sent {
            let (_, _, body, send) = next(&mut h).await;
            assert_eq!(body["metadata"]["name"], "j-worker-1", "{uid} suspend={suspend}");
            respond(send, 201, stored(body, "uid-p1"));
        }
        let (applied, _) = ended(&mut h, task, &format!("{uid} suspend={suspend}")).await;
        let want = if second_sent { CreateStep::Done } else { CreateStep::NoneNeeded };
        assert_eq!(applied.expect("applied").creates, want, "{uid} suspend={suspend}");
        assert!(h.next_request().await.is_none(), "{uid} suspend={suspend}: nothing more sent");
        let want =
            if second_sent { "Created 2 pods: j-worker-0, j-worker-1" } else { "Created pod: j-worker-0" };
        let notes: Vec<_> = events.lock().expect("lock").drain().into_iter().filter_map(|e| e.note).collect();
        assert_eq!(notes, [want], "what was created is announced");
    }
}

/// `written_status()` with `active` Workers.
fn with_active(active: i32) -> TFJobStatus {
    let mut st = written_status();
    st.replica_statuses.entry(ReplicaType::Worker).or_default().active = active;
    st
}

#[tokio::test]
async fn a_suspended_jobs_active_0_is_written_once_every_pod_delete_is_accepted() {
    let plan = Plan {
        status: Some(with_active(2)),
        delete_pods: vec![
            ObjectKey { name: "j-worker-0".into(), uid: "uid-p0".into() },
            ObjectKey { name: "j-worker-1".into(), uid: "uid-p1".into() },
        ],
        status_after_pod_deletes: Some(with_active(0)),
        delete_services: vec![ObjectKey { name: "j-worker-0".into(), uid: "uid-s0".into() }],
        ..Default::default()
    };
    // Each pod delete answered: accepted (200), gone (404), or failed (500).
    for (answers, written) in [([200, 404], true), ([200, 500], false)] {
        let (mut h, _, task) = start(plan.clone(), Gate::always_open());
        let (m, _, body, send) = next(&mut h).await;
        assert_eq!((m, &body["status"]["replicaStatuses"]["Worker"]["active"]), (Method::PATCH, &json!(2)));
        let mut stored_job = serde_json::to_value(job()).expect("json");
        stored_job["status"] = merge_patch::apply(&Value::Null, &body["status"]);
        stored_job["metadata"]["resourceVersion"] = json!("12");
        respond(send, 200, stored_job.clone());
        // The two deletes go in one batch, in either order.
        let mut deleted = Vec::new();
        for _ in 0..2 {
            let (m, path, _, send) = next(&mut h).await;
            assert_eq!(m, Method::DELETE);
            let code = if path.ends_with("j-worker-0") { answers[0] } else { answers[1] };
            respond(send, code, status_body(code, "test"));
            deleted.push(path);
        }
        deleted.sort();
        assert_eq!(
            deleted,
            ["/api/v1/namespaces/ns/pods/j-worker-0", "/api/v1/namespaces/ns/pods/j-worker-1"]
        );
        if written {
            let (m, path, body, send) = next(&mut h).await;
            assert_eq!(
                (m, path.as_str()),
                (Method::PATCH, "/apis/kubeflow.org/v1/namespaces/ns/tfjobs/j/status")
            );
            assert_eq!(
                body["status"],
                json!({"replicaStatuses": {"Worker": {"active": 0}}}),
                "after the pods"
            );
            assert_eq!(body["metadata"]["resourceVersion"], "12", "fenced by the first write's answer");
            stored_job["status"] = merge_patch::apply(&stored_job["status"], &body["status"]);
            assert_eq!(stored_job["status"], serde_json::to_value(with_active(0)).expect("json"));
            stored_job["metadata"]["resourceVersion"] = json!("13");
            respond(send, 200, stored_job);
            let (m, path, _, send) = next(&mut h).await;
            assert_eq!((m, path.as_str()), (Method::DELETE, "/api/v1/namespaces/ns/services/j-worker-0"));
            respond(send, 200, status_body(200, "Success"));
            let applied = task.await.expect("task").0.expect("applied");
            assert_eq!(
                applied.job.metadata.resource_version.as_deref(),
                Some("13"),
                "the job as stored last"
            );
            assert_eq!(applied.status_written_over, Some(None), "what the first write replaced");
        } else {
            let (applied, _) = task.await.expect("task");
            assert!(matches!(applied, Err(Error::DeletePod { .. })), "{applied:?}");
        }
        assert!(h.next_request().await.is_none(), "written={written}: nothing more sent");
    }
}

/// The reasons and notes of the events queued so far.
fn queued_notes(p: &Arc<Mutex<Publisher>>) -> Vec<(String, String)> {
    let drained = p.lock().expect("lock").drain();
    drained.into_iter().map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default())).collect()
}

/// A deletecollection request's path and query.
async fn next_collection_delete(h: &mut Handle) -> (String, String, mock::SendResponse<Response<Body>>) {
    let (req, send) = h.next_request().await.expect("a request");
    assert_eq!(req.method(), Method::DELETE);
    // The query's parameters, decoded and in a fixed order.
    let decode = |kv: &str| {
        [("%21", "!"), ("%2C", ","), ("%2F", "/"), ("%3D", "=")]
            .iter()
            .fold(kv.to_string(), |s, (e, c)| s.replace(e, c))
    };
    let query = req.uri().query().unwrap_or_default();
    let mut params: Vec<String> = query.split('&').filter(|kv| !kv.is_empty()).map(decode).collect();
    params.sort();
    (req.uri().path().to_string(), params.join("&"), send)
}

fn a_plan_finishing_with_cleanup(selection: PodSelection, services: bool) -> Plan {
    let key = |name: &str, uid: &str| ObjectKey { name: name.into(), uid: uid.into() };
    Plan {
        delete_pods: vec![key("j-ps-0", "uid-ps0"), key("j-worker-1", "uid-p1")],
        delete_services: if services { vec![key("j-ps-0", "uid-s0")] } else { Vec::new() },
        cleanup: Some(Cleanup {
            pods: selection,
            outcome: Some(PlannedEvent::normal("TFJobSucceeded", "TFJob ns/j successfully completed.")),
        }),
        ..Default::default()
    }
}

fn deleted_list(kind: &str, names: &[(&str, &str)]) -> Value {
    let items: Vec<Value> = names
        .iter()
        .map(|(n, uid)| json!({"metadata": {"name": n, "namespace": "ns", "uid": uid}}))
        .collect();
    json!({"kind": format!("{kind}List"), "apiVersion": "v1", "metadata": {}, "items": items})
}

#[tokio::test]
async fn a_cleanup_is_one_request_per_kind_and_its_outcome_event_names_what_went() {
    // (selection, services planned, want: pods query, services query, note's end)
    let unfinished = "fieldSelector=status.phase!=Succeeded,status.phase!=Failed&labelSelector=training.kubeflow.org/operator-name=tfjob-controller,training.kubeflow.org/job-name=j";
    let all =
        "labelSelector=training.kubeflow.org/operator-name=tfjob-controller,training.kubeflow.org/job-name=j";
    let cases = [
        (
            PodSelection::Unfinished,
            false,
            unfinished,
            None,
            "cleanPodPolicy Running deleted the pods j-ps-0 still running.",
        ),
        (
            PodSelection::All,
            true,
            all,
            Some(all),
            "cleanPodPolicy All deleted pods j-ps-0 and services j-ps-0, j-worker-0.",
        ),
    ];
    for (selection, services, pods_query, services_query, note_end) in cases {
        let (mut h, events, task) =
            start(a_plan_finishing_with_cleanup(selection, services), Gate::always_open());
        let (path, query, send) = next_collection_delete(&mut h).await;
        assert_eq!(
            (path.as_str(), query.as_str()),
            ("/api/v1/namespaces/ns/pods", pods_query),
            "{selection:?}"
        );
        assert!(queued_notes(&events).is_empty(), "{selection:?}: the outcome waits for the deletes");
        // j-worker-1 finished meanwhile: the API server deleted the PS only.
        respond(send, 200, deleted_list("Pod", &[("j-ps-0", "uid-ps0")]));
        if let Some(want) = services_query {
            let (path, query, send) = next_collection_delete(&mut h).await;
            assert_eq!((path.as_str(), query.as_str()), ("/api/v1/namespaces/ns/services", want));
            respond(send, 200, deleted_list("Service", &[("j-ps-0", "uid-s0"), ("j-worker-0", "uid-s1")]));
        }
        let (applied, mut unseen) = task.await.expect("task");
        applied.expect("applied");
        let notes = queued_notes(&events);
        assert_eq!(notes.len(), 1, "{selection:?}: one event, the outcome: {notes:?}");
        assert_eq!(notes[0].0, "TFJobSucceeded");
        assert_eq!(notes[0].1, format!("TFJob ns/j successfully completed. {note_end}"), "{selection:?}");
        let ps = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("j-ps-0".into()),
                uid: Some("uid-ps0".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let shown = unseen.pods.view(&[Arc::new(ps)], Instant::now(), |_| true);
        let terminating = shown.iter().all(|p| p.metadata.deletion_timestamp.is_some());
        assert!(terminating && shown.len() == 1, "{selection:?}: shown terminating until the cache shows it");
        assert!(h.next_request().await.is_none(), "{selection:?}: no per-object delete");
    }
}

/// Where the operator may not delete collections (RBAC from before it needed to), the
/// cleanup deletes each planned pod by name and uid, and announces them in the outcome.
#[tokio::test]
async fn a_cleanup_refused_as_forbidden_deletes_each_pod() {
    let (mut h, events, task) =
        start(a_plan_finishing_with_cleanup(PodSelection::Unfinished, false), Gate::always_open());
    let (path, _, send) = next_collection_delete(&mut h).await;
    assert_eq!(path, "/api/v1/namespaces/ns/pods");
    respond(send, 403, status_body(403, "Forbidden"));
    for (name, uid) in [("j-ps-0", "uid-ps0"), ("j-worker-1", "uid-p1")] {
        let (m, path, body, send) = next(&mut h).await;
        assert_eq!((m, path), (Method::DELETE, format!("/api/v1/namespaces/ns/pods/{name}")));
        assert_eq!(body["preconditions"], json!({"uid": uid}));
        respond(send, 200, status_body(200, "Success"));
    }
    task.await.expect("task").0.expect("applied");
    let notes = queued_notes(&events);
    assert_eq!(
        notes,
        [(
            "TFJobSucceeded".to_string(),
            "TFJob ns/j successfully completed. cleanPodPolicy Running deleted the pods j-ps-0, j-worker-1 still running."
                .to_string()
        )]
    );
}

/// A cleanup of a job that finished before (a policy patched to `All` later) announces its
/// deletes with Kubeflow's events; a failed delete is still reported, with no event.
#[tokio::test]
async fn a_later_cleanup_announces_its_deletes() {
    let mut plan = a_plan_finishing_with_cleanup(PodSelection::All, false);
    plan.cleanup.as_mut().expect("cleanup").outcome = None;
    let (mut h, events, task) = start(plan, Gate::always_open());
    let (_, _, send) = next_collection_delete(&mut h).await;
    respond(send, 200, deleted_list("Pod", &[("j-ps-0", "uid-ps0"), ("j-worker-1", "uid-p1")]));
    task.await.expect("task").0.expect("applied");
    assert_eq!(
        queued_notes(&events),
        [("SuccessfulDeletePod".to_string(), "Deleted 2 pods: j-ps-0, j-worker-1".to_string())]
    );

    let (mut h, events, task) =
        start(a_plan_finishing_with_cleanup(PodSelection::Unfinished, false), Gate::always_open());
    let (_, _, send) = next_collection_delete(&mut h).await;
    respond(send, 500, status_body(500, "InternalError"));
    let applied = task.await.expect("task").0;
    assert!(matches!(applied, Err(Error::DeletePodsOf { .. })), "{applied:?}");
    let notes = queued_notes(&events);
    assert_eq!(notes.len(), 1, "the outcome still goes out, naming nothing deleted: {notes:?}");
    assert_eq!(notes[0].1, "TFJob ns/j successfully completed.");
}
