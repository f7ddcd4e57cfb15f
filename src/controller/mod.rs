//! The controller: watches TFJobs and the pods and services this operator labels, and runs
//! observe (caches plus pending writes), plan (pure), apply (in the plan's order).

mod index;
mod overlay;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{debug, info, warn};

use crate::api::TFJob;
use crate::apply::{Created, Namespaced, Writer, api_message};
use crate::error::Error;
use crate::http::Health;
use crate::metrics::{self, JobCount, Metrics};
use crate::names;
use crate::plan::{self, Plan, PlannedEvent};
use index::OwnerIndex;
use overlay::{Pending, Written};

/// How the controller runs.
#[derive(Clone, Debug, Default)]
pub struct Settings {
    /// Watch one namespace only.
    pub namespace: Option<String>,
    /// Jobs reconciled at once (0: no limit).
    pub concurrency: u16,
    /// Appended to TF_CONFIG service addresses.
    pub cluster_domain: Option<String>,
    /// The events' reporting instance (the pod name).
    pub instance: Option<String>,
}

/// Create attempts after a refusal wait 5 s, doubling to at most this.
const CREATE_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A create blocked by a pod still terminating is retried after this.
const BLOCKED_RETRY: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Pendings {
    pods: Pending<Pod>,
    services: Pending<Service>,
    written: Written,
    /// Per job uid: consecutive refused creates, and when the next attempt may run.
    create_backoff: HashMap<String, (u32, Instant)>,
    /// Per job uid: consecutive reconcile errors (for the error backoff).
    errors: HashMap<String, u32>,
}

struct Context {
    writer: Writer,
    pods: Store<Pod>,
    services: Store<Service>,
    pod_index: Arc<Mutex<OwnerIndex>>,
    service_index: Arc<Mutex<OwnerIndex>>,
    settings: Settings,
    pending: Mutex<Pendings>,
    metrics: Arc<Metrics>,
}

impl Context {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pendings> {
        // A panic while holding the lock leaves plain data behind: keep using it.
        self.pending.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Keeps in a cached object only what planning reads, so the caches stay small: metadata
/// without managedFields and annotations, and a pod's status. Specs are dropped.
trait Slim {
    fn slim(&mut self);
}

impl Slim for Pod {
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
        self.spec = None;
    }
}

impl Slim for Service {
    fn slim(&mut self) {
        self.metadata.managed_fields = None;
        self.metadata.annotations = None;
        self.spec = None;
        self.status = None;
    }
}

/// The TFJob that controls an object, if one does.
fn controller_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<ObjectRef<TFJob>> {
    let owner = names::tfjob_controller(meta)?;
    Some(ObjectRef::new(&owner.name).within(meta.namespace.as_deref()?))
}

/// A label-selected, reflected watch of the operator's pods or services, slimmed (see
/// [`Slim`]), so memory does not grow with unrelated objects, and indexed by owner. It runs
/// on its own task, so the cache keeps filling while every reconcile slot is busy; the
/// controller gets only the owning TFJob's reference of each changed object, through a
/// channel.
fn owned_stream<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    index: Arc<Mutex<OwnerIndex>>,
) -> impl Stream<Item = ObjectRef<TFJob>>
where
    K: Resource<DynamicType = ()>
        + Slim
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let cfg = watcher::Config::default().labels(&names::operator_selector());
    let stream = watcher(api, cfg).default_backoff().modify(K::slim).reflect(writer);
    let (tx, rx) = futures::channel::mpsc::unbounded();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        // Watch errors are retried with backoff inside the stream.
        while let Some(event) = stream.next().await {
            let (obj, deleted) = match &event {
                Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
                Ok(watcher::Event::Delete(o)) => (o, true),
                _ => continue,
            };
            {
                let mut ix = index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if deleted { ix.deleted(obj.meta()) } else { ix.applied(obj.meta()) }
            }
            let Some(owner) = controller_of(obj.meta()) else { continue };
            if tx.unbounded_send(owner).is_err() {
                break;
            }
        }
    });
    rx
}

/// The cached objects the index lists for `uid`; keys the cache no longer has are dropped.
fn indexed<K>(store: &Store<K>, index: &Mutex<OwnerIndex>, uid: &str) -> Vec<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    let mut ix = index.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut out = Vec::new();
    for key in ix.owned(uid) {
        match store.get(&ObjectRef::new(&key.1).within(&key.0)) {
            Some(o) => out.push(o),
            None => ix.remove(uid, &key),
        }
    }
    out
}

