//! Table tests of the flags and their environment variables.

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
    assert_eq!(n, 18);
    let help = command().render_help().to_string();
    assert!(help.contains("[env: TFJOB_LEADER_ELECTION_RETRY_PERIOD]"), "{help}");
}

#[test]
fn defaults() {
    let o = parse("", no_env).unwrap();
    assert_eq!(o.namespace, None);
    assert_eq!(o.concurrency, 16);
    assert_eq!(o.writes_in_flight, 16);
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
    assert_eq!(o.gang_scheduling, GangScheduling::None);
    assert_eq!(o.kueue_workloads, WorkloadsBy::Kueue);
    let own = parse("--kueue-workloads=operator", no_env).unwrap();
    assert_eq!(own.kueue_workloads, WorkloadsBy::Operator);
    let own = parse("", env_of(&[("TFJOB_KUEUE_WORKLOADS", "operator")])).unwrap();
    assert_eq!(own.kueue_workloads, WorkloadsBy::Operator);
    assert!(parse("--kueue-workloads=builtin", no_env).is_err(), "kueue or operator only");
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
    assert_eq!(parse("--leader-elect", empty_pod_ns).unwrap().leader_election.unwrap().namespace, "default");
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
    let o =
        parse("--namespace ns1 --concurrency=4 --log-format json --http-addr 127.0.0.1:9000", &env).unwrap();
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
        ("TFJOB_WRITES_IN_FLIGHT", "--writes-in-flight", "3", "4"),
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
        ("--concurrency 70000", "invalid value '70000' for '--concurrency <N>': 70000 is not in 0..=65535"),
        ("--writes-in-flight 0", "invalid value '0' for '--writes-in-flight <N>': 0 is not in 1..=65535"),
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

#[test]
fn gang_scheduling_is_none_or_native() {
    assert_eq!(parse("--gang-scheduling native", no_env).unwrap().gang_scheduling, GangScheduling::Native);
    assert_eq!(parse("--gang-scheduling=none", no_env).unwrap().gang_scheduling, GangScheduling::None);
    let env = env_of(&[("TFJOB_GANG_SCHEDULING", "native")]);
    assert_eq!(parse("", env).unwrap().gang_scheduling, GangScheduling::Native);
    let e = parse("--gang-scheduling volcano", no_env).unwrap_err().to_string();
    assert!(e.contains("possible values: none, native"), "{e}");
}
