"""The load generator with real worker processes: aggregation, modes, failures, bad input."""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import multiprocessing.util
import re
import subprocess
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tqdm import tqdm

from harness.backends import BackendFactory, LoadTarget
from harness.config.schema import RunConfig
from harness.environment import physical_cores, usable_cores
from harness.errors import BackendUnavailable, ConfigError, MeasurementInvalid
from harness.perf.loadgen import CompletionHistogram, LoadPlan, SampleBuffer, WorkerTask, run_instances
from harness.perf.stage import SAMPLES_FILE, run_perf
from harness.perf.stats import latency_stats
from harness.perf.workers import run_workers
from harness.resolve import resolve_config
from harness.result import load_result
from harness.result.perf import PerfResult
from tests.conftest import REPO_ROOT, compose, run_config

pytestmark = pytest.mark.process
SLEEP_US = 6000.0


def sleep_config(cache_dir: Path, *overrides: str) -> RunConfig:
    return resolve_config(
        compose(
            [
                "debug=tiny", "backend=sleep", f"backend.latency_us={SLEEP_US}", "stages=[perf]", f"paths.cache={cache_dir}",
                "perf.warmup=2", *overrides,
            ]
        )
    )  # fmt: skip


def measure(config: RunConfig, run_dir: Path, artifact: str | None = None) -> PerfResult:
    return run_perf(config, artifact_path=artifact, run_dir=run_dir)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "load", [("perf.batch=2", "perf.iterations=40"), ("perf.scenario=server", "perf.target_qps=150")],
    ids=["closed", "server"],
)  # fmt: skip
def test_a_terminal_shows_the_images_completed_as_the_window_runs(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, load: tuple[str, ...]
) -> None:
    # A default run of ViT-L on a CPU measures 1024 batches, many minutes, and the terminal showed nothing.
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    result = measure(sleep_config(cache_dir, "perf.min_duration_s=0.6", *load), tmp_path)
    frames = [int(count) for count in re.findall(r"perf repeat0: (\d+) img", terminal.getvalue())]
    assert len(frames) >= 2 and frames == sorted(frames) and frames[-1] == result.samples, (frames, result.samples)


