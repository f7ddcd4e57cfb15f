//! Command-line flags, each also an environment variable (`TFJOB_<FLAG>`), parsed purely.

use std::net::SocketAddr;

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
}

pub const USAGE: &str = "tfjob-operator: runs Kubeflow TFJobs (kubeflow.org/v1)

Flags (each also an environment variable, e.g. --kube-api-qps or TFJOB_KUBE_API_QPS):
  --namespace NS        watch one namespace only (default: all; env also KUBEFLOW_NAMESPACE)
  --concurrency N       jobs reconciled at once (default 16; 0: no limit)
  --kube-api-qps N      client-side request rate limit (default 0: none; the API server's
                        priority and fairness protects it)
  --kube-api-burst N    requests allowed in a burst above the rate (default: the rate)
  --cluster-domain D    appended to TF_CONFIG service addresses (env also CUSTOM_CLUSTER_DOMAIN)
  --http-addr ADDR      /healthz and /readyz (default 0.0.0.0:8080)
  --log-format F        text or json (default text); RUST_LOG sets the level (default info)
";

fn env_name(flag: &str) -> String {
    format!("TFJOB_{}", flag.trim_start_matches("--").replace('-', "_").to_uppercase())
}

/// Parses `args` (without the program name); `env` looks up environment variables. A flag
/// wins over its variable.
pub fn parse(args: &[String], env: impl Fn(&str) -> Option<String>) -> Result<Options, String> {
    const FLAGS: [&str; 7] = [
        "--namespace",
        "--concurrency",
        "--kube-api-qps",
        "--kube-api-burst",
        "--cluster-domain",
        "--http-addr",
        "--log-format",
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
    })
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
        ];
        for (a, want) in cases {
            let err = parse(&args(a), |_| None).unwrap_err();
            assert!(err.starts_with(want), "{a}: {err}");
        }
        assert!(parse(&args("--help"), |_| None).unwrap_err().starts_with("tfjob-operator:"));
    }
}
