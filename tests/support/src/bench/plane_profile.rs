//! Where the plane's time went during a size: each plane component's CPU seconds (from
//! `/proc`), and the API server's summed request latency and its count of writes by verb and
//! resource (from its own `apiserver_request_duration_seconds`). The parsing is pure.

use std::collections::BTreeMap;

use kube::Client;
use serde::Serialize;

use super::footprint;
use crate::ControlPlane;

/// The local plane's components, in the order they are reported.
pub const COMPONENTS: [&str; 5] =
    ["kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok"];

/// Request kinds reported per size (the largest summed latencies).
const TOP: usize = 8;

/// Write kinds counted per size (the most frequent).
const TOP_WRITES: usize = 14;

/// The counters at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    cpu: BTreeMap<String, f64>,
    latency: BTreeMap<String, f64>,
    count: BTreeMap<String, f64>,
}

/// What the plane spent during a size.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PlaneProfile {
    /// CPU seconds per component (local plane only).
    pub cpu_s: Vec<(String, f64)>,
    /// The API server's summed request latency in seconds, by `"<VERB> <resource>"`, the
    /// largest first (watches and other long-running requests left out).
    pub api_latency_s: Vec<(String, f64)>,
    /// The API server's count of writes (every verb but GET and LIST) by `"<VERB> <resource>"`
    /// from every client, the plane's own controllers and kwok included, the most first.
    pub api_writes: Vec<(String, f64)>,
    /// What the API server's CPU went to, from its own profile (`--apiserver-profile`).
    pub cpu_parts: Option<super::apiserver_cpu::CpuParts>,
}

/// The API server's `apiserver_request_duration_seconds_sum` by `"<VERB> <resource>[/<sub>]"`,
/// without long-running verbs.
pub fn latency_sums(metrics: &str) -> BTreeMap<String, f64> {
    by_request(metrics, "apiserver_request_duration_seconds_sum{")
}

/// The API server's `apiserver_request_duration_seconds_count` of writes by
/// `"<VERB> <resource>[/<sub>]"`.
pub fn write_counts(metrics: &str) -> BTreeMap<String, f64> {
    let mut counts = by_request(metrics, "apiserver_request_duration_seconds_count{");
    counts.retain(|k, _| !k.starts_with("GET ") && !k.starts_with("LIST "));
    counts
}

fn by_request(metrics: &str, series: &str) -> BTreeMap<String, f64> {
    let label = |line: &str, key: &str| -> Option<String> {
        let start =
            line.find(&format!(",{key}=\"")).or_else(|| line.find(&format!("{{{key}=\"")))? + key.len() + 3;
        Some(line[start..].split('"').next()?.to_string())
    };
    let mut out = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with(series)) {
        let (Some(verb), Some(resource), Some(value)) = (
            label(line, "verb"),
            label(line, "resource"),
            line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()),
        ) else {
            continue;
        };
        if matches!(verb.as_str(), "WATCH" | "WATCHLIST" | "CONNECT") {
            continue;
        }
        let sub = label(line, "subresource").filter(|s| !s.is_empty());
        let key = match sub {
            Some(sub) => format!("{verb} {resource}/{sub}"),
            None => format!("{verb} {resource}"),
        };
        *out.entry(key).or_default() += value;
    }
    out
}

