//! The TFJob watch: untyped, each object decoded on its own ([`super::decode`]), reflected in
//! place into the job cache, and each job that cannot be decoded reported by name: a warn line
//! and a Warning event on it.

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use tracing::warn;

use super::cached_job::{self, CachedJob};
use super::decode::{self, JobEvent};
use super::reflect::InPlace;
use super::watch_backoff::WatchBackoff;
use crate::plan::PlannedEvent;
use crate::writer::Writer;

/// The reason of the Warning event on a TFJob the operator cannot decode.
pub const REASON_UNDECODABLE: &str = "UndecodableTFJob";

/// The job annotations the operator reads; the others (a `kubectl apply`'s copy of the whole
/// job among them) are not cached.
pub const ANNOTATIONS_READ: [&str; 2] =
    [crate::names::ANNOTATION_STARTUP_DEADLINE, crate::tf_config::ANNOTATION_TF_CONFIG];

/// TFJobs per page of a list: a page is held whole, untyped (a JSON tree takes several times
/// the bytes of its text), before its jobs are decoded, so pages are small. A re-list runs
/// beside a full cache, and its pages are what it adds to the peak.
const LIST_PAGE_SIZE: u32 = 25;

/// Drops what no reader of the job cache needs: managedFields, and the annotations not in
/// [`ANNOTATIONS_READ`].
fn slim(j: &mut DynamicObject) {
    j.metadata.managed_fields = None;
    if let Some(a) = &mut j.metadata.annotations {
        a.retain(|k, _| ANNOTATIONS_READ.contains(&k.as_str()));
        if a.is_empty() {
            j.metadata.annotations = None;
        }
    }
}

/// The watch of `api`'s TFJobs (slimmed: [`slim`]), decoded, with `cache` kept up to date:
/// a job that cannot be decoded is left out of a list and leaves the cache when a change makes
/// it so; a later change that can be decoded brings it back.
pub fn events(
    api: Api<DynamicObject>,
    mut cache: InPlace<CachedJob>,
    writer: Writer,
) -> impl Stream<Item = Result<JobEvent, watcher::Error>> + Send {
    let cfg =
        watcher::Config::default().page_size(LIST_PAGE_SIZE).timeout(crate::transport::WATCH_TIMEOUT_SECS);
    watcher(api, cfg).backoff(WatchBackoff::new()).modify(slim).map(move |event| {
        let event = event.map(decode::decode);
        match &event {
            // What a re-list removes is dropped from the books by `observe::job_triggers`.
            Ok(JobEvent::Watch(e)) => drop(cache.apply(&cached_job::event(e))),
            Ok(JobEvent::Undecodable { meta, error, listed }) => {
                report(&writer, meta, error);
                if !listed {
                    drop(cache.apply(&watcher::Event::Delete(CachedJob::new(&decode::stub(meta.clone())))));
                }
            }
            Err(_) => {}
        }
        event
    })
}

/// A job that cannot be decoded, named in a warn line and in a Warning event on it (its
/// metadata is enough for one).
fn report(writer: &Writer, meta: &ObjectMeta, error: &str) {
    let (ns, name) =
        (meta.namespace.as_deref().unwrap_or_default(), meta.name.as_deref().unwrap_or_default());
    warn!(
        namespace = ns,
        job = name,
        error,
        "the TFJob cannot be decoded: it is left alone until it changes"
    );
    let note = format!("the operator cannot read this TFJob and leaves it alone until it changes: {error}");
    let event = PlannedEvent::warning(REASON_UNDECODABLE, note);
    // A follower publishes nothing; it reports the job again when it leads and lists it.
    let _ = writer.publish(&decode::stub(meta.clone()), &event, Timestamp::now());
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cached_job_keeps_only_the_annotations_read() {
        let last_applied = "kubectl.kubernetes.io/last-applied-configuration";
        let cases = [
            (
                json!({last_applied: "{...}", "tfjob.kubeflow.org/startup-deadline-seconds": "60",
                    "tfjob.kubeflow.org/tf-config": "kubeflow", "team": "a"}),
                json!({"tfjob.kubeflow.org/startup-deadline-seconds": "60", "tfjob.kubeflow.org/tf-config": "kubeflow"}),
            ),
            (json!({last_applied: "{...}"}), json!(null)),
            (json!(null), json!(null)),
        ];
        for (annotations, want) in cases {
            let mut j: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "kubeflow.org/v1", "kind": "TFJob",
                "metadata": {"name": "j", "annotations": annotations, "labels": {"kueue.x-k8s.io/queue-name": "q"},
                             "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
                "spec": {"tfReplicaSpecs": {}}
            }))
            .unwrap();
            slim(&mut j);
            let v = serde_json::to_value(&j).unwrap();
            assert_eq!(v["metadata"].get("annotations").cloned().unwrap_or(json!(null)), want);
            assert_eq!(v["metadata"].get("managedFields"), None);
            assert_eq!(v["metadata"]["labels"], json!({"kueue.x-k8s.io/queue-name": "q"}), "labels are kept");
            assert_eq!(v["spec"], json!({"tfReplicaSpecs": {}}));
        }
    }
}
