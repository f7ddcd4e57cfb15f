# tfjob-operator: the conventional operator targets. `make help` lists them.
SHELL := /bin/bash
# Rust builds stay warm outside the clone, so a fresh clone (and CI) reuses them.
CARGO_TARGET_DIR ?= $(HOME)/.cache/tfjob-operator/cargo-target
export CARGO_TARGET_DIR
CARGO ?= cargo

.PHONY: help test crds fmt lint bins cluster run

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

E2E_STATE := $(CARGO_TARGET_DIR)/e2e-plane.state

test: ## Everything CI runs: rustfmt, clippy -D warnings, unit, API and e2e tests on a local control plane
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	bindir=$$(hack/build-control-plane.sh) && \
	  TFJOB_BIN_DIR="$$bindir" TFJOB_E2E_STATE="$(E2E_STATE)" $(CARGO) test --locked --workspace --all-targets
	hack/check-plane-stopped.sh "$(E2E_STATE)"

bins: ## Build (once, cached under ~/.cache/tfjob-operator) the control-plane binaries; prints their directory
	@hack/build-control-plane.sh

cluster: ## Run a local control plane in the foreground (kubeconfig in .dev/kubeconfig) until Ctrl-C
	bindir=$$(hack/build-control-plane.sh) && TFJOB_BIN_DIR="$$bindir" \
	  $(CARGO) run --locked --quiet -p tfjob-testsupport --bin tfjob-devcluster -- --kubeconfig-out .dev/kubeconfig

run: ## Like cluster, with the TFJob CRD installed (the operator itself comes with the controller)
	bindir=$$(hack/build-control-plane.sh) && TFJOB_BIN_DIR="$$bindir" \
	  $(CARGO) run --locked --quiet -p tfjob-testsupport --bin tfjob-devcluster -- --kubeconfig-out .dev/kubeconfig \
	  --crd crds/kubeflow.org_tfjobs.yaml

crds: ## Regenerate crds/kubeflow.org_tfjobs.yaml from the Rust types
	$(CARGO) run --locked --quiet --bin crdgen > crds/kubeflow.org_tfjobs.yaml

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## clippy with warnings as errors
	$(CARGO) clippy --locked --all-targets -- -D warnings
