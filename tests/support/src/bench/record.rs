//! What the benchmark sees happen, from watches on its namespace: when each pod and service
//! first appeared (and the object, to replay it for the bound), and when each TFJob became
//! Running, Succeeded or Failed and was deleted, with the deadline and expiry it published.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::Value;

/// One TFJob's history.
#[derive(Clone, Debug, Default)]
pub struct JobSeen {
    pub running: Option<Instant>,
    pub succeeded: Option<Instant>,
    /// The wall-clock instant `Succeeded` arrived by watch.
    pub succeeded_at: Option<Timestamp>,
    pub failed: Option<Timestamp>,
    pub deleted: Option<Timestamp>,
    /// When it fails for activeDeadlineSeconds: `status.deadline`, else `startTime` + ADS.
    pub deadline: Option<Timestamp>,
    /// When it is deleted for its TTL: `status.expires`, else `completionTime` + TTL.
    pub expires: Option<Timestamp>,
}

#[derive(Default)]
pub struct Seen {
    pub pods: HashMap<String, (Instant, Pod)>,
    pub services: HashMap<String, (Instant, Service)>,
    pub jobs: HashMap<String, JobSeen>,
    /// Per pod, when its `tensorflow` container finished (`finishedAt`), once seen.
    pub finished: HashMap<String, Timestamp>,
    /// Per pod, when the watch first showed each stage of its life.
    pub stages: HashMap<String, PodStages>,
}

/// When the bench's pod watch first showed a pod bound to a node, Running, and Succeeded
/// (its trace from create to done, by watch arrival).
#[derive(Clone, Copy, Debug, Default)]
pub struct PodStages {
    pub bound: Option<Instant>,
    pub running: Option<Instant>,
    pub succeeded: Option<Instant>,
}

impl PodStages {
    /// Records the stages `p` shows that were not seen before.
    pub fn observe(&mut self, p: &Pod, now: Instant) {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if self.bound.is_none() && p.spec.as_ref().is_some_and(|s| s.node_name.is_some()) {
            self.bound = Some(now);
        }
        if self.running.is_none() && matches!(phase, Some("Running" | "Succeeded")) {
            self.running = Some(now);
        }
        if self.succeeded.is_none() && phase == Some("Succeeded") {
            self.succeeded = Some(now);
        }
    }
}

/// When the pod's `tensorflow` container finished, if it has.
fn finished_at(p: &Pod) -> Option<Timestamp> {
    let statuses = p.status.as_ref()?.container_statuses.as_ref()?;
    let c = statuses.iter().find(|c| c.name == "tensorflow")?;
    Some(c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref()?.0)
}

/// The watches of one namespace, stopped on drop.
pub struct Recorder {
    seen: Arc<Mutex<Seen>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

pub fn tfjob_resource() -> ApiResource {
    ApiResource {
        group: "kubeflow.org".into(),
        version: "v1".into(),
        api_version: "kubeflow.org/v1".into(),
        kind: "TFJob".into(),
        plural: "tfjobs".into(),
    }
}

fn condition(status: &Value, type_: &str) -> bool {
    status["conditions"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["type"] == type_ && c["status"] == "True"))
}

fn time(v: &Value) -> Option<Timestamp> {
    v.as_str()?.parse().ok()
}

fn plus(t: Option<Timestamp>, secs: Option<i64>) -> Option<Timestamp> {
    t?.checked_add(SignedDuration::from_secs(secs?)).ok()
}

/// Updates a job's history from an object seen now.
pub fn observe_job(seen: &mut JobSeen, obj: &Value, now: Instant, wall: Timestamp) {
    let status = &obj["status"];
    let run_policy = |k: &str| obj["spec"][k].as_i64().or_else(|| obj["spec"]["runPolicy"][k].as_i64());
    if seen.running.is_none() && condition(status, "Running") {
        seen.running = Some(now);
    }
    if seen.succeeded.is_none() && condition(status, "Succeeded") {
        seen.succeeded = Some(now);
        seen.succeeded_at = Some(wall);
    }
    if seen.failed.is_none() && condition(status, "Failed") {
        seen.failed = Some(wall);
    }
    seen.deadline = time(&status["deadline"])
        .or_else(|| plus(time(&status["startTime"]), run_policy("activeDeadlineSeconds")));
    seen.expires = time(&status["expires"])
        .or_else(|| plus(time(&status["completionTime"]), run_policy("ttlSecondsAfterFinished")));
}

