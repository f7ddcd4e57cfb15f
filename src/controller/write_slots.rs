//! The pod and service creates in flight over all jobs (`--writes-in-flight`): room is handed
//! out oldest job first, to at most half as many jobs at once as reconciles run at once, and a
//! reconcile never waits for it. A job that finds no room is queued and its reconcile ends;
//! when room frees up it is set aside for the oldest queued job, which is woken to take it. A
//! reconcile holding room waits only for its own creates, and the other half of the reconcile
//! slots stay free for status writes, deletes and deadlines. The bookkeeping ([`Turns`]) is
//! plain data, table-tested.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::mpsc::UnboundedSender;

use super::cached_job::CachedJob;
use crate::api::TFJob;

/// Creates of one job in flight at once (the largest slow-start batch); deletes go out in
/// batches of this size too.
pub const WRITES_IN_FLIGHT: usize = 16;

/// How long room set aside for a woken job waits for its reconcile to take it before it goes
/// to the next job (the job was deleted, or needs no creates any more).
pub const SET_ASIDE_FOR: Duration = Duration::from_secs(5);

/// A job's place in the queue: older first (its `creationTimestamp`), then by namespace and
/// name, so jobs submitted together are served in a fixed order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Age {
    created: Timestamp,
    namespace: String,
    name: String,
}

/// The job asking for room.
#[derive(Clone, Debug)]
pub struct Asker {
    pub uid: String,
    pub age: Age,
    /// Who to wake when room is set aside for it.
    pub job: ObjectRef<CachedJob>,
}

impl Asker {
    pub fn of(job: &TFJob) -> Asker {
        let created = job.metadata.creation_timestamp.as_ref().map_or(Timestamp::UNIX_EPOCH, |t| t.0);
        Asker {
            uid: job.uid().unwrap_or_default(),
            age: Age { created, namespace: job.namespace().unwrap_or_default(), name: job.name_any() },
            job: super::cached_job::key(job),
        }
    }
}

#[derive(Clone, Debug)]
struct Waiter {
    uid: String,
    want: usize,
    job: ObjectRef<CachedJob>,
}

#[derive(Clone, Copy, Debug)]
struct SetAside {
    n: usize,
    since: Instant,
}

/// Who holds, waits for and has room set aside: pure bookkeeping (no clock, no tokio).
#[derive(Debug)]
pub struct Turns {
    cap: usize,
    free: usize,
    /// Jobs that may hold room at once (holding it, or with room set aside for them).
    max_holders: usize,
    /// Room held by each job's reconcile.
    holding: HashMap<String, usize>,
    waiting: BTreeMap<Age, Waiter>,
    /// The place in `waiting` of each queued job.
    queued: HashMap<String, Age>,
    set_aside: HashMap<String, SetAside>,
    /// Jobs to wake: room was set aside for them.
    wake: Vec<ObjectRef<CachedJob>>,
}

impl Turns {
    pub fn new(cap: usize, max_holders: usize) -> Turns {
        let cap = cap.max(1);
        Turns {
            cap,
            free: cap,
            max_holders: max_holders.max(1),
            holding: HashMap::new(),
            waiting: BTreeMap::new(),
            queued: HashMap::new(),
            set_aside: HashMap::new(),
            wake: Vec::new(),
        }
    }

    /// Room for up to `want` creates of `asker`, now: what was set aside for it, else free
    /// room when no older job waits and fewer than the most jobs hold room. `0` when there is
    /// none: the job is queued (once) and is woken when room is set aside for it.
    pub fn take(&mut self, asker: &Asker, want: usize, now: Instant) -> usize {
        let want = want.clamp(1, self.cap);
        self.expire(now);
        self.release(&asker.uid, now);
        if let Some(mine) = self.set_aside.remove(&asker.uid) {
            let n = mine.n.min(want);
            self.holding.insert(asker.uid.clone(), n);
            self.free += mine.n - n;
            self.pump(now);
            return n;
        }
        let older_waits =
            self.waiting.first_key_value().is_some_and(|(age, w)| w.uid != asker.uid && *age < asker.age);
        self.dequeue(&asker.uid);
        if !older_waits && self.free > 0 && self.holders() < self.max_holders {
            let n = want.min(self.free);
            self.free -= n;
            self.holding.insert(asker.uid.clone(), n);
            return n;
        }
        self.enqueue(asker, want);
        0
    }

