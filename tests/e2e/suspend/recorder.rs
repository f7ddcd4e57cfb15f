//! A raw watch recorded event by event, with resourceVersions: what the suspend tests (and the
//! gang lifecycle test) order their assertions by.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};

use crate::support::Watchable;

/// One event of a raw watch, in the order the API server sent it: `ADDED`, `MODIFIED` or
/// `DELETED`, and the object as it was then.
#[derive(Clone, Debug)]
pub struct Seen<K> {
    pub kind: &'static str,
    pub obj: K,
}

impl<K: kube::Resource> Seen<K> {
    /// The object's resourceVersion (etcd's revision: comparable across kinds in one plane).
    pub fn rv(&self) -> u64 {
        rv_of(&self.obj)
    }

    /// A delete of the object accepted: its `deletionTimestamp` is set, or it is gone.
    pub fn deleting(&self) -> bool {
        self.kind == "DELETED" || self.obj.meta().deletion_timestamp.is_some()
    }
}

/// An object's resourceVersion as a number (0 when it has none).
pub fn rv_of<K: kube::Resource>(obj: &K) -> u64 {
    obj.meta().resource_version.as_deref().and_then(|v| v.parse().ok()).unwrap_or_default()
}

/// Every event of one watch of `api`, from the moment it starts, until dropped. A watch error
/// or end makes [`Recorder::events`] fail: a blind watch proves nothing.
pub struct Recorder<K> {
    events: Arc<Mutex<Vec<Seen<K>>>>,
    failed: Arc<Mutex<Option<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl<K: Watchable> Recorder<K> {
    pub async fn start(api: Api<K>) -> Result<Recorder<K>> {
        let list = api.list_metadata(&ListParams::default().limit(1)).await?;
        let from = list.metadata.resource_version.context("a list without a resourceVersion")?;
        let stream = api.watch(&WatchParams::default(), &from).await?;
        let (events, failed) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(None)));
        let (into, fail) = (events.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let why = Self::record(api, stream.boxed(), from, into).await;
            fail.lock().map(|mut f| *f = Some(why)).ok();
        });
        Ok(Recorder { events, failed, task })
    }

    /// Records the watch's events into `into`; a watch the API server ends (its request
    /// timeout) goes on from the last resourceVersion seen, so nothing is missed. Returns why
    /// it stopped.
    async fn record(
        api: Api<K>,
        mut stream: futures::stream::BoxStream<'static, kube::Result<WatchEvent<K>>>,
        mut last: String,
        into: Arc<Mutex<Vec<Seen<K>>>>,
    ) -> String {
        loop {
            let (kind, obj) = match stream.next().await {
                Some(Ok(WatchEvent::Added(o))) => ("ADDED", o),
                Some(Ok(WatchEvent::Modified(o))) => ("MODIFIED", o),
                Some(Ok(WatchEvent::Deleted(o))) => ("DELETED", o),
                Some(Ok(WatchEvent::Bookmark(b))) => {
                    last = b.metadata.resource_version;
                    continue;
                }
                Some(Ok(WatchEvent::Error(e))) => return format!("watch error: {e:?}"),
                Some(Err(e)) => return format!("watch failed: {e}"),
                None => match api.watch(&WatchParams::default(), &last).await {
                    Ok(s) => {
                        stream = s.boxed();
                        continue;
                    }
                    Err(e) => return format!("the watch ended and could not go on: {e}"),
                },
            };
            last = obj.meta().resource_version.clone().unwrap_or(last);
            into.lock().map(|mut v| v.push(Seen { kind, obj })).ok();
        }
    }

    /// What the watch has shown so far.
    pub fn events(&self) -> Result<Vec<Seen<K>>> {
        if let Some(why) = self.failed.lock().ok().and_then(|f| f.clone()) {
            bail!("the recording watch stopped, so it proves nothing: {why}");
        }
        Ok(self.events.lock().map(|v| v.clone()).unwrap_or_default())
    }
}

impl<K> Drop for Recorder<K> {
    fn drop(&mut self) {
        self.task.abort();
    }
}
