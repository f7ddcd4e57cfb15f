//! The effective run policy: the seed's fields under `spec` win over `spec.runPolicy`, then defaults.

use super::enums::{CleanPodPolicy, SuccessPolicy};
use super::types::TFJobSpec;

/// The run policy the operator acts on, after precedence and defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EffectivePolicy {
    pub clean_pod_policy: CleanPodPolicy,
    pub ttl_seconds_after_finished: Option<i32>,
    pub active_deadline_seconds: Option<i64>,
    pub backoff_limit: Option<i32>,
    pub success_policy: SuccessPolicy,
    pub dynamic_worker: bool,
}

impl TFJobSpec {
    /// Resolves each run-policy field: set directly under `spec` wins, else `spec.runPolicy`,
    /// else the default (cleanPodPolicy `Running`; no TTL, deadline or backoff limit).
    pub fn effective_policy(&self) -> EffectivePolicy {
        let rp = self.run_policy.clone().unwrap_or_default();
        EffectivePolicy {
            clean_pod_policy: self
                .clean_pod_policy
                .or(rp.clean_pod_policy)
                .unwrap_or(CleanPodPolicy::Running),
            ttl_seconds_after_finished: self.ttl_seconds_after_finished.or(rp.ttl_seconds_after_finished),
            active_deadline_seconds: self.active_deadline_seconds.or(rp.active_deadline_seconds),
            backoff_limit: self.backoff_limit.or(rp.backoff_limit),
            success_policy: self.success_policy.unwrap_or_default(),
            dynamic_worker: self.enable_dynamic_worker.unwrap_or(false),
        }
    }
}

impl TFJobSpec {
    /// Whether `runPolicy.suspend` is true.
    pub fn is_suspended(&self) -> bool {
        self.run_policy.as_ref().and_then(|rp| rp.suspend) == Some(true)
    }

    /// The `runPolicy.managedBy` value when it names another controller than this operator
    /// (empty and `kubeflow.org/training-operator` are this operator).
    pub fn managed_elsewhere(&self) -> Option<&str> {
        let by = self.run_policy.as_ref()?.managed_by.as_deref()?;
        (!by.is_empty() && by != super::rules::MANAGED_BY_US).then_some(by)
    }

    /// The run-policy fields set directly under `spec` (the seed's shape), which Kubeflow's
    /// TFJob type, and so Kueue's MultiKueue copy, does not have.
    pub fn seed_shaped_fields(&self) -> Vec<&'static str> {
        [
            ("cleanPodPolicy", self.clean_pod_policy.is_some()),
            ("ttlSecondsAfterFinished", self.ttl_seconds_after_finished.is_some()),
            ("activeDeadlineSeconds", self.active_deadline_seconds.is_some()),
            ("backoffLimit", self.backoff_limit.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RunPolicy;

    fn spec(
        flat: (Option<CleanPodPolicy>, Option<i32>, Option<i64>, Option<i32>),
        rp: Option<RunPolicy>,
    ) -> TFJobSpec {
        TFJobSpec {
            clean_pod_policy: flat.0,
            ttl_seconds_after_finished: flat.1,
            active_deadline_seconds: flat.2,
            backoff_limit: flat.3,
            run_policy: rp,
            ..Default::default()
        }
    }

    #[test]
    fn suspend_managed_by_and_seed_shaped_fields() {
        let with_rp = |rp: RunPolicy| TFJobSpec { run_policy: Some(rp), ..Default::default() };
        let by = |v: &str| with_rp(RunPolicy { managed_by: Some(v.into()), ..Default::default() });
        assert_eq!(TFJobSpec::default().managed_elsewhere(), None);
        assert_eq!(by("").managed_elsewhere(), None);
        assert_eq!(by("kubeflow.org/training-operator").managed_elsewhere(), None);
        assert_eq!(by("kueue.x-k8s.io/multikueue").managed_elsewhere(), Some("kueue.x-k8s.io/multikueue"));
        assert!(!TFJobSpec::default().is_suspended());
        assert!(!with_rp(RunPolicy { suspend: Some(false), ..Default::default() }).is_suspended());
        assert!(with_rp(RunPolicy { suspend: Some(true), ..Default::default() }).is_suspended());
        let flat = spec((Some(CleanPodPolicy::All), None, Some(5), None), Some(RunPolicy::default()));
        assert_eq!(flat.seed_shaped_fields(), ["cleanPodPolicy", "activeDeadlineSeconds"]);
        assert!(spec((None, None, None, None), None).seed_shaped_fields().is_empty());
    }

    #[test]
    fn precedence_and_defaults() {
        let rp = RunPolicy {
            clean_pod_policy: Some(CleanPodPolicy::None),
            ttl_seconds_after_finished: Some(60),
            active_deadline_seconds: Some(600),
            backoff_limit: Some(3),
            ..Default::default()
        };
        // (case, spec, want clean, ttl, ads, backoff)
        let cases = [
            (
                "nothing set: defaults",
                spec((None, None, None, None), None),
                CleanPodPolicy::Running,
                None,
                None,
                None,
            ),
            (
                "empty runPolicy: defaults",
                spec((None, None, None, None), Some(RunPolicy::default())),
                CleanPodPolicy::Running,
                None,
                None,
                None,
            ),
            (
                "runPolicy only",
                spec((None, None, None, None), Some(rp.clone())),
                CleanPodPolicy::None,
                Some(60),
                Some(600),
                Some(3),
            ),
            (
                "seed only",
                spec((Some(CleanPodPolicy::All), Some(5), Some(30), Some(6)), None),
                CleanPodPolicy::All,
                Some(5),
                Some(30),
                Some(6),
            ),
            (
                "seed wins over runPolicy",
                spec((Some(CleanPodPolicy::All), Some(5), Some(30), Some(0)), Some(rp.clone())),
                CleanPodPolicy::All,
                Some(5),
                Some(30),
                Some(0),
            ),
            (
                "mixed: each field resolved on its own",
                spec((None, Some(0), None, None), Some(rp)),
                CleanPodPolicy::None,
                Some(0),
                Some(600),
                Some(3),
            ),
        ];
        for (name, spec, clean, ttl, ads, backoff) in cases {
            let p = spec.effective_policy();
            assert_eq!(p.clean_pod_policy, clean, "{name}");
            assert_eq!(p.ttl_seconds_after_finished, ttl, "{name}");
            assert_eq!(p.active_deadline_seconds, ads, "{name}");
            assert_eq!(p.backoff_limit, backoff, "{name}");
        }
    }

    #[test]
    fn success_policy_and_dynamic_worker_defaults() {
        let p = TFJobSpec::default().effective_policy();
        assert_eq!(p.success_policy, SuccessPolicy::Default);
        assert!(!p.dynamic_worker);
        let s = TFJobSpec {
            success_policy: Some(SuccessPolicy::AllWorkers),
            enable_dynamic_worker: Some(true),
            ..Default::default()
        };
        let p = s.effective_policy();
        assert_eq!(p.success_policy, SuccessPolicy::AllWorkers);
        assert!(p.dynamic_worker);
    }
}
