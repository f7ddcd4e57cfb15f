//! Test-only fault points, compiled in only with the cargo feature `fault-points` (the e2e
//! suite's build; the release binary has none): when the environment variable
//! `TFJOB_FAULT_POINT` names a point and a job (`after-creates:<job>`), the reconcile that
//! reaches it logs `fault point <point> reached for <job>` and stops there for good, so a test
//! can kill the process exactly in that window.

/// Stops here if the environment names this point for this job.
#[cfg(feature = "fault-points")]
pub fn reached(point: &str, job: &str) {
    let armed = std::env::var("TFJOB_FAULT_POINT").ok();
    if armed.as_deref() == Some(format!("{point}:{job}").as_str()) {
        tracing::warn!(point, job, "fault point {point} reached for {job}: stopping here");
        // The other tasks move off this worker; this reconcile never goes on.
        tokio::task::block_in_place(|| {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        })
    }
}

/// Without the feature: nothing.
#[cfg(not(feature = "fault-points"))]
#[inline(always)]
pub fn reached(_point: &str, _job: &str) {}
