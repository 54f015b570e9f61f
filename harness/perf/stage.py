"""Perf stage: vamp-style throughput and latency with validity checks.

``run_perf`` opens the backend (resolved and checked against the artifact) before any timing, makes the
input batch, runs ``perf.repeats`` independent
measurements (fresh worker processes each), derives every statistic from the raw samples (kept in
``perf_samples.npz`` beside ``result.json``) and reports the median run as the headline.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from harness.backends import BackendFactory, LoadTarget, OpenedBackend, open_backend
from harness.config.schema import PerfConfig, RunConfig, VdspParams
from harness.data.photos import sample_photos
from harness.perf import stats
from harness.perf.contention import CLAIMS_FOLDER, claimed_window
from harness.perf.loadgen import COMPLETION_BIN_S, InstanceSamples, LoadPlan, WorkerReport, WorkerTask, run_workers
from harness.preprocess import batch_of
from harness.result import LatencyBlock, Measurement, PerfResult, Validity

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


def _tasks(perf: PerfConfig, factory: BackendFactory, inputs: np.ndarray) -> list[WorkerTask]:
    """The instances dealt round-robin to ``perf.processes`` workers, the batch floor split among them."""
    floor = perf.batches_floor
    per_instance = [
        max(1, floor // perf.instances + (index < floor % perf.instances)) for index in range(perf.instances)
    ]
    plan = LoadPlan(
        mode=perf.mode, queue_depth=perf.queue_depth, warmup=perf.warmup, min_duration_s=perf.min_duration_s,
        max_duration_s=perf.max_duration_s,
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


def summarise(perf: PerfConfig, reports: list[WorkerReport]) -> tuple[Measurement, dict[str, np.ndarray]]:
    """Derive one ``Measurement`` from raw worker samples (the only place statistics are computed)."""
    instances = [instance for report in reports for instance in report.instances]
    e2e_us = np.concatenate([instance.samples[:, 0] for instance in instances])
    model_us = np.concatenate([instance.samples[:, 1] for instance in instances])
    start = min(instance.start for instance in instances)
    end = max(instance.start + instance.last_completion_s for instance in instances)
    forward_time_s = end - start
    batches = int(e2e_us.size)
    completions = _completions_since(start, instances)
    bin_starts = start + np.arange(completions.size) * COMPLETION_BIN_S
    windows = stats.window_throughputs(
        bin_starts, completions, start_s=start, end_s=end, windows=perf.windows, batch=perf.batch
    )
    latency = LatencyBlock(e2e=stats.latency_stats(e2e_us), model=stats.latency_stats(model_us))
    window_cv = stats.coefficient_of_variation(windows)
    reasons = []
    bound = f" (stopped at perf.max_duration_s={perf.max_duration_s})" if perf.max_duration_s is not None else ""
    if forward_time_s < perf.min_duration_s:
        reasons.append(f"forward time {forward_time_s:.3f} s < perf.min_duration_s={perf.min_duration_s}{bound}")
    if batches < perf.batches_floor:
        reasons.append(f"{batches} batches < {perf.batches_floor} (perf.iterations, perf.min_samples){bound}")
    warnings = stats.insufficient_percentiles(latency.e2e)
    if window_cv > perf.max_window_cv:
        warnings.append(
            f"throughput CV across {perf.windows} windows is {window_cv:.3f} > perf.max_window_cv={perf.max_window_cv}"
        )
    cpu_s = sum(report.cpu_s for report in reports)
    device_peaks = [report.peak_device_bytes for report in reports if report.peak_device_bytes is not None]
    measurement = Measurement(
        samples=batches * perf.batch,
        batches=batches,
        forward_time_s=forward_time_s,
        throughput_qps=batches * perf.batch / forward_time_s,
        latency_us=latency,
        load_time_s=float(np.mean([instance.load_s for instance in instances])),
        first_call_us=float(np.mean([instance.first_call_us for instance in instances])),
        window_throughput_qps=tuple(float(value) for value in windows),
        window_cv=window_cv,
        cpu_utilization_pct=100.0 * cpu_s / (forward_time_s * (os.cpu_count() or 1)),
        peak_host_memory_bytes=sum(report.peak_rss_bytes for report in reports),
        peak_device_memory_bytes=sum(device_peaks) if device_peaks else None,
        validity=Validity(valid=not reasons, reasons=tuple(reasons), warnings=tuple(warnings)),
    )
    raw = {"completions_per_ms": completions, "e2e_us": e2e_us, "model_us": model_us}
    return measurement, raw


def _completions_since(start: float, instances: list[InstanceSamples]) -> np.ndarray:
    """Every instance's completion counts on one grid of ``COMPLETION_BIN_S`` bins from ``start``."""
    offsets = [round((instance.start - start) / COMPLETION_BIN_S) for instance in instances]
    merged = np.zeros(
        max(offset + instance.completions.size for offset, instance in zip(offsets, instances, strict=True)),
        dtype=np.int64,
    )
    for offset, instance in zip(offsets, instances, strict=True):
        merged[offset : offset + instance.completions.size] += instance.completions
    return merged