fn spawn_watch<K>(
    api: Api<K>,
    seen: Arc<Mutex<Seen>>,
    on: fn(&mut Seen, watcher::Event<K>),
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    tokio::spawn(async move {
        let mut s = std::pin::pin!(watcher(api, watcher::Config::default()));
        while let Some(ev) = s.next().await {
            if let Ok(ev) = ev
                && let Ok(mut seen) = seen.lock()
            {
                on(&mut seen, ev);
            }
        }
    })
}

impl Recorder {
    pub fn start(client: &Client, ns: &str) -> Recorder {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
        let services: Api<Service> = Api::namespaced(client.clone(), ns);
        let jobs: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &tfjob_resource());
        let tasks = vec![
            spawn_watch(pods, seen.clone(), |s, ev| {
                if let watcher::Event::Apply(p) | watcher::Event::InitApply(p) = ev {
                    if let Some(at) = finished_at(&p) {
                        s.finished.entry(p.name_any()).or_insert(at);
                    }
                    s.stages.entry(p.name_any()).or_default().observe(&p, Instant::now());
                    s.pods.entry(p.name_any()).or_insert_with(|| (Instant::now(), p));
                }
            }),
            spawn_watch(services, seen.clone(), |s, ev| {
                if let watcher::Event::Apply(o) | watcher::Event::InitApply(o) = ev {
                    s.services.entry(o.name_any()).or_insert_with(|| (Instant::now(), o));
                }
            }),
            spawn_watch(jobs, seen.clone(), |s, ev| match ev {
                watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                    let v = serde_json::to_value(&o).unwrap_or_default();
                    observe_job(
                        s.jobs.entry(o.name_any()).or_default(),
                        &v,
                        Instant::now(),
                        Timestamp::now(),
                    );
                }
                watcher::Event::Delete(o) => {
                    let entry = s.jobs.entry(o.name_any()).or_default();
                    entry.deleted.get_or_insert(Timestamp::now());
                }
                _ => {}
            }),
        ];
        Recorder { seen, tasks }
    }

    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn job_history_from_either_status_shape() {
        let t0 = Instant::now();
        let wall: Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        let mut seen = JobSeen::default();
        // Ours: the published deadline and expiry.
        let ours = json!({
            "spec": {"runPolicy": {"activeDeadlineSeconds": 20, "ttlSecondsAfterFinished": 10}},
            "status": {"conditions": [{"type": "Failed", "status": "True"}],
                       "startTime": "2026-01-01T00:00:00Z", "deadline": "2026-01-01T00:00:21Z",
                       "completionTime": "2026-01-01T00:00:21Z", "expires": "2026-01-01T00:00:32Z"}
        });
        observe_job(&mut seen, &ours, t0, wall);
        assert_eq!(seen.failed, Some(wall));
        assert_eq!(seen.deadline, "2026-01-01T00:00:21Z".parse().ok());
        assert_eq!(seen.expires, "2026-01-01T00:00:32Z".parse().ok());
        assert!(seen.running.is_none() && seen.succeeded.is_none());
        // Another operator's: computed from startTime and completionTime.
        let mut other = JobSeen::default();
        let theirs = json!({
            "spec": {"runPolicy": {"activeDeadlineSeconds": 20, "ttlSecondsAfterFinished": 10}},
            "status": {"conditions": [{"type": "Running", "status": "False"}, {"type": "Succeeded", "status": "True"}],
                       "startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:00:05Z"}
        });
        observe_job(&mut other, &theirs, t0, wall);
        assert_eq!(other.deadline, "2026-01-01T00:00:20Z".parse().ok());
        assert_eq!(other.expires, "2026-01-01T00:00:15Z".parse().ok());
        assert_eq!((other.running, other.succeeded), (None, Some(t0)), "a False condition is not seen");
    }
}
