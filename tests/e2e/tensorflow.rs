//! Real TensorFlow reads our `TF_CONFIG`: for each layout, the operator creates the pods on
//! the plane and one TensorFlow process per pod runs on that pod's `TF_CONFIG` (addresses
//! mapped onto loopback). TensorFlow's `TFConfigClusterResolver` must name each pod's own type,
//! index and address, and the strategy must train. And `Master` gets one Warning.
//!
//! The layouts run one after another (serial), each a few steps of a two-variable model.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use crate::support::*;
use crate::{Ctx, Test, test};
use run::{self as tf, Run};

#[path = "tensorflow_run.rs"]
mod run;

pub fn tests() -> Vec<Test> {
    vec![
        test!(mwms_chief_and_workers_train_in_step).serial(),
        test!(mwms_workers_only_train_in_step).serial(),
        test!(mwms_with_an_evaluator_trains_and_evaluates).serial(),
        test!(ps_chief_and_workers_train_through_both_ps).serial(),
        test!(ps_with_a_sidecar_evaluator_trains_and_evaluates).serial(),
        test!(ps_with_kubeflow_tf_config_keeps_the_evaluator_in_the_cluster).serial(),
        test!(dynamic_worker_coordinator_trains_through_sparse_workers).serial(),
        test!(master_gets_one_warning_and_still_runs),
    ]
}

const STEPS: u32 = 5;
/// Generous for 2 busy cores: each process imports TensorFlow (~5-15 s) before anything.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);

/// Creates job `name` with these (type, count, tfjob-port) replicas and spec fields, waits
/// for its pods, and returns them as TensorFlow will see them.
async fn job_pods(
    ctx: &Ctx,
    name: &str,
    types: &[(&str, i32, Option<i32>)],
    extra: Value,
) -> Result<Vec<tf::Replica>> {
    let mut j = job(name, &types.iter().map(|(t, n, _)| replica(t, *n)).collect::<Vec<_>>(), json!({}));
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            if k == "annotations" {
                j["metadata"]["annotations"] = v;
            } else {
                j["spec"][k] = v;
            }
        }
    }
    for (t, _, port) in types {
        if let Some(p) = port {
            j["spec"]["tfReplicaSpecs"][t]["template"]["spec"]["containers"][0]["ports"] =
                json!([{"name": "tfjob-port", "containerPort": p}]);
        }
    }
    create(ctx, j).await?;
    let want: usize = types.iter().map(|(_, n, _)| *n as usize).sum();
    let got = std::sync::Mutex::new(Vec::new());
    eventually(Duration::from_secs(60), "every pod with its TF_CONFIG", || async {
        let pods = tf::replicas(ctx, name).await?;
        ensure!(pods.len() == want, "{} of {want} pods", pods.len());
        *got.lock().unwrap() = pods;
        Ok(())
    })
    .await?;
    let got = got.into_inner().unwrap();
    Ok(got)
}

fn losses(results: &[Value]) -> Result<Vec<f64>> {
    let l = results.iter().find_map(|r| r.get("losses")).context("no losses reported")?;
    let l: Vec<f64> = serde_json::from_value(l.clone())?;
    ensure!(l.len() == STEPS as usize, "{} losses, want {STEPS}", l.len());
    ensure!(l.windows(2).all(|w| w[1] < w[0]), "the loss does not fall at every step: {l:?}");
    ensure!(l[STEPS as usize - 1] < l[0] / 2.0, "the loss did not halve: {l:?}");
    Ok(l)
}

fn field(results: &[Value], key: &str) -> Result<Value> {
    results
        .iter()
        .find_map(|r| r.get(key))
        .cloned()
        .with_context(|| format!("no {key} reported: {results:?}"))
}