def run_perf(config: RunConfig, *, artifact_path: str | None, run_dir: Path) -> PerfResult:
    """Measure the configured load ``perf.repeats`` times; write the raw samples; return the median run."""
    target = LoadTarget(
        artifact_path=artifact_path,
        model=config.model,
        precision=config.precision.name,
        cache_dir=str(config.paths.path("cache")),
    )
    shape = config.input_shape
    opened = open_backend(config.backend, target, shape=shape, batch=config.perf.batch)
    batch_shape = (config.perf.batch, *shape)
    measurements: list[Measurement] = []
    raw: dict[str, np.ndarray] = {}
    device = str(opened.resolved.get("device", "cpu"))
    claims = config.paths.path("outputs") / CLAIMS_FOLDER
    with claimed_window(claims, run_dir=run_dir, device=device) as contention:
        for repeat in range(config.perf.repeats):
            measurements.append(_measure_once(config, opened, batch_shape, repeat, raw))
    run_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(run_dir / SAMPLES_FILE, allow_pickle=False, **raw)
    ordered = sorted(measurements, key=lambda measurement: measurement.throughput_qps)
    median = ordered[(len(ordered) - 1) // 2]
    reasons = tuple(reason for measurement in measurements for reason in measurement.validity.reasons)
    headline = {name: getattr(median, name) for name in Measurement.__dataclass_fields__}
    warnings = median.validity.warnings
    if contention.overlapping:
        warnings += (
            f"contended: {len(contention.overlapping)} other perf run(s) measured on {device} of this host at the "
            f"same time ({', '.join(contention.overlapping)}); timings are not comparable: run one job per device",
        )
    headline["validity"] = Validity(valid=not reasons, reasons=reasons, warnings=warnings)
    for warning in warnings + reasons:
        log.warning("perf validity: %s", warning)
    return PerfResult(
        **headline,
        backend=config.backend.name,
        backend_resolved=opened.resolved,
        instances=config.perf.instances,
        processes=config.perf.processes,
        batch=config.perf.batch,
        shape=shape,
        mode=config.perf.mode,
        iterations=config.perf.iterations,
        min_duration_s=config.perf.min_duration_s,
        max_duration_s=config.perf.max_duration_s,
        device=device,
        contended_with=contention.overlapping,
        throughput_qps_repeats=tuple(measurement.throughput_qps for measurement in measurements),
        repeats=tuple(measurements) if len(measurements) > 1 else (),
        samples_file=SAMPLES_FILE,
    )


def _measure_once(
    config: RunConfig, opened: OpenedBackend, batch_shape: tuple[int, ...], repeat: int, raw: dict[str, np.ndarray]
) -> Measurement:
    """One repeat in fresh worker processes; its raw samples are added to ``raw`` under ``repeat<N>_``."""
    log.info(
        "stage=perf repeat=%d/%d backend=%s instances=%d processes=%d batch=%d mode=%s",
        repeat + 1, config.perf.repeats, config.backend.name, config.perf.instances, config.perf.processes,
        config.perf.batch, config.perf.mode,
    )  # fmt: skip
    inputs = make_inputs(
        config.perf.inputs, batch_shape, opened.input_dtype, seed=repeat, preprocessing=config.vdsp_params
    )
    reports = run_workers(_tasks(config.perf, opened.factory, inputs), start_timeout_s=config.perf.start_timeout_s)
    measurement, samples = summarise(config.perf, reports)
    raw.update({f"repeat{repeat}_{name}": values for name, values in samples.items()})
    log.info(
        "perf repeat=%d throughput_qps=%.2f valid=%s",
        repeat + 1,
        measurement.throughput_qps,
        measurement.validity.valid,
    )
    return measurement


def strict_problems(perf: PerfResult) -> list[str]:
    """Why a measurement does not meet ``perf.strict``: invalid, a withheld percentile, an unstable window CV."""
    return [*perf.validity.reasons, *perf.validity.warnings]
