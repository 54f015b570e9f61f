"""Harness overhead and CPU efficiency targets (issue: vamp-style performance).

Every assertion is a ratio of two numbers measured in the same run, interleaved, never a wall-clock bound:
- the harness's instance loop reaches >= 98% of a bare ``session.run`` loop (same process, threads, input),
  best round against best round;
- ONNX Runtime on 2 threads spends >= 65% of its model time in the model's own GEMMs (efficiency: the same
  GEMMs timed alone through ONNX Runtime with the same threads, over the measured model time per batch), at
  batch 1 and 8 (82% and 83% measured on the 2-core VM; the floor leaves room for its noise); a floor that does
  not depend on how fast this CPU's big sgemm is;
- the runner's memory grows by the latency samples only: 8 bytes per batch (16 at the peak, while handing
  them back);
- no call in the measured window of a fresh worker process that imported torch and built a model pays for
  collecting that heap: the slowest of 64 calls of the tiny model stays within 10x their median (a full
  collection made one 95 ms among calls of 1.1 ms).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from harness.backends import BackendFactory, LoadTarget
from harness.config.schema import RunConfig
from harness.perf.loadgen import LoadPlan, WorkerTask, run_instances
from harness.perf.stage import SAMPLES_FILE, make_inputs, run_perf
from harness.resolve import resolve_config
from tests.conftest import compose

ROUNDS = 5
EFFICIENCY_FLOOR = {1: 0.65, 8: 0.65}


def random_batch(batch: int) -> np.ndarray:
    return make_inputs("random", (batch, 3, 224, 224), "float32", seed=0)


def one_instance(backend: object, target: LoadTarget, *, batch: int, calls: int, warmup: int) -> WorkerTask:
    return WorkerTask(
        worker=0, instances=(0,), iterations=(calls,), factory=BackendFactory(backend, target), inputs=random_batch(batch),
        plan=LoadPlan(mode="sync", queue_depth=1, warmup=warmup, min_duration_s=0.0, max_duration_s=None),
    )  # fmt: skip


def harness_throughput(config: RunConfig, artifact: str, backend: object, *, batch: int, calls: int) -> float:
    target = LoadTarget(artifact_path=artifact, model=config.model, precision="fp32", cache_dir=config.paths.cache)
    report = run_instances(one_instance(backend, target, batch=batch, calls=calls, warmup=2))
    (instance,) = report.instances
    return calls * batch / instance.last_completion_s


def bare_throughput(artifact: str, options: onnxruntime.SessionOptions, *, batch: int, calls: int) -> float:
    session = onnxruntime.InferenceSession(artifact, sess_options=options, providers=["CPUExecutionProvider"])
    feed = {"input": random_batch(batch)}
    for _ in range(2):
        session.run(None, feed)
    started = time.perf_counter()
    for _ in range(calls):
        session.run(None, feed)
    return calls * batch / (time.perf_counter() - started)


def session_options(threads: int) -> onnxruntime.SessionOptions:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return options


@pytest.mark.parametrize(("batch", "calls"), [(1, 40), (8, 6)])
def test_harness_overhead_against_a_bare_loop(benchmark, vits_artifact, batch: int, calls: int) -> None:
    config, artifact = vits_artifact
    backend = dataclasses.replace(config.backend, intra_op_threads=2)
    measured: dict[str, list[float]] = {"bare": [], "harness": []}
    runners = {
        "bare": lambda: bare_throughput(artifact, session_options(2), batch=batch, calls=calls),
        "harness": lambda: harness_throughput(config, artifact, backend, batch=batch, calls=calls),
    }
    for round_index in range(ROUNDS):  # alternate the order: this VM drifts by +-15% between seconds
        for name in ("bare", "harness") if round_index % 2 == 0 else ("harness", "bare"):
            measured[name].append(runners[name]())
    # Best round against best round: interference only ever takes throughput away (rounds of both loops fell
    # from 16 to 11 img/s when a neighbour took the cores), so each loop's best round is its speed, while a
    # median of 5 moved with how many rounds the neighbour happened to hit (0.956 one run, 1.08 the next).
    ratio = max(measured["harness"]) / max(measured["bare"])
    benchmark.extra_info.update({**measured, "ratio_of_bests": ratio})
    benchmark.pedantic(runners["harness"], rounds=1)
    print(f"\nbatch {batch}: bare {measured['bare']} harness {measured['harness']} img/s -> ratio {ratio:.4f}")
    assert ratio >= 0.98


def test_onnxruntime_spends_its_time_in_the_models_gemms(benchmark, vits_artifact, tmp_path) -> None:
    """Efficiency (the model's GEMMs alone, same runtime and threads, over the measured model time) >= the floor."""
    config, artifact = vits_artifact
    measured = {}
    for batch, iterations in ((1, 40), (8, 6)):
        run_config = dataclasses.replace(
            config,
            backend=dataclasses.replace(config.backend, intra_op_threads=2),
            perf=dataclasses.replace(config.perf, batch=batch, iterations=iterations, min_samples=iterations),
        )
        result = run_perf(run_config, artifact_path=artifact, run_dir=tmp_path / f"b{batch}")
        assert result.efficiency is not None
        measured[batch] = result.efficiency
    benchmark.extra_info.update({f"b{batch}": dataclasses.asdict(value) for batch, value in measured.items()})
    benchmark.pedantic(lambda: None, rounds=1)
    for batch, efficiency in measured.items():
        print(
            f"\nbatch {batch}: efficiency {efficiency.efficiency:.1%}, {efficiency.achieved_gflops:.1f} GFLOP/s achieved, "
            f"GEMMs alone {efficiency.gemm_gflops:.1f} GFLOP/s"
        )
    for batch, efficiency in measured.items():
        assert efficiency.efficiency >= EFFICIENCY_FLOOR[batch], batch


def runner_memory_bytes(calls: int) -> tuple[int, int]:
    """(retained, peak) bytes traced while the instance loop runs ``calls`` zero-latency calls."""
    config = resolve_config(compose(["model=tiny14", "backend=sleep", "backend.latency_us=0"]))
    target = LoadTarget(artifact_path=None, model=config.model, precision="fp32", cache_dir=".")
    task = one_instance(config.backend, target, batch=1, calls=calls, warmup=0)
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    report = run_instances(task)
    retained, peak = (value - baseline for value in tracemalloc.get_traced_memory())
    tracemalloc.stop()
    assert report.instances[0].samples.shape == (calls, 2)
    return retained, peak


def test_runner_memory_is_flat_beyond_the_samples(benchmark) -> None:
    runner_memory_bytes(1000)  # first calls allocate one-off caches
    (small_retained, small_peak), (large_retained, large_peak) = (
        runner_memory_bytes(100_000),
        runner_memory_bytes(400_000),
    )
    retained_per_sample = (large_retained - small_retained) / 300_000
    peak_per_sample = (large_peak - small_peak) / 300_000
    benchmark.extra_info.update({"retained_per_sample": retained_per_sample, "peak_per_sample": peak_per_sample})
    benchmark.pedantic(runner_memory_bytes, args=(1000,), rounds=1)
    print(f"\nrunner memory per extra sample: retained {retained_per_sample:.2f} B, peak {peak_per_sample:.2f} B")
    sample_bytes = 2 * np.dtype(np.float32).itemsize  # e2e and model latency
    assert retained_per_sample <= sample_bytes + 1  # + the per-millisecond completion counts
    # At the end the chunks are joined into one array: twice the samples, briefly.
    assert peak_per_sample <= 2 * sample_bytes + 2


def test_a_fresh_worker_collects_no_startup_heap_inside_its_window(benchmark, tmp_path) -> None:
    # Through the installed command, as users run it: a spawned worker imports its parent's main module again, so
    # what it holds depends on how the harness was started (under `python -m harness` no collection came due).
    command = Path(sys.executable).with_name("harness")

    def slowest_over_median() -> float:
        run_dir = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        subprocess.run(
            [command, "run", "debug=tiny", "backend=torch", "stages=[perf]", "perf.iterations=64",
             "perf.warmup=1", "perf.repeats=3", "tracking=off", f"paths.cache={tmp_path / 'cache'}",
             f"hydra.run.dir={run_dir}"],
            check=True, capture_output=True,
        )  # fmt: skip
        samples = np.load(run_dir / SAMPLES_FILE)
        model_us = [samples[f"repeat{repeat}_model_us"] for repeat in range(3)]
        return max(float(repeat.max() / np.median(repeat)) for repeat in model_us)

    ratio = benchmark.pedantic(slowest_over_median, rounds=1)
    benchmark.extra_info["slowest_over_median"] = ratio
    print(f"\nslowest call / median call in a fresh worker's window (worst of 3 repeats): {ratio:.2f}")
    assert ratio < 10.0
