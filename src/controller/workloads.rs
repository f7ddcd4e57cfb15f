//! The operator's own Kueue Workloads (`--kueue-workloads=operator`): a second controller,
//! beside the TFJob one, that watches the TFJobs labelled `kueue.x-k8s.io/queue-name` and
//! the Workloads the operator created, and for each job observes (its Workload, priority
//! class and flavors), decides ([`crate::queue::decide`]) and writes the steps in order.
//! The TFJob controller holds a queued job without pods until this one starts it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tracing::{debug, error, info, warn};

use crate::api::TFJob;
use crate::api::workload::{FlavorSpec, Workload};
use crate::error::Error;
use crate::names;
use crate::queue::{self, Observed, Priority, Step};
use crate::writer::workload::Patched;
use crate::writer::{Created, Writer};

struct Ctx {
    client: Client,
    writer: Writer,
    workloads: Store<Workload>,
}

fn tfjob_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk("kubeflow.org", "v1", names::KIND), "tfjobs")
}

fn kueue_api(client: &Client, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(crate::api::workload::GROUP, crate::api::workload::VERSION, kind);
    Api::all_with(client.clone(), &ApiResource::from_gvk_with_plural(&gvk, plural))
}

/// Runs until `shutdown` resolves.
pub async fn run(
    client: Client,
    writer: Writer,
    namespace: Option<String>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let ar = tfjob_resource();
    let (jobs, wls): (Api<DynamicObject>, Api<Workload>) = match namespace.as_deref() {
        Some(ns) => (Api::namespaced_with(client.clone(), ns, &ar), Api::namespaced(client.clone(), ns)),
        None => (Api::all_with(client.clone(), &ar), Api::all(client.clone())),
    };
    let (store, store_writer) = reflector::store();
    let owner_ar = ar.clone();
    // A Workload's change wakes the job that controls it.
    let owners = watcher(wls, watcher::Config::default().labels(&names::operator_selector()))
        .default_backoff()
        .reflect(store_writer)
        .touched_objects()
        .filter_map(move |wl| {
            let ar = owner_ar.clone();
            async move {
                let wl = wl.ok()?;
                let owner = wl.owner_references().iter().find(|r| r.controller == Some(true))?.name.clone();
                Some(ObjectRef::new_with(&owner, ar).within(&wl.namespace()?))
            }
        });
    match client.list_api_group_resources(crate::api::workload::API_VERSION).await {
        Ok(list) if list.resources.iter().any(|r| r.name == crate::api::workload::PLURAL) => {}
        Ok(_) | Err(_) => error!(
            "--kueue-workloads=operator: the cluster does not serve kueue.x-k8s.io/v1beta2 Workloads (Kueue v0.15 \
             or later is needed); queued TFJobs wait without pods until it does"
        ),
    }
    let ctx = Arc::new(Ctx { client, writer, workloads: store });
    info!("starting the Kueue Workload controller (--kueue-workloads=operator)");
    Controller::new_with(jobs, watcher::Config::default().labels(names::KUEUE_QUEUE_LABEL), ar)
        .reconcile_on(owners)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                debug!(error = %e, "workload reconcile failed");
            }
        })
        .await;
    info!("the Kueue Workload controller stopped");
}

fn error_policy(job: Arc<DynamicObject>, err: &Error, _ctx: Arc<Ctx>) -> Action {
    warn!(job = %job.name_any(), namespace = job.namespace().unwrap_or_default(), error = %err, "workload reconcile failed");
    Action::requeue(err.retry_after().unwrap_or(Duration::from_secs(2)))
}

/// The WorkloadPriorityClass the job's label names, with its value.
async fn priority(client: &Client, job: &TFJob) -> Result<Option<Priority>, String> {
    let Some(name) = job.labels().get(queue::PRIORITY_CLASS_LABEL) else { return Ok(None) };
    let api = kueue_api(client, "WorkloadPriorityClass", "workloadpriorityclasses");
    match api.get_opt(name).await {
        Ok(Some(class)) => match class.data.get("value").and_then(serde_json::Value::as_i64) {
            Some(v) => Ok(Some(Priority { name: name.clone(), value: i32::try_from(v).unwrap_or(i32::MAX) })),
            None => Err(format!("WorkloadPriorityClass {name} has no value")),
        },
        Ok(None) => Err(format!(
            "WorkloadPriorityClass {name} (label {}) is not found; the Workload is created once it exists",
            queue::PRIORITY_CLASS_LABEL
        )),
        Err(e) => Err(format!("reading WorkloadPriorityClass {name}: {e}")),
    }
}

