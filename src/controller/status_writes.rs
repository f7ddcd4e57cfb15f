//! When this process last wrote each job's status: what status write coalescing
//! ([`crate::plan::coalesce`]) plans from.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use super::books::PerJob;

/// When each job's status was last written by this process, by job uid.
#[derive(Debug, Default)]
pub struct StatusWrites {
    last: HashMap<String, Instant>,
}

impl StatusWrites {
    pub fn last(&self, uid: &str) -> Option<Instant> {
        self.last.get(uid).copied()
    }

    pub fn wrote(&mut self, uid: &str, at: Instant) {
        self.last.insert(uid.to_string(), at);
    }

    pub fn forget(&mut self, uid: &str) {
        self.last.remove(uid);
    }
}

impl PerJob for StatusWrites {
    #[cfg(test)]
    fn jobs(&self) -> HashSet<String> {
        self.last.keys().cloned().collect()
    }

    fn retain_jobs(&mut self, listed: &HashSet<String>) {
        self.last.retain(|uid, _| listed.contains(uid));
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
}