def test_a_log_file_gets_no_bar_and_the_workers_share_no_counter(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.perf import workers

    shared = []
    monkeypatch.setattr(workers, "StopSignals", lambda **parts: shared.append(parts))
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert measure(sleep_config(cache_dir, "perf.iterations=8"), tmp_path).samples == 8
    assert shared == [] and sys.stderr.getvalue() == ""


def test_a_steady_run_of_few_batches_reads_steady_and_too_short_windows_are_not_judged(
    cache_dir: Path, tmp_path: Path
) -> None:
    # 16 calls of 20 ms in 8 windows: 2 per window.
    steady = measure(
        sleep_config(cache_dir, "backend.latency_us=20000", "perf.iterations=16", "perf.min_samples=16"),
        tmp_path / "steady",
    )
    assert steady.window_cv is not None and steady.window_cv < 0.1
    assert not any("throughput CV" in warning for warning in steady.validity.warnings)
    assert sum(steady.window_throughput_qps) * steady.forward_time_s / 8 == pytest.approx(16, rel=0.05)
    # 16 calls of 1 ms: windows of 2 ms are two of the 1 ms bins completions are timed in.
    short = measure(
        sleep_config(cache_dir, "backend.latency_us=1000", "perf.iterations=16", "perf.min_samples=16"),
        tmp_path / "short",
    )
    assert short.forward_time_s < 8 * 0.020 and short.window_cv is None


@pytest.mark.skipif(usable_cores() < 2, reason="needs 2 cores: two instances of one thread each")
def test_instances_whose_threads_outnumber_the_cores_are_called_oversubscribed(cache_dir: Path, tmp_path: Path) -> None:
    from tests.export.test_onnx_build import build

    cores = usable_cores()
    load = ["stages=[build,perf]", "perf.instances=2", "perf.iterations=20", "perf.efficiency=false"]
    crowded = run_config(cache_dir, *load, f"backend.intra_op_threads={cores}")
    artifact = build(crowded).artifact_path
    result = measure(crowded, tmp_path / "crowded", artifact)
    assert result.backend_resolved["cpu_threads"] == cores
    assert (
        f"oversubscribed: 2 instances x {cores} CPU threads = {2 * cores} threads on {cores} cores; "
        f"set backend.intra_op_threads={cores // 2} to give each instance its own"
    ) in result.validity.warnings
    own = measure(run_config(cache_dir, *load, "backend.intra_op_threads=1"), tmp_path / "own", artifact)
    assert not any(warning.startswith("oversubscribed") for warning in own.validity.warnings)
    many = [*load[:1], f"perf.instances={cores + 1}", *load[2:], "backend.intra_op_threads=1"]
    crowd = measure(run_config(cache_dir, *many), tmp_path / "many", artifact)
    assert (
        f"oversubscribed: {cores + 1} instances x 1 CPU thread = {cores + 1} threads on {cores} cores; more instances "
        f"than cores: perf.instances={cores} at most gives each instance a core of its own"
    ) in crowd.validity.warnings
    # One instance with more threads than cores spins them against each other as surely (42 img/s instead of 1400).
    alone = [*load[:1], "perf.instances=1", *load[2:], f"backend.intra_op_threads={4 * cores}"]
    spinning = measure(run_config(cache_dir, *alone), tmp_path / "alone", artifact)
    assert (
        f"oversubscribed: 1 instance x {4 * cores} CPU threads = {4 * cores} threads on {cores} cores; "
        f"set backend.intra_op_threads={cores}, a thread per core"
    ) in spinning.validity.warnings
    default = measure(run_config(cache_dir, *load), tmp_path / "default", artifact)
    assert default.backend_resolved["cpu_threads"] == physical_cores()  # ONNX Runtime's default: one per core
    # A backend that runs nothing on the CPU's cores (the sleep backend) is never oversubscribed.
    sleeping = measure(sleep_config(cache_dir, "perf.instances=8", "perf.iterations=16"), tmp_path / "sleep")
    assert not any(warning.startswith("oversubscribed") for warning in sleeping.validity.warnings)


def test_instances_multiply_throughput_across_threads_and_processes(cache_dir: Path, tmp_path: Path) -> None:
    single = measure(sleep_config(cache_dir, "perf.iterations=60"), tmp_path / "one")
    threads = measure(sleep_config(cache_dir, "perf.iterations=240", "perf.instances=4"), tmp_path / "threads")
    processes = measure(
        sleep_config(cache_dir, "perf.iterations=240", "perf.instances=4", "perf.processes=2"), tmp_path / "procs"
    )
    assert single.samples == 60 and threads.samples == 240 and processes.samples == 240
    # Four instances give four times one instance's rate (two would give two): within 25%, as this VM's steal took
    # 17% of the threads' rate once (522 img/s against 4 x 158).
    for layout in (threads, processes):
        assert layout.throughput_qps == pytest.approx(4 * single.throughput_qps, rel=0.25)
        assert layout.latency_us.model.p50 == pytest.approx(single.latency_us.model.p50, rel=0.25)
    assert single.latency_us.model.min >= SLEEP_US
    assert single.throughput_qps == pytest.approx(1e6 / single.latency_us.e2e.avg, rel=0.1)


def test_batch_counts_images(cache_dir: Path, tmp_path: Path) -> None:
    result = measure(sleep_config(cache_dir, "perf.iterations=50", "perf.batch=8"), tmp_path)
    assert result.batches == 50 and result.samples == 400
    assert result.throughput_qps == pytest.approx(result.samples / result.forward_time_s)


def test_async_end_to_end_latency_includes_queueing(cache_dir: Path, tmp_path: Path) -> None:
    sync = measure(sleep_config(cache_dir, "perf.iterations=80"), tmp_path / "sync")
    queued = measure(
        sleep_config(cache_dir, "perf.iterations=80", "perf.mode=async", "perf.queue_depth=3"), tmp_path / "async"
    )
    assert sync.latency_us.e2e.p50 == pytest.approx(sync.latency_us.model.p50, rel=0.1)
    # A closed loop with 3 requests in flight on one instance: each waits for about two others.
    assert queued.latency_us.e2e.p50 == pytest.approx(3 * queued.latency_us.model.p50, rel=0.3)
    assert queued.throughput_qps == pytest.approx(sync.throughput_qps, rel=0.15)


def test_a_device_queue_overlaps_one_calls_copy_with_anothers_compute_in_async_mode(
    cache_dir: Path, tmp_path: Path
) -> None:
    device = (f"backend.copy_us={SLEEP_US}", "perf.iterations=60")
    sync = measure(sleep_config(cache_dir, *device, "backend.in_flight=2"), tmp_path / "sync")
    async_ = ("perf.mode=async", "perf.queue_depth=2")
    queued = measure(sleep_config(cache_dir, *device, "backend.in_flight=2", *async_), tmp_path / "queued")
    unqueued = measure(sleep_config(cache_dir, *device, "backend.in_flight=1", *async_), tmp_path / "unqueued")
    # A lone call copies, then computes; with two queued, the device finishes one call per compute time.
    assert sync.throughput_qps == pytest.approx(1e6 / (2 * SLEEP_US), rel=0.15)
    assert queued.throughput_qps == pytest.approx(2 * sync.throughput_qps, rel=0.15)
    assert unqueued.throughput_qps == pytest.approx(sync.throughput_qps, rel=0.15)
    # Queued calls are timed by the device: compute alone, the copy reported apart, the wait in end to end.
    assert queued.latency_us.model.p50 == SLEEP_US
    assert queued.transfer_us is not None and queued.transfer_us.h2d.p50 == SLEEP_US
    assert queued.latency_us.e2e.avg == pytest.approx(2e6 / queued.throughput_qps, rel=0.1)  # Little's law
    assert sync.latency_us.model.p50 == pytest.approx(2 * SLEEP_US, rel=0.15)  # the host clock: copy + compute
    # The result says how the load was served.
    assert (sync.queue_depth, sync.device_queue) == (1, 1)
    assert (queued.queue_depth, queued.device_queue) == (2, 2)
    assert (unqueued.queue_depth, unqueued.device_queue) == (2, 1)
    with pytest.raises(ConfigError, match=r"backend.in_flight=0: expected >= 1"):
        sleep_config(cache_dir, "backend.in_flight=0")


def test_duration_bound_run(cache_dir: Path, tmp_path: Path) -> None:
    result = measure(sleep_config(cache_dir, "perf.iterations=null", "perf.min_duration_s=0.5"), tmp_path)
    assert 0.5 <= result.forward_time_s < 0.8
    assert result.batches == pytest.approx(0.5e6 / SLEEP_US, rel=0.3)


def test_statistics_recompute_from_the_saved_samples(cache_dir: Path, tmp_path: Path) -> None:
    result = measure(sleep_config(cache_dir, "perf.iterations=70", "perf.instances=2", "perf.repeats=3"), tmp_path)
    assert len(result.repeats) == 3 and len(result.throughput_qps_repeats) == 3
    assert result.throughput_qps == sorted(result.throughput_qps_repeats)[1]
    saved = np.load(tmp_path / SAMPLES_FILE)
    median_repeat = result.throughput_qps_repeats.index(result.throughput_qps)
    assert latency_stats(saved[f"repeat{median_repeat}_e2e_us"]) == result.latency_us.e2e
    assert latency_stats(saved[f"repeat{median_repeat}_model_us"]) == result.latency_us.model
    completions = saved[f"repeat{median_repeat}_completions_per_ms"]
    assert completions.sum() == 70 and completions.size / 1000 == pytest.approx(result.forward_time_s, abs=0.002)


def test_both_minimums_extend_the_run_past_its_iterations(cache_dir: Path, tmp_path: Path) -> None:
    timed = measure(sleep_config(cache_dir, "perf.iterations=10", "perf.min_duration_s=0.4"), tmp_path / "timed")
    assert timed.validity.valid and timed.forward_time_s >= 0.4
    assert timed.batches == pytest.approx(0.4e6 / SLEEP_US, rel=0.3) and timed.batches > 10
    counted = measure(sleep_config(cache_dir, "perf.iterations=10", "perf.min_samples=40"), tmp_path / "counted")
    assert counted.validity.valid and counted.batches == 40  # iterations are a floor, min_samples another


def test_the_upper_bound_stops_a_run_that_misses_its_minimums_and_makes_it_invalid(
    cache_dir: Path, tmp_path: Path
) -> None:
    result = measure(
        sleep_config(
            cache_dir, "perf.iterations=10", "perf.min_duration_s=5", "perf.min_samples=1000", "perf.max_duration_s=0.3"
        ),
        tmp_path,
    )
    # Stopped at the bound: no more calls than 0.3 s of 6 ms calls can start (a stalled VM makes fewer, never more;
    # a wall-clock ceiling on forward_time_s failed when the VM stalled), where the minimums would run 5 s.
    assert result.forward_time_s >= 0.3 and not result.validity.valid
    assert result.batches <= 0.3 / (SLEEP_US / 1e6) + 1
    assert any(
        "perf.min_duration_s=5.0 (stopped at perf.max_duration_s=0.3)" in reason for reason in result.validity.reasons
    )
    assert any("< 1000 (perf.iterations, perf.min_samples)" in reason for reason in result.validity.reasons)
    assert result.latency_us.e2e.p99 is None  # too few samples: withheld, not invented


def test_the_old_duration_knob_is_the_minimum_duration(cache_dir: Path, tmp_path: Path) -> None:
    config = sleep_config(cache_dir, "perf.iterations=null", "perf.duration_s=0.5", "perf.min_duration_s=0.2")
    assert (config.perf.min_duration_s, config.perf.duration_s) == (0.5, None)


def test_a_crashing_worker_fails_the_run_with_its_exit_code(cache_dir: Path, tmp_path: Path) -> None:
    config = sleep_config(
        cache_dir, "perf.iterations=400", "perf.instances=2", "perf.processes=2", "backend.exit_after_calls=20"
    )
    with pytest.raises(MeasurementInvalid, match=r"perf worker \d \(pid \d+\) exited with status 70"):
        measure(config, tmp_path)


def test_a_worker_killed_as_it_starts_fails_the_run_instead_of_hanging_it(cache_dir: Path, tmp_path: Path) -> None:
    # A batch of 64 images is 38 MB: sent through the worker's start pipe, the parent blocked writing it once the
    # worker was gone (out of memory, killed), and waited there forever.
    import threading

    import psutil

    config = sleep_config(cache_dir, "perf.batch=64", "perf.iterations=20")
    outcome: list[BaseException | PerfResult] = []

    def measure_into_outcome() -> None:
        try:
            outcome.append(measure(config, tmp_path))
        except BaseException as error:  # the outcome under test
            outcome.append(error)

    def kill_the_first_worker() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for child in psutil.Process().children():
                with contextlib.suppress(psutil.Error):
                    if "spawn_main" in " ".join(child.cmdline()):
                        child.kill()
                        return
            time.sleep(0.001)

    killer = threading.Thread(target=kill_the_first_worker, daemon=True)
    killer.start()
    measuring = threading.Thread(target=measure_into_outcome, daemon=True)
    measuring.start()
    measuring.join(timeout=120)
    assert not measuring.is_alive(), "the parent still waits on a worker that is gone"
    (error,) = outcome
    assert isinstance(error, MeasurementInvalid)
    # SIGKILL: what the OOM killer sends, and an exit code of -9 said nothing of it.
    assert re.fullmatch(
        r"perf worker 0 \(pid \d+\) was killed by SIGKILL: the kernel's out-of-memory killer sends it when memory "
        r"runs out \(see `dmesg`\), as does a scheduler's hard limit",
        str(error),
    ), error


def test_a_dead_workers_last_words_are_kept_in_result_json(cache_dir: Path, tmp_path: Path) -> None:
    from harness.pipeline import run

    config = sleep_config(cache_dir, "perf.iterations=50", "backend.exit_after_calls=5")
    result = run(config, run_dir=tmp_path / "run")
    assert result.status == "failed" and result.error is not None
    assert "exited with status 70" in result.error.message and "\n" not in result.error.message
    assert result.error.details == "sleep backend: simulated runtime crash on call 5"
    assert load_result(tmp_path / "run").error == result.error


def test_a_worker_error_travels_back_as_data(cache_dir: Path, tmp_path: Path) -> None:
    config = resolve_config(
        compose(["debug=tiny", "backend=torch", "stages=[perf]", f"paths.cache={cache_dir}", "model.weights=/gone.pth"])
    )
    with pytest.raises(
        MeasurementInvalid, match=r"perf worker 0 failed: WeightsError: model.weights='/gone.pth': no such file"
    ):
        measure(config, tmp_path)


class DrawsAProgressBar:
    """A backend factory whose worker draws a (disabled) tqdm bar first, as torch.compile does while it waits for
    its kernels, and whose exit then takes a second before tqdm's lock is let go, as a runtime's own exit
    handlers may (picklable: the spawned worker imports this module)."""

    def __init__(self, factory: BackendFactory) -> None:
        self.factory = factory

    def __call__(self) -> object:
        with tqdm(total=1, disable=True):
            # Run at exit before the lock's own clean-up (a higher priority), as the parent's terminate arrives.
            multiprocessing.util.Finalize(None, time.sleep, args=(1.0,), exitpriority=10)
            return self.factory()


def measure_with_a_progress_bar(cache_dir: str) -> None:
    config = sleep_config(Path(cache_dir), "perf.iterations=4")
    target = LoadTarget(artifact_path=None, model=config.model, precision="fp32", cache_dir=cache_dir)
    task = WorkerTask(
        worker=0, instances=(0,), iterations=(4,), factory=DrawsAProgressBar(BackendFactory(config.backend, target)),  # type: ignore[arg-type]
        inputs=np.zeros((1, 3, 224, 224), dtype=np.float32),
        plan=LoadPlan(mode="sync", queue_depth=1, warmup=0, min_duration_s=0.0, max_duration_s=None),
    )  # fmt: skip
    (report,) = run_workers([task], start_timeout_s=60)
    assert report.instances[0].calls == 4


def test_a_worker_that_drew_a_progress_bar_leaves_the_resource_tracker_nothing_to_warn_about(cache_dir: Path) -> None:
    # tqdm's first bar makes a multiprocessing lock; a worker terminated after its report leaked it, and Python's
    # resource tracker printed "leaked semaphore objects" on the harness's stderr as it exited (torch.compile).
    code = f"from tests.perf.test_loadgen import measure_with_a_progress_bar; measure_with_a_progress_bar({str(cache_dir)!r})"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "leaked" not in done.stderr, done.stderr


def test_processes_above_instances_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"perf.processes=3: expected <= perf.instances=2"):
        resolve_config(compose(["perf.instances=2", "perf.processes=3"]))


