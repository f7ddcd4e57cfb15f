//! The leadership gate: the one owner of "this process may write now". The elector opens and
//! closes it; the writer checks it before every write; `/readyz` and the
//! `tfjob_operator_leader` gauge read it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use tokio::sync::watch;

use crate::error::Error;

/// Whether this process leads. Cheap to clone; every clone is the same gate.
#[derive(Clone, Debug)]
pub struct Gate {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Leader election is on: the gate opens only while the lease is held.
    elected: bool,
    /// Whether the elector holds the lease, and under election the instant its last renewal
    /// stops vouching for the lease (the renew deadline after it). Read on every check, so a
    /// process that was paused past it (SIGSTOP, a stalled VM) writes nothing even before its
    /// elector wakes up. One lock, never held while taking another.
    state: Mutex<(bool, Option<Instant>)>,
    /// The gate has been open under election at least once (this process led).
    led: AtomicBool,
    /// Wakes those waiting for a change (never read for the state itself).
    changed: watch::Sender<bool>,
}

impl Gate {
    /// Without leader election: open for the life of the process.
    pub fn always_open() -> Gate {
        Gate {
            inner: Arc::new(Inner {
                elected: false,
                state: Mutex::new((true, None)),
                led: AtomicBool::new(false),
                changed: watch::Sender::new(true),
            }),
        }
    }

    /// With leader election: closed until the elector reports the lease held.
    pub fn elected() -> Gate {
        Gate {
            inner: Arc::new(Inner {
                elected: true,
                state: Mutex::new((false, None)),
                led: AtomicBool::new(false),
                changed: watch::Sender::new(false),
            }),
        }
    }

    /// Whether this process leads (always, without leader election): the elector says so
    /// and its last renewal still vouches for the lease.
    pub fn is_open(&self) -> bool {
        let (open, until) = *self.state();
        open && open_at(until, Instant::now())
    }

