# Quick start: `make demo` (the offline demo experiment) and `make test` (the whole suite).
# Both create or update .venv on their own.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench gate baseline device-bundle clean
CI_SWEEP := outputs/ci-gate
CI_BASELINE := reports/baselines/ci.json
# Against the committed baseline (another day, often another host), the sleep backend's throughput moved from x0.93
# to x1.02 on this shared VM over one day's CI runs while its p50 latencies stayed within 1%: throughput is a mean, and
# takes the hypervisor's preemptions, which vary by day and host. CI gates it at 15%; the p50s keep the 5% rule.
CI_GATE_RULES := gate.rules.throughput_qps.threshold=0.15

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# The CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(BIN)/harness run -m +experiment=demo

test: lint
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check harness hydra_plugins tests bench
	$(BIN)/ruff format --check harness hydra_plugins tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(STAMP)
	# Saved under .benchmarks/ and compared with the previous saved run, for information (the first run only
	# warns that it has none): the benchmarks' own assertions are ratios measured within one run. Every test
	# under bench/ runs, the checks without a timed body (gate calibration, exit time) too.
	$(BIN)/python -m pytest bench --benchmark-autosave --benchmark-compare

# CI's regression gate: a small fixed experiment gated against the committed baseline (exit 1 regression,
# 3 still inconclusive after one rerun, 4 unusable input: each fails). The sleep backend's speed does not
# depend on the machine, so a baseline from another machine is allowed.
gate: $(STAMP)
	rm -rf $(CI_SWEEP)
	$(BIN)/harness run -m +experiment=ci_accuracy,ci_perf hydra.sweep.dir=$(CI_SWEEP) tracking=off
	$(BIN)/harness gate $(CI_SWEEP) --baseline $(CI_BASELINE) --rerun 1 --allow-hardware-mismatch \
		--report $(CI_SWEEP)/gate.md tracking=off $(CI_GATE_RULES)

# Re-measure the CI experiment and make it the committed baseline (review the diff before committing).
baseline: $(STAMP)
	rm -rf $(CI_SWEEP)
	$(BIN)/harness run -m +experiment=ci_accuracy,ci_perf hydra.sweep.dir=$(CI_SWEEP) tracking=off
	$(BIN)/harness gate --promote $(CI_SWEEP) --baseline $(CI_BASELINE) tracking=off

# What the device check needs beyond torch and timm, for a GPU machine that cannot install packages: NVML's
# Python binding (nvidia-ml-py, one pure-Python module), copied into .device/ to travel beside the checkout
# (run there with PYTHONPATH=.device).
device-bundle: $(STAMP)
	rm -rf .device && mkdir .device
	$(BIN)/python -c "import shutil, pynvml; shutil.copy(pynvml.__file__, '.device')"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
