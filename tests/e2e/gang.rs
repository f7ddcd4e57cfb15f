//! Gang scheduling with Kubernetes' own PodGroup (`--gang-scheduling=native`), proven with
//! the plane's real kube-scheduler (its `GangScheduling` plugin, alpha in 1.36). Each test
//! that counts places has its own kwok node, labelled and tainted with the test's namespace
//! so that no other test's pod lands there, with 64 CPUs: pods of 10 CPUs fit 6 at once.
//!
//! The deadlock the feature exists for is made deterministic: the two jobs' pods are created
//! with a scheduling gate, which the test removes one pod at a time, alternating between the
//! jobs. Without gang scheduling the first six pods (three of each job) are bound and the
//! other two wait forever; with it, one job's four pods are bound together, then the other's.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tfjob_operator::api::ConditionType;
use tfjob_operator::gang::PodGroup;
use tfjob_testsupport::nodes::node_ready;
use tfjob_testsupport::{ControlPlane, PlaneOptions, kwok_node};

use crate::support::*;
use crate::{Ctx, Test, test};

pub fn tests() -> Vec<Test> {
    vec![
        test!(gang_two_jobs_on_six_places_run_one_after_the_other),
        test!(gang_none_two_jobs_on_six_places_deadlock),
        test!(gang_min_available_places_part_of_the_job),
        test!(gang_pod_group_follows_suspend_finish_and_deletion),
        test!(gang_resume_waits_for_the_jobs_terminating_pod_group),
        test!(gang_pod_group_that_cannot_be_created_stops_the_pods),
        test!(gang_binding_time_of_4_and_64_pods).serial(),
        local(test!(gang_native_exits_at_start_without_the_api)),
        test!(gang_under_deploy_rbac),
        test!(gang_scheduling_policy_rules_on_the_api_server),
        test!(gang_a_job_started_without_it_is_left_so_until_it_has_no_pods),
        test!(gang_priority_class_reaches_the_pods),
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

/// What a pod watch showed, in order: when, and each pod's node and phase then.
#[derive(Clone, Default)]
struct Timeline {
    events: Vec<(Instant, String, Option<String>, String)>,
}

/// Records every change of the namespace's pods until dropped.
struct PodWatch {
    timeline: Arc<Mutex<Timeline>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodWatch {
    fn start(ctx: &Ctx) -> PodWatch {
        let timeline: Arc<Mutex<Timeline>> = Arc::default();
        let api = pods(ctx);
        let t = timeline.clone();
        let task = tokio::spawn(async move {
            let mut stream =
                std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff().applied_objects());
            while let Some(ev) = stream.next().await {
                let Ok(pod) = ev else { continue };
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone()).unwrap_or_default();
                let name = pod.metadata.name.unwrap_or_default();
                t.lock().unwrap().events.push((Instant::now(), name, node, phase));
            }
        });
        PodWatch { timeline, task }
    }

    fn timeline(&self) -> Timeline {
        self.timeline.lock().unwrap().clone()
    }
}

impl Drop for PodWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Timeline {
    /// Bound pods per job (name prefix before `-worker-`) after each event.
    fn bound_counts(&self) -> Vec<(Instant, BTreeMap<String, usize>)> {
        let mut state: BTreeMap<String, bool> = BTreeMap::new();
        let mut out = Vec::new();
        for (at, name, node, _) in &self.events {
            state.insert(name.clone(), node.is_some());
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for (pod, bound) in &state {
                let job = pod.split("-worker-").next().unwrap_or_default().to_string();
                *counts.entry(job).or_default() += usize::from(*bound);
            }
            out.push((*at, counts));
        }
        out
    }

    /// The gang property for jobs of `size` pods: no job's pods are partly bound (neither
    /// none nor all) for longer than [`PARTIAL_MAX`], up to `until`. Returns the longest
    /// partial binding seen (the binding of a gang's pods takes that long).
    fn all_or_nothing(&self, size: usize, until: Instant) -> Result<Duration> {
        let mut partial_since: BTreeMap<String, Instant> = BTreeMap::new();
        let mut longest = Duration::ZERO;
        let mut check = |at: Instant, counts: &BTreeMap<String, usize>| -> Result<()> {
            for (job, &n) in counts {
                if n == 0 || n == size {
                    partial_since.remove(job);
                    continue;
                }
                let since = *partial_since.entry(job.clone()).or_insert(at);
                longest = longest.max(at.duration_since(since));
                if at.duration_since(since) > PARTIAL_MAX {
                    bail!(
                        "job {job} had {n} of its {size} pods bound for {:.1}s: {counts:?}",
                        at.duration_since(since).as_secs_f64()
                    );
                }
            }
            Ok(())
        };
        let counts = self.bound_counts();
        for (at, c) in &counts {
            check(*at, c)?;
        }
        if let Some((_, last)) = counts.last() {
            check(until, last)?;
        }
        Ok(longest)
    }

    /// When the first of the job's pods was seen bound, and when the first one succeeded.
    fn first(&self, job: &str, what: impl Fn(&Option<String>, &str) -> bool) -> Option<Instant> {
        let prefix = format!("{job}-worker-");
        self.events
            .iter()
            .find(|(_, n, node, phase)| n.starts_with(&prefix) && what(node, phase))
            .map(|e| e.0)
    }
}

/// Removes the scheduling gate of the two jobs' pods one at a time, alternating between them.
/// Each pod's release waits until it is bound, for at most 2 s (a pod that can be bound
/// alone is bound before the next is released, however slow the scheduler; a gang's member
/// is not), so the scheduler sees the pods in this order.
async fn ungate_alternating(ctx: &Ctx, jobs: [&str; 2], workers: i32) -> Result<()> {
    let remove = Patch::Merge(json!({"spec": {"schedulingGates": null}}));
    for i in 0..workers {
        for job in jobs {
            let name = format!("{job}-worker-{i}");
            pods(ctx).patch(&name, &PatchParams::default(), &remove).await?;
            let bound = |p: &Pod| p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
            let _ = wait_for(&pods(ctx), &name, Duration::from_secs(2), "bound", bound).await;
        }
    }
    Ok(())
}

/// Creates jobs `a` and `b` (4 gated workers of 10 CPUs on the test's 6-place node, each
/// meeting `fate`) and waits until all 8 pods exist; returns the pod watch.
async fn two_gated_jobs(ctx: &Ctx, fate: Value) -> Result<PodWatch> {
    let watch = PodWatch::start(ctx);
    for name in ["a", "b"] {
        create(ctx, placed(ctx, name, 4, "10", fate.clone(), json!({}), true)).await?;
    }
    let want: Vec<String> =
        ["a", "b"].iter().flat_map(|j| (0..4).map(move |i| format!("{j}-worker-{i}"))).collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    wait_pods(ctx, &want, WAIT).await?;
    Ok(watch)
}

async fn gang_two_jobs_on_six_places_run_one_after_the_other(ctx: Ctx) -> Result<()> {
    let node = own_node(&ctx).await?;
    let r = two_jobs_native(&ctx).await;
    delete_node(&ctx, &node).await;
    r
}

async fn two_jobs_native(ctx: &Ctx) -> Result<()> {
    let op = Operator::start(ctx, &[NATIVE])?;
    let watch = two_gated_jobs(ctx, succeed("5s")).await.with_context(|| op.log_tail())?;
    // One PodGroup per job, owned by it, a gang of all its pods; every pod names it.
    for name in ["a", "b"] {
        let g = wait_for(&pod_groups(ctx), name, WAIT, "the job's PodGroup", |_| true).await?;
        ensure!(g.min_count() == Some(4), "{g:?}");
        let owner = g.metadata.owner_references.clone().unwrap_or_default();
        let uid = jobs(ctx).get(name).await?.metadata.uid;
        ensure!(
            owner.len() == 1 && owner[0].controller == Some(true) && Some(&owner[0].uid) == uid.as_ref(),
            "{owner:?}"
        );
    }
    for p in pods(ctx).list(&ListParams::default()).await?.items {
        let group = p.spec.and_then(|s| s.scheduling_group).and_then(|g| g.pod_group_name);
        let job = p.metadata.name.unwrap_or_default().split("-worker-").next().map(String::from);
        ensure!(group == job, "pod of {job:?} names PodGroup {group:?}");
    }
    ungate_alternating(ctx, ["a", "b"], 4).await?;
    let (ta, tb) = (Duration::from_secs(120), Duration::from_secs(120));
    wait_job(ctx, "a", ta, "a Succeeded", |j| has_condition(j, ConditionType::Succeeded))
        .await
        .with_context(|| op.log_tail())?;
    wait_job(ctx, "b", tb, "b Succeeded", |j| has_condition(j, ConditionType::Succeeded))
        .await
        .with_context(|| op.log_tail())?;
    let timeline = watch.timeline();
    let partial = timeline.all_or_nothing(4, Instant::now())?;
    println!("gang of 4: the longest partial binding seen took {:.0} ms", partial.as_secs_f64() * 1000.0);
    // One ran, then the other: the second was bound only after the first had pods succeed
    // (before that, only 2 places were free).
    let bound = |j| timeline.first(j, |node, _| node.is_some()).context("never bound");
    let done = |j| timeline.first(j, |_, phase| phase == "Succeeded").context("never succeeded");
    let (first, second) = if bound("a")? <= bound("b")? { ("a", "b") } else { ("b", "a") };
    ensure!(bound(second)? >= done(first)?, "{second} was bound before any pod of {first} succeeded");
    // Finished: the PodGroups are gone, the pods (cleanPodPolicy None) stay.
    for name in ["a", "b"] {
        wait_gone(&pod_groups(ctx), name, WAIT).await?;
    }
    ensure!(live_pods(ctx).await?.len() == 8);
    Ok(())
}

async fn gang_none_two_jobs_on_six_places_deadlock(ctx: Ctx) -> Result<()> {
    let node = own_node(&ctx).await?;
    let r = two_jobs_none(&ctx).await;
    delete_node(&ctx, &node).await;
    r
}

async fn two_jobs_none(ctx: &Ctx) -> Result<()> {
    let _op = Operator::start(ctx, &["--gang-scheduling=none"])?;
    // A TensorFlow worker does not finish before all its peers run; kwok's pods cannot wait
    // for peers, so here they run until deleted (with gang scheduling they succeed after 5 s,
    // which only lets that test end).
    let watch = two_gated_jobs(ctx, json!({})).await?;
    ensure!(
        pod_groups(ctx).list(&ListParams::default()).await?.items.is_empty(),
        "a PodGroup without gang scheduling"
    );
    ungate_alternating(ctx, ["a", "b"], 4).await?;
    let bound = |p: &Pod| p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    let split = || async {
        let all = pods(ctx).list(&ListParams::default()).await?.items;
        let count = |j: &str| {
            all.iter().filter(|p| p.metadata.name.as_deref().unwrap_or("").starts_with(j) && bound(p)).count()
        };
        Ok::<_, anyhow::Error>((count("a-"), count("b-")))
    };
    eventually(WAIT, "3 pods of each job bound", || async {
        let s = split().await?;
        ensure!(s == (3, 3), "bound {s:?}");
        Ok(())
    })
    .await?;
    // The deadlock: each job holds half the node and waits for the other forever.
    assert_stays(Duration::from_secs(10), "3 + 3 bound, 2 Pending", || async {
        let s = split().await?;
        ensure!(s == (3, 3), "bound {s:?}");
        for j in ["a", "b"] {
            ensure!(!has_condition(&jobs(ctx).get(j).await?, ConditionType::Succeeded), "{j} succeeded");
        }
        Ok(())
    })
    .await?;
    // The check that passes with gang scheduling fails here: this run can fail it.
    let err = watch.timeline().all_or_nothing(4, Instant::now()).err().context("no partial gang seen")?;
    ensure!(err.to_string().contains("of its 4 pods bound for"), "{err}");
    Ok(())
}

async fn gang_min_available_places_part_of_the_job(ctx: Ctx) -> Result<()> {
    let node = own_node(&ctx).await?;
    let r = min_available(&ctx).await;
    delete_node(&ctx, &node).await;
    r
}

/// Pods of 30 CPUs: 2 fit on the node. A gang of all 4 gets none; `minAvailable: 2` gets 2.
async fn min_available(ctx: &Ctx) -> Result<()> {
    let op = Operator::start(ctx, &[NATIVE])?;
    let bound_of = |job: &'static str| async move {
        let all = pods(ctx).list(&ListParams::default()).await?.items;
        Ok::<_, anyhow::Error>(
            all.iter()
                .filter(|p| p.metadata.name.as_deref().unwrap_or("").starts_with(&format!("{job}-")))
                .filter(|p| p.spec.as_ref().is_some_and(|s| s.node_name.is_some()))
                .count(),
        )
    };
    create(ctx, placed(ctx, "all", 4, "30", json!({}), json!({}), false)).await?;
    wait_pods(ctx, &["all-worker-0", "all-worker-1", "all-worker-2", "all-worker-3"], WAIT)
        .await
        .with_context(|| op.log_tail())?;
    assert_stays(Duration::from_secs(8), "a gang of 4 where 2 fit: none bound", || async {
        let n = bound_of("all").await?;
        ensure!(n == 0, "{n} bound");
        Ok(())
    })
    .await?;
    jobs(ctx).delete("all", &DeleteParams::foreground()).await?;
    wait_job_gone(ctx, "all", WAIT).await?;
    eventually(WAIT, "the first job's pods gone", || async {
        ensure!(live_pods(ctx).await?.is_empty());
        Ok(())
    })
    .await?;

    create(
        ctx,
        placed(ctx, "part", 4, "30", json!({}), json!({"schedulingPolicy": {"minAvailable": 2}}), false),
    )
    .await?;
    let g = wait_for(&pod_groups(ctx), "part", WAIT, "the PodGroup", |_| true).await?;
    ensure!(g.min_count() == Some(2), "{g:?}");
    eventually(WAIT, "2 of 4 bound", || async {
        let n = bound_of("part").await?;
        ensure!(n == 2, "{n} bound");
        Ok(())
    })
    .await?;
    assert_stays(Duration::from_secs(5), "2 bound, 2 Pending", || async {
        let n = bound_of("part").await?;
        ensure!(n == 2, "{n} bound");
        Ok(())
    })
    .await
}

