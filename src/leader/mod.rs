//! Leader election on a `coordination.k8s.io` Lease, as client-go does it: the decision what
//! to do with the lease just read is pure ([`step`], [`claim`], [`release`], [`attempt_bound`]);
//! [`Elector`] reads and writes the lease every retry period (a leader renews with one write of
//! the record it wrote last) and opens or closes the [`Gate`].
//!
//! A follower trusts its own clock, not the holder's: a held lease expires when its record
//! has not changed for `leaseDurationSeconds` of local time. A leader that has not renewed
//! within the renew deadline closes the gate, so it stops writing before another process
//! can take over.
//!
//! Hand-written on purpose: kube-runtime 5 has no lease module, and kube-lease-manager
//! decides expiry from the holder's `renewTime` against the local wall clock, which is unsafe
//! under clock skew between nodes.

mod gate;

pub use gate::Gate;

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use tokio::time::Instant;
use tracing::{info, warn};

/// The Lease's name.
pub const LEASE_NAME: &str = "tfjob-operator";

/// Leader election timings (client-go's defaults: 15 s, 10 s, 2 s).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// How long a lease that is not renewed stays held.
    pub lease: Duration,
    /// How long a leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often the lease is read and renewed.
    pub retry: Duration,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

/// What a candidate does with the lease it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// No lease yet: create it, held by us.
    Create,
    /// We hold it: renew it.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Someone else holds it.
    Wait,
}

/// Decides what to do with the lease read; `unchanged_for` is how long (local clock) its
/// record has looked the same.
pub fn step(spec: Option<&LeaseSpec>, me: &str, unchanged_for: Duration, default_lease: Duration) -> Step {
    let Some(spec) = spec else { return Step::Create };
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Step::Renew,
        None | Some("") => Step::Acquire,
        Some(_) => {
            let lease = spec
                .lease_duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or(default_lease, Duration::from_secs);
            if unchanged_for >= lease { Step::Acquire } else { Step::Wait }
        }
    }
}

/// The lease record we write to create, take or renew it.
pub fn claim(prev: Option<&LeaseSpec>, me: &str, now: Timestamp, lease: Duration) -> LeaseSpec {
    let ours = prev.and_then(|p| p.holder_identity.as_deref()) == Some(me);
    let transitions = prev.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(i32::try_from(lease.as_secs().max(1)).unwrap_or(i32::MAX)),
        acquire_time: if ours { prev.and_then(|p| p.acquire_time.clone()) } else { Some(MicroTime(now)) },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if ours || prev.is_none() { transitions } else { transitions + 1 }),
        ..prev.cloned().unwrap_or_default()
    }
}

/// The record a leader writes when it stops: no holder, so a follower takes it at once.
pub fn release(prev: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        renew_time: Some(MicroTime(now)),
        ..prev.clone()
    }
}

/// How long one attempt on the lease may take, given how long ago our last renewal left
/// (`None`: we do not lead). A leader's by what is left of its renew deadline (it stops then
/// anyway). A follower's by the renew deadline too, not the retry period: a slow answer (an API
/// server queueing under load) still counts, while an acquisition slower than that is worth
/// nothing (it vouches for a renew deadline from when its write left, already past), so a hung
/// request never outlives the attempt it serves.
pub fn attempt_bound(timings: Timings, since_renewal: Option<Duration>) -> Duration {
    match since_renewal {
        Some(elapsed) => timings.renew_deadline.saturating_sub(elapsed),
        None => timings.renew_deadline,
    }
}

/// Why an attempt on the lease failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("{0}")]
    Api(#[from] kube::Error),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
}