    fn enqueue(&mut self, asker: &Asker, want: usize) {
        self.dequeue(&asker.uid);
        self.queued.insert(asker.uid.clone(), asker.age.clone());
        self.waiting
            .insert(asker.age.clone(), Waiter { uid: asker.uid.clone(), want, job: asker.job.clone() });
    }

    /// `asker` holds room and wants `want` for its next batch: it keeps what it holds, giving
    /// back what it does not want, and grows into free room only while no older job waits.
    /// A job that started creating is never stopped halfway for an older one (a half-made job
    /// helps nobody); the older one gets the next room freed. Returns what it holds now.
    pub fn next_batch(&mut self, asker: &Asker, want: usize, now: Instant) -> usize {
        let want = want.clamp(1, self.cap);
        let held = self.holding.get(&asker.uid).copied().unwrap_or(0);
        if held == 0 {
            return self.take(asker, want, now);
        }
        let older_waits = self.waiting.first_key_value().is_some_and(|(age, _)| *age < asker.age);
        let kept = if held >= want {
            self.free += held - want;
            want
        } else if older_waits {
            held
        } else {
            let more = (want - held).min(self.free);
            self.free -= more;
            held + more
        };
        self.holding.insert(asker.uid.clone(), kept);
        self.pump(now);
        kept
    }

    /// `uid`'s reconcile is done with its room: it goes to the oldest waiting jobs.
    pub fn release(&mut self, uid: &str, now: Instant) {
        if let Some(n) = self.holding.remove(uid) {
            self.free += n;
            self.pump(now);
        }
    }

    /// The job needs no room (any more): it leaves the queue, and what was set aside for it
    /// goes to the next.
    pub fn cancel(&mut self, uid: &str, now: Instant) {
        self.dequeue(uid);
        if let Some(mine) = self.set_aside.remove(uid) {
            self.free += mine.n;
            self.pump(now);
        }
    }

    /// Room set aside longer than [`SET_ASIDE_FOR`] goes to the next jobs.
    pub fn expire(&mut self, now: Instant) {
        let stale: Vec<String> = self
            .set_aside
            .iter()
            .filter(|(_, s)| now.saturating_duration_since(s.since) >= SET_ASIDE_FOR)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            self.cancel(&uid, now);
        }
    }

    /// The jobs to wake since the last call.
    pub fn woken(&mut self) -> Vec<ObjectRef<CachedJob>> {
        std::mem::take(&mut self.wake)
    }

    /// Jobs queued for room.
    pub fn queued(&self) -> usize {
        self.waiting.len()
    }

    /// Free room goes to the oldest waiting jobs, a whole batch each, while fewer than the
    /// most jobs hold room.
    fn pump(&mut self, now: Instant) {
        self.free = self.free.min(self.cap);
        while self.holders() < self.max_holders {
            let Some(entry) = self.waiting.first_entry() else { break };
            let want = entry.get().want;
            if self.free < want {
                break;
            }
            let waiter = entry.remove();
            self.queued.remove(&waiter.uid);
            self.free -= want;
            self.set_aside.insert(waiter.uid, SetAside { n: want, since: now });
            self.wake.push(waiter.job);
        }
    }

    /// Jobs holding room, or with room set aside for them.
    fn holders(&self) -> usize {
        self.holding.len() + self.set_aside.len()
    }

    fn dequeue(&mut self, uid: &str) {
        if let Some(age) = self.queued.remove(uid) {
            self.waiting.remove(&age);
        }
    }
}

