//! The benchmark behind `tfjob-bench` (and the suite's tiny run): N TFJobs at once against a
//! cluster and a TFJob operator, measured from watches; then the same pods and services
//! created directly with 64 requests in flight (the bound) against the same API server with
//! the same identity.
//!
//! The jobs use the Kubeflow `runPolicy` shape and set `cleanPodPolicy` explicitly, so any
//! kubeflow.org/v1 TFJob operator does the same work.
pub mod apiserver_cpu;
mod bound;
pub mod chart;
pub mod footprint;
mod jobs;
pub mod kubeflow;
mod namespace;
mod operator;
pub mod plane_profile;
pub mod raw;
pub mod record;
mod relist;
mod report;
mod run;
mod size_run;
pub mod stats;

use std::path::PathBuf;
use std::time::Duration;

pub use jobs::{batch_job, deadline_job, huge_job};
pub use kubeflow::{Kubeflow, KubeflowVariant};
pub use raw::{JobTimes, RawResults};
pub use relist::RelistReport;
pub use report::{HugeReport, Report, SizeReport};
pub use run::run;
pub use stats::Stats;

/// What to run and how.
#[derive(Clone, Debug)]
pub struct Options {
    /// Numbers of TFJobs, one run each.
    pub sizes: Vec<usize>,
    /// Replicas per job.
    pub ps: i32,
    pub workers: i32,
    /// How long a worker runs before it succeeds (kwok).
    pub run_for: String,
    /// `ttlSecondsAfterFinished` of every job.
    pub ttl: i64,
    /// `activeDeadlineSeconds` of the deadline jobs (one per ten jobs, at least one).
    pub deadline: i64,
    /// Creates in flight (the jobs, and the bound's pods and services).
    pub in_flight: usize,
    /// Namespaces are `<prefix>-<N>` and `<prefix>-bound-<N>`.
    pub prefix: String,
    /// The operator: started per size by the bench, or already running.
    pub operator: OperatorSpec,
    /// Give up on a size after this long.
    pub timeout: Duration,
    /// The huge-job row: one job of this many replicas in all (1 PS, the rest workers that
    /// must all succeed), created just before `huge_beside` ordinary jobs.
    pub huge: Option<i32>,
    pub huge_beside: usize,
    /// Run one unreported job first: the API server's first TFJob writes on a fresh plane
    /// (building the CRD's schema) take about 2 s that no later job pays.
    pub warmup: bool,
    /// The re-list row (local plane only): this many jobs whose pods all run, then a forced
    /// 410 Gone; the operator's peak RSS before and after its re-list.
    pub relist: Option<usize>,
    /// Kubeflow's training-operator, run after ours on the same plane and the same jobs,
    /// once per variant (its defaults, tuned), each size in turn.
    pub kubeflow: Option<Kubeflow>,
    /// Profile the API server's CPU during each size and save the profiles in this directory
    /// (`apiserver-<operator>-<N>.pb.gz`; needs `go` on the PATH to merge and sum them).
    pub apiserver_profile: Option<PathBuf>,
}

/// The operator under test.
#[derive(Clone, Debug)]
pub enum OperatorSpec {
    /// Started fresh for each size with these arguments (`{namespace}` and `{port}` are
    /// replaced) and `KUBECONFIG`; stopped with SIGTERM after it.
    Start { bin: PathBuf, args: Vec<String>, kubeconfig: PathBuf, log_dir: PathBuf },
    /// Already running: its pid (for `/proc`) and metrics URL (`http://127.0.0.1:P/metrics`), if known.
    External { pid: Option<u32>, metrics_port: Option<u16> },
    /// Kubeflow's training-operator, started fresh for each size like `Start`, with its
    /// certificate Secret and files handled the way its cert rotator expects
    /// ([`kubeflow`]). `{port}` (metrics), `{probe_port}` (`/readyz`) and
    /// `{webhook_port}` are replaced in `args`, as is `{namespace}`.
    Kubeflow { bin: PathBuf, args: Vec<String>, kubeconfig: PathBuf, log_dir: PathBuf },
}

/// This operator's default arguments.
pub fn default_operator_args() -> Vec<String> {
    vec!["--namespace={namespace}".into(), "--http-addr=127.0.0.1:{port}".into(), "--log-format=json".into()]
}

impl Options {
    pub fn new(operator: OperatorSpec) -> Options {
        Options {
            sizes: vec![10, 100, 1000],
            ps: 1,
            workers: 4,
            run_for: "5s".into(),
            ttl: 10,
            deadline: 20,
            in_flight: 64,
            prefix: "bench".into(),
            operator,
            timeout: Duration::from_secs(1200),
            warmup: true,
            huge: None,
            huge_beside: 100,
            relist: None,
            kubeflow: None,
            apiserver_profile: None,
        }
    }
}
