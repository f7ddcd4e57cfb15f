//! One benchmark run: per size, the operator's run (measured from watches, in `size_run`),
//! then the bound (the same pods and services created directly, in `bound`); then the huge-job
//! row, Kubeflow's rows and the re-list row when asked for.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use kube::Client;

use super::bound::bound;
use super::kubeflow::Kubeflow;
use super::operator::describe;
use super::relist::relist_row;
use super::size_run::{Created, Side, run_operator};
use super::{Options, RelistReport, Report, SizeReport};

/// all_created_s / bound_s, 0 without a bound.
fn ratio(all_created_s: f64, bound_s: f64) -> f64 {
    if bound_s > 0.0 { all_created_s / bound_s } else { 0.0 }
}

/// The unreported one-job run (warm-up).
async fn warm_up(client: &Client, opts: &Options, side: &Side<'_>) -> Result<()> {
    let warm = Options {
        prefix: format!("{}-warmup", opts.prefix),
        run_for: "1s".into(),
        ttl: 1,
        deadline: 2,
        apiserver_profile: None,
        ..opts.clone()
    };
    let side = Side {
        label: side.label.clone(),
        spec: side.spec,
        grace: side.grace.map(|g| g.min(Duration::from_secs(5))),
        tag: side.tag.clone(),
    };
    tokio::time::timeout(opts.timeout, run_operator(client, None, &warm, &side, 1, None))
        .await
        .context("warm-up: not done in time")??;
    Ok(())
}

/// What every step of a run shares.
struct Bench<'a, P> {
    client: &'a Client,
    plane: Option<&'a crate::ControlPlane>,
    opts: &'a Options,
    progress: &'a P,
}

/// Runs every size in turn: ours, then Kubeflow's training-operator per variant (when
/// `opts.kubeflow` is set) with its CRD in place of ours.
pub async fn run(
    client: &Client,
    plane: Option<&crate::ControlPlane>,
    opts: &Options,
    progress: impl Fn(&str),
) -> Result<Report> {
    let bench = Bench { client, plane, opts, progress: &progress };
    let operator = describe(&opts.operator);
    let jobs_shape = format!(
        "{} PS (running until cleaned up) + {} Workers (succeed after {}), runPolicy.cleanPodPolicy Running, ttlSecondsAfterFinished {}; plus one job in ten with activeDeadlineSeconds {} and one running worker",
        opts.ps, opts.workers, opts.run_for, opts.ttl, opts.deadline
    );
    let ours = Side { label: "tfjob-operator".into(), spec: &opts.operator, grace: None, tag: String::new() };
    if opts.warmup {
        progress("warm-up: one job, not reported");
        warm_up(client, opts, &ours).await?;
    }
    let mut sizes = bench.our_rows(&ours).await?;
    if let Some(replicas) = opts.huge {
        let row = bench.huge_row(&ours, replicas, &sizes).await?;
        sizes.push(row);
    }
    let mut other_operators = BTreeMap::new();
    let mut failures = Vec::new();
    if let Some(kf) = &opts.kubeflow {
        bench.kubeflow_rows(kf, &ours.label, &mut sizes, &mut other_operators, &mut failures).await?;
    }
    // Last: it restarts the API server. A failure is reported without losing the other rows.
    let relist = bench.relist(&mut failures).await;
    Ok(Report { operator, other_operators, jobs_shape, sizes, failures, relist })
}