/// [`Turns`] shared by the reconciles, waking the jobs room was set aside for through the
/// controller's trigger channel.
#[derive(Debug)]
pub struct WriteSlots {
    turns: Arc<Mutex<Turns>>,
    cap: usize,
    wake: Option<UnboundedSender<ObjectRef<CachedJob>>>,
}

/// Room held by one reconcile for its creates; given back when dropped.
#[derive(Debug)]
pub struct Room<'a> {
    slots: &'a WriteSlots,
    asker: Asker,
    /// Still held: given back when dropped.
    held: bool,
    n: usize,
}

impl WriteSlots {
    /// `cap` creates in flight, held by at most `max_holders` jobs at once; `wake` gets the
    /// jobs to reconcile when room was set aside for them (`None`: nobody is woken, for tests
    /// that take room directly).
    pub fn new(
        cap: usize,
        max_holders: usize,
        wake: Option<UnboundedSender<ObjectRef<CachedJob>>>,
    ) -> WriteSlots {
        WriteSlots { turns: Arc::new(Mutex::new(Turns::new(cap, max_holders))), cap: cap.max(1), wake }
    }

    /// The most jobs holding room at once for `concurrency` reconciles at once (0: no limit):
    /// half of them, so the other half is always free for reconciles that create nothing.
    pub fn holders_for(concurrency: u16) -> usize {
        match concurrency {
            0 => usize::MAX,
            n => usize::from(n / 2).max(1),
        }
    }

    /// The largest batch: [`WRITES_IN_FLIGHT`], or fewer when the cap is lower.
    pub fn batch_max(&self) -> usize {
        self.cap.min(WRITES_IN_FLIGHT)
    }

    fn turns(&self) -> MutexGuard<'_, Turns> {
        self.turns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the bookkeeping, then wakes whoever it set room aside for.
    fn with<T>(&self, f: impl FnOnce(&mut Turns) -> T) -> T {
        let (out, woken) = {
            let mut turns = self.turns();
            let out = f(&mut turns);
            (out, turns.woken())
        };
        if let Some(wake) = &self.wake {
            for job in woken {
                // The controller is gone only at shutdown: nobody is left to wake.
                let _ = wake.send(job);
            }
        }
        out
    }

    /// Room for up to `want` creates of `job` now, or `None`: the job is queued and will be
    /// woken.
    pub fn take(&self, job: &TFJob, want: usize) -> Option<Room<'_>> {
        let asker = Asker::of(job);
        let n = self.with(|t| t.take(&asker, want, Instant::now()));
        (n > 0).then_some(Room { slots: self, asker, held: true, n })
    }

    /// The job needs no room now (nothing to create, or it is gone).
    pub fn cancel(&self, uid: &str) {
        self.with(|t| t.cancel(uid, Instant::now()));
    }

    /// Hands room set aside too long to the next jobs; run every second.
    pub async fn expire_every_second(&self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            self.with(|t| t.expire(Instant::now()));
        }
    }

    /// Jobs queued for room.
    pub fn queued(&self) -> usize {
        self.turns().queued()
    }
}

impl Room<'_> {
    /// How many creates this room holds.
    pub fn held(&self) -> usize {
        self.n
    }

    /// Resizes the room for the next batch of up to `want` ([`Turns::next_batch`]; `None`
    /// only if it held none).
    pub fn next_batch(mut self, want: usize) -> Option<Self> {
        self.held = false;
        let asker = self.asker.clone();
        let n = self.slots.with(|t| t.next_batch(&asker, want, Instant::now()));
        (n > 0).then_some(Room { slots: self.slots, asker, held: true, n })
    }
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        if self.held {
            let uid = self.asker.uid.clone();
            self.slots.with(|t| t.release(&uid, Instant::now()));
        }
    }
}

#[cfg(test)]
mod tests;
