//! The controller end to end: pods run and finish through kwok, the operator reacts.
//!
//! One scenario per test, so that the first failure does not hide the others; the timing tests
//! run alone.

mod failures;
mod fairness;
mod lifecycle;
mod policy;
mod timing;
mod undecodable;

use std::time::Duration;

use anyhow::{Result, ensure};
use tfjob_operator::api::{ConditionType, ReplicaType};

use crate::support::*;
use crate::{Ctx, Test};

pub fn tests() -> Vec<Test> {
    let mut all = lifecycle::tests();
    all.extend(failures::tests());
    all.extend(fairness::tests());
    all.extend(policy::tests());
    all.extend(timing::tests());
    all.extend(undecodable::tests());
    all
}

fn succeeded_workers(j: &tfjob_operator::api::TFJob) -> i32 {
    j.status.as_ref().and_then(|s| s.replica_statuses.get(&ReplicaType::Worker)).map_or(0, |r| r.succeeded)
}

/// Waits until one worker of `name` has succeeded, then checks the job does not succeed for 2 s.
async fn one_worker_done_job_still_running(ctx: &Ctx, name: &str) -> Result<()> {
    wait_job(ctx, name, WAIT, "a worker to succeed", |j| succeeded_workers(j) == 1).await?;
    assert_stays(Duration::from_secs(2), &format!("{name} not yet Succeeded"), || async {
        let j = jobs(ctx).get(name).await?;
        ensure!(!has_condition(&j, ConditionType::Succeeded), "{name} succeeded too early: {:?}", j.status);
        Ok(())
    })
    .await
}