/// Runs the controller until `shutdown` resolves; in-flight reconciles finish first.
/// `health` learns when the caches have synced, and gates every write: a process that no
/// longer leads writes nothing.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = settings.namespace.as_deref();
    let (pods, pod_writer) = reflector::store();
    let (services, svc_writer) = reflector::store();
    let (pod_index, service_index) = (Arc::default(), Arc::default());
    let pod_stream = owned_stream(api::<Pod>(&client, ns), pod_writer, Arc::clone(&pod_index));
    let svc_stream = owned_stream(api::<Service>(&client, ns), svc_writer, Arc::clone(&service_index));
    let (writer, publisher) =
        Writer::new(client.clone(), settings.instance.clone(), health.clone(), metrics.clone());
    let ctx = Arc::new(Context {
        writer,
        pods,
        services,
        pod_index,
        service_index,
        settings: settings.clone(),
        pending: Mutex::default(),
        metrics,
    });
    // Plan only from caches that have listed everything: a half-filled cache shows pods missing.
    let shutdown = shutdown.shared();
    let synced =
        async { ctx.pods.wait_until_ready().await.is_ok() && ctx.services.wait_until_ready().await.is_ok() };
    tokio::select! {
        ok = synced => if !ok {
            warn!("the pod and service caches stopped before they synced");
            return;
        },
        () = shutdown.clone() => return,
    }
    health.set_synced();
    // TFJobs are cached without managedFields too.
    let (job_store, job_writer) = reflector::store();
    let jobs = watcher(api::<TFJob>(&client, ns), watcher::Config::default())
        .default_backoff()
        .modify(|j: &mut TFJob| j.metadata.managed_fields = None)
        .reflect(job_writer)
        .touched_objects();
    info!(
        namespace = ns.unwrap_or("(all)"),
        concurrency = settings.concurrency,
        "starting the TFJob controller"
    );
    Controller::for_stream(jobs, job_store)
        .reconcile_on(pod_stream)
        .reconcile_on(svc_stream)
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(timed_reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "reconcile failed");
            }
        })
        .await;
    // The controller dropped the writer: the publisher ends once the queued events are out.
    if tokio::time::timeout(Duration::from_secs(10), publisher).await.is_err() {
        warn!("events still queued 10 s after the controller stopped were not published");
    }
    info!("the TFJob controller stopped");
}

fn error_policy(job: Arc<TFJob>, err: &Error, ctx: Arc<Context>) -> Action {
    let uid = job.uid().unwrap_or_default();
    let n = {
        let mut p = ctx.pending();
        let n = p.errors.entry(uid).or_default();
        *n = n.saturating_add(1);
        *n
    };
    let wait = Duration::from_millis(500).saturating_mul(1 << n.min(7)).min(Duration::from_secs(60));
    warn!(job = %job.name_any(), namespace = job.namespace().unwrap_or_default(), error = %err, kind = err.kind(), retry_in = ?wait, "reconcile failed");
    Action::requeue(wait)
}

async fn timed_reconcile(job: Arc<TFJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile(job, ctx.clone()).await;
    ctx.metrics.reconciled(started.elapsed().as_secs_f64(), result.as_ref().err().map(Error::kind));
    result
}

async fn reconcile(cached: Arc<TFJob>, ctx: Arc<Context>) -> Result<Action, Error> {
    let now = Instant::now();
    let job = ctx.pending().written.view(cached, now);
    let uid = job.uid().ok_or(Error::MissingField("metadata.uid"))?;
    if job.metadata.deletion_timestamp.is_some() {
        ctx.pending().written.forget(&uid);
        return Ok(Action::await_change());
    }
    let ns = job.namespace().unwrap_or_default();
    let owned = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        meta.namespace.as_deref() == Some(ns.as_str()) && names::controlled_by(meta, &uid)
    };
    let cached_pods: Vec<Arc<Pod>> =
        indexed(&ctx.pods, &ctx.pod_index, &uid).into_iter().filter(|p| owned(&p.metadata)).collect();
    let cached_svcs: Vec<Arc<Service>> =
        indexed(&ctx.services, &ctx.service_index, &uid).into_iter().filter(|s| owned(&s.metadata)).collect();
    let (pods, services) = {
        let mut p = ctx.pending();
        (
            p.pods.view(&cached_pods, now, |o| owned(&o.metadata)),
            p.services.view(&cached_svcs, now, |o| owned(&o.metadata)),
        )
    };
    let plan = plan::plan(&job, &pods, &services, Timestamp::now(), ctx.settings.cluster_domain.as_deref());
    debug!(
        job = %job.name_any(),
        resource_version = job.resource_version().unwrap_or_default(),
        pods = ?pods.iter().map(|p| format!("{}/{}/{}", p.name_any(), p.uid().unwrap_or_default(), p.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default())).collect::<Vec<_>>(),
        status = plan.status.is_some(),
        delete_pods = plan.delete_pods.len(),
        create_pods = plan.create_pods.len(),
        events = ?plan.events.iter().map(|e| e.reason.as_str()).collect::<Vec<_>>(),
        "planned"
    );
    let action = apply(&ctx, &job, &uid, plan).await?;
    ctx.pending().errors.remove(&uid);
    Ok(action)
}

