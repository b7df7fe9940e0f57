# Kiban: every target sets up what it needs, so a fresh machine runs `make demo` or `make test` directly.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST := $(PY) -m pytest

.PHONY: all venv lock tools image image-base crds check-crds chart check-chart docs test test-unit test-integration test-e2e bench bench-operator bench-gateway demo dev-cluster kind-e2e clean

all: test

# The runtime closure comes from the operator image's lock first (exact versions, hashes), so the
# tests run on what the image runs; then the two distributions, editable.
$(STAMP): pyproject.toml operator/pyproject.toml operator/requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --require-hashes -r operator/requirements.lock
	$(PY) -m pip install --quiet -e ./operator -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

## lock: re-pin the operator image's dependency closure (operator/requirements.lock) from operator/pyproject.toml
lock: $(STAMP)
	$(PY) -m pip install --quiet 'uv==0.13.9'
	$(VENV)/bin/uv pip compile operator/pyproject.toml --python-version 3.11 --generate-hashes --no-header --quiet --output-file operator/requirements.lock

## tools: pinned kube-apiserver, controller-manager, scheduler, kubectl, kwok, helm, etcd, prometheus into a cache outside the repo
tools:
	bash hack/tools/build.sh

## image: the operator image localhost/kiban-operator:dev from the Containerfile, on a Debian base built here, no registry (docs/image.md)
image:
	bash hack/image/build.sh

## image-base: only that base, localhost/kiban-base:bookworm-py311 (mmdebstrap, cached by its recipe)
image-base:
	bash hack/image/build.sh base

## crds: regenerate crds/ from the pydantic models in operator/kiban/api
crds: $(STAMP)
	$(PY) -m kiban crd generate --output-dir crds

## check-crds: fail when the checked-in CRD differs from what the models generate
check-crds: $(STAMP)
	$(PY) -m kiban crd check --output-dir crds

## chart: copy crds/ into the chart and regenerate its dashboards and rules
chart: $(STAMP)
	$(PY) hack/chart/sync.py

## docs: rewrite the generated blocks of README.md and docs/ (reason strings, status examples) by running the policy
docs: $(STAMP)
	$(PY) -m kiban_dev.docsnippets

## check-chart: fail when the chart's CRDs, dashboards or rules are stale
check-chart: $(STAMP)
	$(PY) hack/chart/sync.py --check

test-unit: $(STAMP)
	$(PYTEST) tests/unit

test-integration: $(STAMP) tools
	$(PYTEST) tests/integration

test-e2e: $(STAMP) tools
	$(PYTEST) tests/e2e

## test: the README's test command; what CI runs
test: $(STAMP) tools check-crds check-chart
	$(PYTEST) tests

## bench: autoscaling benchmark on the Azure traces (Kiban vs peers vs oracle)
bench: $(STAMP)
	$(VENV)/bin/kiban-bench --out bench/results

## bench-operator: 200 and 1,000 FoundationModels applied at once on the dev cluster
bench-operator: $(STAMP) tools
	$(PY) -m kiban_dev.operator_bench

## bench-gateway: requests/s and added TTFT/e2e latency through the Kiban gateway vs straight to kiban-sim (bench/results/gateway.md)
bench-gateway: $(STAMP)
	$(PY) -m kiban_dev.gateway_bench run --out bench/results --profile

## demo: the README's first command; local control plane, simulated GPUs, Prometheus, autoscaling under a real trace
demo: $(STAMP) tools
	$(PY) -m kiban_dev.demo

## dev-cluster: a local control plane with simulated GPU nodes, in the foreground
dev-cluster: $(STAMP) tools
	$(PY) -m kiban dev-cluster

## kind-e2e: the same end-to-end tests against kind (needs Docker; cannot run on the project's own machines)
kind-e2e: $(STAMP)
	bash hack/kind/e2e.sh

clean:
	rm -rf $(VENV) build *.egg-info
