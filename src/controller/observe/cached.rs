//! The pod and service caches' own compact types: what [`Slim`] keeps of an object, held in
//! types the size of what they carry, and turned back into the `Pod` or `Service` planning
//! reads when a reconcile observes its job.
//!
//! A `Pod` is 2464 bytes with no spec (its `PodSpec` is inline) and each label map node
//! holds room for 11 entries, so a slimmed `Pod` still cost 5004 bytes in its cache. A
//! [`CachedPod`] keeps the same fields in about a third of that; [`CachedService`] likewise.
//! `from` then [`CachedPod::to_pod`] gives exactly the slimmed pod (a table test pins it), so
//! planning reads what it read before.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus,
    Pod, PodCondition, PodStatus, Service,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use serde::Deserialize;

use super::slim::{LABELS_READ, Slim};

/// A text the cache keeps: exactly its length, no spare capacity.
type Text = Box<str>;

fn text(s: String) -> Text {
    s.into_boxed_str()
}

fn opt(s: Option<String>) -> Option<Text> {
    s.map(text)
}

fn string(t: &Text) -> String {
    String::from(&**t)
}

fn opt_string(t: &Option<Text>) -> Option<String> {
    t.as_deref().map(String::from)
}

/// The values of [`LABELS_READ`], in its order, kept beside the metadata (whose `labels`
/// are left empty) instead of in a map.
#[derive(Clone, Debug, Default, PartialEq)]
struct Labels([Option<Text>; LABELS_READ.len()]);

impl Labels {
    /// Takes the labels read out of `meta`, leaving it none.
    fn take(meta: &mut ObjectMeta) -> Labels {
        let mut labels = meta.labels.take().unwrap_or_default();
        Labels(LABELS_READ.map(|k| labels.remove(k).map(text)))
    }

    /// `meta` with its labels back.
    fn restore(&self, mut meta: ObjectMeta) -> ObjectMeta {
        let labels: BTreeMap<String, String> = LABELS_READ
            .iter()
            .zip(&self.0)
            .filter_map(|(k, v)| Some(((*k).to_owned(), string(v.as_ref()?))))
            .collect();
        meta.labels = (!labels.is_empty()).then_some(labels);
        meta
    }
}

/// A pod as its cache keeps it: the slimmed metadata (labels apart) and status.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "Pod")]
pub struct CachedPod {
    metadata: ObjectMeta,
    labels: Labels,
    status: Option<Box<Status>>,
}

/// A service as its cache keeps it: the slimmed metadata (labels apart).
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "Service")]
pub struct CachedService {
    metadata: ObjectMeta,
    labels: Labels,
}

#[derive(Clone, Debug, PartialEq)]
struct Status {
    phase: Option<Text>,
    reason: Option<Text>,
    conditions: Box<[Condition]>,
    init_containers: Box<[Container]>,
    containers: Box<[Container]>,
}

#[derive(Clone, Debug, PartialEq)]
struct Condition {
    type_: Text,
    status: Text,
    reason: Option<Text>,
    message: Option<Text>,
}

#[derive(Clone, Debug, PartialEq)]
struct Container {
    name: Text,
    restart_count: i32,
    state: Option<State>,
    /// The last state, when it was a termination (the only last state read).
    last_terminated: Option<Terminated>,
}

#[derive(Clone, Debug, PartialEq)]
struct State {
    /// The waiting reason and message.
    waiting: Option<(Option<Text>, Option<Text>)>,
    /// Running, since when (if known).
    running: Option<Option<Time>>,
    terminated: Option<Terminated>,
}

#[derive(Clone, Debug, PartialEq)]
struct Terminated {
    exit_code: i32,
    reason: Option<Text>,
    message: Option<Text>,
}

/// `v` as a boxed slice (empty for none: every reader treats the two alike).
fn slice<T, U>(v: Option<Vec<T>>, f: impl FnMut(T) -> U) -> Box<[U]> {
    v.unwrap_or_default().into_iter().map(f).collect()
}

/// `s` back as the optional vector the slimmed object has (`None` when empty).
fn vec<T, U>(s: &[T], f: impl FnMut(&T) -> U) -> Option<Vec<U>> {
    (!s.is_empty()).then(|| s.iter().map(f).collect())
}

impl Terminated {
    fn from(t: ContainerStateTerminated) -> Terminated {
        Terminated { exit_code: t.exit_code, reason: opt(t.reason), message: opt(t.message) }
    }

    fn to_k8s(&self) -> ContainerStateTerminated {
        ContainerStateTerminated {
            exit_code: self.exit_code,
            reason: opt_string(&self.reason),
            message: opt_string(&self.message),
            ..Default::default()
        }
    }
}

