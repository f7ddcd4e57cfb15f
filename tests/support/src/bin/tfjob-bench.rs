//! `make bench`: the TFJob benchmark. Starts a local control plane sized for the load (or uses
//! `--kubeconfig`) and the operator (or measures one already running), runs each size, and
//! prints a table (or, with `--json`, one JSON document); saves them with each job's times
//! and their chart in `--out`. `--plot-from` only redraws the chart from saved times.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{ArgAction, Parser};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use tfjob_testsupport::bench::{self, Kubeflow, OperatorSpec, Options, RawResults, raw};
use tfjob_testsupport::{Cluster, ControlPlane, PlaneOptions, bin_dir, client_for};

/// N TFJobs at once against a TFJob operator, and the bound.
#[derive(Debug, Parser)]
#[command(name = "tfjob-bench", long_about = None, args_override_self = true)]
struct Flags {
    /// Numbers of jobs, one run each (default 10,100,1000)
    #[arg(long, value_name = "N,N,...", value_delimiter = ',', value_parser = size, action = ArgAction::Set)]
    sizes: Option<Vec<usize>>,
    /// The operator binary to start per size (default: tfjob-operator next to this binary)
    #[arg(long, value_name = "PATH")]
    operator: Option<PathBuf>,
    /// Its arguments (repeatable; {namespace} and {port} are replaced; default:
    /// --namespace={namespace} --http-addr=127.0.0.1:{port} --log-format=json)
    #[arg(long, value_name = "ARG", allow_hyphen_values = true)]
    operator_arg: Vec<String>,
    /// Measure an operator that is already running (watching every namespace)
    #[arg(long)]
    no_operator: bool,
    /// With --no-operator: its pid, for CPU and RSS from /proc
    #[arg(long, value_name = "PID")]
    operator_pid: Option<u32>,
    /// With --no-operator: its /metrics port on 127.0.0.1
    #[arg(long, value_name = "P")]
    metrics_port: Option<u16>,
    /// Use this cluster instead of starting a local control plane
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<PathBuf>,
    /// Kwok nodes of the local plane, 1000 pods each
    #[arg(long, value_name = "N", default_value_t = 12)]
    nodes: u32,
    /// kube-controller-manager and kube-scheduler QPS
    #[arg(long, value_name = "N", default_value_t = 1000)]
    component_qps: u32,
    /// Pods kwok moves through their stages at once (its podPlayStageParallelism; kwok's
    /// default 4 plays all the nodes' kubelets)
    #[arg(long, value_name = "N", default_value_t = tfjob_testsupport::KWOK_POD_PARALLELISM)]
    kwok_parallelism: u32,
    /// Worker replicas per job (default 4)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    workers: Option<i32>,
    /// PS replicas per job (default 1)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    ps: Option<i32>,
    /// How long workers run (default 5s)
    #[arg(long, value_name = "D")]
    run_for: Option<String>,
    /// ttlSecondsAfterFinished of every job (default 10)
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    ttl: Option<i64>,
    /// activeDeadlineSeconds of the deadline jobs (default 20)
    #[arg(long, value_name = "S", allow_negative_numbers = true)]
    deadline: Option<i64>,
    /// Concurrent creates by the bench (default 64)
    #[arg(long, value_name = "N")]
    in_flight: Option<usize>,
    /// The huge-job row: one job of this many replicas in all beside --huge-beside jobs
    /// (default 1000, the maximum a TFJob may have; 0 skips the row)
    #[arg(long, value_name = "N", default_value_t = 1000)]
    huge: i32,
    /// Ordinary jobs beside the huge one (default 100)
    #[arg(long, value_name = "N", default_value_t = 100)]
    huge_beside: usize,
    /// The re-list row (local plane only): this many jobs whose pods all run, then a forced
    /// 410 Gone, and the operator's peak RSS before and after its re-list (default: the
    /// largest size; 0 skips the row)
    #[arg(long, value_name = "N")]
    relist: Option<usize>,
    /// Skip the unreported one-job run before the sizes
    #[arg(long)]
    no_warmup: bool,
    /// Also run Kubeflow's training-operator from this directory (what
    /// hack/build-training-operator.sh prints), tuned and with its defaults, each size after
    /// ours, with its own TFJob CRD in place of ours
    #[arg(long, value_name = "DIR")]
    kubeflow: Option<PathBuf>,
    /// With --kubeflow: seconds to wait for its jobs past when they should have been deleted,
    /// before counting them as unfinished
    #[arg(long, value_name = "S", default_value_t = 30)]
    kubeflow_grace: u64,
    /// With --kubeflow: only these of its variants (tuned, defaults)
    #[arg(long, value_name = "V,V", value_delimiter = ',')]
    kubeflow_variants: Option<Vec<String>>,
    /// Profile the API server's CPU during each size (saved beside the report as
    /// apiserver-<operator>-<N>.pb.gz, for go tool pprof) and report what it went to
    #[arg(long)]
    apiserver_profile: bool,
    /// Print one JSON document instead of the table
    #[arg(long)]
    json: bool,
    /// Where to save the report (report.txt, report.json), each job's times (per-job.json)
    /// and their chart (time-to-succeeded.svg) (default: bench/<UTC time> in the cargo
    /// target directory of this binary)
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Run nothing: draw the chart from these saved per-job.json files (their rows together)
    #[arg(long, value_name = "FILE", num_args = 1..)]
    plot_from: Vec<PathBuf>,
    /// With --plot-from: the SVG to write (default: time-to-succeeded.svg beside the first FILE)
    #[arg(long, value_name = "FILE", requires = "plot_from")]
    plot_out: Option<PathBuf>,
}

