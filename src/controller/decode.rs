//! TFJobs decoded one by one, pure: the TFJob watch lists and watches untyped objects
//! (`DynamicObject`) and each is decoded here on its own, so one object the types cannot
//! decode (a value the CRD schema lets through but the types refuse, an object written past
//! the API server) is skipped alone instead of failing the whole list, which would stall
//! every job.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use kube::runtime::watcher;

use crate::api::TFJob;

/// One TFJob watch event, with each object decoded.
#[derive(Clone, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "moved once, from the watch to the controller, as kube's own watcher::Event"
)]
pub enum JobEvent {
    /// The event, every object in it decoded.
    Watch(watcher::Event<TFJob>),
    /// A job the types cannot decode, shown by a list (`listed`) or by a watch event: its
    /// metadata and why. It exists, but the controller does not see it: it is dropped from
    /// the cache until a change makes it decodable.
    Undecodable { meta: ObjectMeta, error: String, listed: bool },
}

/// A TFJob with only `meta` (the spec defaulted, no status): what the cache needs to drop
/// a job, and what an event needs to name one.
pub fn stub(meta: ObjectMeta) -> TFJob {
    TFJob { metadata: meta, spec: Default::default(), status: None }
}

/// `obj` decoded and passed on as `wrap` makes it, or why it cannot be.
fn decoded(obj: DynamicObject, listed: bool, wrap: fn(TFJob) -> watcher::Event<TFJob>) -> JobEvent {
    match serde_json::to_value(&obj).and_then(serde_json::from_value::<TFJob>) {
        Ok(job) => JobEvent::Watch(wrap(job)),
        Err(e) => JobEvent::Undecodable { meta: obj.metadata, error: e.to_string(), listed },
    }
}

/// Decodes the objects of one event. A deleted job needs only its metadata: one that cannot
/// be decoded is passed on as a stub, so its bookkeeping still goes.
pub fn decode(event: watcher::Event<DynamicObject>) -> JobEvent {
    use watcher::Event::*;
    match event {
        Init => JobEvent::Watch(Init),
        InitDone => JobEvent::Watch(InitDone),
        InitApply(o) => decoded(o, true, InitApply),
        Apply(o) => decoded(o, false, Apply),
        Delete(o) => match decoded(o, false, Delete) {
            JobEvent::Undecodable { meta, .. } => JobEvent::Watch(Delete(stub(meta))),
            deleted => deleted,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::ResourceExt;
    use serde_json::json;

    fn object(name: &str, backoff_limit: serde_json::Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "kubeflow.org/v1",
            "kind": "TFJob",
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "resourceVersion": "7"},
            "spec": {
                "backoffLimit": backoff_limit,
                "tfReplicaSpecs": {"Worker": {"template": {"spec": {"containers": [{"name": "tensorflow", "image": "tf"}]}}}}
            }
        }))
        .expect("object")
    }

    fn shape(e: &JobEvent) -> String {
        match e {
            JobEvent::Watch(watcher::Event::Init) => "Init".into(),
            JobEvent::Watch(watcher::Event::InitDone) => "InitDone".into(),
            JobEvent::Watch(watcher::Event::InitApply(j)) => format!("InitApply {}", j.name_any()),
            JobEvent::Watch(watcher::Event::Apply(j)) => format!("Apply {}", j.name_any()),
            JobEvent::Watch(watcher::Event::Delete(j)) => {
                format!("Delete {} {}", j.name_any(), j.uid().unwrap_or_default())
            }
            JobEvent::Undecodable { meta, listed, .. } => {
                format!("Undecodable {} listed={listed}", meta.name.clone().unwrap_or_default())
            }
        }
    }

    #[test]
    fn each_object_is_decoded_on_its_own() {
        use watcher::Event::*;
        let good = || object("good", json!(3));
        // An int32 field holding a value the schema lets through (format int32, no maximum).
        let bad = || object("bad", json!(3_000_000_000_i64));
        let cases = [
            (Init, "Init"),
            (InitApply(good()), "InitApply good"),
            (InitApply(bad()), "Undecodable bad listed=true"),
            (InitDone, "InitDone"),
            (Apply(good()), "Apply good"),
            (Apply(bad()), "Undecodable bad listed=false"),
            (Delete(good()), "Delete good uid-good"),
            (Delete(bad()), "Delete bad uid-bad"),
        ];
        for (event, want) in cases {
            assert_eq!(shape(&decode(event)), want);
        }
        let JobEvent::Undecodable { meta, error, .. } = decode(Apply(bad())) else { panic!("decoded") };
        assert_eq!((meta.namespace.as_deref(), meta.uid.as_deref()), (Some("ns"), Some("uid-bad")));
        assert!(error.contains("3000000000"), "the error names the value: {error}");
    }
}
