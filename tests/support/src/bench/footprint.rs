//! The operator's footprint: CPU time and peak RSS from `/proc`, API requests from its
//! `/metrics` (pure parsing).

use std::collections::BTreeMap;

/// CPU seconds (user + system) of a process, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime + stime (fields 14 and 15), counted after the parenthesised command name.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Peak resident memory (VmHWM) of a process in MiB, from `/proc/<pid>/status`.
pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_kib(&status, "VmHWM:").map(|kib| kib as f64 / 1024.0)
}

pub fn parse_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| l.strip_prefix(key))?.split_whitespace().next()?.parse().ok()
}

/// API requests by `"<verb> <resource>"` from an operator's `/metrics`: this operator's
/// `tfjob_operator_api_requests_total`, or client-go's `rest_client_requests_total` (by
/// method) for a Go operator.
pub fn requests(metrics: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let label = |line: &str, key: &str| -> Option<String> {
        let start = line.find(&format!("{key}=\""))? + key.len() + 2;
        Some(line[start..].split('"').next()?.to_string())
    };
    for line in metrics.lines() {
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        let key = if line.starts_with("tfjob_operator_api_requests_total{") {
            label(line, "verb").zip(label(line, "resource")).map(|(v, r)| format!("{v} {r}"))
        } else if line.starts_with("tfjob_operator_watch_restarts_total{") {
            label(line, "resource").map(|r| format!("watch restarts {r}"))
        } else if line.starts_with("tfjob_operator_status_writes_held_total ") {
            Some("held status writes".to_string())
        } else if line.starts_with("rest_client_requests_total{") {
            label(line, "method")
        } else {
            None
        };
        if let (Some(k), Some(v)) = (key, value) {
            *out.entry(k).or_default() += v;
        }
    }
    out
}

/// `after - before`, per key, without the zeros.
pub fn delta(after: &BTreeMap<String, f64>, before: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_parsing() {
        let stat = "4242 (tfjob (op) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        let status = "Name:\ttfjob-operator\nVmPeak:\t 100 kB\nVmHWM:\t   20480 kB\nVmRSS:\t 10240 kB\n";
        assert_eq!(parse_kib(status, "VmHWM:"), Some(20480));
        assert_eq!(parse_kib(status, "VmSwap:"), None);
    }

    #[test]
    fn request_counts() {
        let ours = "# TYPE tfjob_operator_api_requests counter\n\
            tfjob_operator_api_requests_total{verb=\"create\",resource=\"pods\",code=\"201\"} 10\n\
            tfjob_operator_api_requests_total{verb=\"create\",resource=\"pods\",code=\"409\"} 2\n\
            tfjob_operator_api_requests_total{verb=\"patch\",resource=\"tfjobs/status\",code=\"200\"} 7\n\
            tfjob_operator_watch_restarts_total{resource=\"pods\"} 3\n\
            tfjob_operator_status_writes_held_total 4\n";
        let got = requests(ours);
        assert_eq!(got.get("create pods"), Some(&12.0));
        assert_eq!(got.get("watch restarts pods"), Some(&3.0));
        assert_eq!(got.get("held status writes"), Some(&4.0));
        assert_eq!(got.get("patch tfjobs/status"), Some(&7.0));
        let go = "rest_client_requests_total{code=\"201\",host=\"x\",method=\"POST\"} 5\n\
            rest_client_requests_total{code=\"200\",host=\"x\",method=\"GET\"} 3\n";
        assert_eq!(requests(go).get("POST"), Some(&5.0));
        let before = requests(ours);
        let mut after = before.clone();
        *after.entry("create pods".into()).or_default() += 5.0;
        assert_eq!(delta(&after, &before), BTreeMap::from([("create pods".to_string(), 5.0)]));
    }
}
