//! What a benchmark run reports: per size, and as a whole (JSON and the human table).

use std::collections::BTreeMap;

use anyhow::Result;
use serde::Serialize;

use super::Stats;

/// One size's results. Times in seconds.
#[derive(Clone, Debug, Serialize)]
pub struct SizeReport {
    /// Which operator (and how it was run): `tfjob-operator`, or a training-operator variant.
    pub operator: String,
    pub jobs: usize,
    pub deadline_jobs: usize,
    pub pods: usize,
    pub services: usize,
    /// From the first TFJob create until every pod and service exists.
    pub all_created_s: f64,
    /// The same pods and services created directly, 64 in flight.
    pub bound_s: f64,
    /// all_created_s / bound_s.
    pub ratio: f64,
    pub create_to_running: Stats,
    pub create_to_succeeded: Stats,
    /// Per job, from the instant the pod that decides success finished (worker 0's
    /// `tensorflow` container's `finishedAt`) until `Succeeded` arrived by watch.
    pub success_lateness: Stats,
    /// Worker 0 of each job (the pod that decides success), stage by stage as the bench's
    /// watches saw it: job created → pod seen → bound → Running → pod Succeeded → job
    /// Succeeded. In the order of the stages.
    pub worker0_stages: Vec<(String, Stats)>,
    /// Jobs / (first create until the last job succeeded).
    pub jobs_per_second: f64,
    /// Failed condition's arrival past the published deadline.
    pub deadline_lateness: Stats,
    /// Deletion's arrival past the published expiry.
    pub ttl_lateness: Stats,
    pub operator_cpu_s: Option<f64>,
    pub operator_peak_rss_mib: Option<f64>,
    /// The operator's API requests during the size, by `"<verb> <resource>"`.
    pub operator_requests: BTreeMap<String, f64>,
    /// Jobs (of the batch and the deadline jobs) not yet deleted when the bounded wait gave
    /// up on them (rows with a bounded wait only; ours waits for every job).
    pub unfinished_jobs: usize,
    /// Of those, deadline jobs that never failed: the deadline was not enforced.
    pub deadline_not_enforced: usize,
    /// What the plane spent during the size: CPU per component, the API server's time by
    /// request kind.
    pub plane: super::plane_profile::PlaneProfile,
    /// The huge-job row: the huge job created just before the jobs of this size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub huge: Option<HugeReport>,
    /// Each batch job's times, by name (saved apart, in the raw results: `raw`).
    #[serde(skip)]
    pub per_job: Vec<super::JobTimes>,
}

/// The huge job of a row: how soon all its pods existed, and what it cost the other jobs.
#[derive(Clone, Debug, Serialize)]
pub struct HugeReport {
    pub replicas: i32,
    /// From its create until every one of its pods and services exists.
    pub all_created_s: f64,
    /// Its pods and services alone, created directly, 64 in flight.
    pub bound_s: f64,
    pub ratio: f64,
    /// The ordinary jobs' p50 time to Running in this row over the same in the row of the
    /// same size without the huge job (when the run has one).
    pub running_p50_vs_without: Option<f64>,
}

/// A whole run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub operator: String,
    /// The other operators of the rows (Kubeflow's training-operator), by row label: how
    /// each was run.
    pub other_operators: BTreeMap<String, String>,
    pub jobs_shape: String,
    pub sizes: Vec<SizeReport>,
    /// Rows of other operators that could not be measured, with the reason.
    pub failures: Vec<String>,
    /// The re-list row, when run.
    pub relist: Option<super::RelistReport>,
}

impl Report {
    pub fn to_json(&self) -> Result<String> {
        Ok(serde_json::to_string(self)?)
    }