impl Container {
    fn from(c: ContainerStatus) -> Container {
        let state = c.state.map(|s| State {
            waiting: s.waiting.map(|w| (opt(w.reason), opt(w.message))),
            running: s.running.map(|r| r.started_at),
            terminated: s.terminated.map(Terminated::from),
        });
        Container {
            name: text(c.name),
            restart_count: c.restart_count,
            state,
            last_terminated: c.last_state.and_then(|l| l.terminated).map(Terminated::from),
        }
    }

    fn to_k8s(&self) -> ContainerStatus {
        let state = self.state.as_ref().map(|s| ContainerState {
            waiting: s.waiting.as_ref().map(|(reason, message)| ContainerStateWaiting {
                reason: opt_string(reason),
                message: opt_string(message),
            }),
            running: s.running.clone().map(|started_at| ContainerStateRunning { started_at }),
            terminated: s.terminated.as_ref().map(Terminated::to_k8s),
        });
        ContainerStatus {
            name: string(&self.name),
            restart_count: self.restart_count,
            state,
            last_state: self
                .last_terminated
                .as_ref()
                .map(|t| ContainerState { terminated: Some(t.to_k8s()), ..Default::default() }),
            ..Default::default()
        }
    }
}

impl Status {
    fn from(s: PodStatus) -> Status {
        let condition = |c: PodCondition| Condition {
            type_: text(c.type_),
            status: text(c.status),
            reason: opt(c.reason),
            message: opt(c.message),
        };
        Status {
            phase: opt(s.phase),
            reason: opt(s.reason),
            conditions: slice(s.conditions, condition),
            init_containers: slice(s.init_container_statuses, Container::from),
            containers: slice(s.container_statuses, Container::from),
        }
    }

    fn to_k8s(&self) -> PodStatus {
        let condition = |c: &Condition| PodCondition {
            type_: string(&c.type_),
            status: string(&c.status),
            reason: opt_string(&c.reason),
            message: opt_string(&c.message),
            ..Default::default()
        };
        PodStatus {
            phase: opt_string(&self.phase),
            reason: opt_string(&self.reason),
            conditions: vec(&self.conditions, condition),
            init_container_statuses: vec(&self.init_containers, Container::to_k8s),
            container_statuses: vec(&self.containers, Container::to_k8s),
            ..Default::default()
        }
    }
}

impl From<Pod> for CachedPod {
    /// Slims `pod` ([`Slim`]) and keeps the rest compactly.
    fn from(mut pod: Pod) -> CachedPod {
        pod.slim();
        let mut metadata = pod.metadata;
        let labels = Labels::take(&mut metadata);
        CachedPod { metadata, labels, status: pod.status.map(|s| Box::new(Status::from(s))) }
    }
}

impl CachedPod {
    /// The pod planning reads: exactly the slimmed pod this was made from.
    pub fn to_pod(&self) -> Pod {
        Pod {
            metadata: self.labels.restore(self.metadata.clone()),
            spec: None,
            status: self.status.as_ref().map(|s| s.to_k8s()),
        }
    }
}

impl From<Service> for CachedService {
    /// Slims `svc` ([`Slim`]) and keeps the rest compactly.
    fn from(mut svc: Service) -> CachedService {
        svc.slim();
        let mut metadata = svc.metadata;
        let labels = Labels::take(&mut metadata);
        CachedService { metadata, labels }
    }
}

impl CachedService {
    /// The service planning reads: exactly the slimmed service this was made from.
    pub fn to_service(&self) -> Service {
        Service { metadata: self.labels.restore(self.metadata.clone()), spec: None, status: None }
    }
}

/// Already slim: the conversion from the full object slimmed it.
impl Slim for CachedPod {
    fn slim(&mut self) {}
}

/// Already slim: the conversion from the full object slimmed it.
impl Slim for CachedService {
    fn slim(&mut self) {}
}

/// Served at the pods' own path and kind: only the cache's copy is compact.
impl k8s_openapi::Resource for CachedPod {
    const API_VERSION: &'static str = <Pod as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Pod as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Pod as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Pod as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <Pod as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for CachedPod {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Served at the services' own path and kind: only the cache's copy is compact.
impl k8s_openapi::Resource for CachedService {
    const API_VERSION: &'static str = <Service as k8s_openapi::Resource>::API_VERSION;
    const GROUP: &'static str = <Service as k8s_openapi::Resource>::GROUP;
    const KIND: &'static str = <Service as k8s_openapi::Resource>::KIND;
    const VERSION: &'static str = <Service as k8s_openapi::Resource>::VERSION;
    const URL_PATH_SEGMENT: &'static str = <Service as k8s_openapi::Resource>::URL_PATH_SEGMENT;
    type Scope = <Service as k8s_openapi::Resource>::Scope;
}

impl k8s_openapi::Metadata for CachedService {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