impl<P: Fn(&str)> Bench<'_, P> {
    /// Our operator's row of each size, with its bound.
    async fn our_rows(&self, ours: &Side<'_>) -> Result<Vec<SizeReport>> {
        let (client, plane, opts) = (self.client, self.plane, self.opts);
        let mut sizes = Vec::new();
        for &n in &opts.sizes {
            (self.progress)(&format!("size {n}: operator run"));
            let mut size =
                tokio::time::timeout(opts.timeout, run_operator(client, plane, opts, ours, n, None))
                    .await
                    .with_context(|| format!("size {n}: not done within {:?}", opts.timeout))??;
            (self.progress)(&format!("size {n}: bound run"));
            size.0.bound_s = bound(client, opts, &n.to_string(), &size.1).await?;
            size.0.ratio = ratio(size.0.all_created_s, size.0.bound_s);
            sizes.push(size.0);
        }
        Ok(sizes)
    }

    /// The huge-job row: the huge job beside `opts.huge_beside` jobs, with its bound, the huge
    /// job's own bound and its p50 to Running against the same size's row without it.
    async fn huge_row(&self, ours: &Side<'_>, replicas: i32, sizes: &[SizeReport]) -> Result<SizeReport> {
        let (client, plane, opts) = (self.client, self.plane, self.opts);
        let n = opts.huge_beside;
        (self.progress)(&format!("huge job of {replicas} replicas beside {n} jobs: operator run"));
        let huge_side =
            Side { label: ours.label.clone(), spec: ours.spec, grace: ours.grace, tag: "h".into() };
        let (mut size, created) = tokio::time::timeout(
            opts.timeout,
            run_operator(client, plane, opts, &huge_side, n, Some(replicas)),
        )
        .await
        .with_context(|| format!("the huge-job row: not done within {:?}", opts.timeout))??;
        (self.progress)("the huge-job row: bound runs");
        size.bound_s = bound(client, opts, &format!("h{n}"), &created).await?;
        size.ratio = ratio(size.all_created_s, size.bound_s);
        let huge_only = |name: &Option<String>| name.as_deref().is_some_and(|n| n.starts_with("huge-"));
        let alone = Created {
            pods: created.pods.into_iter().filter(|p| huge_only(&p.metadata.name)).collect(),
            services: created.services.into_iter().filter(|s| huge_only(&s.metadata.name)).collect(),
        };
        let without =
            sizes.iter().find(|s| s.jobs == n && s.huge.is_none()).map(|s| s.create_to_running.median);
        if let Some(h) = &mut size.huge {
            h.bound_s = bound(client, opts, "h", &alone).await?;
            h.ratio = ratio(h.all_created_s, h.bound_s);
            h.running_p50_vs_without =
                without.filter(|w| *w > 0.0).map(|w| size.create_to_running.median / w);
        }
        Ok(size)
    }

    /// Kubeflow's rows, variant by variant, with its CRD in place of ours; a variant that
    /// fails is a failure of the report, not of the run.
    async fn kubeflow_rows(
        &self,
        kf: &Kubeflow,
        ours: &str,
        sizes: &mut Vec<SizeReport>,
        other_operators: &mut BTreeMap<String, String>,
        failures: &mut Vec<String>,
    ) -> Result<()> {
        let client = self.client;
        (self.progress)(&format!("installing training-operator {}'s TFJob CRD in place of ours", kf.version));
        crate::apply_crd(client, &kf.crd).await.context("installing training-operator's CRD")?;
        for (i, variant) in kf.variants.iter().enumerate() {
            let spec = kf.spec(variant);
            other_operators.insert(variant.label.clone(), describe(&spec));
            let side = Side {
                label: variant.label.clone(),
                spec: &spec,
                grace: Some(kf.grace),
                tag: format!("kf{i}-"),
            };
            match self.variant_rows(kf, &side, sizes, ours).await {
                Ok(rows) => sizes.extend(rows),
                Err(e) => {
                    let msg = format!("{}: {e:#}", variant.label);
                    (self.progress)(&format!("failed: {msg}"));
                    failures.push(msg);
                }
            }
        }
        (self.progress)("putting our TFJob CRD back");
        crate::apply_crd(client, &kf.our_crd).await.context("putting our CRD back")?;
        Ok(())
    }

    /// One variant's rows, each with the bound measured after our run of its size.
    async fn variant_rows(
        &self,
        kf: &Kubeflow,
        side: &Side<'_>,
        sizes: &[SizeReport],
        ours: &str,
    ) -> Result<Vec<SizeReport>> {
        let (client, plane, opts) = (self.client, self.plane, self.opts);
        if opts.warmup {
            (self.progress)(&format!("{}: warm-up, one job, not reported", side.label));
            warm_up(client, opts, side).await?;
        }
        let mut rows = Vec::new();
        for &n in &opts.sizes {
            (self.progress)(&format!("size {n}: {}", side.label));
            let (mut size, _) =
                tokio::time::timeout(kf.timeout, run_operator(client, plane, opts, side, n, None))
                    .await
                    .with_context(|| format!("size {n}: not done within {:?}", kf.timeout))??;
            // The bound of this size, measured once (after our run).
            if let Some(b) = sizes.iter().find(|s| s.jobs == n && s.huge.is_none() && s.operator == ours) {
                size.bound_s = b.bound_s;
                size.ratio = ratio(size.all_created_s, size.bound_s);
            }
            rows.push(size);
        }
        Ok(rows)
    }

    /// The re-list row (local plane only); a failure goes to `failures`.
    async fn relist(&self, failures: &mut Vec<String>) -> Option<RelistReport> {
        match (self.opts.relist, self.plane) {
            (Some(n), Some(plane)) => {
                (self.progress)(&format!("re-list row: {n} jobs running, then a forced 410"));
                match relist_row(self.client, plane, self.opts, n).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        let msg = format!("the re-list row: {e:#}");
                        (self.progress)(&format!("failed: {msg}"));
                        failures.push(msg);
                        None
                    }
                }
            }
            (Some(_), None) => {
                (self.progress)("re-list row skipped: it needs the local control plane");
                None
            }
            (None, _) => None,
        }
    }
}
