//! The suite's RBAC audit: every operator process reports, as it stops, the requests it sent
//! (its own `tfjob_operator_api_requests_total`, by verb, resource and code); after the suite,
//! no process was refused (401 or 403) unless its test expected it, and `deploy/`'s RBAC is
//! exactly what the code sends: every (verb, resource) sent is granted, and every granted one
//! was sent or is listed below with the reason it never is.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::Ctx;

/// Granted but never sent, and why.
const GRANTED_UNSENT: &[(&str, &str, &str, &str)] = &[(
    "kubeflow.org",
    "tfjobs/finalizers",
    "update",
    "never sent: the API server checks it when the operator sets blockOwnerDeletion on the owner references of its pods and services",
)];

/// Granted, sent only in a rare case that the suite may not provoke in every run, and when.
const GRANTED_RARE: &[(&str, &str, &str, &str)] = &[
    (
        "",
        "pods",
        "get",
        "only after a pod create answered 409 (a cache behind a kill or a re-list), to see whose pod it is",
    ),
    ("", "services", "get", "only after a service create answered 409, to see whose service it is"),
    (
        "scheduling.k8s.io",
        "podgroups",
        "get",
        "only after a PodGroup create answered 409, to see whose it is",
    ),
    ("kueue.x-k8s.io", "workloads", "get", "only after a Workload create answered 409, to see whose it is"),
];

/// Who ran an operator process and what it may do.
#[derive(Clone, Debug)]
pub struct Sender {
    ns: String,
    name: String,
    /// Authenticated with a ServiceAccount token (as deployed), or else with a certificate of
    /// its own kubeconfig (a second plane's), for the reason given.
    admin: Option<&'static str>,
    refusals_expected: Option<&'static str>,
    /// Refusals answered before a known instant (an API server restarting, whose authorizer
    /// has not loaded RBAC yet), by (verb, resource, code): only refusals beyond these count.
    refusals_before: BTreeMap<(String, String, String), f64>,
}

/// What one process sent: (verb, resource, code) → requests.
#[derive(Clone, Debug)]
struct Sent {
    sender: Sender,
    requests: BTreeMap<(String, String, String), f64>,
}

static SENT: Mutex<Vec<Sent>> = Mutex::new(Vec::new());

impl Sender {
    /// A process authenticated by `kubeconfig`: a token there is a ServiceAccount's.
    pub fn new(ctx: &Ctx, name: &str, kubeconfig: &Path) -> Sender {
        let text = std::fs::read_to_string(kubeconfig).unwrap_or_default();
        let admin =
            (!text.contains("token:")).then_some("a kubeconfig of its own (certificate, not a token)");
        Sender {
            ns: ctx.ns.clone(),
            name: name.to_string(),
            admin,
            refusals_expected: None,
            refusals_before: BTreeMap::new(),
        }
    }

    pub fn expect_refusals(&mut self, why: &'static str) {
        self.refusals_expected = Some(why);
    }

    /// Refusals in `metrics` (the process's `/metrics` now) are not counted by the audit.
    pub fn forgive_refusals_in(&mut self, metrics: &str) {
        self.refusals_before =
            parse_requests(metrics).into_iter().filter(|((_, _, c), _)| c == "401" || c == "403").collect();
    }

    /// Reads the process's request counts from its `/metrics` (if it still answers) and keeps
    /// them for [`check`].
    pub fn record(&self, port: u16) {
        let Some(text) = metrics_blocking(port) else { return };
        let requests = parse_requests(&text);
        if let Ok(mut all) = SENT.lock() {
            all.push(Sent { sender: self.clone(), requests });
        }
    }
}

/// `GET /metrics` on loopback without an async runtime (this runs in `Drop`).
fn metrics_blocking(port: u16) -> Option<String> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// `tfjob_operator_api_requests_total{verb, resource, code}` samples.
fn parse_requests(text: &str) -> BTreeMap<(String, String, String), f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("tfjob_operator_api_requests_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else { continue };
        let label = |k: &str| {
            labels
                .split(&[',', '{', '}'][..])
                .find_map(|kv| kv.strip_prefix(&format!("{k}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let n: f64 = value.parse().unwrap_or(0.0);
        *out.entry((label("verb"), label("resource"), label("code"))).or_insert(0.0) += n;
    }
    out
}

/// The API group of a resource as the request counter names it.
fn group_of(resource: &str) -> Option<&'static str> {
    Some(match resource {
        "pods" | "services" => "",
        "tfjobs" | "tfjobs/status" => "kubeflow.org",
        "events" => "events.k8s.io",
        "leases" => "coordination.k8s.io",
        "podgroups" => "scheduling.k8s.io",
        "workloads" | "workloads/status" | "resourceflavors" | "workloadpriorityclasses" => "kueue.x-k8s.io",
        _ => return None,
    })
}

type Grant = (String, String, String);

/// (group, resource, verb) granted by the rules of the rendered role documents.
fn grants(roles: &[&Value]) -> BTreeSet<Grant> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(String::from)).collect()
    };
    let mut out = BTreeSet::new();
    for rule in roles.iter().flat_map(|r| r["rules"].as_array().cloned().unwrap_or_default()) {
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    out.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    out
}

