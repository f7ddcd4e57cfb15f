# tfjob-operator: the conventional operator targets. `make help` lists them.
SHELL := /bin/bash
# Rust builds stay warm outside the clone, one directory per checkout path: cargo copies
# binaries to fixed names in the target directory, so two checkouts must not share one.
CARGO_TARGET_DIR ?= $(HOME)/.cache/tfjob-operator/cargo-target-$(shell pwd | cksum | cut -d' ' -f1)
export CARGO_TARGET_DIR
CARGO ?= cargo

.PHONY: help test crds fmt lint bins cluster run deploy deploy-namespaced undeploy image bench

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

E2E_STATE := $(CARGO_TARGET_DIR)/e2e-plane.state

test: ## Everything CI runs: rustfmt, clippy -D warnings, unit, API and e2e tests on a local control plane
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings
	bindir=$$(hack/build-control-plane.sh) && kueuedir=$$(hack/build-kueue.sh) && helmdir=$$(hack/build-helm.sh) && promdir=$$(hack/build-prometheus.sh) && { kfdir=$$(hack/build-training-operator.sh) || kfdir=; } && export TFJOB_TRAINING_OPERATOR_DIR="$$kfdir" && \
	  image=$$(IMAGE=tfjob-operator:e2e hack/build-image.sh --podman-or-nothing) && export TFJOB_IMAGE="$$image" && \
	  TFJOB_BIN_DIR="$$bindir" TFJOB_KUEUE_DIR="$$kueuedir" TFJOB_HELM_DIR="$$helmdir" TFJOB_PROMETHEUS_DIR="$$promdir" TFJOB_TENSORFLOW_DIR="$$(hack/install-tensorflow.sh)" TFJOB_E2E_STATE="$(E2E_STATE)" \
	  $(CARGO) test --locked --no-fail-fast --workspace --tests --features tfjob-operator/fault-points
	hack/check-plane-stopped.sh "$(E2E_STATE)"

bins: ## Build (once, cached under ~/.cache/tfjob-operator) the control-plane binaries, Kueue, Helm and Prometheus; prints their directories
	@hack/build-control-plane.sh
	@hack/build-kueue.sh
	@hack/build-helm.sh
	@hack/build-prometheus.sh

cluster: ## Run a local control plane in the foreground (kubeconfig in .dev/kubeconfig) until Ctrl-C
	bindir=$$(hack/build-control-plane.sh) && TFJOB_BIN_DIR="$$bindir" \
	  $(CARGO) run --locked --quiet -p tfjob-testsupport --bin tfjob-devcluster -- --kubeconfig-out .dev/kubeconfig

run: ## A local control plane running the operator with an example job whose workers finish; prints the job's states
	$(CARGO) build --locked --quiet --bin tfjob-operator
	bindir=$$(hack/build-control-plane.sh) && TFJOB_BIN_DIR="$$bindir" \
	  $(CARGO) run --locked --quiet -p tfjob-testsupport --bin tfjob-devcluster -- --kubeconfig-out .dev/kubeconfig \
	  --crd crds/kubeflow.org_tfjobs.yaml --operator $(CARGO_TARGET_DIR)/debug/tfjob-operator \
	  --apply examples/tfjob-finishes.yaml --watch

crds: ## Regenerate crds/kubeflow.org_tfjobs.yaml and crds/tfjob-validation.yaml from the Rust types (and the chart's copies)
	$(CARGO) run --locked --quiet --bin crdgen > crds/kubeflow.org_tfjobs.yaml
	$(CARGO) run --locked --quiet --bin crdgen -- --policy > crds/tfjob-validation.yaml
	cp crds/kubeflow.org_tfjobs.yaml charts/tfjob-operator/crds/kubeflow.org_tfjobs.yaml
	cp crds/tfjob-validation.yaml charts/tfjob-operator/files/tfjob-validation.yaml

deploy: ## Install the operator cluster-wide on the current kubectl context (server-side apply of deploy/)
	kubectl apply --server-side -k deploy/

deploy-namespaced: ## Install the operator for its own namespace only (deploy/namespaced)
	kubectl apply --server-side -k deploy/namespaced

undeploy: ## Remove what deploy/ installed, the CRD and every TFJob included
	kubectl delete --ignore-not-found -k deploy/

image: ## Build the image tfjob-operator:dev (IMAGE=ref to tag another): docker build where a Docker engine answers, else a static binary in a scratch image with podman or buildah
	IMAGE="$(or $(IMAGE),tfjob-operator:dev)" hack/build-image.sh

BENCH_ARGS ?=
BENCH_KUBEFLOW ?= 1
bench: ## Benchmark 10, 100 and 1000 TFJobs on a local control plane: the release operator, Kubeflow's training-operator (BENCH_KUBEFLOW=0 skips it) and the bound (BENCHMARKS.md); BENCH_ARGS adds flags
	$(CARGO) build --locked --release -p tfjob-operator --bin tfjob-operator -p tfjob-testsupport --bin tfjob-bench
	bindir=$$(hack/build-control-plane.sh) && kf= && \
	  if [ "$(BENCH_KUBEFLOW)" != 0 ]; then \
	    if kfdir=$$(hack/build-training-operator.sh); then kf="--kubeflow $$kfdir"; \
	    else echo "make bench: no training-operator binary (hack/build-training-operator.sh failed): ours and the bound only" >&2; fi; \
	  fi && \
	  TFJOB_BIN_DIR="$$bindir" \
	  $(CARGO_TARGET_DIR)/release/tfjob-bench --operator $(CARGO_TARGET_DIR)/release/tfjob-operator $$kf $(BENCH_ARGS)
