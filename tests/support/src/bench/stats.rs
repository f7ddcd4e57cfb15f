//! Summary statistics of latency samples (pure).

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

/// Median, tail percentiles (nearest rank) and maximum of a set of samples, in seconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Stats {
    pub n: usize,
    pub median: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Stats {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Stats::default();
        }
        v.sort_by(f64::total_cmp);
        let rank = |p: f64| {
            // Nearest rank: the smallest sample with at least p of the samples at or below it.
            let i = (p * v.len() as f64).ceil() as usize;
            v[i.clamp(1, v.len()) - 1]
        };
        Stats { n: v.len(), median: rank(0.5), p95: rank(0.95), p99: rank(0.99), max: v[v.len() - 1] }
    }

    /// `median/p95/p99/max` with two decimals, or `-` without samples.
    pub fn short(&self) -> String {
        if self.n == 0 {
            return "-".into();
        }
        format!("{:.2}/{:.2}/{:.2}/{:.2}", self.median, self.p95, self.p99, self.max)
    }
}

/// How many seconds `actual` came after `expected` (negative: before).
pub fn lateness(actual: Timestamp, expected: Timestamp) -> f64 {
    actual.duration_since(expected).as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let hundred: Vec<f64> = (1..=100).map(f64::from).collect();
        let cases: Vec<(&str, Vec<f64>, Stats)> = vec![
            ("empty", vec![], Stats::default()),
            ("one", vec![2.5], Stats { n: 1, median: 2.5, p95: 2.5, p99: 2.5, max: 2.5 }),
            ("unsorted", vec![3.0, 1.0, 2.0], Stats { n: 3, median: 2.0, p95: 3.0, p99: 3.0, max: 3.0 }),
            ("even", vec![1.0, 2.0, 3.0, 4.0], Stats { n: 4, median: 2.0, p95: 4.0, p99: 4.0, max: 4.0 }),
            ("hundred", hundred, Stats { n: 100, median: 50.0, p95: 95.0, p99: 99.0, max: 100.0 }),
            (
                "not finite dropped",
                vec![1.0, f64::NAN],
                Stats { n: 1, median: 1.0, p95: 1.0, p99: 1.0, max: 1.0 },
            ),
        ];
        for (name, samples, want) in cases {
            assert_eq!(Stats::of(&samples), want, "{name}");
        }
        assert_eq!(Stats::default().short(), "-");
        assert_eq!(Stats::of(&[1.0, 2.0]).short(), "1.00/2.00/2.00/2.00");
    }
}
