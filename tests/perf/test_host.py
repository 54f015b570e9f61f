"""Host telemetry: only whole sample intervals inside the measured window count, and a busy model shows."""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.perf.host import SAMPLE_INTERVAL_S, HostSample, HostSampler, host_telemetry
from harness.resolve import resolve_config
from harness.result.perf import other_work_note, worst_other_work
from tests.conftest import compose
from tests.perf.test_loadgen import measure, sleep_config

pytestmark = pytest.mark.process


def test_the_window_keeps_samples_whose_interval_it_holds() -> None:
    samples = [
        HostSample(since=n - 1.0, at=float(n), cpu_pct=(10.0 * n, 0.0), rss_bytes=1000 * n) for n in range(1, 21)
    ]
    host = host_telemetry(samples, start=4.0, end=12.0, interval_s=1.0)
    assert host is not None and host.samples == 8  # samples at 5 ... 12: the one at 4 covers 3-4
    assert host.cpu_util_per_core_pct == pytest.approx((sum(10.0 * n for n in range(5, 13)) / 8, 0.0))
    assert host.cpu_util_pct == pytest.approx(host.cpu_util_per_core_pct[0] / 2)
    assert (host.rss_mean_bytes, host.rss_peak_bytes) == (8500, 12000)
    assert host_telemetry(samples, start=4.0, end=4.9, interval_s=1.0) is None


def test_the_cpu_beside_the_run_is_the_busy_time_less_its_own_and_the_hypervisors() -> None:
    # 2 cores, 1 s intervals: busy 1.5 core-s each (0.1 of it stolen), the run's processes 1.0.
    samples = [
        HostSample(
            since=n - 1.0,
            at=float(n),
            cpu_pct=(75.0, 75.0),
            rss_bytes=1,
            busy_cpu_s=1.5,
            steal_cpu_s=0.1,
            own_cpu_s=1.0,
        )
        for n in range(1, 11)
    ]
    host = host_telemetry(samples, start=2.0, end=10.0, interval_s=1.0)
    assert host is not None and host.samples == 8
    assert host.other_cpu_pct == pytest.approx(20.0) and host.steal_pct == pytest.approx(5.0)
    # Process times tick in 10 ms steps: a run busy alone can read a tick above the machine, never below 0%.
    alone = [dataclasses.replace(sample, busy_cpu_s=1.0, steal_cpu_s=0.0, own_cpu_s=1.01) for sample in samples]
    assert host_telemetry(alone, start=2.0, end=10.0, interval_s=1.0).other_cpu_pct == 0.0  # type: ignore[union-attr]


def test_a_busy_process_beside_the_measurement_is_named(cache_dir: Path, tmp_path: Path) -> None:
    """Started by the test (the harness's own process here), it is still not the run's: only the perf workers'
    children are."""
    from harness.pipeline import run
    from harness.summary import format_summary

    config = sleep_config(cache_dir, "perf.iterations=null", "perf.min_duration_s=1")
    alone = measure(config, tmp_path / "alone")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # the interpreter has started and spins
        result = run(config, run_dir=tmp_path / "beside")
    finally:
        busy.kill()
        busy.wait()
    beside = result.perf
    assert beside is not None
    assert alone.host is not None and beside.host is not None
    assert alone.host.other_cpu_pct is not None and beside.host.other_cpu_pct is not None
    # One spinning process is one core of the machine's; the sleep backend leaves it that core.
    assert beside.host.other_cpu_pct > alone.host.other_cpu_pct + 100 / (os.cpu_count() or 1) / 2
    named = [warning for warning in beside.validity.warnings if warning.startswith("other processes used")]
    assert named == [
        f"other processes used {beside.host.other_cpu_pct:.0f}% of the machine's CPU during the window (the harness "
        "and its workers not counted): the timings were taken beside that work"
    ]
    assert beside.validity.valid  # a warning: the numbers are kept, and said to be taken beside other work
    # The gate keeps them as evidence and says so in its notes.
    assert other_work_note(worst_other_work(beside)) == (
        f"measured beside other work (other processes up to {beside.host.other_cpu_pct:.0f}% of the CPU in a repeat)"
    )
    assert alone.host.steal_pct is not None and alone.host.steal_pct >= 0
    # The summary's host line says it; a VM's steal only where it rounds to a percent or more.
    steal = beside.host.steal_pct or 0.0
    said = f"; other processes {beside.host.other_cpu_pct:.0f}%" + (
        f", hypervisor steal {steal:.0f}%" if round(steal) else ""
    )
    assert f"{said}), workers' RSS" in format_summary(result)