def test_missing_artifact_and_missing_provider(cache_dir: Path, tmp_path: Path) -> None:
    # Stages that run a built artifact without the build stage are refused when the config resolves.
    for backend in ("backend=onnxruntime", "backend=torch backend.artifact=aoti"):
        with pytest.raises(
            ConfigError, match=r"stages=\['perf'\]: backend=\w+ runs the artifact the build stage makes"
        ):
            resolve_config(compose(["debug=tiny", "stages=[perf]", *backend.split()]))
    assert resolve_config(compose(["debug=tiny", "stages=[perf]", "backend=torch"])).stages == ("perf",)  # no artifact
    config = resolve_config(compose(["debug=tiny", "stages=[build,perf]", f"paths.cache={cache_dir}"]))
    with pytest.raises(ConfigError, match=r"backend=onnxruntime needs a built artifact: include 'build' in stages"):
        measure(config, tmp_path)
    with pytest.raises(ConfigError, match=r"artifact /nowhere.onnx does not exist"):
        measure(config, tmp_path, artifact="/nowhere.onnx")
    cuda = resolve_config(compose(["debug=tiny", "backend.providers=[CUDAExecutionProvider]"]))
    with pytest.raises(
        BackendUnavailable,
        match=r"'CUDAExecutionProvider' is not available in onnxruntime .*installed: \[.*install onnxruntime-gpu in "
        r"place of onnxruntime: pip install 'dinov2-deploy-harness\[ort-gpu\]'",
    ):
        measure(cuda, tmp_path, artifact=str(static_batch_model(tmp_path, 4)))