/// Reads the counters now; empty parts where they cannot be read.
pub async fn snapshot(client: &Client, plane: Option<&ControlPlane>) -> Snapshot {
    let cpu = plane
        .map(|p| {
            COMPONENTS
                .iter()
                .filter_map(|c| Some((c.to_string(), footprint::cpu_seconds(p.pid(c).ok()?)?)))
                .collect()
        })
        .unwrap_or_default();
    let text = match http::Request::get("/metrics").body(Vec::new()) {
        Ok(req) => client.request_text(req).await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    Snapshot { cpu, latency: latency_sums(&text), count: write_counts(&text) }
}

/// What happened between two snapshots.
pub fn profile(before: &Snapshot, after: &Snapshot) -> PlaneProfile {
    let cpu_s = COMPONENTS
        .iter()
        .filter_map(|c| {
            let (b, a) = (before.cpu.get(*c)?, after.cpu.get(*c)?);
            Some((c.to_string(), a - b))
        })
        .collect();
    let mut api_latency_s: Vec<(String, f64)> =
        footprint::delta(&after.latency, &before.latency).into_iter().filter(|(_, v)| *v > 0.0).collect();
    api_latency_s.sort_by(|a, b| b.1.total_cmp(&a.1));
    api_latency_s.truncate(TOP);
    let mut api_writes: Vec<(String, f64)> =
        footprint::delta(&after.count, &before.count).into_iter().filter(|(_, v)| *v > 0.0).collect();
    api_writes.sort_by(|a, b| b.1.total_cmp(&a.1));
    api_writes.truncate(TOP_WRITES);
    PlaneProfile { cpu_s, api_latency_s, api_writes, cpu_parts: None }
}

impl PlaneProfile {
    /// One line: CPU per component, then the API server's time by request kind.
    pub fn line(&self) -> String {
        let cpu: Vec<String> = self.cpu_s.iter().map(|(c, s)| format!("{c} {s:.1}")).collect();
        let api: Vec<String> = self.api_latency_s.iter().map(|(k, s)| format!("{k} {s:.0}")).collect();
        let mut line = format!("CPU s {}; API server request time s: {}", cpu.join(", "), api.join(", "));
        if !self.api_writes.is_empty() {
            let writes: Vec<String> = self.api_writes.iter().map(|(k, n)| format!("{k} {n:.0}")).collect();
            line.push_str(&format!("; writes by every client: {}", writes.join(", ")));
        }
        if let Some(parts) = &self.cpu_parts {
            line.push_str(&format!("; {}", parts.line()));
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_by_verb_and_resource() {
        let m = "# HELP apiserver_request_duration_seconds x\n\
            apiserver_request_duration_seconds_sum{component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"events\",scope=\"resource\",subresource=\"\",verb=\"POST\",version=\"v1\"} 12.5\n\
            apiserver_request_duration_seconds_sum{component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"events\",scope=\"resource\",subresource=\"\",verb=\"POST\",version=\"v1beta1\"} 0.5\n\
            apiserver_request_duration_seconds_sum{component=\"apiserver\",dry_run=\"\",group=\"kubeflow.org\",resource=\"tfjobs\",scope=\"resource\",subresource=\"status\",verb=\"APPLY\",version=\"v1\"} 3\n\
            apiserver_request_duration_seconds_sum{component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"pods\",scope=\"namespace\",subresource=\"\",verb=\"WATCH\",version=\"v1\"} 900\n\
            apiserver_request_duration_seconds_count{component=\"apiserver\",dry_run=\"\",group=\"\",resource=\"pods\",scope=\"resource\",subresource=\"\",verb=\"POST\",version=\"v1\"} 7\n";
        let got = latency_sums(m);
        assert_eq!(
            got,
            BTreeMap::from([("APPLY tfjobs/status".to_string(), 3.0), ("POST events".to_string(), 13.0)])
        );
        assert_eq!(write_counts(m), BTreeMap::from([("POST pods".to_string(), 7.0)]));
        let before = Snapshot {
            cpu: BTreeMap::from([("etcd".into(), 1.0)]),
            latency: BTreeMap::new(),
            count: BTreeMap::from([("POST pods".into(), 2.0)]),
        };
        let after = Snapshot {
            cpu: BTreeMap::from([("etcd".into(), 3.5)]),
            latency: got,
            count: BTreeMap::from([("POST pods".into(), 7.0), ("DELETE pods".into(), 0.0)]),
        };
        let p = profile(&before, &after);
        assert_eq!(p.cpu_s, [("etcd".to_string(), 2.5)]);
        assert_eq!(p.api_latency_s[0], ("POST events".to_string(), 13.0));
        assert_eq!(
            p.line(),
            "CPU s etcd 2.5; API server request time s: POST events 13, APPLY tfjobs/status 3; \
             writes by every client: POST pods 5"
        );
    }
}
