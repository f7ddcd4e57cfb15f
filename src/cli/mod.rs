//! Command-line flags, each also an environment variable (`TFJOB_<FLAG>`), parsed by clap
//! from arguments and variables that are passed in, so that parsing is a pure function.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::PossibleValue;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::leader::Timings;
use crate::plan::gang::GangScheduling;
use crate::queue::WorkloadsBy;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--gang-scheduling`'s values (the planner's mode, [`GangScheduling`], knows no clap).
impl ValueEnum for GangScheduling {
    fn value_variants<'a>() -> &'a [Self] {
        &[GangScheduling::None, GangScheduling::Native]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            GangScheduling::None => PossibleValue::new("none")
                .help("No gang scheduling: `runPolicy.schedulingPolicy` is ignored and pods are scheduled one by one"),
            GangScheduling::Native => PossibleValue::new("native").help(
                "Kubernetes' own PodGroup (`scheduling.k8s.io/v1alpha2`) and kube-scheduler's `GangScheduling` plugin",
            ),
        })
    }
}

/// `--kueue-workloads`' values.
impl ValueEnum for WorkloadsBy {
    fn value_variants<'a>() -> &'a [Self] {
        &[WorkloadsBy::Kueue, WorkloadsBy::Operator]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            WorkloadsBy::Kueue => PossibleValue::new("kueue")
                .help("Kueue's built-in kubeflow.org/tfjob integration creates the Workload and suspends and resumes the job"),
            WorkloadsBy::Operator => PossibleValue::new("operator").help(
                "This operator creates and follows the Workload (for Kueue with its kubeflow.org/tfjob integration off)",
            ),
        })
    }
}

/// The operator's options.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub namespace: Option<String>,
    pub concurrency: u16,
    pub writes_in_flight: u16,
    pub kube_api_qps: u32,
    pub kube_api_burst: u32,
    pub cluster_domain: Option<String>,
    /// Announce each step's pod and service creates with Kubeflow's events.
    pub announce_creates: bool,
    /// The startup deadline of jobs without the annotation; `None`: no default.
    pub startup_deadline_seconds: Option<i64>,
    pub http_addr: SocketAddr,
    pub log_format: LogFormat,
    /// How long any API request but a watch may take, its response included; under leader
    /// election at most the renew deadline.
    pub request_timeout: Duration,
    /// Leader election: off (`None`) or its Lease's namespace and timings.
    pub leader_election: Option<LeaderElection>,
    /// Gang scheduling: none, or Kubernetes' own PodGroup.
    pub gang_scheduling: GangScheduling,
    /// Who writes the Kueue Workload of a queued job.
    pub kueue_workloads: WorkloadsBy,
}

/// Where and how fast leader election runs.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaderElection {
    /// The namespace of the Lease `tfjob-operator`.
    pub namespace: String,
    pub timings: Timings,
}

/// The flags as clap sees them; [`Options::from_args`] turns them into [`Options`].
///
/// Every flag names its variable with `env`; the values themselves are read by
/// [`Options::from_args`], not by clap.
#[derive(Debug, Parser)]
#[command(
    name = "tfjob-operator",
    about = "Runs Kubeflow TFJobs (kubeflow.org/v1).",
    long_about = None,
    args_override_self = true,
    after_help = "Each flag is also an environment variable (--kube-api-qps: TFJOB_KUBE_API_QPS); \
                  a flag wins over its variable.\n\
                  Durations: a number with ms, s or m (15s, 500ms, 2m); a bare number is seconds.\n\
                  RUST_LOG sets the log level (default info)."
)]
struct Flags {
    /// Watch one namespace only (default: all; the variable KUBEFLOW_NAMESPACE is read too)
    #[arg(long, value_name = "NS", env = "TFJOB_NAMESPACE")]
    namespace: Option<String>,

    /// TFJobs reconciled at once (0: no limit)
    #[arg(long, value_name = "N", env = "TFJOB_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,

    /// Pod and service creates in flight at once, over all TFJobs (at least 1); the oldest
    /// jobs create first, and a job waiting for room holds no reconcile
    #[arg(long, value_name = "N", env = "TFJOB_WRITES_IN_FLIGHT", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..))]
    writes_in_flight: u16,

    /// Client-side request rate limit (0: none; the API server's priority and fairness protects it)
    #[arg(long, value_name = "N", env = "TFJOB_KUBE_API_QPS", default_value_t = 0)]
    kube_api_qps: u32,

    /// Requests allowed in a burst above the rate (default and at least: the rate)
    #[arg(long, value_name = "N", env = "TFJOB_KUBE_API_BURST")]
    kube_api_burst: Option<u32>,

    /// Appended to TF_CONFIG service addresses (the variable CUSTOM_CLUSTER_DOMAIN is read too)
    #[arg(long, value_name = "D", env = "TFJOB_CLUSTER_DOMAIN")]
    cluster_domain: Option<String>,

    /// Publishes Kubeflow's SuccessfulCreatePod and SuccessfulCreateService events, one per
    /// step and kind (off: the job's status and its pods say it, one event write less each)
    #[arg(long, env = "TFJOB_ANNOUNCE_CREATES")]
    announce_creates: bool,

    /// Fails a job whose pods have not all started this many seconds after its creation, unless
    /// its tfjob.kubeflow.org/startup-deadline-seconds annotation says otherwise [default: off]
    #[arg(long, value_name = "SECONDS", env = "TFJOB_STARTUP_DEADLINE_SECONDS", value_parser = clap::value_parser!(i64).range(1..))]
    startup_deadline_seconds: Option<i64>,

    /// Serves /healthz, /readyz and /metrics
    #[arg(long, value_name = "ADDR", env = "TFJOB_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    http_addr: SocketAddr,

    /// Log format
    #[arg(long, value_name = "F", env = "TFJOB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// How long an API request may take, its response included (a watch: until its answer
    /// starts; the API server ends each watch after 55 s); under leader election at most the
    /// renew deadline
    #[arg(
        long,
        value_name = "D",
        env = "TFJOB_REQUEST_TIMEOUT",
        value_parser = parse_duration,
        default_value = "10s"
    )]
    request_timeout: Duration,

    /// Gang scheduling: none, or native (one scheduling.k8s.io/v1alpha2 PodGroup per TFJob, for
    /// kube-scheduler's GangScheduling plugin; the API must be served, alpha in Kubernetes 1.36)
    #[arg(long, value_name = "MODE", env = "TFJOB_GANG_SCHEDULING", value_enum, default_value_t = GangScheduling::None)]
    gang_scheduling: GangScheduling,

    /// Who creates and follows the Kueue Workload of a TFJob labelled kueue.x-k8s.io/queue-name:
    /// kueue (Kueue's own kubeflow.org/tfjob integration) or operator (this operator, for Kueue
    /// with that integration switched off)
    #[arg(long, value_name = "BY", env = "TFJOB_KUEUE_WORKLOADS", value_enum, default_value_t = WorkloadsBy::Kueue)]
    kueue_workloads: WorkloadsBy,

    /// Only the holder of the Lease tfjob-operator reconciles
    #[arg(
        long,
        value_name = "BOOL",
        env = "TFJOB_LEADER_ELECT",
        action = ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "true",
        default_value_t = false
    )]
    leader_elect: bool,

    /// The Lease's namespace (default: the variable POD_NAMESPACE, else default)
    #[arg(long, value_name = "NS", env = "TFJOB_LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,

    /// A lease not renewed for this long is taken over
    #[arg(
        long,
        value_name = "D",
        env = "TFJOB_LEADER_ELECTION_LEASE_DURATION",
        value_parser = parse_duration,
        default_value = "15s"
    )]
    leader_election_lease_duration: Duration,

    /// A leader that cannot renew for this long stops
    #[arg(
        long,
        value_name = "D",
        env = "TFJOB_LEADER_ELECTION_RENEW_DEADLINE",
        value_parser = parse_duration,
        default_value = "10s"
    )]
    leader_election_renew_deadline: Duration,

    /// How often the lease is read and renewed
    #[arg(
        long,
        value_name = "D",
        env = "TFJOB_LEADER_ELECTION_RETRY_PERIOD",
        value_parser = parse_duration,
        default_value = "2s"
    )]
    leader_election_retry_period: Duration,
}

/// The command with clap's own reading of the environment turned off: each flag's help
/// names its variable instead.
fn command() -> clap::Command {
    Flags::command().mut_args(|arg| {
        let Some(var) = arg.get_env().map(|v| v.to_string_lossy().into_owned()) else { return arg };
        let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
        arg.env(None).help(format!("{help} [env: {var}]"))
    })
}

impl Options {
    /// Parses `args` (the program name first, as in [`std::env::args_os`]); `env` looks up
    /// environment variables. A flag wins over its variable, which is then not read; a
    /// variable set to the empty string counts as the flag given with an empty value.
    ///
    /// `--help` and refusals come back as the error; [`clap::Error::exit`] prints them.
    pub fn from_args<I, T>(args: I, env: impl Fn(&str) -> Option<String>) -> Result<Options, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString>,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        if args.is_empty() {
            args.push("tfjob-operator".into());
        }
        let mut command = command();
        // First the arguments alone, to learn which flags they give: only the variables of the
        // others are read, as `--flag=value` ahead of the arguments.
        let given = command.try_get_matches_from_mut(&args)?;
        let from_env = Flags::command()
            .get_arguments()
            .filter(|arg| given.value_source(arg.get_id().as_str()) != Some(ValueSource::CommandLine))
            .filter_map(|arg| {
                let value = env(arg.get_env()?.to_str()?)?;
                Some(OsString::from(format!("--{}={value}", arg.get_long()?)))
            })
            .collect::<Vec<_>>();
        args.splice(1..1, from_env);
        let matches = command.try_get_matches_from_mut(args)?;
        let flags = Flags::from_arg_matches(&matches).map_err(|e| e.format(&mut command))?;
        let timings = Timings {
            lease: flags.leader_election_lease_duration,
            renew_deadline: flags.leader_election_renew_deadline,
            retry: flags.leader_election_retry_period,
        };
        if !(timings.lease > timings.renew_deadline
            && timings.renew_deadline > timings.retry
            && !timings.retry.is_zero())
        {
            return Err(command.error(
                ErrorKind::ArgumentConflict,
                "leader election needs lease duration > renew deadline > retry period > 0",
            ));
        }
        if flags.request_timeout.is_zero() {
            return Err(command.error(ErrorKind::ValueValidation, "--request-timeout must be more than 0"));
        }
        let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
        let leader_election = flags.leader_elect.then(|| LeaderElection {
            namespace: non_empty(flags.leader_election_namespace)
                .or_else(|| non_empty(env("POD_NAMESPACE")))
                .unwrap_or_else(|| "default".into()),
            timings,
        });
        let qps = flags.kube_api_qps;
        Ok(Options {
            namespace: non_empty(flags.namespace.or_else(|| env("KUBEFLOW_NAMESPACE"))),
            concurrency: flags.concurrency,
            writes_in_flight: flags.writes_in_flight,
            kube_api_qps: qps,
            kube_api_burst: flags.kube_api_burst.unwrap_or(qps).max(qps),
            cluster_domain: non_empty(flags.cluster_domain.or_else(|| env("CUSTOM_CLUSTER_DOMAIN"))),
            announce_creates: flags.announce_creates,
            startup_deadline_seconds: flags.startup_deadline_seconds,
            http_addr: flags.http_addr,
            log_format: flags.log_format,
            request_timeout: match &leader_election {
                Some(le) => flags.request_timeout.min(le.timings.renew_deadline),
                None => flags.request_timeout,
            },
            leader_election,
            gang_scheduling: flags.gang_scheduling,
            kueue_workloads: flags.kueue_workloads,
        })
    }

    /// The process's arguments and environment; prints the help or a refusal and exits
    /// when there are no options to run with.
    pub fn from_process() -> Options {
        Options::from_args(std::env::args_os(), |k| std::env::var(k).ok()).unwrap_or_else(|e| e.exit())
    }
}

/// `15s`, `500ms`, `2m`, or a bare number of seconds.
fn parse_duration(v: &str) -> Result<Duration, String> {
    let invalid = || format!("{v:?} is not a duration (15s, 500ms, 2m, or a number of seconds)");
    let (number, unit) = match v.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: f64 = number.parse().map_err(|_| invalid())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(invalid()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| invalid())
}

#[cfg(test)]
mod tests;
