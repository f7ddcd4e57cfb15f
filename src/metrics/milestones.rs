//! How long jobs took to reach `Running` and `Succeeded`: which milestone a job's change
//! reaches (pure, from two observations of it, as [`super::jobs`] counts) and the seconds
//! from its creation to the condition. A milestone is observed once per job by the process
//! that sees it happen; a job already past it when the process starts is not observed again.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::seen::Seen;
use crate::api::{ConditionStatus, ConditionType, TFJobStatus};

/// A point in a job's life whose time from the job's creation is a histogram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Milestone {
    Running = 0,
    Succeeded = 1,
}

impl Milestone {
    pub const ALL: [Milestone; 2] = [Milestone::Running, Milestone::Succeeded];

    pub fn metric_name(self) -> &'static str {
        match self {
            Milestone::Running => "tfjob_operator_job_time_to_running_seconds",
            Milestone::Succeeded => "tfjob_operator_job_time_to_succeeded_seconds",
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            Milestone::Running => {
                "Seconds from a TFJob's creation to its first Running condition, observed once per job \
                 by the process that sees it happen, by namespace"
            }
            Milestone::Succeeded => {
                "Seconds from a TFJob's creation to its Succeeded condition, observed once per job by \
                 the process that sees it happen, by namespace"
            }
        }
    }

    fn condition(self) -> ConditionType {
        match self {
            Milestone::Running => ConditionType::Running,
            Milestone::Succeeded => ConditionType::Succeeded,
        }
    }

    /// Seconds from `created` (the job's creationTimestamp) to the time the condition was
    /// set (the lastTransitionTime of the condition holding); `None` when either is unknown,
    /// or the condition does not hold (a `Running` turned False when the job finished has the
    /// time it ended). Never negative (the API server's and the operator's clocks may differ).
    pub fn seconds(self, created: Option<&Time>, status: &TFJobStatus) -> Option<f64> {
        let cond = status.condition(self.condition()).filter(|c| c.status == ConditionStatus::True)?;
        let at = cond.last_transition_time.as_ref()?;
        let since = at.0.duration_since(created?.0);
        Some(since.as_secs_f64().max(0.0))
    }
}

/// The histograms' buckets, in seconds: a second to a day.
pub const BUCKETS: [f64; 16] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 21600.0,
    86400.0,
];

/// The milestones going from `before` to `after` reaches. A job seen finished without ever
/// being seen running (its whole run between two observations: its `Running` condition is
/// already False, and its time gone) reaches only `Succeeded`, and an older version of it
/// delivered afterwards reaches nothing.
pub fn reached(before: Seen, after: Seen) -> Vec<Milestone> {
    let past_running = before.running || before.succeeded || before.failed;
    [
        (past_running, after.running, Milestone::Running),
        (before.succeeded, after.succeeded, Milestone::Succeeded),
    ]
    .into_iter()
    .filter(|(was, is, _)| *is && !*was)
    .map(|(_, _, m)| m)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::jobs::JobCounter;
    use crate::plan::{self as conditions, REASON_CREATED, REASON_RUNNING, REASON_SUCCEEDED};
    use k8s_openapi::jiff::Timestamp;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    /// A status whose conditions were set at the given seconds after `t(0)`.
    fn status(conds: &[(ConditionType, i64)]) -> TFJobStatus {
        let mut st = TFJobStatus::default();
        for (c, at) in conds {
            let reason = match c {
                ConditionType::Created => REASON_CREATED,
                ConditionType::Running => REASON_RUNNING,
                _ => REASON_SUCCEEDED,
            };
            conditions::set(&mut st, *c, reason, String::new(), t(*at));
        }
        st
    }

    /// Each step: a sighting of job `uid` (its status, whether it is part of the process's
    /// first list), and the milestones it must reach.
    #[test]
    fn each_milestone_is_observed_once_by_the_process_that_sees_it() {
        use ConditionType::*;
        use Milestone as M;
        let created = &[(Created, 0)][..];
        let running = &[(Created, 0), (Running, 4)][..];
        let done = &[(Created, 0), (Running, 4), (Succeeded, 9)][..];
        type Step<'a> = (&'a str, &'a [(ConditionType, i64)], bool, &'a [Milestone]);
        let cases: Vec<(&str, Vec<Step>)> = vec![
            ("seen running once", vec![("a", created, false, &[]), ("a", running, false, &[M::Running])]),
            (
                "runs, then succeeds",
                vec![
                    ("a", created, false, &[]),
                    ("a", running, false, &[M::Running]),
                    ("a", done, false, &[M::Succeeded]),
                ],
            ),
            (
                "running seen again (a rewrite, a lost answer's watch event)",
                vec![
                    ("a", running, false, &[M::Running]),
                    ("a", running, false, &[]),
                    ("a", running, false, &[]),
                ],
            ),
            (
                "a restart's first list of a running job",
                vec![("a", running, true, &[]), ("a", running, false, &[])],
            ),
            (
                "listed running, then succeeds",
                vec![("a", running, true, &[]), ("a", done, false, &[M::Succeeded])],
            ),
            ("listed finished", vec![("a", done, true, &[]), ("a", done, false, &[])]),
            (
                "listed created, runs later",
                vec![("a", created, true, &[]), ("a", running, false, &[M::Running])],
            ),
            (
                "its whole life between two sightings",
                vec![("a", created, false, &[]), ("a", done, false, &[M::Succeeded])],
            ),
            (
                "an older version after the newer one",
                vec![("a", done, false, &[M::Succeeded]), ("a", running, false, &[])],
            ),
            ("two jobs", vec![("a", running, false, &[M::Running]), ("b", running, false, &[M::Running])]),
        ];
        for (name, steps) in cases {
            let mut c = JobCounter::default();
            for (i, (uid, conds, first_list, want)) in steps.iter().enumerate() {
                let (_, got) = c.observed_all(uid, Some(&status(conds)), *first_list);
                assert_eq!(got, *want, "{name}: step {i}");
            }
        }
    }

    #[test]
    fn seconds_from_creation_to_the_condition() {
        use ConditionType::*;
        let running = status(&[(Created, 0), (Running, 4)]);
        let done = status(&[(Created, 0), (Running, 4), (Succeeded, 9)]);
        let cases = [
            ("running", Milestone::Running, &running, Some(Time(t(0))), Some(4.0)),
            ("succeeded", Milestone::Succeeded, &done, Some(Time(t(0))), Some(9.0)),
            (
                "created after the condition (clock skew)",
                Milestone::Running,
                &running,
                Some(Time(t(6))),
                Some(0.0),
            ),
            ("no creationTimestamp", Milestone::Running, &running, None, None),
            ("no condition", Milestone::Succeeded, &running, Some(Time(t(0))), None),
            ("Running turned False at the end", Milestone::Running, &done, Some(Time(t(0))), None),
        ];
        for (name, m, st, created, want) in cases {
            assert_eq!(m.seconds(created.as_ref(), st), want, "{name}");
        }
    }
}