/// MultiWorkerMirroredStrategy: every trainer (chief, worker) trains STEPS synchronous steps,
/// all agree on every loss, and the strategy counted every trainer. An evaluator, if any,
/// evaluates the chief's checkpoint to a loss below the first step's.
async fn run_mwms(ctx: &Ctx, replicas: Vec<tf::Replica>) -> Result<()> {
    let trainers = replicas.iter().filter(|r| r.rtype != "evaluator").count();
    let mut runs = tf::start(ctx, &replicas, "mwms", STEPS)?;
    let mut all = Vec::new();
    let mut eval = None;
    for run in &mut runs {
        let res = run.finish(RUN_TIMEOUT).await?;
        tf::check_resolver(&run.replica, &res)?;
        if run.replica.rtype == "evaluator" {
            eval = Some(field(&res, "eval_loss")?.as_f64().context("eval_loss")?);
        } else {
            ensure!(field(&res, "workers")? == trainers, "{}: {res:?}", run.replica.address);
            all.push((run.replica.address.clone(), losses(&res)?));
        }
    }
    ensure!(all.len() == trainers && trainers > 1, "{all:?}");
    ensure!(all.iter().all(|(_, l)| *l == all[0].1), "trainers disagree on the loss: {all:?}");
    if let Some(e) = eval {
        ensure!(e < all[0].1[0], "evaluated loss {e} not below the first step's {:?}", all[0].1);
    }
    Ok(())
}

/// ParameterServerStrategy: the chief coordinates STEPS steps on the workers, its two
/// variables live on both PS, and every worker and PS still serves when it is done. A
/// sidecar evaluator evaluates the chief's checkpoint to a loss below the first step's.
async fn run_ps(ctx: &Ctx, replicas: Vec<tf::Replica>) -> Result<()> {
    let workers = replicas.iter().filter(|r| r.rtype == "worker").count();
    let mut runs = tf::start(ctx, &replicas, "ps", STEPS)?;
    let (servers, mut finishers): (Vec<&mut Run>, Vec<&mut Run>) =
        runs.iter_mut().partition(|r| matches!(r.replica.rtype.as_str(), "ps" | "worker"));
    finishers.sort_by_key(|r| r.replica.rtype == "evaluator");
    let mut first = None;
    for run in finishers {
        let res = run.finish(RUN_TIMEOUT).await?;
        tf::check_resolver(&run.replica, &res)?;
        if run.replica.rtype == "evaluator" {
            let e = field(&res, "eval_loss")?.as_f64().context("eval_loss")?;
            let f: f64 = first.context("no coordinator")?;
            ensure!(e < f, "evaluated loss {e} not below the first step's {f}");
            continue;
        }
        first = Some(losses(&res)?[0]);
        ensure!(field(&res, "workers")? == workers, "{res:?}");
        let devices = field(&res, "devices")?;
        ensure!(
            devices
                == json!(["/job:ps/replica:0/task:0/device:CPU:0", "/job:ps/replica:0/task:1/device:CPU:0"]),
            "variables on {devices}"
        );
    }
    for run in servers {
        let res = run.stop_server().await?;
        tf::check_resolver(&run.replica, &res)?;
        ensure!(field(&res, "serving")? == true, "{res:?}");
    }
    Ok(())
}

async fn mwms_chief_and_workers_train_in_step(ctx: Ctx) -> Result<()> {
    let _op = Operator::start(&ctx, &[])?;
    let pods = job_pods(&ctx, "mwms", &[("Chief", 1, None), ("Worker", 2, Some(2345))], json!({})).await?;
    run_mwms(&ctx, pods).await
}

async fn mwms_workers_only_train_in_step(ctx: Ctx) -> Result<()> {
    let _op = Operator::start(&ctx, &[])?;
    let pods = job_pods(&ctx, "workers", &[("Worker", 3, None)], json!({})).await?;
    run_mwms(&ctx, pods).await
}

async fn mwms_with_an_evaluator_trains_and_evaluates(ctx: Ctx) -> Result<()> {
    let _op = Operator::start(&ctx, &[])?;
    let types = [("Chief", 1, None), ("Worker", 2, None), ("Evaluator", 1, None)];
    let pods = job_pods(&ctx, "mwms-eval", &types, json!({})).await?;
    run_mwms(&ctx, pods).await
}

async fn ps_chief_and_workers_train_through_both_ps(ctx: Ctx) -> Result<()> {
    let _op = Operator::start(&ctx, &[])?;
    let types = [("Chief", 1, None), ("PS", 2, Some(2345)), ("Worker", 2, None)];
    let pods = job_pods(&ctx, "ps", &types, json!({})).await?;
    run_ps(&ctx, pods).await
}

