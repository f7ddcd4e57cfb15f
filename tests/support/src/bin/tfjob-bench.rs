//! `make bench`: the TFJob benchmark. Starts a local control plane sized for the load (or uses
//! `--kubeconfig`) and the operator (or measures one already running), runs each size, and
//! prints a table (or, with `--json`, one JSON document).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tfjob_testsupport::bench::{self, OperatorSpec, Options};
use tfjob_testsupport::{Cluster, ControlPlane, PlaneOptions, bin_dir, client_for};

const USAGE: &str = "tfjob-bench: N TFJobs at once against a TFJob operator, and the bound

  --sizes 10,100,1000     numbers of jobs, one run each
  --operator PATH         the operator binary to start per size (default: tfjob-operator
                          next to this binary's target directory, release build)
  --operator-arg ARG      its arguments (repeatable; {namespace} and {port} are replaced;
                          default: --namespace={namespace} --http-addr=127.0.0.1:{port} --log-format=json)
  --no-operator           measure an operator that is already running (watching every namespace)
  --operator-pid PID      with --no-operator: its pid, for CPU and RSS from /proc
  --metrics-port P        with --no-operator: its /metrics port on 127.0.0.1
  --kubeconfig PATH       use this cluster instead of starting a local control plane
  --nodes N               kwok nodes of the local plane (default 12, 1000 pods each)
  --component-qps N       kube-controller-manager and kube-scheduler QPS (default 1000)
  --workers N --ps N      replicas per job (default 4 and 1)
  --run-for D             how long workers run (default 5s)
  --ttl S --deadline S    ttlSecondsAfterFinished (10) and the deadline jobs' activeDeadlineSeconds (20)
  --in-flight N           concurrent creates by the bench (default 64)
  --no-warmup             skip the unreported one-job run before the sizes
  --json                  print one JSON document instead of the table
";

struct Args {
    opts: Options,
    json: bool,
    kubeconfig: Option<PathBuf>,
    nodes: u32,
    component_qps: u32,
}

fn parse() -> Result<Args> {
    let exe = std::env::current_exe()?;
    // <target>/release/tfjob-bench -> <target>/release/tfjob-operator
    let default_bin = exe.with_file_name("tfjob-operator");
    let mut bin = default_bin;
    let mut op_args: Vec<String> = Vec::new();
    let mut external = false;
    let (mut pid, mut metrics_port) = (None, None);
    let mut a = Args {
        opts: Options::new(OperatorSpec::External { pid: None, metrics_port: None }),
        json: false,
        kubeconfig: None,
        nodes: 12,
        component_qps: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--sizes" => {
                a.opts.sizes = value()?.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?
            }
            "--operator" => bin = value()?.into(),
            "--operator-arg" => op_args.push(value()?),
            "--no-operator" => external = true,
            "--operator-pid" => pid = Some(value()?.parse()?),
            "--metrics-port" => metrics_port = Some(value()?.parse()?),
            "--kubeconfig" => a.kubeconfig = Some(value()?.into()),
            "--nodes" => a.nodes = value()?.parse()?,
            "--component-qps" => a.component_qps = value()?.parse()?,
            "--workers" => a.opts.workers = value()?.parse()?,
            "--ps" => a.opts.ps = value()?.parse()?,
            "--run-for" => a.opts.run_for = value()?,
            "--ttl" => a.opts.ttl = value()?.parse()?,
            "--deadline" => a.opts.deadline = value()?.parse()?,
            "--in-flight" => a.opts.in_flight = value()?.parse()?,
            "--json" => a.json = true,
            "--no-warmup" => a.opts.warmup = false,
            "--help" | "-h" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}\n\n{USAGE}"),
        }
    }
    if external {
        a.opts.operator = OperatorSpec::External { pid, metrics_port };
    } else {
        if !bin.exists() {
            bail!(
                "no operator binary at {} (cargo build --release --bin tfjob-operator, or --operator)",
                bin.display()
            );
        }
        let args = if op_args.is_empty() { bench::default_operator_args() } else { op_args };
        // The kubeconfig is filled in once the cluster is known.
        a.opts.operator =
            OperatorSpec::Start { bin, args, kubeconfig: PathBuf::new(), log_dir: PathBuf::new() };
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = parse()?;
    let (cluster, plane_note) = match &args.kubeconfig {
        Some(kc) => {
            let client = client_for(kc).await?;
            (
                Cluster { client, kubeconfig: kc.clone(), kubectl: "kubectl".into(), plane: None },
                format!("cluster from {}", kc.display()),
            )
        }
        None => {
            let bins = bin_dir()?;
            eprintln!(
                "tfjob-bench: starting a local control plane ({} kwok nodes, controller-manager and scheduler QPS {})",
                args.nodes, args.component_qps
            );
            let plane = ControlPlane::start(&PlaneOptions {
                bin_dir: bins.clone(),
                nodes: args.nodes,
                component_qps: args.component_qps,
            })
            .await?;
            let client = client_for(&plane.pki.kubeconfig).await?;
            let kubeconfig = plane.pki.kubeconfig.clone();
            let note = format!(
                "local control plane: kube-apiserver, etcd, kube-controller-manager and kube-scheduler (QPS {}, burst {}), kwok (client QPS 5000), {} kwok nodes of 1000 pods",
                args.component_qps,
                args.component_qps * 2,
                args.nodes
            );
            (Cluster { client, kubeconfig, kubectl: bins.join("kubectl"), plane: Some(plane) }, note)
        }
    };
    let crd_path = tfjob_testsupport::repo_root().join("crds/kubeflow.org_tfjobs.yaml");
    let crd = serde_saphyr::from_str(&std::fs::read_to_string(&crd_path)?).context("reading the CRD")?;
    cluster.install_crd(&crd).await?;
    if let OperatorSpec::Start { kubeconfig, log_dir, .. } = &mut args.opts.operator {
        *kubeconfig = cluster.kubeconfig.clone();
        *log_dir = std::env::temp_dir().join(format!("tfjob-bench-{}", std::process::id()));
        eprintln!("tfjob-bench: operator logs in {}", log_dir.display());
    }
    eprintln!("tfjob-bench: {plane_note}");
    let report = bench::run(&cluster.client, &args.opts, |msg| eprintln!("tfjob-bench: {msg}")).await?;
    if args.json {
        println!("{}", report.to_json()?);
    } else {
        println!("{plane_note}\n{}", report.table());
    }
    drop(cluster);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}