def static_batch_model(folder: Path, batch: int) -> Path:
    """A real ONNX graph (global average pool) with a fixed batch axis, as some vendor builds have."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["features"]),
        ],
        "static",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, 224, 224])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 3])],
    )
    path = folder / "static.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_shape_and_batch_are_checked_against_the_artifact(cache_dir: Path, tmp_path: Path) -> None:
    artifact = str(static_batch_model(tmp_path, 4))
    # An artifact made elsewhere may take another size than the config's model: it is checked when it opens.
    wrong_shape = resolve_config(compose(["debug=tiny", "model.input_size=[252,252]"]))
    with pytest.raises(
        ConfigError, match=r"perf.shape=\[3, 252, 252\]: the artifact takes \[C, H, W\] = \[3, 224, 224\]"
    ):
        measure(wrong_shape, tmp_path, artifact=artifact)
    too_big = resolve_config(compose(["debug=tiny", "perf.batch=8"]))
    with pytest.raises(ConfigError, match=r"perf.batch=8: the artifact accepts batch 4 at most"):
        measure(too_big, tmp_path, artifact=artifact)
    fits = resolve_config(compose(["debug=tiny", "perf.batch=4", "perf.iterations=8"]))
    assert measure(fits, tmp_path, artifact=artifact).samples == 32


def test_the_heap_built_before_the_window_is_collected_and_frozen_out_of_the_windows_collections(
    cache_dir: Path,
) -> None:
    # A worker that imported torch and built a model made its cycle collector walk that whole heap a few calls into
    # the window: the tiny model at batch 1 had one call of 95 ms among calls of 1.1 ms (server scenario at 200 qps:
    # e2e p99 24 to 49 ms instead of 3 to 10).
    startup_heap = [[index] for index in range(100_000)]  # objects the collector tracks, alive before the window
    config = sleep_config(cache_dir, "backend.latency_us=100")
    target = LoadTarget(artifact_path=None, model=config.model, precision="fp32", cache_dir=str(cache_dir))
    task = WorkerTask(
        worker=0, instances=(0,), iterations=(4,), factory=BackendFactory(config.backend, target),
        inputs=np.zeros((1, 3, 224, 224), dtype=np.float32),
        plan=LoadPlan(mode="sync", queue_depth=1, warmup=0, min_duration_s=0.0, max_duration_s=None),
    )  # fmt: skip
    cycle = argparse.Namespace()
    cycle.itself = cycle  # garbage only the cycle collector frees
    cycle_alive = weakref.ref(cycle)
    del cycle
    at_release: list[tuple[int, bool]] = []
    (instance,) = run_instances(
        task, go=lambda: at_release.append((gc.get_freeze_count(), cycle_alive() is not None))
    ).instances
    assert instance.calls == 4
    frozen, garbage_left = at_release[0]
    assert frozen >= len(startup_heap)
    assert not garbage_left  # collected before the window
    # Unfrozen after it: a process measuring in its own heap (the device check) still collects it.
    assert gc.get_freeze_count() == 0


def test_sample_buffer_grows_in_chunks() -> None:
    buffer = SampleBuffer(2, capacity_hint=4)
    for index in range(10):
        buffer.append(index, 2 * index)
    array = buffer.array()
    assert array.shape == (10, 2) and array.dtype == np.float32 and len(buffer.chunks) == 3
    np.testing.assert_array_equal(array[:, 1], 2 * np.arange(10))


def test_completion_histogram_counts_per_millisecond_and_grows_with_time() -> None:
    histogram = CompletionHistogram()
    for offset in (0.0004, 0.0006, 0.0015, 9.9999):
        histogram.add(offset)
    counts = histogram.array()
    assert counts.size == 10_000 and counts.sum() == 4
    assert (counts[0], counts[1], counts[9999]) == (2, 1, 1) and histogram.last_s == 9.9999


def test_photo_inputs_use_the_runs_preprocessing() -> None:
    from harness.perf.stage import make_inputs
    from harness.vdsp import parse_vdsp

    config = resolve_config(compose(["debug=tiny", "perf.inputs=photos"]))
    default = make_inputs(config.perf.inputs, (2, 3, 224, 224), "float32", seed=0, preprocessing=config.vdsp_params)
    vendor = resolve_config(compose(["debug=tiny", "vdsp=official_dinov2"])).vdsp_params
    assert vendor == parse_vdsp(vendor_json(), source="fixture")
    with_vendor = make_inputs(config.perf.inputs, (2, 3, 224, 224), "float32", seed=0, preprocessing=vendor)
    assert default.shape == with_vendor.shape == (2, 3, 224, 224)
    assert not np.allclose(default, with_vendor)  # OpenCV-style bilinear and fp16-rounded constants differ


def vendor_json() -> dict:
    import json

    return json.loads(
        (
            Path(__file__).resolve().parents[1] / "fixtures" / "vastai" / "official-dinov2_vitl14_reg4-vdsp_params.json"
        ).read_text()
    )


def test_a_spinning_sleep_backend_keeps_its_service_time(cache_dir: Path, tmp_path: Path) -> None:
    result = measure(sleep_config(cache_dir, "perf.iterations=40", "backend.spin_us=2000"), tmp_path)
    # The whole call can be spun: never shorter than asked, and the load generator sees the same time.
    assert result.latency_us.model.min >= SLEEP_US
    with pytest.raises(ConfigError, match=r"^backend.spin_us=-1.0: expected >= 0$"):
        sleep_config(cache_dir, "backend.spin_us=-1")
