//! Tests of the job counters: each change counted once, TTL deletions whatever the order.

use super::*;
use crate::api::{ConditionType, ReplicaStatus, ReplicaType};
use crate::plan::{self as conditions, REASON_CREATED, REASON_FAILED, REASON_RUNNING, REASON_SUCCEEDED};
use k8s_openapi::jiff::Timestamp;

fn status(conds: &[ConditionType], restarts: i32) -> TFJobStatus {
    let mut st = TFJobStatus::default();
    for t in conds {
        let reason = match t {
            ConditionType::Created => REASON_CREATED,
            ConditionType::Running => REASON_RUNNING,
            ConditionType::Succeeded => REASON_SUCCEEDED,
            _ => REASON_FAILED,
        };
        conditions::set(&mut st, *t, reason, String::new(), Timestamp::UNIX_EPOCH);
    }
    if restarts > 0 {
        st.replica_statuses.insert(ReplicaType::Worker, ReplicaStatus { restarts, ..Default::default() });
    }
    st
}

#[test]
fn each_job_is_counted_once() {
    use ConditionType::*;
    use JobCount as J;
    let cases: Vec<(&str, Option<TFJobStatus>, TFJobStatus, Vec<JobCount>)> = vec![
        ("first write", None, status(&[Created], 0), vec![J::Created]),
        ("rewritten", Some(status(&[Created], 0)), status(&[Created], 0), vec![]),
        ("running", Some(status(&[Created], 0)), status(&[Created, Running], 0), vec![]),
        (
            "succeeds",
            Some(status(&[Created, Running], 0)),
            status(&[Created, Running, Succeeded], 0),
            vec![J::Successful],
        ),
        (
            "success rewritten",
            Some(status(&[Created, Succeeded], 0)),
            status(&[Created, Succeeded], 0),
            vec![],
        ),
        ("fails at once", None, status(&[Created, Failed], 0), vec![J::Created, J::Failed]),
        (
            "first restart",
            Some(status(&[Created, Running], 0)),
            status(&[Created, Restarting], 1),
            vec![J::Restarted],
        ),
        ("second restart", Some(status(&[Created, Running], 1)), status(&[Created, Restarting], 2), vec![]),
        (
            "fails after restarts",
            Some(status(&[Created, Restarting], 2)),
            status(&[Created, Failed], 3),
            vec![J::Failed],
        ),
    ];
    for (name, before, after, want) in cases {
        assert_eq!(moved(Seen::of(before.as_ref()), Seen::of(Some(&after))), want, "{name}");
    }
}

#[test]
fn the_counter_counts_what_the_watch_shows_once() {
    use ConditionType::*;
    use JobCount as J;
    let mut c = JobCounter::default();
    // The first list: jobs that existed before this process are not counted again.
    assert_eq!(c.observed("old", Some(&status(&[Created, Succeeded], 0)), true), []);
    assert_eq!(c.observed("old", Some(&status(&[Created, Succeeded], 0)), false), [], "seen again");
    // A new job: created without status, then the operator's writes (or another's).
    assert_eq!(c.observed("new", None, false), []);
    assert_eq!(c.observed("new", Some(&status(&[Created], 0)), false), [J::Created]);
    assert_eq!(
        c.observed("new", Some(&status(&[Created], 0)), false),
        [],
        "a write whose response was lost is seen once"
    );
    assert_eq!(c.observed("new", Some(&status(&[Created, Restarting], 1)), false), [J::Restarted]);
    assert_eq!(c.observed("new", Some(&status(&[Created, Failed], 2)), false), [J::Failed]);
    // The watch delivers a version older than the operator's own write, then the write.
    assert_eq!(
        c.observed("late", Some(&status(&[Created, Succeeded], 0)), false),
        [J::Created, J::Successful]
    );
    assert_eq!(c.observed("late", Some(&status(&[Created, Running], 0)), false), [], "older version");
    assert_eq!(c.observed("late", Some(&status(&[Created, Succeeded], 0)), false), [], "counted once");
    // Seen first after a watch gap, already created: its creation counts.
    assert_eq!(c.observed("gap", Some(&status(&[Created], 0)), false), [J::Created]);
    assert_eq!(c.gone("new"), None, "deleted by someone else: not counted");
    assert_eq!(c.observed("new", Some(&status(&[Created], 0)), true), [], "forgotten, then listed");
}

/// A TTL deletion counts once, whichever of its answer and the job's disappearance comes
/// first, also when the answer was lost; a job someone else deleted is not counted.
#[test]
fn a_ttl_deletion_counts_once_whatever_the_order() {
    use DeleteAnswer::*;
    #[derive(Clone, Copy, Debug)]
    enum Step {
        Send,
        Answer(DeleteAnswer),
        Gone,
        Relisted(bool),
    }
    use Step::*;
    let cases: Vec<(&str, Vec<Step>, usize)> = vec![
        ("answered, then the watch", vec![Send, Answer(Deleted), Gone], 1),
        ("the watch, then the answer", vec![Send, Gone, Answer(Deleted)], 1),
        ("answer lost, then the watch", vec![Send, Answer(NoAnswer), Gone], 1),
        (
            "answer lost, retried, the watch first",
            vec![Send, Answer(NoAnswer), Send, Gone, Answer(Deleted)],
            1,
        ),
        ("answer lost, retried: not found", vec![Send, Answer(NoAnswer), Send, Answer(NotFound), Gone], 1),
        ("answer lost, retried: deleted", vec![Send, Answer(NoAnswer), Send, Answer(Deleted), Gone], 1),
        ("answer lost, retry in flight", vec![Send, Answer(NoAnswer), Send, Gone, Answer(NotFound)], 1),
        ("answer lost, gone in a watch gap", vec![Send, Answer(NoAnswer), Relisted(false)], 1),
        ("answer lost, still listed", vec![Send, Answer(NoAnswer), Relisted(true)], 0),
        ("never sent, someone deleted it", vec![Gone], 0),
        ("not found at once: someone else's", vec![Send, Answer(NotFound), Gone], 0),
        ("refused: the job changed", vec![Send, Answer(Refused), Gone], 0),
        ("the watch, then the answer lost", vec![Send, Gone, Answer(NoAnswer), Gone], 1),
        ("lost, then refused, then gone", vec![Send, Answer(NoAnswer), Send, Answer(Refused), Gone], 1),
    ];
    for (name, steps, want) in cases {
        let mut c = JobCounter::default();
        let mut counted = Vec::new();
        for step in &steps {
            match *step {
                Send => c.delete_sent("j", "ns"),
                Answer(a) => counted.extend(c.delete_answered("j", a)),
                Gone => counted.extend(c.gone("j")),
                Relisted(listed) => {
                    let uids = if listed { HashSet::from(["j".to_string()]) } else { HashSet::new() };
                    counted.extend(c.relisted(&uids));
                }
            }
        }
        assert_eq!(counted.len(), want, "{name}: {steps:?}");
        assert!(counted.iter().all(|ns| ns == "ns"), "{name}");
        let settled = !matches!(steps.last(), Some(Relisted(true)));
        assert_eq!(c.deleting.is_empty(), settled, "{name}: nothing left behind once settled");
    }
}