/// The rules `deploy/` grants (its ClusterRole and the lease Role), checked to equal
/// `deploy/namespaced`'s.
fn deploy_grants(ctx: &Ctx) -> Result<BTreeSet<Grant>> {
    let (wide, _) = super::deploy::render(ctx, "deploy")?;
    let (ns, _) = super::deploy::render(ctx, "deploy/namespaced")?;
    let roles = |docs: &[Value], kinds: &[&str]| -> Vec<Value> {
        docs.iter().filter(|d| kinds.contains(&super::deploy::kind(d))).cloned().collect()
    };
    let wide_roles = roles(&wide, &["ClusterRole", "Role"]);
    let ns_roles = roles(&ns, &["Role"]);
    let g_wide = grants(&wide_roles.iter().collect::<Vec<_>>());
    let g_ns = grants(&ns_roles.iter().collect::<Vec<_>>());
    ensure!(g_wide == g_ns, "deploy/ grants {g_wide:?} but deploy/namespaced {g_ns:?}");
    Ok(g_wide)
}

/// After the suite: no refusal nobody expected, in any test.
/// `whole` is false for a filtered run, whose operators may all have exited before they could
/// report (a test of a leader that steps down).
pub fn check_no_refusals(whole: bool) -> Result<String> {
    let all = SENT.lock().map(|s| s.clone()).unwrap_or_default();
    ensure!(!whole || !all.is_empty(), "no operator process reported its requests");
    let mut refused = Vec::new();
    let mut expected = 0;
    for s in &all {
        let refusals: BTreeMap<&(String, String, String), f64> = s
            .requests
            .iter()
            .filter(|((_, _, c), _)| c == "401" || c == "403")
            .map(|(k, n)| (k, n - s.sender.refusals_before.get(k).copied().unwrap_or(0.0)))
            .filter(|(_, n)| *n > 0.0)
            .collect();
        let n: f64 = refusals.values().sum();
        if n == 0.0 {
            continue;
        }
        if s.sender.refusals_expected.is_some() {
            expected += 1;
            continue;
        }
        let which: Vec<String> = refusals.iter().map(|((v, r, c), n)| format!("{v} {r} {c} x{n}")).collect();
        refused.push(format!("{} ({}): {}", s.sender.ns, s.sender.name, which.join(", ")));
    }
    ensure!(refused.is_empty(), "operators refused by the API server:\n{}", refused.join("\n"));
    let admins: BTreeSet<String> =
        all.iter().filter_map(|s| s.sender.admin.map(|why| format!("{} ({why})", s.sender.ns))).collect();
    Ok(format!(
        "{} processes, none refused ({expected} refused on purpose); not as deployed: {}",
        all.len(),
        if admins.is_empty() {
            "none".to_string()
        } else {
            admins.into_iter().collect::<Vec<_>>().join("; ")
        }
    ))
}

/// After the suite: RBAC is exactly what the code sends, both ways. `whole` is false for a
/// filtered run, which checks only that what was sent is granted.
pub async fn check_rbac_both_ways(ctx: &Ctx, whole: bool) -> Result<String> {
    let granted = deploy_grants(ctx)?;
    let all = SENT.lock().map(|s| s.clone()).unwrap_or_default();
    let mut sent: BTreeSet<Grant> = BTreeSet::new();
    for s in all.iter().filter(|s| s.sender.admin.is_none()) {
        // Discovery is open to every authenticated user (the `system:discovery` ClusterRole).
        for (verb, resource, _) in s.requests.keys().filter(|(_, r, _)| r != "discovery") {
            let group = group_of(resource).with_context(|| {
                format!("{} sent {verb} {resource}: a resource the audit does not know", s.sender.ns)
            })?;
            sent.insert((group.to_string(), resource.clone(), verb.clone()));
        }
    }
    let ungranted: Vec<&Grant> = sent.iter().filter(|g| !granted.contains(*g)).collect();
    ensure!(ungranted.is_empty(), "sent but not granted by deploy/: {ungranted:?}");
    if !whole {
        return Ok(format!(
            "{} (group, resource, verb) sent, all granted (filtered run: unused grants not checked)",
            sent.len()
        ));
    }
    let listed = |g: &Grant, list: &[(&str, &str, &str, &str)]| {
        list.iter().any(|(lg, lr, lv, _)| (*lg, *lr, *lv) == (g.0.as_str(), g.1.as_str(), g.2.as_str()))
    };
    let unused: Vec<&Grant> = granted
        .iter()
        .filter(|g| !sent.contains(*g) && !listed(g, GRANTED_UNSENT) && !listed(g, GRANTED_RARE))
        .collect();
    if !unused.is_empty() {
        bail!("granted by deploy/ but never sent in the suite, and not listed with a reason: {unused:?}");
    }
    let rare_unsent: Vec<String> = granted
        .iter()
        .filter(|g| !sent.contains(*g) && listed(g, GRANTED_RARE))
        .map(|g| format!("{} {}", g.2, g.1))
        .collect();
    Ok(format!(
        "{} grants, {} sent; never sent by design: tfjobs/finalizers update; rare and not provoked this run: {rare_unsent:?}",
        granted.len(),
        sent.len()
    ))
}
