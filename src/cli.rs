//! Command-line flags, each also an environment variable (`TFJOB_<FLAG>`), parsed by clap
//! from arguments and variables that are passed in, so that parsing is a pure function.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{ArgAction, CommandFactory, FromArgMatches, Parser, ValueEnum};

use crate::leader::Timings;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The operator's options.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    pub namespace: Option<String>,
    pub concurrency: u16,
    pub kube_api_qps: u32,
    pub kube_api_burst: u32,
    pub cluster_domain: Option<String>,
    /// The startup deadline of jobs without the annotation; `None`: no default.
    pub startup_deadline_seconds: Option<i64>,
    pub http_addr: SocketAddr,
    pub log_format: LogFormat,
    /// How long any API request but a watch may take, its response included; under leader
    /// election at most the renew deadline.
    pub request_timeout: Duration,
    /// Leader election: off (`None`) or its Lease's namespace and timings.
    pub leader_election: Option<LeaderElection>,
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

    /// Client-side request rate limit (0: none; the API server's priority and fairness protects it)
    #[arg(long, value_name = "N", env = "TFJOB_KUBE_API_QPS", default_value_t = 0)]
    kube_api_qps: u32,

    /// Requests allowed in a burst above the rate (default and at least: the rate)
    #[arg(long, value_name = "N", env = "TFJOB_KUBE_API_BURST")]
    kube_api_burst: Option<u32>,

    /// Appended to TF_CONFIG service addresses (the variable CUSTOM_CLUSTER_DOMAIN is read too)
    #[arg(long, value_name = "D", env = "TFJOB_CLUSTER_DOMAIN")]
    cluster_domain: Option<String>,

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

    /// How long an API request (but a watch) may take, its response included; under leader
    /// election at most the renew deadline
    #[arg(
        long,
        value_name = "D",
        env = "TFJOB_REQUEST_TIMEOUT",
        value_parser = parse_duration,
        default_value = "10s"
    )]
    request_timeout: Duration,

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
            kube_api_qps: qps,
            kube_api_burst: flags.kube_api_burst.unwrap_or(qps).max(qps),
            cluster_domain: non_empty(flags.cluster_domain.or_else(|| env("CUSTOM_CLUSTER_DOMAIN"))),
            startup_deadline_seconds: flags.startup_deadline_seconds,
            http_addr: flags.http_addr,
            log_format: flags.log_format,
            request_timeout: match &leader_election {
                Some(le) => flags.request_timeout.min(le.timings.renew_deadline),
                None => flags.request_timeout,
            },
            leader_election,
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
mod tests {
    use super::*;

