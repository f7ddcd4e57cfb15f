//! When this process last wrote each job's status, and since when a change of nothing but
//! `active` counts has been held: what status write coalescing ([`crate::plan::coalesce`])
//! plans from.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::books::PerJob;

/// When each job's status was last written by this process, and since when its pending
/// change has been held, by job uid.
#[derive(Debug, Default)]
pub struct StatusWrites {
    last: HashMap<String, Instant>,
    held_since: HashMap<String, Instant>,
}

impl StatusWrites {
    pub fn last(&self, uid: &str) -> Option<Instant> {
        self.last.get(uid).copied()
    }

    /// Since when the job's pending change has been held, if one is.
    pub fn held_since(&self, uid: &str) -> Option<Instant> {
        self.held_since.get(uid).copied()
    }

    /// The job's status was written: nothing is pending any more.
    pub fn wrote(&mut self, uid: &str, at: Instant) {
        self.last.insert(uid.to_string(), at);
        self.held_since.remove(uid);
    }

    /// A plan held the job's change (`held`), or held none: the first hold starts the
    /// window, a plan without one ends it.
    pub fn planned(&mut self, uid: &str, held: bool, at: Instant) {
        if held {
            self.held_since.entry(uid.to_string()).or_insert(at);
        } else {
            self.held_since.remove(uid);
        }
    }

    pub fn forget(&mut self, uid: &str) {
        self.last.remove(uid);
        self.held_since.remove(uid);
    }
}

impl PerJob for StatusWrites {
    #[cfg(test)]
    fn jobs(&self) -> HashSet<String> {
        self.last.keys().cloned().collect()
    }

    fn retain_jobs(&mut self, listed: &HashSet<String>) {
        self.last.retain(|uid, _| listed.contains(uid));
        self.held_since.retain(|uid, _| listed.contains(uid));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn last_writes_are_per_job_and_forgotten() {
        let t0 = Instant::now();
        let mut w = StatusWrites::default();
        assert_eq!(w.last("a"), None);
        w.wrote("a", t0);
        w.wrote("b", t0 + Duration::from_secs(1));
        assert_eq!(w.last("a"), Some(t0));
        w.forget("a");
        assert_eq!((w.last("a"), w.last("b")), (None, Some(t0 + Duration::from_secs(1))));
    }

    #[test]
    fn a_hold_starts_at_the_first_plan_that_holds_and_ends_with_a_write_or_a_plan_without_one() {
        let t0 = Instant::now();
        let t = |s: u64| t0 + Duration::from_secs(s);
        let mut w = StatusWrites::default();
        w.planned("a", true, t(1));
        w.planned("a", true, t(2));
        assert_eq!(w.held_since("a"), Some(t(1)), "the first hold starts the window");
        w.wrote("a", t(3));
        assert_eq!(w.held_since("a"), None, "written: nothing pending");
        w.planned("a", true, t(4));
        w.planned("a", false, t(5));
        assert_eq!(w.held_since("a"), None, "the counts went back: nothing pending");
        w.planned("b", true, t(6));
        w.forget("b");
        assert_eq!(w.held_since("b"), None);
    }
}
