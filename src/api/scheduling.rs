//! The CEL rules of `runPolicy.schedulingPolicy`: what native gang scheduling reads
//! (`minAvailable`, `priorityClass`) is accepted; the fields only Volcano or scheduler-plugins
//! read are refused, naming the backend that would need them.

use super::rules::SchemaRule;

const POLICY: &[&str] = &["spec", "runPolicy", "schedulingPolicy"];

const NATIVE: &str = "this operator gang-schedules only with Kubernetes' own PodGroup (--gang-scheduling=native), \
which has no such setting; leave it unset";

/// The rules on `spec.runPolicy.schedulingPolicy` and on `spec` for `minAvailable`.
pub fn rules() -> Vec<SchemaRule> {
    let refuse = |field: &str, backend: &str| SchemaRule {
        path: POLICY,
        rule: format!("!has(self.{field})"),
        message: format!("spec.runPolicy.schedulingPolicy.{field} is read only by {backend}: {NATIVE}"),
        field_path: Some(format!(".{field}")),
    };
    vec![
        refuse("queue", "Volcano's gang scheduler (its queues; Kueue queues TFJobs here)"),
        refuse("minResources", "Volcano's and scheduler-plugins' gang schedulers"),
        refuse(
            "scheduleTimeoutSeconds",
            "scheduler-plugins' coscheduling (kube-scheduler's GangScheduling plugin waits a fixed 5 minutes)",
        ),
        SchemaRule {
            path: &["spec"],
            rule: "!has(self.runPolicy) || !has(self.runPolicy.schedulingPolicy) || \
                   !has(self.runPolicy.schedulingPolicy.minAvailable) || \
                   self.runPolicy.schedulingPolicy.minAvailable <= self.tfReplicaSpecs.map(k, \
                   has(self.tfReplicaSpecs[k].replicas) ? self.tfReplicaSpecs[k].replicas : 1).sum()"
                .into(),
            message:
                "spec.runPolicy.schedulingPolicy.minAvailable cannot be more than the job's replicas of \
                      all types together: such a gang would never be scheduled"
                    .into(),
            field_path: Some(".runPolicy.schedulingPolicy.minAvailable".into()),
        },
    ]
}