async fn gang_pod_group_follows_suspend_finish_and_deletion(ctx: Ctx) -> Result<()> {
    let op = Operator::start(&ctx, &[NATIVE])?;
    let groups = pod_groups(&ctx);
    // Running, then suspended: the PodGroup goes with the pods.
    create(&ctx, job("s", &[replica("Worker", 2)], json!({}))).await?;
    let g = wait_for(&groups, "s", WAIT, "the PodGroup", |_| true).await.with_context(|| op.log_tail())?;
    ensure!(g.min_count() == Some(2), "{g:?}");
    wait_job(&ctx, "s", WAIT, "Running", |j| has_condition(j, ConditionType::Running)).await?;
    merge_patch_job(&ctx, "s", json!({"spec": {"runPolicy": {"suspend": true}}})).await?;
    wait_gone(&groups, "s", WAIT).await.context("suspended: the PodGroup stays")?;
    // Resumed: a new one, and the pods run again.
    merge_patch_job(&ctx, "s", json!({"spec": {"runPolicy": {"suspend": false}}})).await?;
    let again = wait_for(&groups, "s", WAIT, "the PodGroup again", |_| true).await?;
    ensure!(again.metadata.uid != g.metadata.uid, "the same PodGroup");
    wait_job(&ctx, "s", WAIT, "running again", |j| {
        has_condition(j, ConditionType::Running) && !has_condition(j, ConditionType::Suspended)
    })
    .await?;
    // The TFJob's deletion: the garbage collector removes the PodGroup (owner reference).
    jobs(&ctx).delete("s", &DeleteParams::background()).await?;
    wait_gone(&groups, "s", Duration::from_secs(90)).await.context("deleted TFJob: the PodGroup stays")?;

    // Finished: the PodGroup goes, the pods stay (cleanPodPolicy None).
    let extra = json!({"runPolicy": {"cleanPodPolicy": "None"}});
    create(&ctx, job("f", &[replica("Worker", 1).fate(succeed("2s"))], extra)).await?;
    wait_for(&groups, "f", WAIT, "the PodGroup", |_| true).await?;
    wait_job(&ctx, "f", WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded)).await?;
    wait_gone(&groups, "f", WAIT).await.context("finished: the PodGroup stays")?;
    ensure!(live_pods(&ctx).await?.contains(&"f-worker-0".to_string()), "the pod was deleted");
    for reason in ["SuccessfulCreatePodGroup", "SuccessfulDeletePodGroup"] {
        eventually(WAIT, reason, || async {
            ensure!(count_events(&ctx, "f", reason).await? == 1, "{:?}", events(&ctx, "f").await?);
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// A finalizer of the test's, holding the job's old PodGroup terminating.
const HOLD: &str = "tfjob.test/hold";

/// Adds (`hold`) or removes [`HOLD`] from the PodGroup's finalizers, as they are now.
async fn hold(groups: &Api<PodGroup>, name: &str, hold: bool) -> Result<()> {
    let mut finalizers = groups.get(name).await?.metadata.finalizers.unwrap_or_default();
    finalizers.retain(|f| f != HOLD);
    if hold {
        finalizers.push(HOLD.into());
    }
    let patch = json!({"metadata": {"finalizers": finalizers}});
    groups.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await?;
    Ok(())
}

async fn gang_resume_waits_for_the_jobs_terminating_pod_group(ctx: Ctx) -> Result<()> {
    use crate::suspend::{Recorder, rv_of};
    let op = Operator::start(&ctx, &[NATIVE])?;
    let groups = pod_groups(&ctx);
    // With a grace period, a deleted pod stays terminating for about a second (kwok's stage).
    let mut j = job("r", &[replica("Worker", 2)], json!({}));
    j["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(30);
    create(&ctx, j).await?;
    let old = wait_for(&groups, "r", WAIT, "the PodGroup", |_| true).await.with_context(|| op.log_tail())?;
    wait_job(&ctx, "r", WAIT, "Running", |j| has_condition(j, ConditionType::Running)).await?;
    // kube-controller-manager keeps a PodGroup terminating while pods of it remain (its
    // podgroup-protection finalizer); a finalizer of the test's keeps it so for as long as the
    // test needs.
    hold(&groups, "r", true).await?;
    let (pod_watch, group_watch) =
        (Recorder::start(pods(&ctx)).await?, Recorder::start(groups.clone()).await?);
    merge_patch_job(&ctx, "r", json!({"spec": {"runPolicy": {"suspend": true}}})).await?;
    watch_until(&groups, "r", WAIT, "the PodGroup terminating", |g| g.metadata.deletion_timestamp.is_some())
        .await
        .with_context(|| op.log_tail())?;
    // Resumed at once, while the old pods still end (kwok ends a deleted pod after a second).
    let resumed =
        rv_of(&merge_patch_job(&ctx, "r", json!({"spec": {"runPolicy": {"suspend": false}}})).await?);
    assert_stays(Duration::from_secs(5), "nothing created while the job's PodGroup terminates", || async {
        let g = groups.get("r").await?;
        ensure!(g.metadata.uid == old.metadata.uid && g.metadata.deletion_timestamp.is_some(), "{g:?}");
        let pods = live_pods(&ctx).await?;
        ensure!(pods.is_empty(), "pods {pods:?} created to join the PodGroup being deleted");
        Ok(())
    })
    .await
    .with_context(|| op.log_tail())?;
    let gone_after: Vec<_> = pod_watch
        .events()?
        .into_iter()
        .filter(|e| e.kind == "DELETED" && e.rv() > resumed)
        .filter_map(|e| e.obj.metadata.name)
        .collect();
    ensure!(!gone_after.is_empty(), "every old pod was gone before the resume: not the case under test");

    // The old PodGroup goes: a new one, then the pods, which run.
    hold(&groups, "r", false).await?;
    let new = wait_for(&groups, "r", WAIT, "a new PodGroup", |g| g.metadata.uid != old.metadata.uid).await?;
    wait_job(&ctx, "r", WAIT, "running again", |j| {
        has_condition(j, ConditionType::Running) && !has_condition(j, ConditionType::Suspended)
    })
    .await?;
    let groups_seen = group_watch.events()?;
    let created = groups_seen.iter().find(|e| e.kind == "ADDED" && e.obj.metadata.uid == new.metadata.uid);
    let created = created.context("the new PodGroup's creation was not seen")?.rv();
    let old_gone = groups_seen.iter().find(|e| e.kind == "DELETED").context("the old PodGroup's end")?.rv();
    let new_pods: Vec<_> =
        pod_watch.events()?.into_iter().filter(|e| e.kind == "ADDED" && e.rv() > resumed).collect();
    ensure!(
        new_pods.len() == 2,
        "pods of the resumed run: {:?}",
        new_pods.iter().map(|e| e.rv()).collect::<Vec<_>>()
    );
    for p in &new_pods {
        ensure!(
            p.rv() > created && created > old_gone,
            "pod {:?} (rv {}) before the new PodGroup (rv {created}, old gone at {old_gone})",
            p.obj.metadata.name,
            p.rv()
        );
    }
    let n = count_events(&ctx, "r", "SuccessfulCreatePodGroup").await?;
    ensure!(n == 2, "{n} SuccessfulCreatePodGroup events: {:?}", events(&ctx, "r").await?);
    Ok(())
}

async fn gang_pod_group_that_cannot_be_created_stops_the_pods(ctx: Ctx) -> Result<()> {
    // Someone else's PodGroup holds the job's name.
    let foreign = PodGroup {
        metadata: kube::api::ObjectMeta { name: Some("x".into()), ..Default::default() },
        spec: tfjob_operator::gang::PodGroupSpec {
            scheduling_policy: tfjob_operator::gang::SchedulingPolicy {
                gang: Some(tfjob_operator::gang::GangPolicy { min_count: 1 }),
                basic: None,
            },
            priority_class_name: None,
        },
    };
    pod_groups(&ctx).create(&PostParams::default(), &foreign).await?;
    let op = Operator::start(&ctx, &[NATIVE])?;
    create(&ctx, job("x", &[replica("Worker", 2)], json!({}))).await?;
    let j = wait_job(&ctx, "x", WAIT, "ReplicaFailure", |j| has_condition(j, ConditionType::ReplicaFailure))
        .await
        .with_context(|| op.log_tail())?;
    let msg = j
        .status
        .as_ref()
        .and_then(|s| s.condition(ConditionType::ReplicaFailure))
        .and_then(|c| c.message.clone());
    ensure!(
        msg.as_deref().is_some_and(|m| m.contains("PodGroup x already exists and is not controlled")),
        "{msg:?}"
    );
    // Events are published by their own task, so the condition may be seen first.
    eventually(Duration::from_secs(10), "a FailedCreatePodGroup event", || async {
        ensure!(
            count_events(&ctx, "x", "FailedCreatePodGroup").await? >= 1,
            "{:?}",
            events(&ctx, "x").await?
        );
        Ok(())
    })
    .await?;
    assert_stays(Duration::from_secs(5), "no pods without the gang", || async {
        let p = live_pods(&ctx).await?;
        ensure!(p.is_empty(), "pods {p:?}");
        Ok(())
    })
    .await?;
    // Gone: the job's own PodGroup, then its pods.
    pod_groups(&ctx).delete("x", &DeleteParams::default()).await?;
    let g = wait_for(&pod_groups(&ctx), "x", Duration::from_secs(90), "the job's own PodGroup", |g| {
        g.metadata.owner_references.is_some()
    })
    .await?;
    ensure!(g.min_count() == Some(2), "{g:?}");
    wait_job(&ctx, "x", Duration::from_secs(90), "Running", |j| has_condition(j, ConditionType::Running))
        .await?;
    Ok(())
}

async fn gang_binding_time_of_4_and_64_pods(ctx: Ctx) -> Result<()> {
    let node = own_node(&ctx).await?;
    let r = binding_times(&ctx).await;
    delete_node(&ctx, &node).await;
    r
}

/// From the watch: the last pod's creation to all its pods bound, for gangs of 4 and 64
/// (1-CPU pods: 64 fill the node).
async fn binding_times(ctx: &Ctx) -> Result<()> {
    let op = Operator::start(ctx, &[NATIVE])?;
    for (name, n) in [("g4", 4usize), ("g64", 64)] {
        let watch = PodWatch::start(ctx);
        create(ctx, placed(ctx, name, n as i32, "1", json!({}), json!({}), false)).await?;
        let timeline = eventually_timeline(&watch, name, n).await.with_context(|| op.log_tail())?;
        let prefix = format!("{name}-worker-");
        let mine = || timeline.events.iter().filter(|e| e.1.starts_with(&prefix));
        let mut first_seen: BTreeMap<&str, Instant> = BTreeMap::new();
        for e in mine() {
            first_seen.entry(e.1.as_str()).or_insert(e.0);
        }
        let last_created = first_seen.values().max().copied().context("no pods")?;
        let mut bound_at: BTreeMap<&str, Instant> = BTreeMap::new();
        for e in mine().filter(|e| e.2.is_some()) {
            bound_at.entry(e.1.as_str()).or_insert(e.0);
        }
        let all_bound = bound_at.values().max().copied().context("none bound")?;
        let first_bound = bound_at.values().min().copied().context("none bound")?;
        ensure!(first_bound >= last_created, "{name}: a pod was bound before the last was created");
        let took = all_bound.saturating_duration_since(last_created);
        println!(
            "gang binding time: {n} pods: last pod created -> all bound {:.0} ms (first to last binding {:.0} ms)",
            took.as_secs_f64() * 1000.0,
            all_bound.duration_since(first_bound).as_secs_f64() * 1000.0
        );
        ensure!(took < Duration::from_secs(60), "{name}: {took:?}");
        jobs(ctx).delete(name, &DeleteParams::foreground()).await?;
        wait_job_gone(ctx, name, Duration::from_secs(120)).await?;
        eventually(Duration::from_secs(120), "the pods gone", || async {
            ensure!(live_pods(ctx).await?.is_empty());
            Ok(())
        })
        .await?;
    }
    Ok(())
}

/// Waits until the watch has seen all `n` pods of `job` bound; returns the timeline.
async fn eventually_timeline(watch: &PodWatch, job: &str, n: usize) -> Result<Timeline> {
    let prefix = format!("{job}-worker-");
    eventually(Duration::from_secs(120), &format!("{job}: {n} pods bound"), || async {
        let t = watch.timeline();
        let mut bound: BTreeMap<&str, bool> = BTreeMap::new();
        for e in t.events.iter().filter(|e| e.1.starts_with(&prefix)) {
            bound.insert(e.1.as_str(), e.2.is_some());
        }
        let count = bound.values().filter(|b| **b).count();
        ensure!(count == n, "{count} of {n} bound");
        Ok(t)
    })
    .await
}

/// A plane without the gates and the API: `--gang-scheduling=native` exits at start, saying
/// how to enable them.
async fn gang_native_exits_at_start_without_the_api(ctx: Ctx) -> Result<()> {
    let plane = ctx.cluster.plane.as_ref().context("needs the local plane")?;
    let opts = PlaneOptions {
        bin_dir: plane.bin_dir.clone(),
        nodes: 0,
        gang_scheduling: false,
        ..Default::default()
    };
    let bare = ControlPlane::start(&opts).await?;
    let mut op = Operator::start_as(&ctx, "tfjob-operator-no-gang", &bare.pki.kubeconfig, &[NATIVE])?;
    let status = tokio::task::block_in_place(|| op.proc.wait_exit(Duration::from_secs(60)))
        .context("still running after 60s without the PodGroup API")?;
    ensure!(!status.success(), "exited with {status}");
    let log = op.log_text();
    ensure!(
        log.contains("does not serve scheduling.k8s.io/v1alpha2 PodGroups")
            && log.contains("--runtime-config=scheduling.k8s.io/v1alpha2=true"),
        "{log}"
    );
    // The same flag on the shared plane, which serves the API: it runs.
    let op = Operator::start(&ctx, &[NATIVE])?;
    eventually(WAIT, "the operator ready", || async {
        ensure!(op.http_status("/readyz").await == Some(200), "not ready");
        Ok(())
    })
    .await
}

/// Under exactly `deploy/`'s RBAC (a TokenRequest token of its ServiceAccount): a job's
/// PodGroup is listed, watched, created and deleted, and a foreign one is read after the 409,
/// with no request refused.
async fn gang_under_deploy_rbac(ctx: Ctx) -> Result<()> {
    let (_, kubeconfig) = crate::install::as_deploy_service_account(&ctx).await?;
    let foreign = PodGroup {
        metadata: kube::api::ObjectMeta { name: Some("taken".into()), ..Default::default() },
        spec: tfjob_operator::gang::PodGroupSpec {
            scheduling_policy: tfjob_operator::gang::SchedulingPolicy {
                gang: Some(tfjob_operator::gang::GangPolicy { min_count: 1 }),
                basic: None,
            },
            priority_class_name: None,
        },
    };
    pod_groups(&ctx).create(&PostParams::default(), &foreign).await?;
    let op = Operator::start_as(&ctx, "tfjob-operator-sa", &kubeconfig, &[NATIVE])?;
    let extra = json!({"runPolicy": {"cleanPodPolicy": "None"}});
    create(&ctx, job("ok", &[replica("Worker", 2).fate(succeed("2s"))], extra)).await?;
    create(&ctx, job("taken", &[replica("Worker", 1)], json!({}))).await?;
    wait_for(&pod_groups(&ctx), "ok", WAIT, "the PodGroup", |g| g.metadata.owner_references.is_some())
        .await
        .with_context(|| op.log_tail())?;
    wait_job(&ctx, "ok", WAIT, "Succeeded", |j| has_condition(j, ConditionType::Succeeded)).await?;
    wait_gone(&pod_groups(&ctx), "ok", WAIT).await?;
    wait_job(&ctx, "taken", WAIT, "ReplicaFailure", |j| has_condition(j, ConditionType::ReplicaFailure))
        .await?;
    let m = op.metrics().await?;
    ensure!(metric_sum(&m, "tfjob_operator_api_requests_total", &["code=\"403\""]) == 0.0, "403s:\n{m}");
    Ok(())
}

/// The API server enforces the CRD's rules on `schedulingPolicy`: what native gang
/// scheduling reads is accepted, other backends' fields and a gang larger than the job are
/// refused with their message, and the policy cannot be changed.
async fn gang_scheduling_policy_rules_on_the_api_server(ctx: Ctx) -> Result<()> {
    let with_policy = |name: &str, policy: Value| {
        job(
            name,
            &[replica("PS", 1), replica("Worker", 3)],
            json!({"runPolicy": {"schedulingPolicy": policy}}),
        )
    };
    let refused = |e: anyhow::Error| match e.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(s)) if s.code == 422 => s.message.clone(),
        _ => format!("not refused with 422: {e:#}"),
    };
    for (policy, want) in [
        (json!({"queue": "default"}), "schedulingPolicy.queue is read only by Volcano's gang scheduler"),
        (
            json!({"minResources": {"cpu": "1"}}),
            "schedulingPolicy.minResources is read only by Volcano's and scheduler-plugins'",
        ),
        (
            json!({"scheduleTimeoutSeconds": 30}),
            "schedulingPolicy.scheduleTimeoutSeconds is read only by scheduler-plugins'",
        ),
        (json!({"minAvailable": 5}), "schedulingPolicy.minAvailable cannot be more than the job's replicas"),
        (json!({"minAvailable": 0}), "should be greater than or equal to 1"),
    ] {
        let msg = match create(&ctx, with_policy("refused", policy.clone())).await {
            Ok(_) => bail!("{policy} was accepted"),
            Err(e) => refused(e),
        };
        ensure!(msg.contains(want), "{policy}: {msg}");
    }
    create(&ctx, with_policy("ok", json!({"minAvailable": 4, "priorityClass": "high"}))).await?;
    let msg = match merge_patch_job(
        &ctx,
        "ok",
        json!({"spec": {"runPolicy": {"schedulingPolicy": {"minAvailable": 2}}}}),
    )
    .await
    {
        Ok(_) => bail!("the scheduling policy was changed"),
        Err(e) => e.chain().map(ToString::to_string).collect::<Vec<_>>().join(": "),
    };
    ensure!(msg.contains("spec.runPolicy.schedulingPolicy cannot be changed"), "{msg}");
    Ok(())
}

/// The operator switched from `none` to `native` while a job runs: the job gets no PodGroup
/// while its pods live, and a pod re-created meanwhile is scheduled alone (in a gang its
/// running peer is not part of, it would wait forever); after a suspension it is a gang.
async fn gang_a_job_started_without_it_is_left_so_until_it_has_no_pods(ctx: Ctx) -> Result<()> {
    let mut op = Operator::start(&ctx, &[])?;
    create(&ctx, job("old", &[replica("Worker", 2)], json!({}))).await?;
    wait_job(&ctx, "old", WAIT, "Running", |j| has_condition(j, ConditionType::Running)).await?;
    op.proc.stop(Duration::from_secs(10));
    let op = Operator::start_as(&ctx, "tfjob-operator-native", &ctx.cluster.kubeconfig, &[NATIVE])?;
    let before = pods(&ctx).get("old-worker-1").await?.metadata.uid;
    pods(&ctx).delete("old-worker-1", &DeleteParams::default()).await?;
    let bound = |p: &Pod| p.metadata.uid != before && p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    let p = wait_for(&pods(&ctx), "old-worker-1", WAIT, "re-created and bound", bound)
        .await
        .with_context(|| op.log_tail())?;
    ensure!(p.spec.and_then(|s| s.scheduling_group).is_none(), "the new pod joined a gang");
    ensure!(pod_groups(&ctx).get_opt("old").await?.is_none(), "a PodGroup for a job started without one");
    merge_patch_job(&ctx, "old", json!({"spec": {"runPolicy": {"suspend": true}}})).await?;
    wait_job(&ctx, "old", WAIT, "Suspended", |j| has_condition(j, ConditionType::Suspended)).await?;
    merge_patch_job(&ctx, "old", json!({"spec": {"runPolicy": {"suspend": false}}})).await?;
    let g = wait_for(&pod_groups(&ctx), "old", WAIT, "the PodGroup after the resume", |_| true).await?;
    ensure!(g.min_count() == Some(2), "{g:?}");
    eventually(WAIT, "both pods in the gang and bound", || async {
        let all = pods(&ctx).list(&ListParams::default()).await?.items;
        let members = all
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.spec.as_ref().is_some_and(|s| {
                    s.node_name.is_some()
                        && s.scheduling_group.as_ref().and_then(|g| g.pod_group_name.as_deref())
                            == Some("old")
                })
            })
            .count();
        ensure!(members == 2, "{members} bound members");
        Ok(())
    })
    .await
}