def test_every_sample_covers_only_its_own_interval() -> None:
    """The first sample too: psutil keeps ``cpu_percent``'s reference per thread, so a reference read before the
    sampler's thread started left that sample at 0 % (a new thread) or spread over an earlier thread's past."""
    idle = HostSampler()
    idle.start([os.getpid()])
    time.sleep(0.2)
    idle.stop()
    time.sleep(1.0)  # idle: a sample reaching back over this would read far below one busy core
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # the interpreter has started and spins
        sampler = HostSampler()
        started = time.perf_counter()
        sampler.start([busy.pid])
        time.sleep(0.4)
        sampler.stop()
    finally:
        busy.kill()
        busy.wait()
    assert len(sampler.samples) >= 3
    assert sampler.samples[0].since <= started + 0.01
    for before, after in itertools.pairwise(sampler.samples):
        assert after.since == before.at
    assert [sum(sample.cpu_pct) > 80 for sample in sampler.samples] == [True] * len(sampler.samples)


def test_a_busy_model_loads_the_host_and_an_idle_one_does_not(cache_dir: Path, tmp_path: Path) -> None:
    idle = measure(sleep_config(cache_dir, "perf.iterations=null", "perf.min_duration_s=1"), tmp_path / "idle")
    torch_config = resolve_config(
        compose(["debug=tiny", "backend=torch", "stages=[perf]", f"paths.cache={cache_dir}", "perf.iterations=null",
                 "perf.min_duration_s=1", "perf.batch=4"])
    )  # fmt: skip
    busy = measure(torch_config, tmp_path / "busy")
    for result in (idle, busy):
        host = result.host
        assert host is not None and host.interval_s == SAMPLE_INTERVAL_S
        assert host.samples >= 0.5 * result.forward_time_s / SAMPLE_INTERVAL_S
        assert len(host.cpu_util_per_core_pct) == os.cpu_count()
        assert 10 * 2**20 < host.rss_mean_bytes <= host.rss_peak_bytes <= result.peak_host_memory_bytes
    assert busy.host is not None and idle.host is not None
    assert busy.host.cpu_util_pct > idle.host.cpu_util_pct + 25


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs CPU affinity, 2 cores"
)
def test_a_runtime_that_leaves_the_cores_it_was_given_is_named_and_cpu_use_stays_a_share(
    cache_dir: Path, tmp_path: Path
) -> None:
    from tests.conftest import run_config
    from tests.export.test_onnx_build import build

    every_core = os.sched_getaffinity(0)
    results = {}
    for threads in (0, 1):  # ONNX Runtime's default pool, then one thread of the process's own
        config = run_config(
            cache_dir, "stages=[build,perf]", f"backend.intra_op_threads={threads}", "perf.iterations=200",
            "perf.min_samples=200", "perf.efficiency=false",
        )  # fmt: skip
        artifact = build(config).artifact_path
        os.sched_setaffinity(0, {min(every_core)})  # as `taskset -c 0` or a cpuset would; workers inherit it
        try:
            results[threads] = measure(config, tmp_path / str(threads), artifact)
        finally:
            os.sched_setaffinity(0, every_core)
    default_pool = [warning for warning in results[0].validity.warnings if "outside this process's CPU" in warning]
    assert default_pool == [
        "ONNX Runtime's default thread pool (backend.intra_op_threads=0) pins its threads to the machine's physical "
        f"cores, outside this process's CPU affinity (1 of {os.cpu_count()} cores: taskset, a cpuset): set "
        "backend.intra_op_threads=1 to keep the run on its cores"
    ]
    assert not any("outside this process's CPU" in warning for warning in results[1].validity.warnings)
    # A share of the machine's cores, which the default pool runs on whatever the affinity: never above 100%.
    for result in results.values():
        assert 0 < result.cpu_utilization_pct <= 105, result.cpu_utilization_pct
