//! Gang scheduling with Kubernetes' own PodGroup (`--gang-scheduling=native`), proven with
//! the plane's real kube-scheduler (its `GangScheduling` plugin, alpha in 1.36). Each test
//! that counts places has its own kwok node, labelled and tainted with the test's namespace
//! so that no other test's pod lands there, with 64 CPUs: pods of 10 CPUs fit 6 at once.
//!
//! The deadlock the feature exists for is made deterministic: the two jobs' pods are created
//! with a scheduling gate, which the test removes one pod at a time, alternating between the
//! jobs. Without gang scheduling the first six pods (three of each job) are bound and the
//! other two wait forever; with it, one job's four pods are bound together, then the other's.
//!
//! By concern: [`places`] (where gangs land on a node, and how fast), [`lifecycle`] (the
//! PodGroup through suspend, finish, deletion and a name taken), [`api`] (the API server's
//! side: the API missing, RBAC, the CRD's rules, priority); [`timeline`] records the pods.

mod api;
mod lifecycle;
mod places;
mod timeline;

use std::time::Duration;

use anyhow::{Result, ensure};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::{Value, json};
use tfjob_operator::api::PodGroup;
use tfjob_testsupport::kwok_node;
use tfjob_testsupport::nodes::node_ready;

use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        test!(places::gang_two_jobs_on_six_places_run_one_after_the_other),
        test!(places::gang_none_two_jobs_on_six_places_deadlock),
        test!(places::gang_min_available_places_part_of_the_job),
        test!(lifecycle::gang_pod_group_follows_suspend_finish_and_deletion),
        test!(lifecycle::gang_resume_waits_for_the_jobs_terminating_pod_group),
        test!(lifecycle::gang_pod_group_that_cannot_be_created_stops_the_pods),
        test!(places::gang_binding_time_of_4_and_64_pods).serial(),
        local(test!(api::gang_native_exits_at_start_without_the_api)),
        test!(api::gang_under_deploy_rbac),
        test!(api::gang_scheduling_policy_rules_on_the_api_server),
        test!(lifecycle::gang_a_job_started_without_it_is_left_so_until_it_has_no_pods),
        test!(api::gang_priority_class_reaches_the_pods),
    ]
}

/// Needs the local plane (it starts a second one).
fn local(mut t: Test) -> Test {
    t.local_only = Some("starts a second local control plane");
    t
}

const NATIVE: &str = "--gang-scheduling=native";
/// The label and taint key of a test's own node.
const NODE_KEY: &str = "tfjob.test/gang";
const GATE: &str = "tfjob.test/hold";
/// How long a job's pods may be partly bound while the scheduler binds (or kwok finishes)
/// them: bindings of one gang land within milliseconds; this is the slow machine's margin.
const PARTIAL_MAX: Duration = Duration::from_secs(3);

fn pod_groups(ctx: &Ctx) -> Api<PodGroup> {
    Api::namespaced(ctx.cluster.client.clone(), &ctx.ns)
}

/// The test's own kwok node (64 CPUs), which only pods of [`placed`] jobs tolerate.
async fn own_node(ctx: &Ctx) -> Result<String> {
    let name = format!("gang-{}", ctx.ns);
    let node = kwok_node(&name, &[(NODE_KEY, &ctx.ns)], &[(NODE_KEY, &ctx.ns)])?;
    let nodes: Api<Node> = Api::all(ctx.cluster.client.clone());
    nodes.create(&PostParams::default(), &node).await?;
    eventually(WAIT, "the test's node to be Ready", || async {
        ensure!(node_ready(&nodes.get(&name).await?), "not ready");
        Ok(())
    })
    .await?;
    Ok(name)
}

async fn delete_node(ctx: &Ctx, name: &str) {
    let nodes: Api<Node> = Api::all(ctx.cluster.client.clone());
    let _ = nodes.delete(name, &DeleteParams::default()).await;
}

/// Runs `test` with the test's own node ([`own_node`]), and deletes the node after, whatever
/// `test` returns.
async fn on_own_node(ctx: &Ctx, test: impl Future<Output = Result<()>>) -> Result<()> {
    let node = own_node(ctx).await?;
    let r = test.await;
    delete_node(ctx, &node).await;
    r
}

/// Someone else's PodGroup (no owner), a gang of 1, named `name`.
fn foreign_pod_group(name: &str) -> PodGroup {
    PodGroup {
        metadata: kube::api::ObjectMeta { name: Some(name.into()), ..Default::default() },
        spec: tfjob_operator::api::pod_group::PodGroupSpec {
            scheduling_policy: tfjob_operator::api::pod_group::SchedulingPolicy {
                gang: Some(tfjob_operator::api::pod_group::GangPolicy { min_count: 1 }),
                basic: None,
            },
            priority_class_name: None,
        },
    }
}

/// A TFJob of `workers` workers of `cpu` CPUs each, placed on the test's node, pods kept when
/// it finishes (`cleanPodPolicy: None`), gated when `gated`.
fn placed(
    ctx: &Ctx,
    name: &str,
    workers: i32,
    cpu: &str,
    fate: Value,
    run_policy: Value,
    gated: bool,
) -> Value {
    let mut policy = json!({"cleanPodPolicy": "None"});
    if let Value::Object(extra) = run_policy {
        for (k, v) in extra {
            policy[k] = v;
        }
    }
    let mut j = job(name, &[replica("Worker", workers).fate(fate)], json!({"runPolicy": policy}));
    let spec = &mut j["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"];
    spec["nodeSelector"] = json!({NODE_KEY: ctx.ns});
    spec["tolerations"] = json!([{"key": NODE_KEY, "operator": "Exists", "effect": "NoSchedule"}]);
    spec["containers"][0]["resources"] = json!({"requests": {"cpu": cpu}});
    if gated {
        spec["schedulingGates"] = json!([{"name": GATE}]);
    }
    j
}