    fn parse(args: &str, env: impl Fn(&str) -> Option<String>) -> Result<Options, clap::Error> {
        Options::from_args(std::iter::once("tfjob-operator").chain(args.split_whitespace()), env)
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    /// An environment of these variables only.
    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k: &str| vars.iter().find(|(name, _)| name == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn clap_accepts_the_definition() {
        Flags::command().debug_assert();
        command().debug_assert();
    }

    #[test]
    fn every_flag_is_its_tfjob_variable() {
        let flags = Flags::command();
        let mut n = 0;
        for arg in flags.get_arguments().filter(|a| a.get_id() != "help") {
            let long = arg.get_long().unwrap();
            let want = format!("TFJOB_{}", long.replace('-', "_").to_uppercase());
            assert_eq!(arg.get_env().and_then(|v| v.to_str()), Some(want.as_str()), "--{long}");
            n += 1;
        }
        assert_eq!(n, 14);
        let help = command().render_help().to_string();
        assert!(help.contains("[env: TFJOB_LEADER_ELECTION_RETRY_PERIOD]"), "{help}");
    }

    #[test]
    fn defaults() {
        let o = parse("", no_env).unwrap();
        assert_eq!(o.namespace, None);
        assert_eq!(o.concurrency, 16);
        assert_eq!((o.kube_api_qps, o.kube_api_burst), (0, 0));
        assert_eq!(o.cluster_domain, None);
        assert_eq!(o.startup_deadline_seconds, None);
        let o = parse("", env_of(&[("TFJOB_STARTUP_DEADLINE_SECONDS", "600")])).unwrap();
        assert_eq!(o.startup_deadline_seconds, Some(600));
        assert!(parse("--startup-deadline-seconds=0", no_env).is_err(), "0 is refused");
        assert!(parse("--startup-deadline-seconds=10m", no_env).is_err(), "seconds only");
        assert_eq!(o.http_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(o.log_format, LogFormat::Text);
        assert_eq!(o.leader_election, None);
        assert_eq!(o.request_timeout, Duration::from_secs(10));
        let le = parse("--leader-elect", no_env).unwrap().leader_election.unwrap();
        assert_eq!(le.timings, Timings::default(), "the help's default durations are the elector's");
    }

    #[test]
    fn request_timeout_is_bounded_by_the_renew_deadline() {
        let s = Duration::from_secs;
        let cases = [
            ("--request-timeout 30s", s(30)),
            ("--request-timeout 30s --leader-elect", s(10)),
            ("--request-timeout 3s --leader-elect", s(3)),
            ("--leader-elect --leader-election-renew-deadline 5s --leader-election-retry-period 1s", s(5)),
        ];
        for (args, want) in cases {
            assert_eq!(parse(args, no_env).unwrap().request_timeout, want, "{args}");
        }
        assert_eq!(parse("", env_of(&[("TFJOB_REQUEST_TIMEOUT", "2s")])).unwrap().request_timeout, s(2));
        assert!(parse("--request-timeout 0", no_env).is_err());
    }

    #[test]
    fn leader_election_flags() {
        let env = env_of(&[("POD_NAMESPACE", "ops")]);
        let o = parse("--leader-elect", &env).unwrap();
        assert_eq!(
            o.leader_election,
            Some(LeaderElection { namespace: "ops".into(), timings: Timings::default() })
        );
        let o = parse(
            "--leader-elect=true --leader-election-namespace x --leader-election-lease-duration 3s --leader-election-renew-deadline 2000ms --leader-election-retry-period 0.5",
            &env,
        )
        .unwrap();
        let le = o.leader_election.unwrap();
        assert_eq!(le.namespace, "x");
        let ms = Duration::from_millis;
        assert_eq!(
            (le.timings.lease, le.timings.renew_deadline, le.timings.retry),
            (ms(3000), ms(2000), ms(500))
        );
        let o = parse(
            "--leader-elect --leader-election-lease-duration=1m --leader-election-renew-deadline=30 --leader-election-retry-period=1.5s",
            no_env,
        )
        .unwrap();
        let t = o.leader_election.unwrap().timings;
        assert_eq!((t.lease, t.renew_deadline, t.retry), (ms(60_000), ms(30_000), ms(1500)));
        assert_eq!(parse("--leader-elect=false", &env).unwrap().leader_election, None);
        assert_eq!(parse("--leader-elect --leader-elect=false", &env).unwrap().leader_election, None);
        assert_eq!(parse("", no_env).unwrap().leader_election, None);
        assert_eq!(parse("--leader-elect", no_env).unwrap().leader_election.unwrap().namespace, "default");
        let empty_pod_ns = env_of(&[("POD_NAMESPACE", "")]);
        assert_eq!(
            parse("--leader-elect", empty_pod_ns).unwrap().leader_election.unwrap().namespace,
            "default"
        );
        let o = parse("--leader-elect --leader-election-namespace=", &env).unwrap();
        assert_eq!(o.leader_election.unwrap().namespace, "ops", "an empty flag is unset");
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("500ms"), Ok(ms(500)));
        assert!(parse_duration("7h").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn flags_environment_and_precedence() {
        let env = env_of(&[
            ("TFJOB_NAMESPACE", "from-env"),
            ("TFJOB_KUBE_API_QPS", "50"),
            ("CUSTOM_CLUSTER_DOMAIN", "cluster.local"),
        ]);
        let o = parse("--namespace ns1 --concurrency=4 --log-format json --http-addr 127.0.0.1:9000", &env)
            .unwrap();
        assert_eq!(o.namespace.as_deref(), Some("ns1"), "the flag wins");
        assert_eq!(o.concurrency, 4);
        assert_eq!((o.kube_api_qps, o.kube_api_burst), (50, 50), "burst defaults to the rate");
        assert_eq!(o.cluster_domain.as_deref(), Some("cluster.local"));
        assert_eq!(o.http_addr.to_string(), "127.0.0.1:9000");
        assert_eq!(o.log_format, LogFormat::Json);
        let o = parse("--kube-api-qps 10 --kube-api-burst 30", no_env).unwrap();
        assert_eq!((o.kube_api_qps, o.kube_api_burst), (10, 30));
        let o = parse("--kube-api-qps 10 --kube-api-burst 3", no_env).unwrap();
        assert_eq!((o.kube_api_qps, o.kube_api_burst), (10, 10), "burst is at least the rate");
        let o = parse("--concurrency 1 --concurrency 2", no_env).unwrap();
        assert_eq!(o.concurrency, 2, "the last of a repeated flag wins");
        let o = parse("", env_of(&[("KUBEFLOW_NAMESPACE", "kf")])).unwrap();
        assert_eq!(o.namespace.as_deref(), Some("kf"));
    }

    /// Every variable means its flag given with its value, and the flag given with another
    /// value wins over it.
    #[test]
    fn every_variable() {
        // (variable, its flag, the variable's value, the flag's value)
        let cases = [
            ("TFJOB_NAMESPACE", "--namespace", "a", "b"),
            ("KUBEFLOW_NAMESPACE", "--namespace", "a", "b"),
            ("TFJOB_CONCURRENCY", "--concurrency", "3", "0"),
            ("TFJOB_KUBE_API_QPS", "--kube-api-qps", "7", "8"),
            ("TFJOB_KUBE_API_BURST", "--kube-api-burst", "9", "11"),
            ("TFJOB_CLUSTER_DOMAIN", "--cluster-domain", "a.b", "c.d"),
            ("CUSTOM_CLUSTER_DOMAIN", "--cluster-domain", "a.b", "c.d"),
            ("TFJOB_HTTP_ADDR", "--http-addr", "127.0.0.1:1", "[::1]:2"),
            ("TFJOB_LOG_FORMAT", "--log-format", "json", "text"),
            ("TFJOB_LEADER_ELECT", "--leader-elect", "true", "false"),
            ("TFJOB_LEADER_ELECTION_NAMESPACE", "--leader-election-namespace", "a", "b"),
            ("POD_NAMESPACE", "--leader-election-namespace", "a", "b"),
            ("TFJOB_LEADER_ELECTION_LEASE_DURATION", "--leader-election-lease-duration", "20s", "30s"),
            ("TFJOB_LEADER_ELECTION_RENEW_DEADLINE", "--leader-election-renew-deadline", "3s", "4s"),
            ("TFJOB_LEADER_ELECTION_RETRY_PERIOD", "--leader-election-retry-period", "100ms", "1"),
        ];
        for (var, flag, value, other) in cases {
            // Leader election on, so that its variables show.
            let base = if flag == "--leader-elect" { "" } else { "--leader-elect" };
            let env = env_of(&[(var, value)]);
            let from_env = parse(base, &env).unwrap_or_else(|e| panic!("{var}={value}: {e}"));
            assert_ne!(from_env, parse(base, no_env).unwrap(), "{var}={value} is read");
            let as_flag = format!("{base} {flag}={value}");
            assert_eq!(from_env, parse(&as_flag, no_env).unwrap(), "{var}={value} means {flag}={value}");
            let args = format!("{base} {flag}={other}");
            assert_eq!(parse(&args, &env).unwrap(), parse(&args, no_env).unwrap(), "{flag} wins over {var}");
        }
        let env = env_of(&[("TFJOB_LEADER_ELECTION_NAMESPACE", "a"), ("POD_NAMESPACE", "p")]);
        assert_eq!(parse("--leader-elect", &env).unwrap().leader_election.unwrap().namespace, "a");
        let env = env_of(&[("TFJOB_LEADER_ELECT", "true"), ("POD_NAMESPACE", "p")]);
        assert_eq!(parse("", &env).unwrap().leader_election.unwrap().namespace, "p");
        let env = env_of(&[("TFJOB_NAMESPACE", "t"), ("KUBEFLOW_NAMESPACE", "k")]);
        assert_eq!(parse("", &env).unwrap().namespace.as_deref(), Some("t"), "TFJOB_ before KUBEFLOW_");
        let env = env_of(&[("TFJOB_CLUSTER_DOMAIN", "t"), ("CUSTOM_CLUSTER_DOMAIN", "c")]);
        assert_eq!(parse("", &env).unwrap().cluster_domain.as_deref(), Some("t"));
        let env = env_of(&[("KUBEFLOW_NAMESPACE", ""), ("CUSTOM_CLUSTER_DOMAIN", "")]);
        let o = parse("", &env).unwrap();
        assert_eq!((o.namespace, o.cluster_domain), (None, None), "empty values are unset");
        let env = env_of(&[("TFJOB_CONCURRENCY", "x")]);
        assert!(parse("", &env).is_err(), "a bad variable is refused");
        assert_eq!(parse("--concurrency 5", &env).unwrap().concurrency, 5, "unless its flag overrides it");
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let cases = [
            ("--bogus 1", "unexpected argument '--bogus'"),
            ("--concurrency", "a value is required for '--concurrency <N>'"),
            ("--concurrency x", "invalid value 'x' for '--concurrency <N>'"),
            (
                "--concurrency 70000",
                "invalid value '70000' for '--concurrency <N>': 70000 is not in 0..=65535",
            ),
            ("--log-format xml", "invalid value 'xml' for '--log-format <F>'"),
            ("--http-addr nope", "invalid value 'nope' for '--http-addr <ADDR>'"),
            ("--leader-elect=maybe", "invalid value 'maybe' for '--leader-elect[=<BOOL>]'"),
            ("--leader-elect false", "unexpected argument 'false'"),
            ("--leader-election-retry-period soon", "\"soon\" is not a duration"),
            ("--leader-election-renew-deadline 20s", "leader election needs lease duration > renew deadline"),
            (
                "--leader-election-retry-period 0",
                "leader election needs lease duration > renew deadline > retry period > 0",
            ),
        ];
        for (a, want) in cases {
            let err = parse(a, no_env).unwrap_err();
            assert_ne!(err.kind(), ErrorKind::DisplayHelp);
            let text = err.to_string();
            assert!(text.contains(want), "{a}: {text}");
        }
        for help in ["--help", "-h"] {
            let err = parse(help, no_env).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::DisplayHelp);
            let text = err.to_string();
            assert!(text.starts_with("Runs Kubeflow TFJobs"), "{text}");
            assert!(text.contains("--leader-election-namespace <NS>"), "{text}");
        }
    }
}
