//! Waiting in the e2e tests: for an object's state (watch-based), for a check to pass (or to be
//! done while it holds), and for a check to stay true through a window. Every timeout error
//! shows the last state seen. The tests sleep only to pace load or to let real time pass on
//! purpose, each such sleep saying so; never to assert.

use std::fmt::Debug;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::watcher;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

/// How long a test waits for something the operator should do within seconds.
pub const WAIT: Duration = Duration::from_secs(60);

/// How often [`eventually`] and [`assert_stays`] run their check.
const POLL: Duration = Duration::from_millis(100);

/// An object kind the waits can watch and show.
pub trait Watchable: kube::Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static {}
impl<K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug + Send + 'static> Watchable for K {}

/// What the last watch event showed, for a timeout error.
fn describe<K: Watchable>(last: &Option<Option<K>>) -> String {
    match last {
        None => "nothing yet".into(),
        Some(None) => "absent".into(),
        Some(Some(obj)) => {
            let value = serde_json::to_value(obj).unwrap_or_default();
            let status =
                value.get("status").filter(|s| !s.is_null()).map_or("no status".into(), |s| s.to_string());
            if obj.meta().deletion_timestamp.is_some() { format!("terminating, {status}") } else { status }
        }
    }
}

/// Watches the object `name` until `pred` holds for what the watch shows (`None`: it does not
/// exist). Returns the moment that arrived, and the object.
pub async fn watch_state<K: Watchable>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(Option<&K>) -> bool,
) -> Result<(Timestamp, Option<K>)> {
    let mut stream = std::pin::pin!(watcher::watch_object(api.clone(), name));
    let end = Instant::now() + timeout;
    let mut last: Option<Option<K>> = None;
    let mut error = String::new();
    loop {
        match tokio::time::timeout_at(end, stream.next()).await {
            Err(_) => bail!(
                "{name}: timed out after {timeout:?} waiting for {what}; last seen: {}{error}",
                describe(&last)
            ),
            Ok(None) => bail!("{name}: the watch ended while waiting for {what}"),
            Ok(Some(Err(e))) => {
                // The watcher starts over at the next poll.
                error = format!("; last watch error: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(Some(Ok(obj))) => {
                if pred(obj.as_ref()) {
                    return Ok((Timestamp::now(), obj));
                }
                last = Some(obj);
            }
        }
    }
}

/// Watches the object until it exists and `pred` holds; returns the moment that arrived, and it.
pub async fn watch_until<K: Watchable>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&K) -> bool,
) -> Result<(Timestamp, K)> {
    let (at, obj) = watch_state(api, name, timeout, what, |o| o.is_some_and(&pred)).await?;
    Ok((at, obj.with_context(|| format!("{name}: {what}: no object"))?))
}

/// Waits until the object exists and `pred` holds; returns it.
pub async fn wait_for<K: Watchable>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&K) -> bool,
) -> Result<K> {
    Ok(watch_until(api, name, timeout, what, pred).await?.1)
}

/// Waits until the object does not exist; returns the moment its deletion arrived.
pub async fn wait_gone<K: Watchable>(api: &Api<K>, name: &str, timeout: Duration) -> Result<Timestamp> {
    Ok(watch_state(api, name, timeout, "its deletion", |o| o.is_none()).await?.0)
}

/// Runs `check` every 100 ms until it passes; returns what it returned then. The timeout error
/// is its last failure.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let end = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(done) => return Ok(done),
            Err(e) if Instant::now() >= end => bail!("timed out after {timeout:?} waiting for {what}: {e:#}"),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// What a check run by [`until`] found: done (with its result), or not yet (why, for the
/// timeout error).
pub enum Progress<T> {
    Done(T),
    NotYet(String),
}

/// Runs `check` every 100 ms until it is done, failing at once when it fails: for a wait that
/// also checks, at every poll, what must hold meanwhile. The timeout error says why it was not
/// done at the last poll.
pub async fn until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Progress<T>>>,
{
    let start = Instant::now();
    loop {
        let checked = check()
            .await
            .with_context(|| format!("{what}: broken {:.1}s into the wait", start.elapsed().as_secs_f64()))?;
        match checked {
            Progress::Done(done) => return Ok(done),
            Progress::NotYet(why) if start.elapsed() >= timeout => {
                bail!("timed out after {timeout:?} waiting for {what}: {why}")
            }
            Progress::NotYet(_) => tokio::time::sleep(POLL).await,
        }
    }
}

/// Runs `check` every 100 ms through the whole `window`, once at its start and once at or after
/// its end; fails on the first violation.
pub async fn assert_stays<F, Fut>(window: Duration, what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<()>>,
{
    let start = Instant::now();
    let end = start + window;
    loop {
        let now = Instant::now();
        check().await.with_context(|| {
            format!("{what}: broken {:.1}s into the {window:?} window", start.elapsed().as_secs_f64())
        })?;
        if now >= end {
            return Ok(());
        }
        tokio::time::sleep_until((now + POLL).min(end)).await;
    }
}
