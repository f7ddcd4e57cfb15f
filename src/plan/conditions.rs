//! Condition transitions and their reasons and messages (upstream's state machine, fixed).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::{ConditionStatus, ConditionType, JobCondition, TFJobStatus};

pub const REASON_CREATED: &str = "TFJobCreated";
pub const REASON_RUNNING: &str = "TFJobRunning";
pub const REASON_RESTARTING: &str = "TFJobRestarting";
pub const REASON_SUCCEEDED: &str = "TFJobSucceeded";
pub const REASON_FAILED: &str = "TFJobFailed";
pub const REASON_DEADLINE: &str = "DeadlineExceeded";
pub const REASON_BACKOFF: &str = "BackoffLimitExceeded";
pub const REASON_INVALID: &str = "InvalidTFJobSpec";
pub const REASON_FAILED_CREATE: &str = "FailedCreatePod";
/// Creates fail for a reason that is not the job's (the API server, or an admission webhook
/// it calls, fails them) and are retried: the `ReplicaFailure` condition's reason then, and
/// the Warning event's. Distinct from [`REASON_FAILED_CREATE`], which Kubeflow users read as
/// "the template was refused".
pub const REASON_CREATE_RETRYING: &str = "CreateRetrying";
pub const REASON_SUSPENDED: &str = "TFJobSuspended";
pub const REASON_RESUMED: &str = "TFJobResumed";