/// `priorityClass`: the pods whose template names none get it (and its priority); the
/// PodGroup's `priorityClassName` is kept only with kube's `WorkloadAwarePreemption` gate,
/// off on this plane, so the API server drops it.
async fn gang_priority_class_reaches_the_pods(ctx: Ctx) -> Result<()> {
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    let classes: Api<PriorityClass> = Api::all(ctx.cluster.client.clone());
    let class = format!("gang-{}", ctx.ns);
    let pc = PriorityClass {
        metadata: kube::api::ObjectMeta { name: Some(class.clone()), ..Default::default() },
        value: Some(1000),
        ..Default::default()
    };
    classes.create(&PostParams::default(), &pc).await?;
    let r = async {
        let op = Operator::start(&ctx, &[NATIVE])?;
        let mut j = job(
            "p",
            &[replica("Worker", 2)],
            json!({"runPolicy": {"schedulingPolicy": {"priorityClass": class}}}),
        );
        j["spec"]["tfReplicaSpecs"]["Worker"]["template"]["spec"]["priorityClassName"] = Value::Null;
        create(&ctx, j).await?;
        wait_pods(&ctx, &["p-worker-0", "p-worker-1"], WAIT).await.with_context(|| op.log_tail())?;
        for name in ["p-worker-0", "p-worker-1"] {
            let spec = pods(&ctx).get(name).await?.spec.context("no spec")?;
            ensure!(
                spec.priority_class_name.as_deref() == Some(class.as_str()) && spec.priority == Some(1000),
                "{name}: {:?} {:?}",
                spec.priority_class_name,
                spec.priority
            );
        }
        let g = pod_groups(&ctx).get("p").await?;
        ensure!(g.spec.priority_class_name.is_none(), "kept without WorkloadAwarePreemption: {g:?}");
        Ok(())
    }
    .await;
    let _ = classes.delete(&class, &DeleteParams::default()).await;
    r
}