fn until(t: Timestamp) -> Duration {
    let d = t.duration_since(Timestamp::now());
    // Round up to whole milliseconds so the wake-up is never early.
    Duration::try_from(d).map_or(Duration::ZERO, |d| d + Duration::from_millis(1))
}

async fn apply(ctx: &Context, job: &TFJob, uid: &str, plan: Plan) -> Result<Action, Error> {
    let ns = job.namespace().unwrap_or_default();
    let mut job = job.clone();
    if let Some(status) = &plan.status {
        let written = ctx.writer.patch_status(&job, status).await?;
        for count in metrics::jobs::counts(job.status.as_ref(), status) {
            ctx.metrics.job(&ns, count);
        }
        job = written.clone();
        ctx.pending().written.wrote(written, Instant::now());
    }
    for ev in &plan.events {
        ctx.writer.publish(&job, ev).await?;
    }
    for pod in &plan.delete_pods {
        ctx.writer.delete_pod(&ns, pod).await?;
        ctx.pending().pods.deleted(&pod.uid, Instant::now());
        publish(ctx, &job, false, "SuccessfulDeletePod", format!("Deleted pod: {}", pod.name)).await?;
    }
    for svc in &plan.delete_services {
        ctx.writer.delete_service(&ns, svc).await?;
        if let Some(uid) = ctx.services.get(&ObjectRef::new(svc).within(&ns)).and_then(|s| s.uid()) {
            ctx.pending().services.deleted(&uid, Instant::now());
        }
        publish(ctx, &job, false, "SuccessfulDeleteService", format!("Deleted service: {svc}")).await?;
    }
    let mut requeue = plan.requeue_at.map(until);
    let mut soonest = |d: Duration| requeue = Some(requeue.map_or(d, |r| r.min(d)));
    if !plan.create_pods.is_empty() || !plan.create_services.is_empty() {
        let gate = ctx.pending().create_backoff.get(uid).map(|(_, at)| *at);
        match gate.filter(|at| *at > Instant::now()) {
            Some(at) => soonest(at.duration_since(Instant::now())),
            None => match create_all(ctx, &job, uid, &plan).await? {
                CreateResult::Done => {
                    ctx.pending().create_backoff.remove(uid);
                }
                CreateResult::Blocked => soonest(BLOCKED_RETRY),
                CreateResult::Refused(message) => {
                    let wait = {
                        let mut p = ctx.pending();
                        let entry = p.create_backoff.entry(uid.to_string()).or_insert((0, Instant::now()));
                        entry.0 = entry.0.saturating_add(1);
                        let wait = Duration::from_secs(5)
                            .saturating_mul(1 << (entry.0 - 1).min(4))
                            .min(CREATE_BACKOFF_MAX);
                        entry.1 = Instant::now() + wait;
                        wait
                    };
                    let current = job.status.clone().unwrap_or_default();
                    let status = plan::with_replica_failure(&current, &message, Timestamp::now());
                    if status != current {
                        let written = ctx.writer.patch_status(&job, &status).await?;
                        ctx.pending().written.wrote(written, Instant::now());
                    }
                    soonest(wait);
                }
            },
        }
    }
    if plan.delete_job {
        let ttl = job
            .status
            .as_ref()
            .and_then(|s| s.applied_policy.as_ref())
            .and_then(|p| p.ttl_seconds_after_finished);
        if ctx.writer.delete_job(&job).await? {
            ctx.metrics.job(&ns, JobCount::Deleted);
            info!(job = %job.name_any(), namespace = %ns, ?ttl, "deleted the finished TFJob (ttlSecondsAfterFinished)");
            ctx.pending().written.forget(uid);
            return Ok(Action::await_change());
        }
    }
    Ok(requeue.map_or_else(Action::await_change, Action::requeue))
}

