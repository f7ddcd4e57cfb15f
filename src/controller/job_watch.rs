//! The TFJob watch: untyped, each object decoded on its own ([`super::decode`]), reflected in
//! place into the job cache, and each job that cannot be decoded reported by name: a warn line
//! and a Warning event on it.

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject};
use kube::runtime::{WatchStreamExt, watcher};
use tracing::warn;

use super::decode::{self, JobEvent};
use super::reflect::InPlace;
use super::watch_backoff::WatchBackoff;
use crate::api::TFJob;
use crate::plan::PlannedEvent;
use crate::writer::Writer;

/// The reason of the Warning event on a TFJob the operator cannot decode.
pub const REASON_UNDECODABLE: &str = "UndecodableTFJob";

/// The watch of `api`'s TFJobs (managedFields dropped), decoded, with `cache` kept up to date:
/// a job that cannot be decoded is left out of a list and leaves the cache when a change makes
/// it so; a later change that can be decoded brings it back.
pub fn events(
    api: Api<DynamicObject>,
    mut cache: InPlace<TFJob>,
    writer: Writer,
) -> impl Stream<Item = Result<JobEvent, watcher::Error>> + Send {
    watcher(api, watcher::Config::default().timeout(crate::transport::WATCH_TIMEOUT_SECS))
        .backoff(WatchBackoff::new())
        .modify(|j: &mut DynamicObject| j.metadata.managed_fields = None)
        .map(move |event| {
            let event = event.map(decode::decode);
            match &event {
                Ok(JobEvent::Watch(e)) => cache.apply(e),
                Ok(JobEvent::Undecodable { meta, error, listed }) => {
                    report(&writer, meta, error);
                    if !listed {
                        cache.apply(&watcher::Event::Delete(decode::stub(meta.clone())));
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