    /// The human table.
    pub fn table(&self) -> String {
        let mut out = format!("operator: {}\n", self.operator);
        for (label, how) in &self.other_operators {
            out.push_str(&format!("{label}: {how}\n"));
        }
        out.push_str(&format!("jobs: {}\n\n", self.jobs_shape));
        self.rows(&mut out);
        for s in self.sizes.iter().filter(|s| s.unfinished_jobs > 0) {
            out.push_str(&format!(
                "{} at {} jobs: {} jobs not deleted by the end of the bounded wait, {} of them deadline jobs that never failed\n",
                s.operator, s.jobs, s.unfinished_jobs, s.deadline_not_enforced
            ));
        }
        self.growth(&mut out);
        self.notes(&mut out);
        if let Some(r) = &self.relist {
            out.push_str(&r.line());
        }
        for f in &self.failures {
            out.push_str(&format!("not measured: {f}\n"));
        }
        for s in &self.sizes {
            let reqs: Vec<String> = s.operator_requests.iter().map(|(k, v)| format!("{k} {v}")).collect();
            out.push_str(&format!("requests of {} at {} jobs: {}\n", s.operator, s.jobs, reqs.join(", ")));
            if let Some(line) = writes_per_job(&s.operator_requests, s.jobs + s.deadline_jobs) {
                out.push_str(&format!("writes per job of {} at {} jobs: {line}\n", s.operator, s.jobs));
            }
        }
        out
    }

    /// The grid: a header, then one line per row.
    fn rows(&self, out: &mut String) {
        let wide = self.sizes.iter().map(|s| s.operator.len()).max().unwrap_or(8).max(8);
        // Sizes together, each size's operators in the order they ran; the huge-job row last.
        let mut rows: Vec<&SizeReport> = self.sizes.iter().collect();
        rows.sort_by_key(|s| (s.huge.is_some(), s.jobs));
        out.push_str(&format!(
            "{:<wide$} {:>5} {:>6} {:>9} {:>8} {:>7} {:>6} {:>23} {:>23} {:>13} {:>11} {:>11} {:>7} {:>8} {:>10}\n",
            "operator",
            "jobs",
            "pods",
            "created s",
            "bound s",
            "ratio",
            "jobs/s",
            "to Running p50/95/99/max",
            "to Succeeded p50/95/99/max",
            "success late",
            "deadline late",
            "ttl late",
            "cpu s",
            "peak MiB",
            "unfinished"
        ));
        for s in rows {
            let late =
                |st: &Stats| if st.n == 0 { "-".into() } else { format!("{:.2}/{:.2}", st.median, st.max) };
            out.push_str(&format!(
                "{:<wide$} {:>5} {:>6} {:>9.2} {:>8.2} {:>7} {:>6.1} {:>23} {:>23} {:>13} {:>11} {:>11} {:>7} {:>8} {:>10}\n",
                s.operator,
                s.jobs,
                s.pods,
                s.all_created_s,
                s.bound_s,
                format!("{:.2}", s.ratio),
                s.jobs_per_second,
                s.create_to_running.short(),
                s.create_to_succeeded.short(),
                if s.success_lateness.n == 0 {
                    "-".into()
                } else {
                    format!(
                        "{:.2}/{:.2}/{:.2}",
                        s.success_lateness.median, s.success_lateness.p99, s.success_lateness.max
                    )
                },
                late(&s.deadline_lateness),
                late(&s.ttl_lateness),
                s.operator_cpu_s.map_or("-".into(), |c| format!("{c:.1}")),
                s.operator_peak_rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
                s.unfinished_jobs,
            ));
        }
    }

    /// The growth of the first operator's (ours) ordinary rows, first to last size.
    fn growth(&self, out: &mut String) {
        let first_op = self.sizes.first().map(|s| s.operator.as_str()).unwrap_or_default();
        let ours: Vec<&SizeReport> =
            self.sizes.iter().filter(|s| s.operator == first_op && s.huge.is_none()).collect();
        if let (Some(first), Some(last)) = (ours.first(), ours.last())
            && last.jobs > first.jobs
        {
            let growth = |a: f64, b: f64| if a > 0.0 { format!("x{:.1}", b / a) } else { "-".into() };
            out.push_str(&format!(
                "\ngrowth {} -> {} jobs (x{:.0}): creation time {}, operator CPU {}, peak RSS {}\n",
                first.jobs,
                last.jobs,
                last.jobs as f64 / first.jobs as f64,
                growth(first.all_created_s, last.all_created_s),
                growth(first.operator_cpu_s.unwrap_or(0.0), last.operator_cpu_s.unwrap_or(0.0)),
                growth(first.operator_peak_rss_mib.unwrap_or(0.0), last.operator_peak_rss_mib.unwrap_or(0.0)),
            ));
        }
    }