/// One of `--sizes`, spaces around it allowed.
fn size(s: &str) -> Result<usize, String> {
    s.trim().parse().map_err(|e| format!("{s:?}: {e}"))
}

struct Args {
    opts: Options,
    out: PathBuf,
    kubeflow: Option<(PathBuf, u64, Option<Vec<String>>)>,
    json: bool,
    kubeconfig: Option<PathBuf>,
    nodes: u32,
    component_qps: u32,
    kwok_parallelism: u32,
}

/// `--plot-from`: the chart of saved runs, and where it went.
fn plot(from: &[PathBuf], out: Option<PathBuf>) -> Result<PathBuf> {
    let runs = from.iter().map(|f| RawResults::read(f)).collect::<Result<Vec<_>>>()?;
    let svg = bench::chart::svg(&RawResults::merge(runs)?)?;
    let out = out.unwrap_or_else(|| from[0].with_file_name(raw::CHART_SVG));
    std::fs::write(&out, svg).with_context(|| format!("writing {}", out.display()))?;
    Ok(out)
}

/// `--out`'s default: `<target>/bench/<UTC time>` for `<target>/release/tfjob-bench`.
fn default_out(started: Timestamp) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe.parent().and_then(Path::parent).context("the binary's target directory")?;
    Ok(target.join("bench").join(started.strftime("%Y%m%dT%H%M%SZ").to_string()))
}

