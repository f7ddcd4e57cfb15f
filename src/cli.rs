//! Command-line flags, each also an environment variable (`TFJOB_<FLAG>`), parsed purely.

use std::net::SocketAddr;
use std::time::Duration;

use crate::leader::Timings;

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    pub http_addr: SocketAddr,
    pub log_format: LogFormat,
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

pub const USAGE: &str = "tfjob-operator: runs Kubeflow TFJobs (kubeflow.org/v1)

Flags (each also an environment variable, e.g. --kube-api-qps or TFJOB_KUBE_API_QPS):
  --namespace NS        watch one namespace only (default: all; env also KUBEFLOW_NAMESPACE)
  --concurrency N       jobs reconciled at once (default 16; 0: no limit)
  --kube-api-qps N      client-side request rate limit (default 0: none; the API server's
                        priority and fairness protects it)
  --kube-api-burst N    requests allowed in a burst above the rate (default: the rate)
  --cluster-domain D    appended to TF_CONFIG service addresses (env also CUSTOM_CLUSTER_DOMAIN)
  --http-addr ADDR      /healthz, /readyz and /metrics (default 0.0.0.0:8080)
  --log-format F        text or json (default text); RUST_LOG sets the level (default info)
  --leader-elect[=BOOL] only the holder of the Lease tfjob-operator reconciles (default false)
  --leader-election-namespace NS
                        the Lease's namespace (default: env POD_NAMESPACE, else default)
  --leader-election-lease-duration D
                        a lease not renewed for D is taken over (default 15s)
  --leader-election-renew-deadline D
                        a leader that cannot renew for D stops (default 10s)
  --leader-election-retry-period D
                        how often the lease is read and renewed (default 2s)
Durations: a number with ms, s or m (15s, 500ms); a bare number is seconds.
";

fn env_name(flag: &str) -> String {
    format!("TFJOB_{}", flag.trim_start_matches("--").replace('-', "_").to_uppercase())
}

/// Parses `args` (without the program name); `env` looks up environment variables. A flag
/// wins over its variable.
pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Options, String> {
    const FLAGS: [&str; 12] = [
        "--namespace",
        "--concurrency",
        "--kube-api-qps",
        "--kube-api-burst",
        "--cluster-domain",
        "--http-addr",
        "--log-format",
        "--leader-elect",
        "--leader-election-namespace",
        "--leader-election-lease-duration",
        "--leader-election-renew-deadline",
        "--leader-election-retry-period",
    ];
    let mut given: Vec<(String, String)> = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg == "--help" || arg == "-h" {
            return Err(USAGE.to_string());
        }
        let (flag, value) = match arg.split_once('=') {
            Some((f, v)) => (f.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        if !FLAGS.contains(&flag.as_str()) {
            return Err(format!("unknown flag {arg}\n\n{USAGE}"));
        }
        let value = match value {
            Some(v) => v,
            None if flag == "--leader-elect" => "true".into(),
            None => it.next().cloned().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        given.push((flag, value));
    }
    let get = |flag: &str| -> Option<String> {
        given.iter().rev().find(|(f, _)| f == flag).map(|(_, v)| v.clone()).or_else(|| env(&env_name(flag)))
    };
    let number = |flag: &str, default: u32| -> Result<u32, String> {
        get(flag).map_or(Ok(default), |v| v.parse().map_err(|_| format!("{flag}: not a number: {v:?}")))
    };
    let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
    let qps = number("--kube-api-qps", 0)?;
    let elect = match get("--leader-elect").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(format!("--leader-elect: {other:?} is not true or false")),
    };
    let duration = |flag: &str, default: Duration| -> Result<Duration, String> {
        get(flag).map_or(Ok(default), |v| {
            parse_duration(&v).ok_or_else(|| format!("{flag}: not a duration: {v:?}"))
        })
    };
    let defaults = Timings::default();
    let timings = Timings {
        lease: duration("--leader-election-lease-duration", defaults.lease)?,
        renew_deadline: duration("--leader-election-renew-deadline", defaults.renew_deadline)?,
        retry: duration("--leader-election-retry-period", defaults.retry)?,
    };
    if !(timings.lease > timings.renew_deadline
        && timings.renew_deadline > timings.retry
        && !timings.retry.is_zero())
    {
        return Err("leader election needs lease duration > renew deadline > retry period > 0".into());
    }
    let leader_election = elect.then(|| LeaderElection {
        namespace: non_empty(get("--leader-election-namespace"))
            .or_else(|| non_empty(env("POD_NAMESPACE")))
            .unwrap_or_else(|| "default".into()),
        timings,
    });
    Ok(Options {
        namespace: non_empty(get("--namespace").or_else(|| env("KUBEFLOW_NAMESPACE"))),
        concurrency: u16::try_from(number("--concurrency", 16)?)
            .map_err(|_| "--concurrency: at most 65535")?,
        kube_api_qps: qps,
        kube_api_burst: number("--kube-api-burst", qps)?.max(qps),
        cluster_domain: non_empty(get("--cluster-domain").or_else(|| env("CUSTOM_CLUSTER_DOMAIN"))),
        http_addr: get("--http-addr")
            .unwrap_or_else(|| "0.0.0.0:8080".into())
            .parse()
            .map_err(|e| format!("--http-addr: {e}"))?,
        log_format: match get("--log-format").as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(format!("--log-format: {other:?} is not text or json")),
        },
        leader_election,
    })
}

