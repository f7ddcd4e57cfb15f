//! The plan step of one reconcile, pure: the planner ([`super::plan_with`]), then gang
//! scheduling's decision ([`super::gang::decide`]), then status write coalescing
//! ([`super::coalesce::hold`]). Everything it reads is passed in, the clock included.

use std::time::Instant;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::jiff::Timestamp;

use super::{Plan, Settings, coalesce, gang, plan_with};
use crate::api::{PodGroup, TFJob};

/// What one reconcile plans from: the job and what it owns as observed (caches with this
/// process's unseen writes overlaid), and when this process last wrote the job's status.
#[derive(Clone, Copy, Debug)]
pub struct Observed<'a> {
    pub job: &'a TFJob,
    pub pods: &'a [Pod],
    pub services: &'a [Service],
    /// The PodGroup the job controls, with gang scheduling.
    pub pod_group: Option<&'a PodGroup>,
    /// When this process last wrote the job's status, on the monotonic clock.
    pub last_status_write: Option<Instant>,
    /// Since when a change of the job's `active` counts has been held, if one is.
    pub status_held_since: Option<Instant>,
}

/// The one instant a reconcile plans at: wall time for status and deadlines, monotonic time
/// for the coalescing window.
#[derive(Clone, Copy, Debug)]
pub struct At {
    pub wall: Timestamp,
    pub mono: Instant,
}

/// Plans one reconcile of `seen.job`.
pub fn plan(seen: &Observed<'_>, settings: Settings, at: At) -> Plan {
    let mut plan = plan_with(seen.job, seen.pods, seen.services, at.wall, settings);
    plan.gang = gang::decide(settings.gang, seen.job, seen.pods, &plan, seen.pod_group);
    let old = seen.job.status.clone().unwrap_or_default().upgraded();
    coalesce::hold(&mut plan, &old, (seen.last_status_write, seen.status_held_since), at.wall, at.mono);
    plan
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::api::{ReplicaSpec, TFJobSpec};
    use crate::plan::gang::GangScheduling;

    fn job() -> TFJob {
        let template =
            serde_json::from_value(json!({"spec": {"containers": [{"name": "tensorflow", "image": "tf"}]}}))
                .expect("template");
        let mut spec = TFJobSpec::default();
        spec.tf_replica_specs
            .insert("Worker".into(), ReplicaSpec { replicas: Some(2), template, restart_policy: None });
        let mut j = TFJob::new("j", spec);
        j.metadata.namespace = Some("ns".into());
        j.metadata.uid = Some("uid-j".into());
        j
    }

    /// The three steps in one table: what each adds to a new job's plan.
    #[test]
    fn the_planner_then_gang_then_coalescing() {
        let mono = Instant::now();
        let at = At { wall: "2026-01-01T00:00:00Z".parse().expect("time"), mono };
        let j = job();
        let mut created = j.clone();
        created.status = plan_with(&j, &[], &[], at.wall, Settings::default()).status;
        let recently = Some(mono - Duration::from_millis(200));
        // (case, job, gang mode, last status write, want: status written, PodGroup created, held)
        type Case<'a> = (&'a str, &'a TFJob, GangScheduling, Option<Instant>, (bool, bool, bool));
        let cases: [Case; 5] = [
            ("a new job: its status and creates", &j, GangScheduling::None, None, (true, false, false)),
            ("with gang scheduling: its PodGroup too", &j, GangScheduling::Native, None, (true, true, false)),
            ("a new job's status is never held", &j, GangScheduling::None, recently, (true, false, false)),
            ("nothing new: nothing written", &created, GangScheduling::None, recently, (false, false, false)),
            (
                "nothing new, long after: the same",
                &created,
                GangScheduling::None,
                None,
                (false, false, false),
            ),
        ];
        for (name, job, gang, last, (status, pod_group, held)) in cases {
            let seen = Observed {
                job,
                pods: &[],
                services: &[],
                pod_group: None,
                last_status_write: last,
                status_held_since: None,
            };
            let p = plan(&seen, Settings { gang, ..Settings::default() }, at);
            assert_eq!(
                (p.status.is_some(), p.gang.create.is_some(), p.status_held),
                (status, pod_group, held),
                "{name}"
            );
            assert_eq!(p.create_pods.len(), 2, "{name}: the creates are the planner's");
        }
    }
}