    /// Whether this process led and no longer does (its lease was lost, or its last renewal
    /// no longer vouches for it): from then on nothing it sends can be trusted to be current,
    /// so the controller's connections send nothing at all ([`crate::fence`]). A follower
    /// that has not led yet, and a process without leader election, have lost nothing.
    pub fn lost(&self) -> bool {
        self.inner.led.load(Ordering::Acquire) && !self.is_open()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, (bool, Option<Instant>)> {
        self.inner.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a renewal of the lease (the elector's call): the gate opens and stays open
    /// until `until` unless renewed again.
    pub fn renewed(&self, until: Instant) {
        if self.inner.elected {
            *self.state() = (true, Some(until));
            self.inner.led.store(true, Ordering::Release);
            self.inner.changed.send_replace(true);
        }
    }

    /// Records a change of leadership (the elector's call). Without leader election the gate
    /// stays open.
    pub fn set(&self, leading: bool) {
        if self.inner.elected {
            self.state().0 = leading;
            if leading {
                self.inner.led.store(true, Ordering::Release);
            }
            self.inner.changed.send_replace(leading);
        }
    }

    /// Resolves once the elector has reported the gate `open` (at once if it already has).
    pub async fn wait_until(&self, open: bool) {
        let mut rx = self.inner.changed.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|o| *o == open).await;
    }

    /// `Ok` while this process leads; every write asks first.
    pub fn check(&self) -> Result<(), Error> {
        if self.is_open() { Ok(()) } else { Err(Error::NotLeader) }
    }

    /// Readiness for `/readyz`: a follower waiting for the lease is ready (it has nothing to
    /// sync); the leader once its caches have synced.
    pub fn ready(&self, synced: bool) -> bool {
        ready(self.is_open(), synced)
    }
}

/// Whether a renewal valid until `until` still holds at `now` (no bound: it does).
pub fn open_at(until: Option<Instant>, now: Instant) -> bool {
    until.is_none_or(|u| now < u)
}

/// The readiness rule: not leading, or leading with synced caches.
pub fn ready(leading: bool, synced: bool) -> bool {
    !leading || synced
}

/// The gate is the `tfjob_operator_leader` gauge: 1 while open.
impl EncodeMetric for Gate {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&i64::from(self.is_open()))
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Gauge
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_and_closes_only_under_election() {
        let g = Gate::elected();
        assert!(!g.is_open() && matches!(g.check(), Err(Error::NotLeader)));
        let clone = g.clone();
        clone.set(true);
        assert!(g.is_open() && g.check().is_ok(), "one gate, shared by its clones");
        g.set(false);
        assert!(!clone.is_open());

        let always = Gate::always_open();
        assert!(always.check().is_ok());
        always.set(false);
        assert!(always.is_open(), "without election the gate never closes");
    }

    #[test]
    fn a_renewal_vouches_only_until_its_deadline() {
        let t0 = Instant::now();
        let s = std::time::Duration::from_secs;
        assert!(open_at(None, t0));
        assert!(open_at(Some(t0 + s(1)), t0));
        assert!(!open_at(Some(t0), t0), "closed at the deadline itself");
        assert!(!open_at(Some(t0), t0 + s(1)));

        let g = Gate::elected();
        g.renewed(Instant::now() + std::time::Duration::from_secs(60));
        assert!(g.is_open());
        g.renewed(Instant::now());
        assert!(!g.is_open(), "a renewal already past keeps nothing open");
        let always = Gate::always_open();
        always.renewed(Instant::now());
        assert!(always.is_open(), "without election renewals mean nothing");
    }

    #[test]
    fn only_a_process_that_led_can_lose_the_lease() {
        // (steps the elector takes, lost after them)
        type Step = fn(&Gate);
        let cases: [(&str, Vec<Step>, bool); 6] = [
            ("a follower that never led", vec![], false),
            (
                "leading, renewed",
                vec![|g| g.renewed(Instant::now() + std::time::Duration::from_secs(60))],
                false,
            ),
            ("renewal past its deadline", vec![|g| g.renewed(Instant::now())], true),
            (
                "stepped down",
                vec![|g| g.renewed(Instant::now() + std::time::Duration::from_secs(60)), |g| g.set(false)],
                true,
            ),
            ("set leading, then closed", vec![|g| g.set(true), |g| g.set(false)], true),
            ("closed without leading", vec![|g| g.set(false)], false),
        ];
        for (what, steps, want) in cases {
            let g = Gate::elected();
            for step in steps {
                step(&g);
            }
            assert_eq!(g.lost(), want, "{what}");
        }
        let always = Gate::always_open();
        always.set(false);
        always.renewed(Instant::now());
        assert!(!always.lost(), "without election nothing is ever lost");
    }

    #[tokio::test]
    async fn waits_for_changes() {
        let g = Gate::elected();
        let waiter = tokio::spawn({
            let g = g.clone();
            async move { g.wait_until(true).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        g.set(true);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter).await.unwrap().unwrap();
        g.wait_until(true).await;
    }

    #[test]
    fn readiness() {
        // (leading, synced) -> ready
        for (leading, synced, want) in
            [(false, false, true), (false, true, true), (true, false, false), (true, true, true)]
        {
            assert_eq!(ready(leading, synced), want, "leading {leading}, synced {synced}");
            let g = Gate::elected();
            g.set(leading);
            assert_eq!(g.ready(synced), want);
        }
        assert!(!Gate::always_open().ready(false), "without election: ready once synced");
    }

    #[test]
    fn is_the_leader_gauge() {
        let g = Gate::elected();
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("tfjob_operator_leader", "leads", g.clone());
        let text = |r: &prometheus_client::registry::Registry| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, r).unwrap();
            out
        };
        assert!(text(&registry).lines().any(|l| l == "tfjob_operator_leader 0"));
        g.set(true);
        assert!(text(&registry).lines().any(|l| l == "tfjob_operator_leader 1"));
    }
}