/// A condition of this type that holds (status True) takes the reason and message, keeping its
/// transition time: `Ok(changed)`. `Err(message)` hands the message back when none holds.
pub fn update_held(
    st: &mut TFJobStatus,
    type_: ConditionType,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Result<bool, String> {
    let Some(c) = st.conditions.iter_mut().find(|c| c.type_ == type_ && c.status == ConditionStatus::True)
    else {
        return Err(message);
    };
    if c.reason.as_deref() == Some(reason) && c.message.as_deref() == Some(message.as_str()) {
        return Ok(false);
    }
    c.reason = Some(reason.into());
    c.message = Some(message);
    c.last_update_time = Some(Time(now));
    Ok(true)
}

/// Sets a condition. Nothing changes when it already holds with the same status, reason and
/// message; a new status replaces the old condition at the end of the list. Setting Running
/// removes Restarting and the reverse; Succeeded and Failed turn Running and Restarting False.
/// Returns whether anything changed.
pub fn set(
    st: &mut TFJobStatus,
    type_: ConditionType,
    reason: &str,
    message: String,
    now: Timestamp,
) -> bool {
    let message = match update_held(st, type_, reason, message, now) {
        Ok(changed) => return changed,
        Err(message) => message,
    };
    st.conditions.retain(|c| c.type_ != type_);
    match type_ {
        ConditionType::Running => st.conditions.retain(|c| c.type_ != ConditionType::Restarting),
        ConditionType::Restarting => st.conditions.retain(|c| c.type_ != ConditionType::Running),
        ConditionType::Succeeded | ConditionType::Failed => {
            for c in st.conditions.iter_mut().filter(|c| {
                matches!(c.type_, ConditionType::Running | ConditionType::Restarting)
                    && c.status == ConditionStatus::True
            }) {
                c.status = ConditionStatus::False;
                c.last_update_time = Some(Time(now));
                c.last_transition_time = Some(Time(now));
            }
        }
        _ => {}
    }
    st.conditions.push(holding(type_, reason, message, now));
    true
}

/// `now` in whole seconds, as the API server stores condition times.
fn whole_seconds(now: Timestamp) -> Timestamp {
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// The status with the `ReplicaFailure` condition saying creates fail and are retried (reason
/// [`REASON_CREATE_RETRYING`], `message` naming the cause); a refusal's condition is
/// superseded by it.
pub fn with_create_retrying(status: &TFJobStatus, message: &str, now: Timestamp) -> TFJobStatus {
    let now = whole_seconds(now);
    let mut st = status.clone();
    if set(&mut st, ConditionType::ReplicaFailure, REASON_CREATE_RETRYING, message.to_string(), now) {
        st.last_reconcile_time = Some(Time(now));
    }
    st
}

/// The status without a `ReplicaFailure` condition of reason [`REASON_CREATE_RETRYING`] (the
/// creates went through); a refusal's condition is the plan's to clear.
pub fn without_create_retrying(status: &TFJobStatus, now: Timestamp) -> TFJobStatus {
    let mut st = status.clone();
    let before = st.conditions.len();
    st.conditions.retain(|c| {
        !(c.type_ == ConditionType::ReplicaFailure && c.reason.as_deref() == Some(REASON_CREATE_RETRYING))
    });
    if st.conditions.len() != before {
        st.last_reconcile_time = Some(Time(whole_seconds(now)));
    }
    st
}

/// A new condition that holds (status True) from `now`.
pub fn holding(type_: ConditionType, reason: &str, message: String, now: Timestamp) -> JobCondition {
    JobCondition {
        type_,
        status: ConditionStatus::True,
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    }
}

/// Turns a condition that holds (status True) False, with a new reason and message. Returns
/// whether it held.
pub fn set_false(
    st: &mut TFJobStatus,
    type_: ConditionType,
    reason: &str,
    message: String,
    now: Timestamp,
) -> bool {
    let Some(c) = st.conditions.iter_mut().find(|c| c.type_ == type_ && c.status == ConditionStatus::True)
    else {
        return false;
    };
    c.status = ConditionStatus::False;
    c.reason = Some(reason.into());
    c.message = Some(message);
    c.last_update_time = Some(Time(now));
    c.last_transition_time = Some(Time(now));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn types(st: &TFJobStatus) -> Vec<(ConditionType, &str)> {
        st.conditions.iter().map(|c| (c.type_, c.status.as_str())).collect()
    }

    #[test]
    fn transitions() {
        use ConditionType::*;
        let mut st = TFJobStatus::default();
        assert!(set(&mut st, Created, REASON_CREATED, "c".into(), ts(1)));
        assert!(
            !set(&mut st, Created, REASON_CREATED, "c".into(), ts(2)),
            "same condition twice is no change"
        );
        assert!(set(&mut st, Running, REASON_RUNNING, "r".into(), ts(3)));
        assert_eq!(types(&st), [(Created, "True"), (Running, "True")]);
        assert!(set(&mut st, Restarting, REASON_RESTARTING, "x".into(), ts(4)));
        assert_eq!(types(&st), [(Created, "True"), (Restarting, "True")], "Restarting replaces Running");
        assert!(set(&mut st, Running, REASON_RUNNING, "r".into(), ts(5)));
        assert_eq!(types(&st), [(Created, "True"), (Running, "True")], "Running replaces Restarting");
        assert!(set(&mut st, Failed, REASON_DEADLINE, "d".into(), ts(6)));
        assert_eq!(types(&st), [(Created, "True"), (Running, "False"), (Failed, "True")]);
        let running = st.condition(Running).unwrap();
        assert_eq!(running.last_transition_time, Some(Time(ts(6))));
        assert_eq!(st.condition(Failed).unwrap().reason.as_deref(), Some("DeadlineExceeded"));
        assert!(st.is_finished());
    }

    #[test]
    fn set_false_turns_only_a_holding_condition() {
        use ConditionType::*;
        let mut st = TFJobStatus::default();
        assert!(!set_false(&mut st, Suspended, REASON_RESUMED, "r".into(), ts(1)), "absent: nothing to turn");
        set(&mut st, Suspended, REASON_SUSPENDED, "s".into(), ts(2));
        assert!(set_false(&mut st, Suspended, REASON_RESUMED, "r".into(), ts(3)));
        assert!(!set_false(&mut st, Suspended, REASON_RESUMED, "r".into(), ts(4)), "already False");
        let c = st.condition(Suspended).unwrap();
        assert_eq!(
            (c.status, c.reason.as_deref(), c.last_transition_time.clone()),
            (ConditionStatus::False, Some(REASON_RESUMED), Some(Time(ts(3))))
        );
        assert!(set(&mut st, Suspended, REASON_SUSPENDED, "s".into(), ts(5)), "suspended again");
        assert_eq!(types(&st), [(Suspended, "True")]);
    }

    #[test]
    fn create_retrying_supersedes_a_refusal_and_only_it_is_cleared() {
        use ConditionType::*;
        let reasons = |st: &TFJobStatus| -> Vec<(ConditionType, String, String)> {
            st.conditions
                .iter()
                .map(|c| {
                    (c.type_, c.reason.clone().unwrap_or_default(), c.message.clone().unwrap_or_default())
                })
                .collect()
        };
        let rf = |reason: &str, msg: &str| (ReplicaFailure, reason.to_string(), msg.to_string());
        let created = (Created, REASON_CREATED.to_string(), "c".to_string());
        let mut base = TFJobStatus::default();
        set(&mut base, Created, REASON_CREATED, "c".into(), ts(1));
        let mut refused = base.clone();
        set(&mut refused, ReplicaFailure, REASON_FAILED_CREATE, "quota".into(), ts(2));
        // (case, status before, what it becomes with "webhook down", and without it)
        type Case = (&'static str, TFJobStatus, Vec<(ConditionType, String, String)>, usize);
        let cases: Vec<Case> = vec![
            (
                "none yet: added",
                base.clone(),
                vec![created.clone(), rf(REASON_CREATE_RETRYING, "webhook down")],
                1,
            ),
            (
                "a refusal: superseded",
                refused.clone(),
                vec![created.clone(), rf(REASON_CREATE_RETRYING, "webhook down")],
                1,
            ),
        ];
        for (name, before, want, conditions_after_clear) in cases {
            let st = with_create_retrying(&before, "webhook down", ts(3));
            assert_eq!(reasons(&st), want, "{name}");
            assert_eq!(st.last_reconcile_time, Some(Time(ts(3))), "{name}");
            assert_eq!(
                with_create_retrying(&st, "webhook down", ts(4)),
                st,
                "{name}: the same again is no change"
            );
            let cleared = without_create_retrying(&st, ts(5));
            assert_eq!(cleared.conditions.len(), conditions_after_clear, "{name}");
            assert_eq!(cleared.last_reconcile_time, Some(Time(ts(5))), "{name}");
        }
        let kept = without_create_retrying(&refused, ts(5));
        assert_eq!(kept, refused, "a refusal is not cleared here");
    }

    #[test]
    fn new_message_keeps_transition_time() {
        let mut st = TFJobStatus::default();
        set(&mut st, ConditionType::Restarting, REASON_RESTARTING, "one".into(), ts(1));
        assert!(set(&mut st, ConditionType::Restarting, REASON_RESTARTING, "two".into(), ts(9)));
        let c = &st.conditions[0];
        assert_eq!(
            (c.message.as_deref(), c.last_transition_time.clone(), c.last_update_time.clone()),
            (Some("two"), Some(Time(ts(1))), Some(Time(ts(9))))
        );
    }
}
