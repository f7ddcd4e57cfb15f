//! `make cluster` / `make run`: a local control plane in the foreground until Ctrl-C; its
//! flags are in `tfjob-devcluster --help`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Parser;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use std::time::Duration;

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::Api;
use tfjob_testsupport::process::Proc;
use tfjob_testsupport::{Cluster, ControlPlane, PlaneOptions, bin_dir, client_for, wait};
use tokio::signal::unix::{SignalKind, signal};

/// A local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
/// kwok) in the foreground until Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "tfjob-devcluster", long_about = None, args_override_self = true)]
struct Args {
    /// Kwok nodes
    #[arg(long, value_name = "N", default_value_t = 4)]
    nodes: u32,
    /// Where the plane's kubeconfig is copied (and removed from at the end)
    #[arg(long, value_name = "PATH", default_value = ".dev/kubeconfig")]
    kubeconfig_out: PathBuf,
    /// Install this CRD once the plane is up
    #[arg(long, value_name = "PATH")]
    crd: Option<PathBuf>,
    /// Run this operator binary against the plane (its log: operator.log beside the kubeconfig)
    #[arg(long, value_name = "PATH")]
    operator: Option<PathBuf>,
    /// Then apply this manifest with the plane's kubectl (repeatable)
    #[arg(long, value_name = "PATH")]
    apply: Vec<PathBuf>,
    /// Print every TFJob change
    #[arg(long)]
    watch: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let bins = bin_dir()?;
    let cluster = start(&args, &bins).await?;
    if let Some(crd) = &args.crd {
        let text = std::fs::read_to_string(crd)?;
        let crd: CustomResourceDefinition = serde_saphyr::from_str(&text).context("reading the CRD")?;
        cluster.install_crd(&crd).await?;
        eprintln!("installed the TFJob CRD");
    }
    let log_dir = args.kubeconfig_out.parent().map(PathBuf::from).unwrap_or_default();
    let operator = match &args.operator {
        Some(bin) => {
            let kc = cluster.kubeconfig.clone();
            let argv = vec!["--http-addr=127.0.0.1:0".to_string()];
            let p =
                Proc::spawn_with_env("operator", bin, &argv, &log_dir, &[("KUBECONFIG", kc.as_os_str())])?;
            eprintln!("started the operator (log: {})", log_dir.join("operator.log").display());
            Some(p)
        }
        None => None,
    };
    apply(&cluster, &args.apply).await?;
    let kc = std::fs::canonicalize(&args.kubeconfig_out)?;
    println!(
        "The control plane is up ({}).",
        cluster.plane.as_ref().map_or(String::new(), |p| p.server.clone())
    );
    println!("  export KUBECONFIG={}", kc.display());
    println!("  {} get nodes", bins.join("kubectl").display());
    println!("Press Ctrl-C to stop it.");
    let watcher = if args.watch {
        println!("Watching TFJobs (kubectl get tfjobs -w):");
        Some(cluster.kubectl().args(["get", "tfjobs", "-A", "-w"]).spawn()?)
    } else {
        None
    };
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    eprintln!("stopping...");
    if let Some(mut w) = watcher {
        let _ = w.kill();
        let _ = w.wait();
    }
    drop(operator);
    drop(cluster);
    let _ = std::fs::remove_file(&args.kubeconfig_out);
    Ok(())
}

/// Starts the plane and copies its kubeconfig to `--kubeconfig-out`.
async fn start(args: &Args, bins: &Path) -> Result<Cluster> {
    eprintln!(
        "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok ({} nodes)...",
        args.nodes
    );
    let plane = ControlPlane::start(&PlaneOptions {
        bin_dir: bins.to_path_buf(),
        nodes: args.nodes,
        // The only nodes here: pods need no toleration, so every example runs as written.
        taint: false,
        ..Default::default()
    })
    .await?;
    if let Some(parent) = args.kubeconfig_out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::copy(&plane.pki.kubeconfig, &args.kubeconfig_out)?;
    let client = client_for(&plane.pki.kubeconfig).await?;
    let kubeconfig = plane.pki.kubeconfig.clone();
    Ok(Cluster { client, kubeconfig, kubectl: bins.join("kubectl"), plane: Some(plane) })
}

/// `--apply`: each manifest with the plane's kubectl, once the default ServiceAccount exists.
async fn apply(cluster: &Cluster, manifests: &[PathBuf]) -> Result<()> {
    if !manifests.is_empty() {
        let sas: Api<ServiceAccount> = Api::namespaced(cluster.client.clone(), "default");
        wait(Duration::from_secs(60), "the default ServiceAccount", || async {
            sas.get_opt("default").await.ok().flatten().is_some()
        })
        .await?;
    }
    for manifest in manifests {
        let status = cluster.kubectl().args(["apply", "--server-side", "-f"]).arg(manifest).status()?;
        if !status.success() {
            bail!("kubectl apply -f {} failed", manifest.display());
        }
    }
    Ok(())
}
