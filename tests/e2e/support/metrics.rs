//! Reading Prometheus text: the operator's `/metrics` and the API server's.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::Ctx;

/// The sum of the samples of metric `name` whose labels include every `labels` item
/// (`key="value"`); 0 when there is none.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The API server's `apiserver_request_total` for POSTs of `resource` (no subresource), by
/// response code.
pub async fn apiserver_posts_by_code(ctx: &Ctx, resource: &str) -> Result<BTreeMap<String, f64>> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = ctx.cluster.client.request_text(req).await?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        if line.contains(&format!("resource=\"{resource}\""))
            && line.contains("verb=\"POST\"")
            && line.contains("subresource=\"\"")
        {
            let code =
                line.split("code=\"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("").to_string();
            let n: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
            *out.entry(code).or_default() += n;
        }
    }
    Ok(out)
}
