//! Slow start, pure: the order a plan's creates go out in (one object of each template
//! first) and the sizes of the batches they go out in.

use std::collections::HashSet;

use crate::plan::ReplicaId;

/// The sizes of the batches a job's creates go out in: `first`, then twice the last batch
/// sent, up to `max` (as Kubernetes' Job controller does from 1), so a refusal is met after
/// the first batch, not after every create. A batch is smaller when less room was given
/// ([`super::write_slots`]), and the next grows from what was sent.
#[derive(Clone, Copy, Debug)]
pub struct SlowStart {
    next: usize,
    max: usize,
}

impl SlowStart {
    pub fn new(first: usize, max: usize) -> SlowStart {
        SlowStart { next: first.max(1), max: max.max(1) }
    }

    /// The batch to ask room for with `left` creates to go.
    pub fn ask(&self, left: usize) -> usize {
        self.next.min(left).min(self.max)
    }

    /// A batch of `sent` went out: the next may be twice as large.
    pub fn sent(&mut self, sent: usize) {
        self.next = sent.max(1).saturating_mul(2);
    }
}

/// One object a plan creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NewObject {
    Service(ReplicaId),
    Pod(ReplicaId),
}

/// The order a plan's creates go out in, and the size of their first batch: first one
/// object of each template (the first service and the first pod of each replica type), so a
/// template the API server refuses costs one create; then the rest, services before pods.
pub fn create_order(services: &[ReplicaId], pods: &[ReplicaId]) -> (Vec<NewObject>, usize) {
    let all = services.iter().map(|&r| NewObject::Service(r)).chain(pods.iter().map(|&r| NewObject::Pod(r)));
    let (mut probes, mut rest) = (Vec::new(), Vec::new());
    let mut seen = HashSet::new();
    for obj in all {
        let template = match obj {
            NewObject::Service(r) => (false, r.rtype),
            NewObject::Pod(r) => (true, r.rtype),
        };
        if seen.insert(template) { probes.push(obj) } else { rest.push(obj) }
    }
    let first = probes.len();
    probes.extend(rest);
    (probes, first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ReplicaType;

    fn batches(n: usize, first: usize, max: usize, room: usize) -> Vec<usize> {
        let (mut s, mut left, mut out) = (SlowStart::new(first, max), n, Vec::new());
        while left > 0 {
            let size = s.ask(left).min(room);
            s.sent(size);
            out.push(size);
            left -= size;
        }
        out
    }

    #[test]
    fn slow_start_doubles_to_the_cap() {
        let cases: [(usize, usize, usize, usize, &[usize]); 13] = [
            (0, 1, 16, 16, &[]),
            (1, 1, 16, 16, &[1]),
            (2, 1, 16, 16, &[1, 1]),
            (5, 1, 16, 16, &[1, 2, 2]),
            (7, 1, 16, 16, &[1, 2, 4]),
            (40, 1, 16, 16, &[1, 2, 4, 8, 16, 9]),
            (10, 1, 0, 16, &[1, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
            (10, 4, 16, 16, &[4, 6]),
            (40, 3, 16, 16, &[3, 6, 12, 16, 3]),
            (30, 20, 16, 16, &[16, 14]),
            // Less room than asked: the batch is smaller, and the next doubles from it.
            (10, 4, 16, 2, &[2, 2, 2, 2, 2]),
            (40, 1, 16, 5, &[1, 2, 4, 5, 5, 5, 5, 5, 5, 3]),
            (3, 0, 16, 16, &[1, 2]),
        ];
        for (n, first, max, room, want) in cases {
            assert_eq!(
                batches(n, first, max, room),
                want,
                "{n} creates, {first} first, {max} at most, room {room}"
            );
        }
    }

    #[test]
    fn one_object_of_each_template_goes_first() {
        use NewObject::{Pod, Service};
        use ReplicaType::{PS, Worker};
        let r = |rtype, index| ReplicaId { rtype, index };
        // (case, services, pods, the order, the first batch)
        type Case = (&'static str, Vec<ReplicaId>, Vec<ReplicaId>, Vec<NewObject>, usize);
        let cases: Vec<Case> = vec![
            ("nothing", vec![], vec![], vec![], 0),
            ("one pod re-created", vec![], vec![r(Worker, 2)], vec![Pod(r(Worker, 2))], 1),
            (
                "a new job of 1 PS and 3 workers",
                vec![r(PS, 0), r(Worker, 0), r(Worker, 1), r(Worker, 2)],
                vec![r(PS, 0), r(Worker, 0), r(Worker, 1), r(Worker, 2)],
                vec![
                    Service(r(PS, 0)),
                    Service(r(Worker, 0)),
                    Pod(r(PS, 0)),
                    Pod(r(Worker, 0)),
                    Service(r(Worker, 1)),
                    Service(r(Worker, 2)),
                    Pod(r(Worker, 1)),
                    Pod(r(Worker, 2)),
                ],
                4,
            ),
            (
                "services exist, pods of workers 3 and 5 missing",
                vec![],
                vec![r(Worker, 3), r(Worker, 5)],
                vec![Pod(r(Worker, 3)), Pod(r(Worker, 5))],
                1,
            ),
        ];
        for (name, services, pods, want, first) in cases {
            assert_eq!(create_order(&services, &pods), (want, first), "{name}");
        }
    }
}
