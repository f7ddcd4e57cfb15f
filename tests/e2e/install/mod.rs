//! The in-cluster install end to end: `deploy/` rendered and applied under restricted Pod
//! Security admission, the operator running under exactly `deploy/`'s RBAC with a token from
//! the TokenRequest API, leader election across processes, `/metrics`, the Helm chart
//! installed with `helm install`, the image run with podman, the migration from Kubeflow's
//! training-operator, and the dashboard's expressions evaluated by real Prometheus scraping
//! the operator.

mod deploy;
mod helm;
mod image;
mod kubeflow;
mod leader;
mod migrate;
mod prometheus;
mod rbac;

pub use rbac::as_deploy_service_account;

use crate::Test;

pub fn tests() -> Vec<Test> {
    let mut all = deploy::tests();
    all.extend(rbac::tests());
    all.extend(leader::tests());
    all.extend(helm::tests());
    all.extend(migrate::tests());
    all.extend(image::tests());
    all.extend(prometheus::tests());
    all
}

pub use crate::support::deploy::{apply, find, kind, render, token_kubeconfig};
