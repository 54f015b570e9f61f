"""A backend that times its own copies (torch on CUDA with host_io) gets them summarised beside the model time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.perf.loadgen import COMPLETION_BIN_S, InstanceSamples, WorkerReport
from harness.perf.measurement import summarise
from tests.conftest import run_config


def instance(index: int, calls: int, transfer_us: np.ndarray) -> InstanceSamples:
    samples = np.column_stack([np.full(calls, 900.0), np.full(calls, 700.0)]).astype(np.float32)
    return InstanceSamples(
        instance=index, worker=0, load_s=0.1, first_call_us=5000.0, start=100.0, samples=samples,
        completions=np.ones(calls, dtype=np.int64), last_completion_s=calls * COMPLETION_BIN_S, calls=calls,
        dispatch_delay_us=np.zeros(0, dtype=np.float32), transfer_us=transfer_us.astype(np.float32), device_queue=1,
        arrivals_s=np.zeros(0),
    )  # fmt: skip


def report(*instances: InstanceSamples) -> WorkerReport:
    return WorkerReport(
        worker=0, pid=1, instances=instances, cpu_s=0.01, wall_s=0.1, peak_rss_bytes=1, peak_device_bytes=None
    )


def test_copy_times_of_every_call_are_summarised_and_kept_raw(cache_dir: Path) -> None:
    perf = run_config(cache_dir, "perf.batch=1", "perf.min_duration_s=0", "perf.iterations=1").perf
    first = np.column_stack([np.arange(1, 101), np.full(100, 20.0)])
    second = np.column_stack([np.arange(101, 201), np.full(100, 30.0)])
    measurement, raw = summarise(perf, [report(instance(0, 100, first), instance(1, 100, second))])
    split = measurement.transfer_us
    assert split is not None
    assert split.h2d.avg == np.mean(np.arange(1, 201)) and split.h2d.min == 1 and split.h2d.max == 200
    assert split.d2h.avg == 25.0 and split.h2d.p50 is not None
    np.testing.assert_array_equal(raw["h2d_us"], np.arange(1, 201))
    assert measurement.latency_us.model.avg == 700.0  # the model time stays the compute alone


def test_backends_that_do_not_copy_report_no_split(cache_dir: Path) -> None:
    perf = run_config(cache_dir, "perf.batch=1", "perf.min_duration_s=0", "perf.iterations=1").perf
    measurement, raw = summarise(perf, [report(instance(0, 50, np.zeros((0, 2))))])
    assert measurement.transfer_us is None and "h2d_us" not in raw
