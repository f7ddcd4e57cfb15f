//! Wiring: the label-selected watches, the reconcile context and kube-runtime's `Controller`,
//! started in order and run until shutdown.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::controller::{Config as ControllerConfig, Controller};
use kube::runtime::reflector::{self, ObjectRef};
use kube::{Client, Resource};
use tracing::{debug, info, warn};

use super::cached_job::CachedJob;
use super::observe::{self, Caches};
use super::{Context, Settings, error_policy, freshness, index, job_watch, reflect, timed_reconcile};
use crate::api::TFJob;
use crate::http::Readiness;
use crate::leader::Gate;
use crate::metrics::Metrics;
use crate::writer::{Writer, events};

/// A stream of the jobs to reconcile because something they own changed.
type Triggers = BoxStream<'static, ObjectRef<CachedJob>>;

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The caches of the pods, services (and, with gang scheduling, PodGroups) this operator
/// labels, and the triggers their watches send.
fn owned_watches(
    watched: &impl Fn(&'static str) -> Client,
    settings: &Settings,
    metrics: &Arc<Metrics>,
) -> (Caches, Vec<Triggers>) {
    let ns = settings.namespace.as_deref();
    let (pods, pod_writer) = reflector::store();
    let (services, svc_writer) = reflector::store();
    let (pod_index, service_index) = (Arc::default(), Arc::default());
    let mut triggers = vec![
        observe::owned_stream(
            api::<observe::CachedPod>(&watched("pods"), ns),
            pod_writer,
            Arc::clone(&pod_index),
            metrics.clone(),
            "pods",
        )
        .boxed(),
        observe::owned_stream(
            api::<observe::CachedService>(&watched("services"), ns),
            svc_writer,
            Arc::clone(&service_index),
            metrics.clone(),
            "services",
        )
        .boxed(),
    ];
    // Gang scheduling: the PodGroups, watched as the pods are.
    let pod_groups = (settings.gang == crate::plan::gang::GangScheduling::Native).then(|| {
        let (store, writer) = reflector::store();
        let index: Arc<Mutex<index::OwnerIndex>> = Arc::default();
        triggers.push(
            observe::owned_stream(
                api::<crate::api::PodGroup>(&watched("podgroups"), ns),
                writer,
                Arc::clone(&index),
                metrics.clone(),
                "podgroups",
            )
            .boxed(),
        );
        (store, index)
    });
    (Caches { pods, services, pod_index, service_index, pod_groups }, triggers)
}

/// Whether the owned caches listed everything before `shutdown`: planning from a half-filled
/// cache would see pods missing.
async fn caches_synced(caches: &Caches, shutdown: impl Future<Output = ()>) -> bool {
    let synced = async {
        caches.pods.wait_until_ready().await.is_ok()
            && caches.services.wait_until_ready().await.is_ok()
            && match &caches.pod_groups {
                Some((store, _)) => store.wait_until_ready().await.is_ok(),
                None => true,
            }
    };
    tokio::select! {
        ok = synced => {
            if !ok {
                warn!("the pod and service caches stopped before they synced");
            }
            ok
        }
        () = shutdown => false,
    }
}

/// Runs the controller until `shutdown` resolves; in-flight reconciles finish first, then the
/// queued events are published. Every write asks `gate`; `readiness` is told once the pod
/// and service caches have listed everything, and follows every watch
/// ([`freshness::watch_client`]).
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    gate: Gate,
    readiness: Arc<Readiness>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let watched = |name| freshness::watch_client(&client, readiness.watches(), name);
    let (caches, mut triggers) = owned_watches(&watched, &settings, &metrics);
    let instance = settings.instance.clone().unwrap_or_else(|| crate::writer::FIELD_MANAGER.into());
    let (queue, publisher) = events::queue(instance, metrics.clone());
    let publisher = tokio::spawn(publisher.run(client.clone(), gate.clone()));
    // Jobs given room to create are reconciled again through this channel.
    let (wake, woken) = tokio::sync::mpsc::unbounded_channel();
    triggers.push(
        futures::stream::unfold(woken, |mut rx| async move { rx.recv().await.map(|job| (job, rx)) }).boxed(),
    );
    // TFJobs are cached without managedFields too, decoded one by one ([`super::decode`]) and
    // kept compact ([`CachedJob`]).
    let (job_store, job_writer) = reflector::store();
    let writer = Writer::new(client.clone(), gate.clone(), queue);
    let ctx = Arc::new(Context::new(
        writer,
        caches,
        job_store.clone(),
        settings.clone(),
        metrics,
        gate,
        Some(wake),
    ));
    let shutdown = shutdown.shared();
    if !caches_synced(&ctx.caches, shutdown.clone()).await {
        return;
    }
    readiness.set_synced();
    // Reflected in place, as the pods and services are (a re-list never doubles the cache).
    let resource = ApiResource::erase::<TFJob>(&());
    let job_api: Api<DynamicObject> = match settings.namespace.as_deref() {
        Some(ns) => Api::namespaced_with(watched("tfjobs"), ns, &resource),
        None => Api::all_with(watched("tfjobs"), &resource),
    };
    let job_events = job_watch::events(job_api, reflect::InPlace::new(job_writer), ctx.writer.clone());
    let jobs = observe::job_triggers(
        job_events,
        job_store.clone(),
        ctx.metrics.clone(),
        ctx.counting.clone(),
        ctx.jobs_fresh.clone(),
        ctx.clone(),
    );
    info!(
        namespace = settings.namespace.as_deref().unwrap_or("(all)"),
        concurrency = settings.concurrency,
        "starting the TFJob controller"
    );
    let expiry = {
        let ctx = ctx.clone();
        tokio::spawn(async move { ctx.writes.expire_every_second().await })
    };
    // With --kueue-workloads=operator, the Workloads of queued jobs are followed beside.
    let workloads = (settings.workloads == crate::queue::WorkloadsBy::Operator).then(|| {
        let run = super::workloads::run(
            client.clone(),
            ctx.writer.clone(),
            settings.namespace.clone(),
            shutdown.clone(),
        );
        tokio::spawn(run)
    });
    Controller::for_stream(jobs, job_store)
        .reconcile_on(futures::stream::select_all(triggers))
        .with_config(ControllerConfig::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(timed_reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "reconcile failed");
            }
        })
        .await;
    expiry.abort();
    if let Some(w) = workloads {
        let _ = w.await;
    }
    // The controller dropped the writer: the publisher ends once the queued events are out.
    if tokio::time::timeout(Duration::from_secs(10), publisher).await.is_err() {
        warn!("events still queued 10 s after the controller stopped were not published");
    }
    info!("the TFJob controller stopped");
}