    /// Per row: the huge job, worker 0's stages and what the plane spent.
    fn notes(&self, out: &mut String) {
        for s in &self.sizes {
            if let Some(h) = &s.huge {
                out.push_str(&format!(
                    "huge job of {} replicas beside {} jobs: its pods and services in {:.2} s (bound {:.2} s, \
                     ratio {:.2}); the other jobs' p50 to Running x{} of the row without it; peak RSS {} MiB\n",
                    h.replicas,
                    s.jobs,
                    h.all_created_s,
                    h.bound_s,
                    h.ratio,
                    h.running_p50_vs_without.map_or("-".into(), |r| format!("{r:.2}")),
                    s.operator_peak_rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
                ));
            }
        }
        for s in self.sizes.iter().filter(|s| !s.worker0_stages.is_empty()) {
            let stages: Vec<String> = s
                .worker0_stages
                .iter()
                .map(|(name, st)| format!("{name} {:.2}/{:.2}", st.median, st.p99))
                .collect();
            out.push_str(&format!(
                "worker 0 of {} at {} jobs{}, p50/p99 s: {}\n",
                s.operator,
                s.jobs,
                if s.huge.is_some() { " (huge row)" } else { "" },
                stages.join(", ")
            ));
        }
        for s in &self.sizes {
            if !s.plane.cpu_s.is_empty() || !s.plane.api_latency_s.is_empty() {
                out.push_str(&format!(
                    "plane during {} at {} jobs{}: {}\n",
                    s.operator,
                    s.jobs,
                    if s.huge.is_some() { " (huge row)" } else { "" },
                    s.plane.line()
                ));
            }
        }
    }
}

/// Our operator's API writes per TFJob (`tfjobs`: the batch's and the deadline jobs), by
/// kind, from its `tfjob_operator_api_requests_total` (`"<verb> <resource>"` keys); `None`
/// for an operator that does not publish them by resource.
pub fn writes_per_job(requests: &BTreeMap<String, f64>, tfjobs: usize) -> Option<String> {
    let kinds: [(&str, &[&str]); 5] = [
        ("creates", &["create pods", "create services"]),
        ("status writes", &["patch tfjobs/status"]),
        ("events", &["create events"]),
        (
            "cleanup deletes",
            &["delete pods", "delete services", "deletecollection pods", "deletecollection services"],
        ),
        ("TTL deletes", &["delete tfjobs"]),
    ];
    if tfjobs == 0 || !requests.contains_key("create pods") {
        return None;
    }
    let per = |keys: &[&str]| keys.iter().filter_map(|k| requests.get(*k)).sum::<f64>() / tfjobs as f64;
    let writes: f64 = requests
        .iter()
        .filter(|(k, _)| {
            ["create ", "update ", "patch ", "delete ", "deletecollection "].iter().any(|v| k.starts_with(v))
                && !k.ends_with(" leases")
        })
        .map(|(_, v)| v)
        .sum::<f64>()
        / tfjobs as f64;
    let parts: Vec<String> = kinds.iter().map(|(name, keys)| format!("{name} {:.1}", per(keys))).collect();
    Some(format!("{writes:.1} ({}; over {tfjobs} TFJobs)", parts.join(", ")))
}

#[cfg(test)]
mod writes_tests {
    use super::*;

    #[test]
    fn writes_per_job_by_kind() {
        let requests: BTreeMap<String, f64> = [
            ("create pods", 50.0),
            ("create services", 50.0),
            ("patch tfjobs/status", 33.0),
            ("create events", 11.0),
            ("deletecollection pods", 10.0),
            ("delete tfjobs", 11.0),
            ("update leases", 40.0),
            ("watch pods", 2.0),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(
            writes_per_job(&requests, 11).as_deref(),
            Some(
                "15.0 (creates 9.1, status writes 3.0, events 1.0, cleanup deletes 0.9, TTL deletes 1.0; over 11 TFJobs)"
            )
        );
        assert_eq!(writes_per_job(&BTreeMap::new(), 11), None, "training-operator: by method only");
    }
}