/// The ResourceFlavors an admitted Workload's assignments name.
async fn flavors(client: &Client, wl: &Workload) -> Result<BTreeMap<String, FlavorSpec>, Error> {
    let mut out = BTreeMap::new();
    let Some(admission) = wl.admission() else { return Ok(out) };
    let api = kueue_api(client, "ResourceFlavor", "resourceflavors");
    for name in admission.pod_set_assignments.iter().flat_map(|a| a.flavors.values()) {
        if out.contains_key(name) {
            continue;
        }
        let read = api.get_opt(name).await.map_err(|source| Error::ReadKueue {
            kind: "ResourceFlavor",
            name: name.clone(),
            source,
        })?;
        if let Some(f) = read {
            let spec = f.data.get("spec").cloned().unwrap_or_default();
            out.insert(name.clone(), serde_json::from_value(spec).unwrap_or_default());
        }
    }
    Ok(out)
}

async fn reconcile(obj: Arc<DynamicObject>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    let job: TFJob = serde_json::to_value(&*obj)
        .and_then(serde_json::from_value)
        .map_err(|source| Error::CachedJob { job: obj.name_any(), source })?;
    let Some(uid) = job.metadata.uid.clone() else { return Ok(Action::await_change()) };
    let ns = job.namespace().unwrap_or_default();
    let name = queue::workload_name(&job.name_any(), &uid);
    let wl = ctx.workloads.get(&ObjectRef::new(&name).within(&ns));
    let priority = priority(&ctx.client, &job).await;
    let waiting = queue::waiting_in(&job).is_some() || job.spec.is_suspended();
    let flavors = match &wl {
        Some(wl) if waiting => flavors(&ctx.client, wl).await?,
        _ => BTreeMap::new(),
    };
    let now = Timestamp::now();
    let steps =
        queue::decide(&Observed { job: &job, workload: wl.as_deref(), priority, flavors: &flavors, now });
    for step in steps {
        debug!(job = %job.name_any(), ?step, "workload step");
        let done = match &step {
            Step::PatchJob(patch) => ctx.writer.patch_job(&job, patch).await?,
            Step::CreateWorkload(new) => match ctx.writer.create_workload(&uid, new).await? {
                Created::New(_) => {
                    let note =
                        format!("Created Workload {name} in Kueue's LocalQueue {}", new.spec.queue_name);
                    ctx.writer.publish(
                        &job,
                        &crate::plan::PlannedEvent::normal("CreatedWorkload", note),
                        now,
                    )?;
                    Patched::Done
                }
                // Not seen by the watch yet, going away, or not the job's (decide warns).
                Created::Existing(_) | Created::Terminating | Created::Foreign => Patched::Stale,
                Created::Refused(msg) => {
                    let note = format!("Error creating Workload {name}: {msg}");
                    ctx.writer.publish(
                        &job,
                        &crate::plan::PlannedEvent::warning("FailedCreateWorkload", note),
                        now,
                    )?;
                    Patched::Stale
                }
                Created::NamespaceGone => return Ok(Action::await_change()),
                Created::Transient(source) => {
                    return Err(Error::Create { kind: "Workload".into(), name, source });
                }
            },
            Step::PatchWorkload(patch) | Step::PatchWorkloadStatus(patch) => match &wl {
                Some(wl) => {
                    let status = matches!(step, Step::PatchWorkloadStatus(_));
                    ctx.writer.patch_workload(wl, patch, status).await?
                }
                None => Patched::Stale,
            },
            Step::Event(ev) => {
                ctx.writer.publish(&job, ev, now)?;
                Patched::Done
            }
        };
        if done == Patched::Stale {
            // Decide again from what is stored now (the watch brings it).
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
    }
    Ok(Action::requeue(Duration::from_secs(300)))
}
