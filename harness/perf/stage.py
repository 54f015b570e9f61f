"""Perf stage: vamp-style throughput and latency with validity checks.

``run_perf`` opens the backend (resolved and checked against the artifact) before any timing, makes the
input batch, runs ``perf.repeats`` independent
measurements (fresh worker processes each), derives every statistic from the raw samples (kept in
``perf_samples.npz`` beside ``result.json``) and reports the median run as the headline.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from pathlib import Path

import numpy as np

from harness.backends import BackendFactory, LoadTarget, OpenedBackend, one_program_per_batch, open_backend
from harness.config.perf import PerfConfig
from harness.config.schema import RunConfig, VdspParams
from harness.data.photos import sample_photos
from harness.environment import cpu_model, gpus, hardware_fingerprint, usable_cores
from harness.errors import counted
from harness.fileio import draws_progress
from harness.models.variants import get_variant
from harness.nvml import NvmlSampler
from harness.perf.contention import CLAIMS_FOLDER, claimed_window
from harness.perf.efficiency import (
    EFFICIENCY_CEILING,
    GemmRuntime,
    efficiency_undefined,
    flops_per_image,
    gemm_runtime,
    model_gemms,
    onnx_gemm_flops,
    time_gemms,
)
from harness.perf.host import HostSampler
from harness.perf.loadgen import LoadPlan, Sampler, WorkerTask
from harness.perf.measurement import headline_index, offline_queue_served_early, perf_result, summarise
from harness.perf.workers import ProgressWatch, StabilityWatch, run_workers
from harness.preprocess import batch_of
from harness.result.perf import Efficiency, Measurement, PerfResult, Probe, Stability, search_peaks, search_prefix

log = logging.getLogger(__name__)

SAMPLES_FILE = "perf_samples.npz"


def make_inputs(
    inputs: str, batch_shape: tuple[int, ...], dtype: str, *, seed: int, preprocessing: VdspParams | None = None
) -> np.ndarray:
    """The batch every instance feeds on every call (the sample library): seeded noise or real photos
    (preprocessed as ``preprocessing`` says, the torchvision-equivalent default when ``None``)."""
    if inputs == "photos":
        images = [image for _, image in sample_photos(batch_shape[0])]
        return batch_of(images, (batch_shape[2], batch_shape[3]), preprocessing).astype(dtype)
    return np.random.default_rng(seed).standard_normal(batch_shape, dtype=np.float32).astype(dtype)


def fills_batches(perf: PerfConfig, backend: object) -> bool:
    """The open loop's calls all run the full ``perf.batch``: the backend runs one program per batch size."""
    return perf.scenario != "closed" and one_program_per_batch(backend)


