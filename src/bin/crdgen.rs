//! Prints the TFJob CRD (`make crds` writes it to `crds/kubeflow.org_tfjobs.yaml`), or with
//! `--policy` the update contract's ValidatingAdmissionPolicy (`crds/tfjob-validation.yaml`).

fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("--policy") {
        print!("{}", tfjob_operator::api::validation_policy_yaml()?);
    } else {
        print!("{}", tfjob_operator::api::crd_yaml()?);
    }
    Ok(())
}
