# tfjob-operator: the conventional operator targets. `make help` lists them.
SHELL := /bin/bash
# Rust builds stay warm outside the clone, so a fresh clone (and CI) reuses them.
CARGO_TARGET_DIR ?= $(HOME)/.cache/tfjob-operator/cargo-target
export CARGO_TARGET_DIR
CARGO ?= cargo

.PHONY: help test crds fmt lint

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

test: ## Everything CI runs: rustfmt check, clippy -D warnings, unit and API tests
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) test --locked

crds: ## Regenerate crds/kubeflow.org_tfjobs.yaml from the Rust types
	$(CARGO) run --locked --quiet --bin crdgen > crds/kubeflow.org_tfjobs.yaml

fmt: ## Format the code
	$(CARGO) fmt --all

lint: ## clippy with warnings as errors
	$(CARGO) clippy --locked --all-targets -- -D warnings
