//! README's examples, as written, on a plane like `make cluster`'s: its own untainted kwok
//! nodes (the only nodes there), so pods need no toleration; each example reaches its
//! documented state and no pod is diagnosed as stuck.

use std::time::Duration;

use anyhow::{Result, ensure};
use kube::api::Api;
use tfjob_operator::api::ConditionType;
use tfjob_testsupport::{
    Cluster, ControlPlane, PlaneOptions, bin_dir, client_for, repo_root, use_existing_cluster,
};

use super::*;
use crate::test;

pub fn tests() -> Vec<Test> {
    vec![test!(readme_examples_run_as_written_on_an_untainted_plane)]
}

/// README's examples, the namespace suffix each is applied in (two share the name
/// `tfjob-test`), its job and the condition it reaches there.
const EXAMPLES: [(&str, &str, &str, ConditionType); 3] = [
    ("tfjob-seed.yaml", "", "tfjob-test", ConditionType::Running),
    ("tfjob-kubeflow.yaml", "-kf", "tfjob-test", ConditionType::Running),
    ("tfjob-finishes.yaml", "", "mnist", ConditionType::Succeeded),
];

async fn readme_examples_run_as_written_on_an_untainted_plane(ctx: Ctx) -> Result<()> {
    if use_existing_cluster() {
        println!("skipped: starts a plane of its own, not on a user's cluster");
        return Ok(());
    }
    let bins = bin_dir()?;
    let plane = ControlPlane::start(&PlaneOptions {
        bin_dir: bins.clone(),
        nodes: 2,
        taint: false,
        ..Default::default()
    })
    .await?;
    let cluster = Cluster {
        client: client_for(&plane.pki.kubeconfig).await?,
        kubeconfig: plane.pki.kubeconfig.clone(),
        kubectl: bins.join("kubectl"),
        plane: None,
    };
    cluster.install_crd(&tfjob_operator::api::crd()?).await?;
    let mut operators = Vec::new();
    for suffix in ["", "-kf"] {
        let ns = format!("{}{suffix}", ctx.ns);
        cluster.namespace(&ns).await?;
        let op_ctx = Ctx { cluster: ctx.cluster.clone(), ns };
        operators.push(Operator::start_as(&op_ctx, "examples-operator", &cluster.kubeconfig, &[])?);
    }
    let api = |suffix: &str| -> Api<TFJob> {
        Api::namespaced(cluster.client.clone(), &format!("{}{suffix}", ctx.ns))
    };
    for (file, suffix, _, _) in EXAMPLES {
        let path = repo_root().join("examples").join(file);
        let ns = format!("{}{suffix}", ctx.ns);
        let out = cluster.kubectl().args(["apply", "--server-side", "-n", &ns, "-f"]).arg(&path).output()?;
        ensure!(out.status.success(), "kubectl apply {file}: {}", String::from_utf8_lossy(&out.stderr));
    }
    for (file, suffix, name, want) in EXAMPLES {
        let j = wait_for(&api(suffix), name, WAIT, &format!("{file}: {want:?}"), |j| has_condition(j, want))
            .await?;
        ensure!(condition(&j, ConditionType::PodsNotStarted).is_none(), "{file}: {:?}", j.status);
    }
    // The running examples record that every pod started (a record that waits up to 10 s for
    // a status write that cannot wait, as replica counts do), and stay so.
    eventually(
        Duration::from_secs(15),
        "the seed and Kubeflow jobs to record their pods started",
        || async {
            for (file, suffix, name, _) in &EXAMPLES[..2] {
                let j = api(suffix).get(name).await?;
                ensure!(
                    j.status.as_ref().is_some_and(|s| s.pods_started_time.is_some()),
                    "{file}: {:?}",
                    j.status
                );
            }
            Ok(())
        },
    )
    .await?;
    assert_stays(Duration::from_secs(3), "the seed and Kubeflow jobs keep running", || async {
        for (file, suffix, name, _) in &EXAMPLES[..2] {
            let j = api(suffix).get(name).await?;
            let started = j.status.as_ref().is_some_and(|s| s.pods_started_time.is_some());
            ensure!(has_condition(&j, ConditionType::Running) && started, "{file}: {:?}", j.status);
        }
        Ok(())
    })
    .await?;
    drop(operators);
    drop(plane);
    Ok(())
}