def _tasks(
    perf: PerfConfig,
    factory: BackendFactory,
    inputs: np.ndarray,
    target_qps: float | None,
    *,
    fill_batches: bool,
    offline_call_s: float | None,
) -> list[WorkerTask]:
    """The instances dealt round-robin to ``perf.processes`` workers, the batch floor (closed loop) or the
    requests (open loop, each instance a Poisson stream at its share of ``target_qps``) split among them."""
    floor = perf.batches_floor if perf.scenario == "closed" else perf.open_loop_requests(target_qps)
    per_instance = [
        max(1, floor // perf.instances + (index < floor % perf.instances)) for index in range(perf.instances)
    ]
    plan = LoadPlan(
        mode=perf.mode, queue_depth=perf.queue_depth, warmup=perf.warmup, min_duration_s=perf.min_duration_s,
        max_duration_s=perf.max_duration_s, scenario=perf.scenario,
        rate_qps=target_qps / perf.instances if target_qps else None,
        max_queue_delay_s=perf.max_queue_delay_ms / 1e3, arrival_seed=perf.arrival_seed,
        until_stopped=perf.stability, fill_batches=fill_batches, offline_queue_s=perf.offline_queue_s,
        offline_call_s=offline_call_s,
    )  # fmt: skip
    return [
        WorkerTask(
            worker=worker,
            instances=(indices := tuple(range(worker, perf.instances, perf.processes))),
            iterations=tuple(per_instance[index] for index in indices),
            factory=factory,
            inputs=inputs,
            plan=plan,
        )
        for worker in range(perf.processes)
    ]


def run_perf(config: RunConfig, *, artifact_path: str | None, run_dir: Path) -> PerfResult:
    """Measure the configured load ``perf.repeats`` times; write the raw samples; return the median run."""
    perf = config.perf
    target = LoadTarget(
        artifact_path=artifact_path,
        model=config.model,
        precision=config.precision.name,
        cache_dir=str(config.paths.path("cache")),
    )
    shape = config.input_shape
    opened = open_backend(config.backend, target, shape=shape, batch=perf.batch)
    batch_shape = (perf.batch, *shape)
    raw: dict[str, np.ndarray] = {}
    device = str(opened.resolved.get("device", "cpu"))
    claims = config.paths.path("outputs") / CLAIMS_FOLDER
    probes: list[Probe] = []  # a peak search's
    stabilities: dict[str, Stability] = {}
    with claimed_window(claims, run_dir=run_dir, device=device) as contention:
        if perf.search == "peak":
            measurements = [
                _search_peak(config, opened, batch_shape, raw, probes, repeat) for repeat in range(perf.repeats)
            ]
            peaks = search_peaks(probes)
            headline = peak_headline_index(peaks)
        else:
            measurements = _measure_repeats(config, opened, batch_shape, raw, stabilities)
            peaks, headline = [], headline_index(measurements, perf.scenario)
    median = measurements[headline]
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(run_dir / SAMPLES_FILE, allow_pickle=False, **raw)
    peak = peaks[headline] if peaks else None
    missed = tuple(
        f"{search_prefix(repeat, len(peaks))}no probe kept p99 within perf.latency_bound_ms={perf.latency_bound_ms}"
        for repeat, found in enumerate(peaks)
        if found is None
    )
    efficiency = _efficiency(config, artifact_path, median)
    warnings = median.validity.warnings + _run_cautions(
        config, contended_with=contention.overlapping, device=device, resolved=opened.resolved, efficiency=efficiency
    )
    return perf_result(
        config,
        measurements,
        median,
        warnings=warnings,
        resolved=opened.resolved,
        device=device,
        contended_with=contention.overlapping,
        more_reasons=missed,
        samples_file=SAMPLES_FILE,
        scenario=perf.scenario,
        target_qps=peak if probes else perf.target_qps,
        max_queue_delay_ms=perf.max_queue_delay_ms,
        latency_bound_ms=perf.latency_bound_ms,
        peak_qps=peak,
        probes=tuple(probes),
        efficiency=efficiency,
        efficiency_undefined=efficiency_undefined(config, artifact_path),
        stability=stabilities.get(f"repeat{headline}"),
        queue_depth=perf.queue_depth if perf.scenario == "closed" and perf.mode == "async" else 1,
        filled_batches=fills_batches(perf, config.backend),
    )


def _measure_repeats(
    config: RunConfig,
    opened: OpenedBackend,
    batch_shape: tuple[int, ...],
    raw: dict[str, np.ndarray],
    stabilities: dict[str, Stability],
) -> list[Measurement]:
    """``perf.repeats`` measurements of the configured load, each with inputs drawn from its own seed. An offline
    queue after the first is sized by the call time the repeat before it was served at: the warm-up's fastest call
    of fresh workers sized each repeat as short as the first, and each was measured again."""
    measurements: list[Measurement] = []
    served_call_s: float | None = None
    for repeat in range(config.perf.repeats):
        measurement = _measure_once(
            config, opened, batch_shape, f"repeat{repeat}", raw, seed=repeat,
            target_qps=config.perf.target_qps, stabilities=stabilities, offline_call_s=served_call_s,
        )  # fmt: skip
        measurements.append(measurement)
        if config.perf.scenario == "offline" and measurement.batches:
            served_call_s = _served_call_s(measurement, config.perf.instances)
    return measurements


def _served_call_s(measurement: Measurement, instances: int) -> float:
    """The time of one call in a measured window: each instance served its share of the batches in it."""
    return measurement.forward_time_s * instances / measurement.batches


def _run_cautions(
    config: RunConfig,
    *,
    contended_with: tuple[str, ...],
    device: str,
    resolved: dict[str, object],
    efficiency: Efficiency | None,
) -> tuple[str, ...]:
    """What the whole run's circumstances say about its timings: minimums the stability rule leaves unused, other
    perf runs on the same device, more CPU threads than cores, a runtime that leaves the cores it was given, a GEMM
    timing that was disturbed."""
    warnings = config.perf.unused_notes(profiler=False)
    if contended_with:
        warnings += (
            f"contended: {counted(len(contended_with), 'other perf run')} measured on {device} of this host at the "
            f"same time ({', '.join(contended_with)}); timings are not comparable: run one job per device",
        )
    if isinstance(resolved.get("cpu_caution"), str):  # what the backend's runtime does with the CPUs given it
        warnings += (str(resolved["cpu_caution"]),)  # it names the thread setting: said once, not twice
    elif oversubscribed := _oversubscription(config.perf.instances, resolved):
        warnings += (oversubscribed,)
    if efficiency is not None and efficiency.efficiency > EFFICIENCY_CEILING:
        warnings += (
            f"efficiency {efficiency.efficiency:.0%}: the model's GEMMs alone, timed again after the run, were still "
            "slower than the whole model, so that timing was disturbed (another process on the cores?)",
        )
    return warnings


def _oversubscription(instances: int, resolved: dict[str, object]) -> str | None:
    """A warning when the instances' CPU threads outnumber the cores: they then take turns on them, and each
    instance's latency and the total throughput measure that contention (2 instances of the tiny model on 2
    cores: 1093 img/s with ONNX Runtime's default 2 threads each, 1957 with 1; one instance with 64 threads:
    42 img/s against 1400 with 2)."""
    threads = resolved.get("cpu_threads")
    cores = usable_cores()
    if not isinstance(threads, int) or instances * threads <= cores:
        return None
    setting = resolved.get("cpu_threads_setting")
    if instances == 1:
        remedy = f"set {setting}={cores}, a thread per core"
    elif instances <= cores:
        remedy = f"set {setting}={cores // instances} to give each instance its own"
    else:
        remedy = f"more instances than cores: perf.instances={cores} at most gives each instance a core of its own"
    return (
        f"oversubscribed: {counted(instances, 'instance')} x {counted(threads, 'CPU thread')} = "
        f"{counted(instances * threads, 'thread')} on {counted(cores, 'core')}; {remedy}"
    )


def _efficiency(config: RunConfig, artifact_path: str | None, measured: Measurement) -> Efficiency | None:
    """FLOPs, GFLOP/s and GEMM-only efficiency where ``gemm_runtime`` defines them (``None`` elsewhere, and with
    ``perf.efficiency=false``)."""
    timed = gemm_runtime(config, artifact_path)
    if timed is None:
        return None
    spec = get_variant(config.model.variant)
    batch, size = config.perf.batch, config.model.input_size
    fingerprint = hardware_fingerprint(cpu_model(), os.cpu_count(), gpus(), usable=usable_cores())
    log.info("stage=perf timing the model's GEMMs alone (batch %d, %s)", batch, timed.label)
    timing_of = functools.partial(
        time_gemms, model_gemms(spec, batch, size), runtime=timed.runtime, dtype=timed.dtype, threads=timed.threads,
        cache_dir=config.paths.path("cache"), fingerprint=fingerprint, device=timed.device,
        session_config=timed.session_config,
    )  # fmt: skip
    timing = timing_of()
    model_time_us = _time_per_batch_us(measured, config.perf.instances)
    streams = _side_by_side(config.perf.instances, timed)
    if timing.gemm_time_us / streams / model_time_us > EFFICIENCY_CEILING:
        # A timing cached when the machine was slower (a busy moment, a VM's neighbours) than it is now.
        log.info("stage=perf the GEMMs alone took longer than the whole model: timing them again")
        timing = timing_of(reuse=False)
    per_image = flops_per_image(spec, size)
    gemm_time_us = timing.gemm_time_us / streams
    return Efficiency(
        flops_per_image=per_image,
        flops_per_image_onnx=onnx_gemm_flops(Path(artifact_path), batch) // batch
        if artifact_path and artifact_path.endswith(".onnx")
        else None,
        achieved_gflops=per_image * measured.throughput_qps / 1e9,
        gemm_time_us=gemm_time_us,
        model_time_us=model_time_us,
        efficiency=gemm_time_us / model_time_us,
        gemm_gflops=timing.flops / gemm_time_us / 1e3,
        runtime=timed.label + (f", {streams} instances side by side" if streams > 1 else ""),
    )


def _side_by_side(instances: int, timed: GemmRuntime) -> int:
    """How many instances' GEMMs the cores the run used would run at once, each on the threads it was timed with:
    instances whose threads fit beside each other on the cores (2 x 1 thread on 2 cores: 2; timed on one
    thread, the GEMMs alone had half the cores the run had, and against its wall time per batch read 126%);
    1 where an instance's threads take every core (the default) or the device is a GPU."""
    if timed.device != "cpu" or timed.threads is None:
        return 1
    return max(1, min(instances, usable_cores() // timed.threads))


def _time_per_batch_us(measured: Measurement, instances: int) -> float:
    """The measured time a batch took the device: its mean model time when calls ran one at a time, else the
    wall time per batch. Calls that overlap (instances side by side, several queued on the device) each last
    as long as the device is shared: 4 instances of the tiny model on 2 cores took 5.7 ms a call, 1.5 ms of
    the run's time a batch, so GEMMs of 0.41 ms alone read 7% of a call but 27% of the device's time."""
    if instances == 1 and measured.device_queue == 1:
        return measured.latency_us.model.avg
    return measured.forward_time_s * 1e6 / measured.batches


def _search_peak(
    config: RunConfig,
    opened: OpenedBackend,
    batch_shape: tuple[int, ...],
    raw: dict[str, np.ndarray],
    probes: list[Probe],
    repeat: int,
) -> Measurement:
    """The highest server rate whose p99 meets ``perf.latency_bound_ms``: double or halve from ``target_qps``
    until one rate passes and one fails, then bisect until the bracket is within ``search_tolerance``.

    Adds its probes to ``probes`` (numbered on from those there, its raw samples under ``probe<n>_``) and returns
    the measurement of its best passing probe (its last probe when none passed).
    """
    perf = config.perf
    assert perf.target_qps is not None and perf.latency_bound_ms is not None  # checked by PerfConfig
    bound_us = perf.latency_bound_ms * 1e3
    measured: dict[float, Measurement] = {}
    first = len(probes)

    def passes(rate: float) -> bool:
        measurement = _measure_once(config, opened, batch_shape, f"probe{len(probes)}", raw, seed=0, target_qps=rate)
        p50, p99 = measurement.latency_us.e2e.p50, measurement.latency_us.e2e.p99
        passed = p99 is not None and p99 <= bound_us and measurement.validity.valid
        probes.append(
            Probe(
                target_qps=rate, throughput_qps=measurement.throughput_qps, p50_ms=None if p50 is None else p50 / 1e3,
                p99_ms=None if p99 is None else p99 / 1e3, samples=measurement.samples, passed=passed, repeat=repeat,
            )
        )  # fmt: skip
        measured[rate] = measurement
        search = f" {repeat + 1} of {perf.repeats}" if perf.repeats > 1 else ""
        log.info(
            "peak search%s probe %d: %.2f qps offered: %s",
            search, len(probes) - first, rate, _probe_verdict(measurement, bound_us),
        )  # fmt: skip
        return passed

    low: float | None = None
    high: float | None = None
    rate = perf.target_qps
    while len(probes) - first < perf.max_probes and (low is None or high is None):
        if passes(rate):
            low, rate = rate, rate * 2
        else:
            high, rate = rate, rate / 2
    while low is not None and high is not None and high - low > perf.search_tolerance * low:
        if len(probes) - first >= perf.max_probes:
            break
        middle = (low + high) / 2
        if passes(middle):
            low = middle
        else:
            high = middle
    return measured[low] if low is not None else measured[probes[-1].target_qps]


def peak_headline_index(peaks: list[float | None]) -> int:
    """Which search a run reports as its own: the median peak, of an even count the lower of the middle two (a
    search that found none ranks lowest), as ``headline_index`` ranks other repeats."""
    ranks = [-math.inf if peak is None else peak for peak in peaks]
    ordered = sorted(range(len(peaks)), key=lambda index: ranks[index])
    return ordered[(len(ordered) - 1) // 2]


def _probe_verdict(measurement: Measurement, bound_us: float) -> str:
    """Why a peak-search probe passed or failed, for the log of a search that takes minutes."""
    p99 = measurement.latency_us.e2e.p99
    if not measurement.validity.valid:
        return "fail: invalid (" + "; ".join(measurement.validity.reasons) + ")"
    if p99 is None:
        return f"fail: p99 withheld ({measurement.samples} samples)"
    return f"{'pass' if p99 <= bound_us else 'fail'}: p99 {p99 / 1e3:.2f} ms, bound {bound_us / 1e3:g} ms"


def _measure_once(
    config: RunConfig,
    opened: OpenedBackend,
    batch_shape: tuple[int, ...],
    label: str,
    raw: dict[str, np.ndarray],
    *,
    seed: int,
    target_qps: float | None,
    stabilities: dict[str, Stability] | None = None,
    offline_call_s: float | None = None,
    measured_again: bool = False,
) -> Measurement:
    """One measurement in fresh worker processes; its raw samples are added to ``raw`` under ``<label>_``.

    An offline queue sized too short (served before ``perf.min_duration_s``) by the warm-up's fastest call, or by
    ``offline_call_s``, is measured again, once, sized by the call time it was served at: a short warm-up's fastest
    call can be several times the steady one (the tiny model on ONNX Runtime, ``perf.warmup=1``: 0.81 ms against
    0.45 ms)."""
    perf = config.perf
    log.info(
        "stage=perf %s scenario=%s backend=%s instances=%d processes=%d batch=%d mode=%s target_qps=%s",
        label, perf.scenario, config.backend.name, perf.instances, perf.processes, perf.batch, perf.mode, target_qps,
    )  # fmt: skip
    inputs = make_inputs(perf.inputs, batch_shape, opened.input_dtype, seed=seed, preprocessing=config.vdsp_params)
    tasks = _tasks(
        perf, opened.factory, inputs, target_qps, fill_batches=fills_batches(perf, config.backend),
        offline_call_s=offline_call_s,
    )  # fmt: skip
    watch = StabilityWatch(perf.stability_window_s, perf.stability_pct, perf.max_windows) if perf.stability else None
    host = HostSampler()
    device = NvmlSampler.open(str(opened.resolved.get("device", "cpu")))
    samplers: list[Sampler] = [host] if device is None else [host, device]
    progress = ProgressWatch(f"perf {label}") if draws_progress(config.progress) else None
    reports = run_workers(
        tasks, start_timeout_s=perf.start_timeout_s, stability=watch, samplers=samplers, progress=progress
    )
    measurement, samples = summarise(perf, reports, target_qps=target_qps, stability=watch, host=host, device=device)
    if watch is not None and stabilities is not None:
        stabilities[label] = Stability(
            stable=watch.stable, windows=len(watch.window_throughput_qps), window_s=watch.window_s, pct=watch.pct,
            window_throughput_qps=tuple(watch.window_throughput_qps),
        )  # fmt: skip
    raw.update({f"{label}_{name}": values for name, values in samples.items()})
    log.info("perf %s throughput_qps=%.2f valid=%s", label, measurement.throughput_qps, measurement.validity.valid)
    short = offline_queue_served_early(perf, forward_time_s=measurement.forward_time_s, requests=measurement.samples)
    if short and not measured_again:
        call_s = _served_call_s(measurement, perf.instances)
        sized_by = "the warm-up's fastest call" if offline_call_s is None else "the call time of the repeat before"
        log.info(
            "perf %s: the offline queue of %d requests, sized by %s, was served in %.3f s < perf.min_duration_s=%s: "
            "measuring again with it sized by the call time served (%.3f ms)",
            label, measurement.samples, sized_by, measurement.forward_time_s, perf.min_duration_s, call_s * 1e3,
        )  # fmt: skip
        return _measure_once(
            config, opened, batch_shape, label, raw, seed=seed, target_qps=target_qps, stabilities=stabilities,
            offline_call_s=call_s, measured_again=True,
        )  # fmt: skip
    return measurement


def strict_problems(perf: PerfResult, settings_notes: tuple[str, ...]) -> list[str]:
    """Why a measurement does not meet ``perf.strict``: invalid, a withheld percentile, an unstable window CV, work
    beside it. Not the ``settings_notes`` on settings the run left unused (``PerfConfig.unused_notes``): they are on
    the config, not the measurement (and ``debug=tiny`` sets those settings)."""
    return [problem for problem in (*perf.validity.reasons, *perf.validity.warnings) if problem not in settings_notes]
