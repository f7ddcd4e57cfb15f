//! Prints the TFJob CRD (`make crds` writes it to `crds/kubeflow.org_tfjobs.yaml`).

fn main() -> anyhow::Result<()> {
    print!("{}", tfjob_operator::api::crd_yaml()?);
    Ok(())
}