/// The commit of the checkout, `-dirty` with uncommitted changes (best effort).
fn commit() -> Option<String> {
    let git = |args: &[&str]| {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(tfjob_testsupport::repo_root())
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "--short", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{head}-dirty") } else { head })
}

fn parse(flags: Flags, started: Timestamp) -> Result<Args> {
    let mut opts = Options::new(OperatorSpec::External { pid: None, metrics_port: None });
    if let Some(sizes) = flags.sizes {
        opts.sizes = sizes;
    }
    if let Some(workers) = flags.workers {
        opts.workers = workers;
    }
    if let Some(ps) = flags.ps {
        opts.ps = ps;
    }
    if let Some(run_for) = flags.run_for {
        opts.run_for = run_for;
    }
    if let Some(ttl) = flags.ttl {
        opts.ttl = ttl;
    }
    if let Some(deadline) = flags.deadline {
        opts.deadline = deadline;
    }
    if let Some(in_flight) = flags.in_flight {
        opts.in_flight = in_flight;
    }
    opts.warmup = !flags.no_warmup;
    opts.huge = (flags.huge > 0).then_some(flags.huge);
    opts.huge_beside = flags.huge_beside;
    opts.relist = match flags.relist {
        Some(0) => None,
        Some(n) => Some(n),
        None => opts.sizes.iter().max().copied(),
    };
    if flags.no_operator {
        opts.operator = OperatorSpec::External { pid: flags.operator_pid, metrics_port: flags.metrics_port };
    } else {
        // <target>/release/tfjob-bench -> <target>/release/tfjob-operator
        let bin = match flags.operator {
            Some(bin) => bin,
            None => std::env::current_exe()?.with_file_name("tfjob-operator"),
        };
        if !bin.exists() {
            bail!(
                "no operator binary at {} (cargo build --release --bin tfjob-operator, or --operator)",
                bin.display()
            );
        }
        let args =
            if flags.operator_arg.is_empty() { bench::default_operator_args() } else { flags.operator_arg };
        // The kubeconfig is filled in once the cluster is known.
        opts.operator =
            OperatorSpec::Start { bin, args, kubeconfig: PathBuf::new(), log_dir: PathBuf::new() };
    }
    if flags.no_operator && flags.kubeflow.is_some() {
        bail!("--kubeflow needs the bench to start the operators (not --no-operator)");
    }
    let out = match flags.out {
        Some(out) => out,
        None => default_out(started)?,
    };
    opts.apiserver_profile = flags.apiserver_profile.then(|| out.clone());
    Ok(Args {
        opts,
        out,
        kubeflow: flags.kubeflow.map(|d| (d, flags.kubeflow_grace, flags.kubeflow_variants)),
        json: flags.json,
        kubeconfig: flags.kubeconfig,
        nodes: flags.nodes,
        component_qps: flags.component_qps,
        kwok_parallelism: flags.kwok_parallelism,
    })
}

#[tokio::main]
async fn main() -> Result<()> {
    let flags = Flags::parse();
    if !flags.plot_from.is_empty() {
        let out = plot(&flags.plot_from, flags.plot_out)?;
        eprintln!("tfjob-bench: chart in {}", out.display());
        return Ok(());
    }
    let started = Timestamp::now();
    let mut args = parse(flags, started)?;
    let (cluster, plane_note) = cluster(&args).await?;
    let crd_path = tfjob_testsupport::repo_root().join("crds/kubeflow.org_tfjobs.yaml");
    let crd: CustomResourceDefinition =
        serde_saphyr::from_str(&std::fs::read_to_string(&crd_path)?).context("reading the CRD")?;
    cluster.install_crd(&crd).await?;
    let logs = std::env::temp_dir().join(format!("tfjob-bench-{}", std::process::id()));
    if let OperatorSpec::Start { kubeconfig, log_dir, .. } = &mut args.opts.operator {
        *kubeconfig = cluster.kubeconfig.clone();
        *log_dir = logs.clone();
        eprintln!("tfjob-bench: operator logs in {}", log_dir.display());
    }
    if let Some((dir, grace, only)) = &args.kubeflow {
        args.opts.kubeflow = Some(kubeflow(dir, *grace, only.as_deref(), &crd, &cluster, &logs)?);
    }
    eprintln!("tfjob-bench: {plane_note}");
    let report = bench::run(&cluster.client, cluster.plane.as_ref(), &args.opts, |msg| {
        eprintln!("tfjob-bench: {msg}")
    })
    .await?;
    if args.json {
        println!("{}", report.to_json()?);
    } else {
        println!("{plane_note}\n{}", report.table());
    }
    let raw = RawResults::of(&report, Some(started.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()), commit());
    let saved = raw::save(&args.out, &plane_note, &report, &raw)?;
    eprintln!(
        "tfjob-bench: saved in {}: {}",
        args.out.display(),
        saved
            .iter()
            .filter_map(|p| p.file_name())
            .map(|n| n.to_string_lossy())
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(cluster);
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(())
}

/// The cluster to measure: the one of `--kubeconfig`, or a local control plane started here;
/// and the line that describes it.
async fn cluster(args: &Args) -> Result<(Cluster, String)> {
    Ok(match &args.kubeconfig {
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
                kwok_pod_parallelism: args.kwok_parallelism,
                ..Default::default()
            })
            .await?;
            let client = client_for(&plane.pki.kubeconfig).await?;
            let kubeconfig = plane.pki.kubeconfig.clone();
            let note = format!(
                "local control plane: kube-apiserver, etcd, kube-controller-manager and kube-scheduler (QPS {}, burst {}), kwok (client QPS 5000, {} pods staged at once), {} kwok nodes of 1000 pods",
                args.component_qps,
                args.component_qps * 2,
                args.kwok_parallelism,
                args.nodes
            );
            (Cluster { client, kubeconfig, kubectl: bins.join("kubectl"), plane: Some(plane) }, note)
        }
    })
}

/// Kubeflow's training-operator from `dir` (its variants narrowed to `only`), for its rows.
fn kubeflow(
    dir: &Path,
    grace: u64,
    only: Option<&[String]>,
    crd: &CustomResourceDefinition,
    cluster: &Cluster,
    logs: &Path,
) -> Result<Kubeflow> {
    let mut kf = Kubeflow::from_dir(dir, crd.clone(), cluster.kubeconfig.clone(), logs.to_path_buf())?;
    kf.grace = Duration::from_secs(grace);
    if let Some(only) = only {
        kf.variants.retain(|v| only.iter().any(|o| v.label.ends_with(&format!(" {o}"))));
        if kf.variants.is_empty() {
            bail!("--kubeflow-variants: none of {only:?} (tuned, defaults)");
        }
    }
    eprintln!(
        "tfjob-bench: training-operator {} from {} (logs in {})",
        kf.version,
        dir.display(),
        logs.display()
    );
    Ok(kf)
}