/// `15s`, `500ms`, `2m`, or a bare number of seconds.
fn parse_duration(v: &str) -> Option<Duration> {
    let (number, unit) = match v.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: f64 = number.parse().ok()?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn defaults() {
        let o = parse(&[], |_| None).unwrap();
        assert_eq!(o.namespace, None);
        assert_eq!(o.concurrency, 16);
        assert_eq!((o.kube_api_qps, o.kube_api_burst), (0, 0));
        assert_eq!(o.http_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(o.log_format, LogFormat::Text);
        assert_eq!(o.leader_election, None);
    }

    #[test]
    fn leader_election_flags() {
        let env = |k: &str| (k == "POD_NAMESPACE").then(|| "ops".to_string());
        let o = parse(&args("--leader-elect"), env).unwrap();
        assert_eq!(
            o.leader_election,
            Some(LeaderElection { namespace: "ops".into(), timings: Timings::default() })
        );
        let o = parse(
            &args("--leader-elect=true --leader-election-namespace x --leader-election-lease-duration 3s --leader-election-renew-deadline 2000ms --leader-election-retry-period 0.5"),
            env,
        )
        .unwrap();
        let le = o.leader_election.unwrap();
        assert_eq!(le.namespace, "x");
        let ms = Duration::from_millis;
        assert_eq!(
            (le.timings.lease, le.timings.renew_deadline, le.timings.retry),
            (ms(3000), ms(2000), ms(500))
        );
        assert_eq!(parse(&args("--leader-elect=false"), env).unwrap().leader_election, None);
        assert_eq!(parse(&[], |_| None).unwrap().leader_election, None);
        assert_eq!(
            parse(&args("--leader-elect"), |_| None).unwrap().leader_election.unwrap().namespace,
            "default"
        );
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("7h"), None);
    }

    #[test]
    fn flags_environment_and_precedence() {
        let env = |k: &str| match k {
            "TFJOB_NAMESPACE" => Some("from-env".to_string()),
            "TFJOB_KUBE_API_QPS" => Some("50".to_string()),
            "CUSTOM_CLUSTER_DOMAIN" => Some("cluster.local".to_string()),
            _ => None,
        };
        let o =
            parse(&args("--namespace ns1 --concurrency=4 --log-format json --http-addr 127.0.0.1:9000"), env)
                .unwrap();
        assert_eq!(o.namespace.as_deref(), Some("ns1"), "the flag wins");
        assert_eq!(o.concurrency, 4);
        assert_eq!((o.kube_api_qps, o.kube_api_burst), (50, 50), "burst defaults to the rate");
        assert_eq!(o.cluster_domain.as_deref(), Some("cluster.local"));
        assert_eq!(o.http_addr.to_string(), "127.0.0.1:9000");
        assert_eq!(o.log_format, LogFormat::Json);
        let o = parse(&args("--kube-api-qps 10 --kube-api-burst 30"), |_| None).unwrap();
        assert_eq!((o.kube_api_qps, o.kube_api_burst), (10, 30));
        let o = parse(&[], |k| (k == "KUBEFLOW_NAMESPACE").then(|| "kf".to_string())).unwrap();
        assert_eq!(o.namespace.as_deref(), Some("kf"));
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let cases = [
            ("--bogus 1", "unknown flag --bogus"),
            ("--concurrency", "--concurrency needs a value"),
            ("--concurrency x", "--concurrency: not a number"),
            ("--concurrency 70000", "--concurrency: at most 65535"),
            ("--log-format xml", "--log-format: \"xml\" is not text or json"),
            ("--http-addr nope", "--http-addr:"),
            ("--leader-elect=maybe", "--leader-elect: \"maybe\" is not true or false"),
            ("--leader-election-retry-period soon", "--leader-election-retry-period: not a duration"),
            ("--leader-election-renew-deadline 20s", "leader election needs lease duration > renew deadline"),
        ];
        for (a, want) in cases {
            let err = parse(&args(a), |_| None).unwrap_err();
            assert!(err.starts_with(want), "{a}: {err}");
        }
        assert!(parse(&args("--help"), |_| None).unwrap_err().starts_with("tfjob-operator:"));
    }
}
