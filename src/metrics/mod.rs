//! The operator's Prometheus metrics: one registry, its families, and the `/metrics` text.
//!
//! Kubeflow's job families keep Kubeflow's names and labels (`job_namespace`,
//! `framework="tensorflow"`) so existing dashboards work; no label carries a pod or job name.

pub mod jobs;
pub mod milestones;
pub mod requests;
mod seen;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

pub use jobs::JobCount;
pub use milestones::Milestone;

use crate::leader::Gate;

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The framework label of Kubeflow's job families.
const FRAMEWORK: &str = "tensorflow";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job_namespace: String,
    framework: &'static str,
}

/// The namespace label of the milestone histograms: `job_namespace` as in Kubeflow's job
/// families (a scrape's own `namespace` label, the operator's, is not overwritten).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabels {
    job_namespace: String,
}

type MilestoneFamily = Family<NamespaceLabels, Histogram, fn() -> Histogram>;

fn milestone_histogram() -> Histogram {
    Histogram::new(milestones::BUCKETS)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WatchLabels {
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BatchLabels {
    size: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: &'static str,
}

/// Why a pod or service create failed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum CreateFailureCause {
    /// The API server refused the object (400, 403, 422), or the name is another's: the
    /// user's to fix, reported as `FailedCreate*`.
    Refused,
    /// No answer, or an answer that is not about the object (429, 5xx such as an admission
    /// webhook that cannot be called): retried, reported as `CreateRetrying` once it lasts.
    Transient,
}

impl CreateFailureCause {
    fn label(self) -> &'static str {
        match self {
            CreateFailureCause::Refused => "refused",
            CreateFailureCause::Transient => "transient",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

/// Labels of one API request: its verb, resource and HTTP status (or `error` when no
/// response came back).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: &'static str,
    pub resource: &'static str,
    pub code: String,
}

/// The kinds of failed operations ([`crate::Error::kind`]) a reconcile reports, exported at
/// zero from the start so that a dashboard's errors-by-kind panel and an alert on their rate
/// have a series before the first error (a kind missing here is still counted, from 1).
pub const RECONCILE_ERROR_KINDS: [&str; 13] = [
    "patch_status",
    "stale_status",
    "create",
    "job_gone",
    "read_job",
    "delete_pod",
    "delete_service",
    "delete_job",
    "delete_pod_group",
    "gang_api",
    "missing_field",
    "build_objects",
    "not_leader",
];

/// The resources every operator watches, whose watch restarts are exported at zero from the
/// start (PodGroups, watched only with gang scheduling, appear at their first restart).
pub const WATCHED: [&str; 3] = ["tfjobs", "pods", "services"];

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    reconciles: Counter,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_seconds: Histogram,
    api_requests: Family<RequestLabels, Counter>,
    events_dropped: Counter,
    watch_restarts: Family<WatchLabels, Counter>,
    create_batches: Family<BatchLabels, Counter>,
    create_failures: Family<CauseLabels, Counter>,
    status_writes_held: Counter,
    jobs_queued_to_create: Gauge,
    jobs: [Family<JobLabels, Counter>; 5],
    milestones: [MilestoneFamily; 2],
}

impl Default for Metrics {
    /// Metrics of a process without leader election.
    fn default() -> Self {
        Self::new(&Gate::always_open())
    }
}

/// `metric`, registered in `registry` under `name` with its `help`.
fn registered<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M {
    registry.register(name, help, metric.clone());
    metric
}

/// The metrics of the write path: create batches, failed creates, held status writes and
/// jobs queued for room.
fn write_metrics(
    registry: &mut Registry,
) -> (Family<BatchLabels, Counter>, Family<CauseLabels, Counter>, Counter, Gauge) {
    let create_batches = registered(
        registry,
        "tfjob_operator_create_batches",
        "Batches of pod and service creates sent at once (slow start: one per template first, then \
             doubling up to 16), by batch size",
        Family::<BatchLabels, Counter>::default(),
    );
    let create_failures = registered(
        registry,
        "tfjob_operator_create_failures",
        "Pod and service creates that failed, by cause: refused (the object, the user's to fix) or \
             transient (no answer, 429, 5xx such as an admission webhook that cannot be called; retried)",
        Family::<CauseLabels, Counter>::default(),
    );
    let status_writes_held = registered(
        registry,
        "tfjob_operator_status_writes_held",
        "Status writes that only moved replica counts (active, succeeded) held back for 10 s from when \
             first planned (the pods of a job starting or finishing one after the other cost one write, or none)",
        Counter::default(),
    );
    let jobs_queued_to_create = registered(
        registry,
        "tfjob_operator_jobs_queued_to_create",
        "Jobs waiting for room to create pods and services (--writes-in-flight is taken, older jobs \
             first); none of them holds a reconcile",
        Gauge::default(),
    );
    (create_batches, create_failures, status_writes_held, jobs_queued_to_create)
}

/// Kubeflow's job counters and the jobs' milestone histograms.
fn job_metrics(registry: &mut Registry) -> ([Family<JobLabels, Counter>; 5], [MilestoneFamily; 2]) {
    let jobs: [Family<JobLabels, Counter>; 5] = Default::default();
    for (count, family) in JobCount::ALL.iter().zip(&jobs) {
        registry.register(count.metric_name(), count.help(), family.clone());
    }
    let milestones: [MilestoneFamily; 2] =
        std::array::from_fn(|_| MilestoneFamily::new_with_constructor(milestone_histogram));
    for (m, family) in Milestone::ALL.iter().zip(&milestones) {
        registry.register(m.metric_name(), m.help(), family.clone());
    }
    (jobs, milestones)
}

impl Metrics {
    /// The registry; `gate` is read as the `tfjob_operator_leader` gauge.
    pub fn new(gate: &Gate) -> Metrics {
        let mut registry = Registry::default();
        let reconciles =
            registered(&mut registry, "tfjob_operator_reconciles", "Reconciles run", Counter::default());
        let reconcile_errors = registered(
            &mut registry,
            "tfjob_operator_reconcile_errors",
            "Reconciles that failed, by the kind of the failed operation",
            Family::<ErrorLabels, Counter>::default(),
        );
        for kind in RECONCILE_ERROR_KINDS {
            reconcile_errors.get_or_create(&ErrorLabels { kind }).inc_by(0);
        }
        let reconcile_seconds = registered(
            &mut registry,
            "tfjob_operator_reconcile_duration_seconds",
            "How long a reconcile took, its API writes included",
            Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
        );
        let api_requests = registered(
            &mut registry,
            "tfjob_operator_api_requests",
            "Requests this process sent to the API server, by verb, resource and HTTP status",
            Family::<RequestLabels, Counter>::default(),
        );
        registry.register(
            "tfjob_operator_leader",
            "1 while this process reconciles (it holds the lease, or leader election is off)",
            gate.clone(),
        );
        let events_dropped = registered(
            &mut registry,
            "tfjob_operator_events_dropped",
            "Events dropped because the event queue was full",
            Counter::default(),
        );
        let watch_restarts = registered(
            &mut registry,
            "tfjob_operator_watch_restarts",
            "Watches that failed and restarted (with backoff; after a 410 Gone with a re-list), by resource",
            Family::<WatchLabels, Counter>::default(),
        );
        for resource in WATCHED {
            watch_restarts.get_or_create(&WatchLabels { resource }).inc_by(0);
        }
        let (create_batches, create_failures, status_writes_held, jobs_queued_to_create) =
            write_metrics(&mut registry);
        let (jobs, milestones) = job_metrics(&mut registry);
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_seconds,
            api_requests,
            events_dropped,
            watch_restarts,
            create_batches,
            create_failures,
            status_writes_held,
            jobs_queued_to_create,
            jobs,
            milestones,
        }
    }

    /// Records one reconcile, its duration and, if it failed, the failed operation's kind.
    pub fn reconciled(&self, seconds: f64, error_kind: Option<&'static str>) {
        self.reconciles.inc();
        self.reconcile_seconds.observe(seconds);
        if let Some(kind) = error_kind {
            self.reconcile_errors.get_or_create(&ErrorLabels { kind }).inc();
        }
    }

    /// Records one API request.
    pub fn request(&self, labels: &RequestLabels) {
        self.api_requests.get_or_create(labels).inc();
    }

    /// Counts a job event for a job in `namespace`.
    pub fn job(&self, namespace: &str, count: JobCount) {
        let labels = JobLabels { job_namespace: namespace.to_string(), framework: FRAMEWORK };
        self.jobs[count as usize].get_or_create(&labels).inc();
    }

    /// Observes the seconds a job in `namespace` took from its creation to `milestone`.
    pub fn reached(&self, namespace: &str, milestone: Milestone, seconds: f64) {
        let labels = NamespaceLabels { job_namespace: namespace.to_string() };
        self.milestones[milestone as usize].get_or_create(&labels).observe(seconds);
    }

    /// Counts a failed watch of `resource` (it restarts with backoff).
    pub fn watch_restarted(&self, resource: &'static str) {
        self.watch_restarts.get_or_create(&WatchLabels { resource }).inc();
    }

    /// How many jobs wait for room to create.
    pub fn jobs_queued_to_create(&self, n: usize) {
        self.jobs_queued_to_create.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Counts a batch of `size` creates sent at once.
    pub fn create_batch(&self, size: usize) {
        self.create_batches.get_or_create(&BatchLabels { size: size.to_string() }).inc();
    }

    /// Counts a failed pod or service create by its cause.
    pub fn create_failed(&self, cause: CreateFailureCause) {
        self.create_failures.get_or_create(&CauseLabels { cause: cause.label() }).inc();
    }

    /// Counts a status write held back ([`crate::controller`]'s coalescing).
    pub fn status_write_held(&self) {
        self.status_writes_held.inc();
    }

    /// Counts an event dropped from a full queue.
    pub fn event_dropped(&self) {
        self.events_dropped.inc();
    }

    /// The registry in the OpenMetrics text format (which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeflow_names_and_labels() {
        let m = Metrics::default();
        m.job("team-a", JobCount::Created);
        m.job("team-a", JobCount::Created);
        m.job("team-b", JobCount::Successful);
        m.job("team-b", JobCount::Deleted);
        m.reconciled(0.002, None);
        m.reconciled(0.5, Some("patch_status"));
        m.request(&RequestLabels { verb: "create", resource: "pods", code: "201".into() });
        m.watch_restarted("pods");
        m.create_batch(16);
        m.create_batch(16);
        m.create_failed(CreateFailureCause::Transient);
        m.create_failed(CreateFailureCause::Transient);
        m.create_failed(CreateFailureCause::Refused);
        m.reached("team-a", Milestone::Running, 4.0);
        m.reached("team-a", Milestone::Running, 40.0);
        m.reached("team-b", Milestone::Succeeded, 9.0);
        let text = m.encode();
        for line in [
            r#"training_operator_jobs_created_total{job_namespace="team-a",framework="tensorflow"} 2"#,
            r#"training_operator_jobs_successful_total{job_namespace="team-b",framework="tensorflow"} 1"#,
            r#"training_operator_jobs_deleted_total{job_namespace="team-b",framework="tensorflow"} 1"#,
            "tfjob_operator_reconciles_total 2",
            r#"tfjob_operator_reconcile_errors_total{kind="patch_status"} 1"#,
            "tfjob_operator_reconcile_duration_seconds_count 2",
            r#"tfjob_operator_api_requests_total{verb="create",resource="pods",code="201"} 1"#,
            "tfjob_operator_leader 1",
            r#"tfjob_operator_watch_restarts_total{resource="pods"} 1"#,
            r#"tfjob_operator_watch_restarts_total{resource="tfjobs"} 0"#,
            r#"tfjob_operator_reconcile_errors_total{kind="create"} 0"#,
            r#"tfjob_operator_reconcile_errors_total{kind="not_leader"} 0"#,
            r#"tfjob_operator_create_batches_total{size="16"} 2"#,
            r#"tfjob_operator_create_failures_total{cause="transient"} 2"#,
            r#"tfjob_operator_create_failures_total{cause="refused"} 1"#,
            r#"tfjob_operator_job_time_to_running_seconds_count{job_namespace="team-a"} 2"#,
            r#"tfjob_operator_job_time_to_running_seconds_sum{job_namespace="team-a"} 44.0"#,
            r#"tfjob_operator_job_time_to_running_seconds_bucket{le="5.0",job_namespace="team-a"} 1"#,
            r#"tfjob_operator_job_time_to_running_seconds_bucket{le="60.0",job_namespace="team-a"} 2"#,
            r#"tfjob_operator_job_time_to_succeeded_seconds_bucket{le="10.0",job_namespace="team-b"} 1"#,
            r#"tfjob_operator_job_time_to_succeeded_seconds_bucket{le="5.0",job_namespace="team-b"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains(r#"training_operator_jobs_failed_total{"#), "no sample before a failure");
        assert!(
            !text.contains(r#"time_to_succeeded_seconds_count{job_namespace="team-a"}"#),
            "per namespace"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
