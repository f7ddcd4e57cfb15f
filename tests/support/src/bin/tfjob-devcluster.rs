//! `make cluster` / `make run`: a local control plane in the foreground until Ctrl-C.
//!
//! Flags: `--nodes N` (default 4), `--kubeconfig-out PATH` (default `.dev/kubeconfig`),
//! `--crd PATH` (install this CRD once the plane is up), `--apply PATH` (then apply this
//! manifest with the plane's kubectl; repeatable).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use tfjob_testsupport::{Cluster, ControlPlane, PlaneOptions, bin_dir, client_for};
use tokio::signal::unix::{SignalKind, signal};

struct Args {
    nodes: u32,
    kubeconfig_out: PathBuf,
    crd: Option<PathBuf>,
    apply: Vec<PathBuf>,
}

fn args() -> Result<Args> {
    let mut a = Args { nodes: 4, kubeconfig_out: PathBuf::from(".dev/kubeconfig"), crd: None, apply: vec![] };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => a.nodes = value()?.parse()?,
            "--kubeconfig-out" => a.kubeconfig_out = value()?.into(),
            "--crd" => a.crd = Some(value()?.into()),
            "--apply" => a.apply.push(value()?.into()),
            other => {
                bail!("unknown flag {other}; flags: --nodes N --kubeconfig-out PATH --crd PATH --apply PATH")
            }
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = args()?;
    let bins = bin_dir()?;
    eprintln!(
        "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok ({} nodes)...",
        args.nodes
    );
    let plane =
        ControlPlane::start(&PlaneOptions { bin_dir: bins.clone(), nodes: args.nodes, ..Default::default() })
            .await?;
    if let Some(parent) = args.kubeconfig_out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(&plane.pki.kubeconfig, &args.kubeconfig_out)?;
    let client = client_for(&plane.pki.kubeconfig).await?;
    let kubeconfig = plane.pki.kubeconfig.clone();
    let cluster = Cluster { client, kubeconfig, kubectl: bins.join("kubectl"), plane: Some(plane) };
    if let Some(crd) = &args.crd {
        let text = std::fs::read_to_string(crd)?;
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text).context("reading the CRD")?;
        cluster.install_crd(&crd).await?;
        eprintln!("installed the TFJob CRD");
    }
    for manifest in &args.apply {
        let status = cluster.kubectl().args(["apply", "--server-side", "-f"]).arg(manifest).status()?;
        if !status.success() {
            bail!("kubectl apply -f {} failed", manifest.display());
        }
    }
    let kc = std::fs::canonicalize(&args.kubeconfig_out)?;
    println!(
        "The control plane is up ({}).",
        cluster.plane.as_ref().map_or(String::new(), |p| p.server.clone())
    );
    println!("  export KUBECONFIG={}", kc.display());
    println!("  {} get nodes", bins.join("kubectl").display());
    println!("Press Ctrl-C to stop it.");
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("stopping...");
    drop(cluster);
    let _ = std::fs::remove_file(&args.kubeconfig_out);
    Ok(())
}
