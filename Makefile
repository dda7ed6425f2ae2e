# The entry point for everything: make demo | test | bench | lint | install
PY_VERSION ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
OUT ?= out
# pytest-xdist workers for make test: the cluster tests mostly wait on real time (load ~0.8 on
# one worker), so two share 2 cores well; a file's tests stay on one worker (module fixtures
# such as the HPA conformance recording run once); TEST_WORKERS=0 runs in one process
TEST_WORKERS ?= 2

.PHONY: install system-deps demo chart chart-crds chart-dashboard manifests test bench bench-sb3 bench-hpa bench-operator bench-soak lint format clean model

$(STAMP): pyproject.toml
	$(PY_VERSION) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch pinned to the CPU wheel on disk; an unpinned torch pulls a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Real Prometheus for the cluster tests and the demo (Debian's package; skipped if present).
# The local Kubernetes control plane needs no install step: qscale.dev.cluster finds it.
system-deps:
	@command -v prometheus >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing prometheus (apt-get)"; \
	    apt-get update -qq >/dev/null && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	  else echo "prometheus not found and cannot apt-get it: cluster tests will skip (or fail under CI)"; fi; }

# qscale against the real HPA on a local control plane (qscale.demo); binaries missing here are
# downloaded once, pinned by sha256 (qscale.dev.fetch; QSCALE_NO_FETCH=1 forbids it); where none
# can be had it says so and runs the offline demo (qscale evaluate on the shipped excerpt) instead.
demo: $(STAMP) system-deps
	$(VENV)/bin/qscale demo --out $(OUT)/demo

# The chart's generated parts: its CRD from deploy/crds, the Grafana dashboard, and
# deploy/operator.yaml from the chart (the chart tests fail when any of them drifts).
chart-crds: $(STAMP)
	$(PY) hack/chart_crds.py
chart-dashboard: $(STAMP)
	$(PY) hack/dashboard.py
manifests: $(STAMP)
	$(PY) hack/manifests.py

# Chart and manifests with the real tools: helm lint/template, schema rejections, drift, promtool,
# server-side dry runs, helm install + the operator with the chart's token; the Dockerfile checks.
chart: $(STAMP) system-deps
	$(PY) hack/chart_crds.py --check
	$(PY) hack/dashboard.py --check
	$(PY) hack/manifests.py --check
	$(PY) -m pytest -q tests/integration/test_chart.py tests/unit/test_dockerfile.py

test: $(STAMP) system-deps
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=30 tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

bench: $(STAMP)
	$(PY) benchmarks/bench_simulator.py
	$(PY) benchmarks/bench_policy.py
	$(PY) benchmarks/bench_training.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_drift.py
	OMP_NUM_THREADS=1 $(PY) benchmarks/bench_drift_memory.py

# The HPA port against the real kube-controller-manager (a local control plane; about 4 min).
bench-hpa: $(STAMP)
	$(PY) benchmarks/bench_hpa_conformance.py

# Time to quality against Stable-Baselines3 (a benchmark-only dependency; about 1 h on 2 cores).
bench-sb3: $(STAMP)
	$(PY) -m pip install -q stable-baselines3 "torch==2.13.0"
	$(PY) benchmarks/bench_sb3.py --seeds 10

# The operator on a local control plane with real Prometheus, 1/100/1,000 policies (~45 min).
bench-operator: $(STAMP) system-deps
	$(PY) benchmarks/bench_operator.py

# Soak: 1,000 policies for an hour with faults sprinkled in (SOAK_ARGS="--minutes 5 --policies
# 100" for a quick check); exits 1 on a bound violation or a double-applied step.
bench-soak: $(STAMP) system-deps
	$(PY) benchmarks/bench_soak.py $(SOAK_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .ruff_cache

# The shipped default model: one reproducible command (fixed seed, TrainConfig defaults).
model: $(STAMP)
	$(PY) -m qscale.policy.release --no-progress
