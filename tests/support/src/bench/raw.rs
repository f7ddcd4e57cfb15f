//! The raw per-job results of a run (each job's times, per operator and size) and the files a
//! run leaves: the report (table and JSON), the raw results as JSON beside it, and the chart
//! drawn from them, which `--plot-from` redraws from saved raw results alone.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::{Report, chart};

/// One batch job's times, in seconds from its create request (`None`: never seen).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct JobTimes {
    pub name: String,
    pub to_running_s: Option<f64>,
    pub to_succeeded_s: Option<f64>,
    /// From worker 0's `tensorflow` container's `finishedAt` until `Succeeded` by watch.
    pub success_late_s: Option<f64>,
}

/// One row of the report: an operator at one size.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RawRow {
    pub operator: String,
    pub jobs: usize,
    /// The huge-job row (the jobs beside the huge one); not drawn.
    #[serde(default)]
    pub huge: bool,
    /// Its batch jobs, by name (the deadline jobs never succeed and are left out).
    pub per_job: Vec<JobTimes>,
}

/// A run's raw results: what `per-job.json` holds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RawResults {
    /// When the run started (RFC 3339, UTC).
    pub date: Option<String>,
    /// The commit it ran at (`git rev-parse --short HEAD`, `-dirty` with local changes).
    pub commit: Option<String>,
    pub jobs_shape: String,
    pub rows: Vec<RawRow>,
}

impl RawResults {
    pub fn of(report: &Report, date: Option<String>, commit: Option<String>) -> RawResults {
        let rows = report
            .sizes
            .iter()
            .map(|s| RawRow {
                operator: s.operator.clone(),
                jobs: s.jobs,
                huge: s.huge.is_some(),
                per_job: s.per_job.clone(),
            })
            .collect();
        RawResults { date, commit, jobs_shape: report.jobs_shape.clone(), rows }
    }

    pub fn read(path: &Path) -> Result<RawResults> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Several runs as one: their rows in turn. A row whose operator and size an earlier run
    /// already has is labelled with its run's date (else its place, `run 2`, ...); the date
    /// and commit kept are the first run's.
    pub fn merge(runs: Vec<RawResults>) -> Result<RawResults> {
        let mut all = RawResults::default();
        for (i, run) in runs.into_iter().enumerate() {
            if i == 0 {
                all.date.clone_from(&run.date);
                all.commit.clone_from(&run.commit);
                all.jobs_shape.clone_from(&run.jobs_shape);
            }
            for mut row in run.rows {
                if all
                    .rows
                    .iter()
                    .any(|r| r.operator == row.operator && r.jobs == row.jobs && r.huge == row.huge)
                {
                    let which = run.date.clone().unwrap_or_else(|| format!("run {}", i + 1));
                    row.operator = format!("{} ({which})", row.operator);
                }
                all.rows.push(row);
            }
        }
        if all.rows.is_empty() {
            bail!("no rows in the raw results");
        }
        Ok(all)
    }
}

/// The files of a run.
pub const REPORT_TXT: &str = "report.txt";
pub const REPORT_JSON: &str = "report.json";
pub const PER_JOB_JSON: &str = "per-job.json";
pub const CHART_SVG: &str = "time-to-succeeded.svg";

/// Writes the run's files into `dir` (created): the table (after `header`), the report as
/// JSON, the raw per-job results and, when a size has any, their chart. Returns the paths.
pub fn save(dir: &Path, header: &str, report: &Report, raw: &RawResults) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut files = vec![
        (dir.join(REPORT_TXT), format!("{header}\n{}", report.table())),
        (dir.join(REPORT_JSON), report.to_json()?),
        (dir.join(PER_JOB_JSON), serde_json::to_string_pretty(raw)?),
    ];
    if raw.rows.iter().any(|r| !r.huge) {
        files.push((dir.join(CHART_SVG), chart::svg(raw)?));
    }
    for (path, text) in &files {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(date: Option<&str>, rows: &[(&str, usize)]) -> RawResults {
        RawResults {
            date: date.map(str::to_string),
            commit: Some("abc1234".into()),
            jobs_shape: "shape".into(),
            rows: rows
                .iter()
                .map(|(op, jobs)| RawRow {
                    operator: (*op).into(),
                    jobs: *jobs,
                    huge: false,
                    per_job: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn merged_runs_keep_every_row_and_label_repeats() {
        let labels = |r: &RawResults| r.rows.iter().map(|r| (r.operator.clone(), r.jobs)).collect::<Vec<_>>();
        let owned = |v: &[(&str, usize)]| v.iter().map(|(o, n)| ((*o).to_string(), *n)).collect::<Vec<_>>();
        type Case = (&'static str, Vec<RawResults>, Vec<(&'static str, usize)>);
        let cases: Vec<Case> = vec![
            (
                "one run as is",
                vec![run(Some("d1"), &[("ours", 10), ("kf", 10)])],
                vec![("ours", 10), ("kf", 10)],
            ),
            (
                "another size added",
                vec![run(Some("d1"), &[("ours", 10)]), run(Some("d2"), &[("ours", 1000)])],
                vec![("ours", 10), ("ours", 1000)],
            ),
            (
                "a repeat is labelled with its date",
                vec![run(Some("d1"), &[("ours", 10)]), run(Some("d2"), &[("ours", 10)])],
                vec![("ours", 10), ("ours (d2)", 10)],
            ),
            (
                "or its place without one",
                vec![run(None, &[("ours", 10)]), run(None, &[("ours", 10)])],
                vec![("ours", 10), ("ours (run 2)", 10)],
            ),
        ];
        for (name, runs, want) in cases {
            let merged = RawResults::merge(runs).unwrap();
            assert_eq!(labels(&merged), owned(&want), "{name}");
            assert_eq!(merged.commit.as_deref(), Some("abc1234"), "{name}");
        }
        assert!(RawResults::merge(vec![]).is_err(), "nothing to draw");
        assert!(RawResults::merge(vec![run(None, &[])]).is_err(), "no rows");
    }

    #[test]
    fn raw_results_read_back_as_written() {
        let mut raw = run(Some("2026-12-02T05:59:00Z"), &[("ours", 2)]);
        raw.rows[0].per_job = vec![
            JobTimes {
                name: "j-0".into(),
                to_running_s: Some(0.5),
                to_succeeded_s: Some(5.5),
                success_late_s: Some(0.1),
            },
            JobTimes { name: "j-1".into(), to_running_s: None, to_succeeded_s: None, success_late_s: None },
        ];
        let dir = std::env::temp_dir().join(format!("tfjob-raw-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(PER_JOB_JSON);
        std::fs::write(&path, serde_json::to_string_pretty(&raw).unwrap()).unwrap();
        assert_eq!(RawResults::read(&path).unwrap(), raw);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
