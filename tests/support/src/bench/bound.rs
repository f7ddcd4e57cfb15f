//! The bound: the pods and services the operator created, created again directly with
//! `in_flight` requests at once against the same API server.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};

use super::Options;
use super::namespace::{create_namespace, delete_namespace};
use super::size_run::{Created, secs};

fn fresh_meta(m: &ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone(),
        labels: m.labels.clone(),
        annotations: m.annotations.clone(),
        ..Default::default()
    }
}

/// Creates the same pods and services directly, `in_flight` at once; returns the seconds taken.
/// `tag` names the bound's namespace `<prefix>-bound-<tag>`.
pub(super) async fn bound(client: &Client, opts: &Options, tag: &str, created: &Created) -> Result<f64> {
    let ns = format!("{}-bound-{tag}", opts.prefix);
    create_namespace(client, &ns).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let pod_bodies: Vec<Pod> = created
        .pods
        .iter()
        .map(|p| {
            let mut spec = p.spec.clone().unwrap_or_default();
            spec.node_name = None;
            Pod { metadata: fresh_meta(&p.metadata), spec: Some(spec), status: None }
        })
        .collect();
    let svc_bodies: Vec<Service> = created
        .services
        .iter()
        .map(|s| {
            let mut spec = s.spec.clone().unwrap_or_default();
            if spec.cluster_ip.as_deref() != Some("None") {
                spec.cluster_ip = None;
                spec.cluster_ips = None;
            }
            Service { metadata: fresh_meta(&s.metadata), spec: Some(spec), status: None }
        })
        .collect();
    enum Body {
        Pod(Box<Pod>),
        Service(Box<Service>),
    }
    let bodies: Vec<Body> = svc_bodies
        .into_iter()
        .map(|s| Body::Service(Box::new(s)))
        .chain(pod_bodies.into_iter().map(|p| Body::Pod(Box::new(p))))
        .collect();
    let t0 = Instant::now();
    let results: Vec<Result<()>> = futures::stream::iter(bodies.into_iter().map(|b| {
        let (pods, services) = (pods.clone(), services.clone());
        async move {
            match b {
                Body::Pod(p) => pods.create(&PostParams::default(), &p).await.map(|_| ())?,
                Body::Service(s) => services.create(&PostParams::default(), &s).await.map(|_| ())?,
            }
            Ok(())
        }
    }))
    .buffer_unordered(opts.in_flight)
    .collect()
    .await;
    let took = secs(t0.elapsed());
    results.into_iter().collect::<Result<Vec<()>>>().context("the bound's creates")?;
    delete_namespace(client, &ns, Duration::from_secs(600)).await?;
    Ok(took)
}