/// Reads and writes the Lease for one candidate.
pub struct Elector {
    api: Api<Lease>,
    me: String,
    timings: Timings,
    /// The record last read, and when (local clock) it last changed.
    observed: Option<(Option<LeaseSpec>, Instant)>,
    /// The lease as we last wrote it, while we hold it: renewed without reading it first.
    held: Option<Lease>,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, me: String, timings: Timings) -> Elector {
        Elector { api: Api::namespaced(client, namespace), me, timings, observed: None, held: None }
    }

    /// When the lease another process holds expires, by our clock, if it is not renewed.
    fn expiry(&self) -> Option<Instant> {
        let (Some(spec), at) = self.observed.as_ref()? else { return None };
        if spec.holder_identity.as_deref().is_none_or(|h| h.is_empty() || h == self.me) {
            return None;
        }
        let secs = spec.lease_duration_seconds.and_then(|s| u64::try_from(s).ok());
        Some(*at + secs.map_or(self.timings.lease, Duration::from_secs))
    }

    /// At most one read and one write. Returns, if we hold the lease now, when the write that
    /// took or renewed it left.
    async fn attempt(&mut self) -> Result<Option<Instant>, AttemptError> {
        if let Some(mut lease) = self.held.take() {
            // As client-go: a leader renews the record it wrote last without reading it first
            // (one request, not two, per renewal: it keeps up with a slow API server); the
            // resourceVersion refuses it (409) if anyone else wrote since, then we read.
            lease.spec = Some(claim(lease.spec.as_ref(), &self.me, Timestamp::now(), self.timings.lease));
            let sent = Instant::now();
            match self.api.replace(LEASE_NAME, &PostParams::default(), &lease).await {
                Ok(written) => return Ok(Some(self.wrote(written, Step::Renew, sent))),
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        let current = self.api.get_opt(LEASE_NAME).await?;
        let spec = current.as_ref().and_then(|l| l.spec.clone());
        let now = Instant::now();
        let since = match &self.observed {
            Some((seen, at)) if *seen == spec => *at,
            _ => now,
        };
        self.observed = Some((spec.clone(), since));
        let step = step(spec.as_ref(), &self.me, now - since, self.timings.lease);
        let new_spec = claim(spec.as_ref(), &self.me, Timestamp::now(), self.timings.lease);
        let sent = Instant::now();
        let written = match (step, current) {
            (Step::Wait, _) => return Ok(None),
            (Step::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta { name: Some(LEASE_NAME.into()), ..Default::default() },
                    spec: Some(new_spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (_, Some(mut lease)) => {
                lease.spec = Some(new_spec);
                self.api.replace(LEASE_NAME, &PostParams::default(), &lease).await
            }
            (_, None) => return Ok(None),
        };
        match written {
            Ok(lease) => Ok(Some(self.wrote(lease, step, sent))),
            // Someone else wrote first: read again next time.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Records the lease we wrote (sent at `sent`); returns `sent`.
    fn wrote(&mut self, lease: Lease, step: Step, sent: Instant) -> Instant {
        if step != Step::Renew {
            info!(identity = %self.me, lease = LEASE_NAME, "acquired the lease");
        }
        self.observed = Some((lease.spec.clone(), Instant::now()));
        self.held = Some(lease);
        sent
    }

    /// Competes for the lease until `stop` resolves, keeping `gate` open while we hold it.
    /// Returns when leadership is lost (after closing the gate) or, on `stop`, after releasing
    /// a held lease.
    pub async fn run(mut self, gate: Gate, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut last_renew: Option<Instant> = None;
        let mut next = Instant::now();
        loop {
            let deadline = last_renew.map(|t| t + self.timings.renew_deadline);
            let lost = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = &mut stop => break,
                () = lost => {
                    warn!(identity = %self.me, "could not renew the lease before the renew deadline: stopping");
                    gate.set(false);
                    return;
                }
                held = async {
                    tokio::time::sleep_until(next).await;
                    // A hung request must not outlive the attempt (see `attempt_bound`).
                    let bound = attempt_bound(self.timings, last_renew.map(|t| t.elapsed()));
                    tokio::time::timeout(bound, self.attempt()).await.unwrap_or(Err(AttemptError::TimedOut(bound)))
                } => {
                    // Every retry period, and at once when the holder's lease expires: a
                    // follower takes over within lease duration + retry period of the
                    // holder's last renewal.
                    next = Instant::now() + self.timings.retry;
                    if let Some(expiry) = self.expiry() {
                        next = next.min(expiry);
                    }
                    match held {
                        Ok(Some(sent)) => {
                            // Counted from before the write left: the new record cannot be
                            // older than this, so a follower, which counts from when it saw the
                            // record, never takes over while this renewal still vouches for us.
                            last_renew = Some(sent);
                            gate.renewed((sent + self.timings.renew_deadline).into_std());
                        }
                        Ok(None) if last_renew.is_some() => {
                            warn!(identity = %self.me, "the lease is held by another process: stopping");
                            gate.set(false);
                            return;
                        }
                        Ok(None) => {}
                        Err(e) => warn!(identity = %self.me, error = %e, "reading or writing the lease failed"),
                    }
                }
            }
        }
        // Closed before the release: from here on nothing is written under the lease.
        gate.set(false);
        if last_renew.is_some() {
            self.give_up().await;
        }
    }

    /// Releases the lease if we still hold it.
    async fn give_up(&self) {
        let bound = self.timings.renew_deadline;
        if tokio::time::timeout(bound, self.release_held()).await.is_err() {
            warn!(identity = %self.me, "releasing the lease timed out");
        }
    }

    async fn release_held(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(LEASE_NAME).await else { return };
        let Some(spec) = lease.spec.as_ref().filter(|s| s.holder_identity.as_deref() == Some(&self.me))
        else {
            return;
        };
        lease.spec = Some(release(spec, Timestamp::now()));
        match self.api.replace(&lease.name_any(), &PostParams::default(), &lease).await {
            Ok(_) => info!(identity = %self.me, "released the lease"),
            Err(e) => warn!(identity = %self.me, error = %e, "releasing the lease failed"),
        }
    }
}

#[cfg(test)]
mod elector_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn held(by: Option<&str>, secs: Option<i32>) -> LeaseSpec {
        LeaseSpec {
            holder_identity: by.map(String::from),
            lease_duration_seconds: secs,
            lease_transitions: Some(3),
            acquire_time: Some(MicroTime(Timestamp::UNIX_EPOCH)),
            ..Default::default()
        }
    }

    #[test]
    fn steps() {
        let s = Duration::from_secs;
        let d = s(15);
        let cases = [
            ("no lease", None, s(0), Step::Create),
            ("ours", Some(held(Some("me"), Some(15))), s(100), Step::Renew),
            ("released", Some(held(None, Some(1))), s(0), Step::Acquire),
            ("empty holder", Some(held(Some(""), Some(15))), s(0), Step::Acquire),
            ("other, fresh", Some(held(Some("b"), Some(15))), s(14), Step::Wait),
            ("other, expired", Some(held(Some("b"), Some(15))), s(15), Step::Acquire),
            ("other, its own duration", Some(held(Some("b"), Some(30))), s(20), Step::Wait),
            ("other, no duration: ours", Some(held(Some("b"), None)), s(15), Step::Acquire),
        ];
        for (name, spec, unchanged, want) in cases {
            assert_eq!(step(spec.as_ref(), "me", unchanged, d), want, "{name}");
        }
    }

    #[test]
    fn attempts_are_bounded_by_role() {
        let s = Duration::from_secs;
        let t = Timings::default();
        let cases = [
            ("leader, just renewed", Some(s(0)), s(10)),
            ("leader, 7 s after its renewal", Some(s(7)), s(3)),
            ("leader, past its renew deadline", Some(s(12)), s(0)),
            // Not the retry period (2 s): lease answers that take 3 s must still count.
            ("follower", None, s(10)),
        ];
        for (name, since, want) in cases {
            assert_eq!(attempt_bound(t, since), want, "{name}");
        }
        let slow = Timings { lease: s(60), renew_deadline: s(40), retry: s(5) };
        assert_eq!(attempt_bound(slow, None), s(40), "a follower's bound follows the renew deadline");
    }

    #[test]
    fn claims_and_releases() {
        let now = Timestamp::from_second(100).unwrap();
        let lease = Duration::from_secs(15);
        let created = claim(None, "me", now, lease);
        assert_eq!(created.holder_identity.as_deref(), Some("me"));
        assert_eq!((created.lease_duration_seconds, created.lease_transitions), (Some(15), Some(0)));
        assert_eq!(created.acquire_time, Some(MicroTime(now)));

        let taken = claim(Some(&held(Some("b"), Some(15))), "me", now, lease);
        assert_eq!(taken.lease_transitions, Some(4), "a new holder is a transition");
        assert_eq!(
            (taken.acquire_time.clone(), taken.renew_time),
            (Some(MicroTime(now)), Some(MicroTime(now)))
        );

        let renewed = claim(Some(&held(Some("me"), Some(15))), "me", now, lease);
        assert_eq!(renewed.lease_transitions, Some(3), "renewing is not a transition");
        assert_eq!(renewed.acquire_time, Some(MicroTime(Timestamp::UNIX_EPOCH)), "acquired when first taken");

        let released = release(&renewed, now);
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(step(Some(&released), "other", Duration::ZERO, lease), Step::Acquire);
    }
}