async fn publish(ctx: &Context, job: &TFJob, warning: bool, reason: &str, note: String) -> Result<(), Error> {
    ctx.writer.publish(job, &PlannedEvent { warning, reason: reason.into(), note }).await
}

enum CreateResult {
    Done,
    /// A pod of the same name is terminating: try again shortly.
    Blocked,
    /// The API server refused a create: back off.
    Refused(String),
}

/// Creates in flight for one job.
const CREATES_IN_FLIGHT: usize = 16;

/// What one create came to.
enum One {
    Done,
    Blocked,
    Refused(String),
}

/// Creates one pod or service, records it as pending and publishes its event.
async fn create_one<K: Tracked>(ctx: &Context, job: &TFJob, uid: &str, obj: &K) -> Result<One, Error> {
    let name = obj.name_any();
    let kind = K::KIND_LOWER;
    match ctx.writer.create(uid, obj).await? {
        Ok(Created::New(o)) => {
            K::pending(&mut ctx.pending()).created(o, Instant::now());
            let (reason, what) = K::CREATED;
            publish(ctx, job, false, reason, format!("Created {what}: {name}")).await?;
            Ok(One::Done)
        }
        Ok(Created::Existing(o)) => {
            K::pending(&mut ctx.pending()).created(o, Instant::now());
            Ok(One::Done)
        }
        Ok(Created::Terminating) => Ok(One::Blocked),
        Ok(Created::Foreign) => {
            let msg =
                format!("{kind} {name} already exists and is not controlled by this TFJob; it is left alone");
            publish(ctx, job, true, K::FAILED, msg.clone()).await?;
            Ok(One::Refused(msg))
        }
        Err(e) => {
            let msg = format!("Error creating {kind} {name}: {}", api_message(&e));
            publish(ctx, job, true, K::FAILED, msg.clone()).await?;
            Ok(One::Refused(msg))
        }
    }
}

/// Pods and services: where their pending creates are kept, and their events' reasons.
trait Tracked: Namespaced {
    const KIND_LOWER: &'static str;
    /// The success reason and the noun of its note.
    const CREATED: (&'static str, &'static str);
    const FAILED: &'static str;
    fn pending(p: &mut Pendings) -> &mut Pending<Self>;
}

impl Tracked for Pod {
    const KIND_LOWER: &'static str = "pod";
    const CREATED: (&'static str, &'static str) = ("SuccessfulCreatePod", "pod");
    const FAILED: &'static str = "FailedCreatePod";
    fn pending(p: &mut Pendings) -> &mut Pending<Pod> {
        &mut p.pods
    }
}

impl Tracked for Service {
    const KIND_LOWER: &'static str = "service";
    const CREATED: (&'static str, &'static str) = ("SuccessfulCreateService", "service");
    const FAILED: &'static str = "FailedCreateService";
    fn pending(p: &mut Pendings) -> &mut Pending<Service> {
        &mut p.services
    }
}

/// Creates `objs` with up to [`CREATES_IN_FLIGHT`] at once; the first refusal wins.
async fn create_batch<K: Tracked>(
    ctx: &Context,
    job: &TFJob,
    uid: &str,
    objs: &[K],
) -> Result<CreateResult, Error> {
    // Collected first: a lazily mapped iterator here trips the compiler's Send check.
    let creates: Vec<_> = objs.iter().map(|o| create_one(ctx, job, uid, o)).collect();
    let results: Vec<Result<One, Error>> =
        futures::stream::iter(creates).buffer_unordered(CREATES_IN_FLIGHT).collect().await;
    let mut blocked = false;
    for r in results {
        match r? {
            One::Done => {}
            One::Blocked => blocked = true,
            One::Refused(msg) => return Ok(CreateResult::Refused(msg)),
        }
    }
    Ok(if blocked { CreateResult::Blocked } else { CreateResult::Done })
}

/// Creates the plan's services, then its pods, each batch concurrently. A refusal stops it
/// before the pods.
async fn create_all(ctx: &Context, job: &TFJob, uid: &str, plan: &Plan) -> Result<CreateResult, Error> {
    let services = create_batch(ctx, job, uid, &plan.create_services).await?;
    if let CreateResult::Refused(_) = services {
        return Ok(services);
    }
    match create_batch(ctx, job, uid, &plan.create_pods).await? {
        CreateResult::Done => Ok(services),
        other => Ok(other),
    }
}