const PS_EVAL: [(&str, i32, Option<i32>); 4] =
    [("Chief", 1, None), ("PS", 2, None), ("Worker", 2, None), ("Evaluator", 1, None)];

async fn ps_with_a_sidecar_evaluator_trains_and_evaluates(ctx: Ctx) -> Result<()> {
    let _op = Operator::start(&ctx, &[])?;
    let pods = job_pods(&ctx, "ps-eval", &PS_EVAL, json!({})).await?;
    // TensorFlow's layout: the evaluator is in no other replica's cluster, and alone in its own.
    for p in &pods {
        let cluster = serde_json::from_str::<Value>(&p.tf_config)?["cluster"].clone();
        let jobs: Vec<&String> = cluster.as_object().context("cluster")?.keys().collect();
        let want: &[&str] = if p.rtype == "evaluator" { &["evaluator"] } else { &["chief", "ps", "worker"] };
        ensure!(jobs == want, "{}-{}: cluster jobs {jobs:?}", p.rtype, p.index);
    }
    run_ps(&ctx, pods).await
}

/// Kubeflow's exact TF_CONFIG (the annotation): every replica's cluster has the evaluator.
/// TensorFlow's coordinator then waits for it (it starts no server): the reason for the default.
async fn ps_with_kubeflow_tf_config_keeps_the_evaluator_in_the_cluster(ctx: Ctx) -> Result<()> {
    let _op = Operator::start(&ctx, &[])?;
    let kubeflow = json!({"annotations": {"tfjob.kubeflow.org/tf-config": "kubeflow"}});
    let pods = job_pods(&ctx, "ps-kf", &PS_EVAL, kubeflow).await?;
    for p in &pods {
        let cluster = serde_json::from_str::<Value>(&p.tf_config)?["cluster"].clone();
        let jobs: Vec<&String> = cluster.as_object().context("cluster")?.keys().collect();
        ensure!(
            jobs == ["chief", "evaluator", "ps", "worker"],
            "{}-{}: cluster jobs {jobs:?}",
            p.rtype,
            p.index
        );
    }
    Ok(())
}

async fn dynamic_worker_coordinator_trains_through_sparse_workers(ctx: Ctx) -> Result<()> {
    let _op = Operator::start(&ctx, &[])?;
    let pods = job_pods(&ctx, "dynamic", &PS_EVAL, json!({"enableDynamicWorker": true})).await?;
    for p in pods.iter().filter(|p| p.rtype == "worker") {
        let cluster = &serde_json::from_str::<Value>(&p.tf_config)?["cluster"];
        ensure!(cluster["worker"] == json!({p.index.to_string(): p.address}), "{}: {cluster}", p.address);
    }
    run_ps(&ctx, pods).await
}

async fn master_gets_one_warning_and_still_runs(ctx: Ctx) -> Result<()> {
    let _op = Operator::start(&ctx, &[])?;
    create(&ctx, job("master", &[replica("Master", 1), replica("Worker", 1)], json!({}))).await?;
    wait_pods(&ctx, &["master-master-0", "master-worker-0"], Duration::from_secs(30)).await?;
    let master = tf::replicas(&ctx, "master").await?.into_iter().find(|r| r.rtype == "master");
    let cluster = &serde_json::from_str::<Value>(&master.context("no master pod")?.tf_config)?["cluster"];
    ensure!(cluster.get("master").is_some(), "TF_CONFIG unchanged: a master job: {cluster}");
    eventually(Duration::from_secs(10), "the MasterReplicaType Warning", || async {
        ensure!(count_events(&ctx, "master", "MasterReplicaType").await? == 1, "no warning");
        Ok(())
    })
    .await?;
    assert_stays(Duration::from_secs(3), "one MasterReplicaType Warning", || async {
        let evs = events(&ctx, "master").await?;
        let n: i32 = evs.iter().filter(|(r, _)| r == "MasterReplicaType").map(|(_, n)| n).sum();
        ensure!(n == 1, "{evs:?}");
        Ok(())
    })
    .await
}
