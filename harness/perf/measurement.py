"""One measurement's statistics, derived once from the workers' raw samples: throughput over the measured
window, latency percentiles, the throughput's spread over time windows, and the validity checks (what makes a
measurement invalid, and what a reader of a valid one should know)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from harness.config.perf import PerfConfig
from harness.config.schema import RunConfig
from harness.nvml import NvmlSampler, device_telemetry
from harness.perf import stats
from harness.perf.host import HostSampler, host_telemetry
from harness.perf.loadgen import COMPLETION_BIN_S, InstanceSamples, WorkerReport
from harness.perf.workers import StabilityWatch
from harness.result.perf import (
    OTHER_LOAD_PCT,
    HostTelemetry,
    LatencyBlock,
    LatencyStats,
    Measurement,
    PerfResult,
    TransferSplit,
    Validity,
    server_tails,
)

log = logging.getLogger(__name__)

# Above this share of the mean latency, the open loop's own lateness is called out in the warnings.
DISPATCH_DELAY_SHARE = 0.01
# A server that keeps up with its arrivals ends one latency after the last of them, a few percent of the run;
# one that cannot ends when its queue, grown all run, has drained. Below this share of the offered rate
# (measured on the schedule itself, so Poisson's spread does not count), it is the second.
KEEP_UP_SHARE = 0.9
# Completions are timed to a COMPLETION_BIN_S bin, so a time window's count is off by up to half a bin's worth
# at each edge, a share bin / window of it: shorter windows than this are not known to within 5%, and the
# throughput CV over them is not judged (null).
MIN_WINDOW_S = 20 * COMPLETION_BIN_S


def headline_index(measurements: Sequence[Measurement], scenario: str) -> int:
    """Which repeat a run reports as its own: the median of what its load scenario answers, and of an even count
    the worse of the middle two (one real measurement, never an average of two).

    Closed loop and offline: throughput. Server: the end-to-end p99 (the p50 where the p99 is withheld, which
    it is in every repeat alike: each runs the same number of requests). A server that keeps up serves the rate
    offered it in every repeat, so a median by throughput picked among equals by the last request's timing: of
    five repeats at 300 qps on this VM it reported one whose queue had grown (e2e p50 326 ms) where three of the
    five had 1.2 ms."""
    if scenario == "server":
        tails = server_tails(measurements)[1]
        ordered = sorted(range(len(measurements)), key=lambda index: tails[index], reverse=True)
    else:
        ordered = sorted(range(len(measurements)), key=lambda index: measurements[index].throughput_qps)
    return ordered[(len(ordered) - 1) // 2]


def perf_result(
    config: RunConfig,
    measurements: Sequence[Measurement],
    headline: Measurement,
    *,
    warnings: tuple[str, ...],
    resolved: dict[str, object],
    device: str,
    contended_with: tuple[str, ...],
    more_reasons: tuple[str, ...] = (),
    **specific: Any,
) -> PerfResult:
    """A run's perf block: the ``headline`` measurement (the median repeat) with ``warnings``, invalid when any
    repeat was (or for ``more_reasons``); the load ``config.perf`` asked for; every repeat; and the fields only
    one kind of backend has (``specific``). Its validity notes are logged."""
    perf = config.perf
    reasons = tuple(reason for measurement in measurements for reason in measurement.validity.reasons) + more_reasons
    for note in warnings + reasons:
        log.warning("perf validity: %s", note)
    fields = {name: getattr(headline, name) for name in Measurement.__dataclass_fields__}
    fields["validity"] = Validity(valid=not reasons, reasons=reasons, warnings=warnings)
    return PerfResult(
        **fields,
        backend=config.backend.name,
        backend_resolved=resolved,
        instances=perf.instances,
        processes=perf.processes,
        batch=perf.batch,
        shape=config.input_shape,
        mode=perf.mode,
        iterations=perf.iterations,
        min_duration_s=perf.min_duration_s,
        max_duration_s=perf.max_duration_s,
        device=device,
        contended_with=contended_with,
        throughput_qps_repeats=tuple(measurement.throughput_qps for measurement in measurements),
        repeats=tuple(measurements) if len(measurements) > 1 else (),
        **specific,
    )


def summarise(
    perf: PerfConfig,
    reports: list[WorkerReport],
    *,
    target_qps: float | None = None,
    stability: StabilityWatch | None = None,
    host: HostSampler | None = None,
    device: NvmlSampler | None = None,
) -> tuple[Measurement, dict[str, np.ndarray]]:
    """Derive one ``Measurement`` from raw worker samples (the only place statistics are computed).

    A sample row is a batch of ``perf.batch`` images in the closed loop, one request of one image in the open
    loop (whose latency is counted from its scheduled arrival).
    """
    instances = [instance for report in reports for instance in report.instances]
    e2e_us = np.concatenate([instance.samples[:, 0] for instance in instances])
    model_us = np.concatenate([instance.samples[:, 1] for instance in instances])
    start = min(instance.start for instance in instances)
    end = max(instance.start + instance.last_completion_s for instance in instances)
    forward_time_s = end - start
    batches = sum(instance.calls for instance in instances)
    images_per_row = perf.batch if perf.scenario == "closed" else 1
    images = int(e2e_us.size) * images_per_row
    completions = _completions_since(start, instances)
    windows = stats.window_throughputs(
        completions, bin_s=COMPLETION_BIN_S, start_s=start, end_s=end, windows=perf.windows, batch=images_per_row
    )
    latency = LatencyBlock(e2e=stats.latency_stats(e2e_us), model=stats.latency_stats(model_us))
    delays_us = np.concatenate([instance.dispatch_delay_us for instance in instances])
    transfer_us = np.concatenate([instance.transfer_us for instance in instances])
    dispatch = stats.latency_stats(delays_us) if delays_us.size else None
    window_cv = (
        _window_cv(windows, instances, start=start, end=end) if end - start >= perf.windows * MIN_WINDOW_S else None
    )
    reasons = _shortfalls(
        perf, stability=stability, forward_time_s=forward_time_s, batches=batches, requests=int(e2e_us.size),
        target_qps=target_qps,
    )  # fmt: skip
    host_block, peak_rss_bytes = _host_memory(reports, host, start=start, end=end)
    validity = _validity(
        perf, reasons, latency=latency, dispatch=dispatch, instances=instances, window_cv=window_cv, host=host_block
    )
    cpu_s = sum(report.cpu_s for report in reports)
    device_peaks = [report.peak_device_bytes for report in reports if report.peak_device_bytes is not None]
    measurement = Measurement(
        samples=images,
        batches=batches,
        forward_time_s=forward_time_s,
        throughput_qps=images / forward_time_s,
        latency_us=latency,
        load_time_s=float(np.mean([instance.load_s for instance in instances])),
        first_call_us=float(np.mean([instance.first_call_us for instance in instances])),
        window_throughput_qps=tuple(float(value) for value in windows),
        window_cv=window_cv,
        cpu_utilization_pct=100.0 * cpu_s / (forward_time_s * (os.cpu_count() or 1)),
        peak_host_memory_bytes=peak_rss_bytes,
        peak_device_memory_bytes=sum(device_peaks) if device_peaks else None,
        validity=validity,
        host=host_block,
        dispatch_delay_us=dispatch,
        telemetry=None
        if device is None
        else device_telemetry(device.samples, start=start, end=end, throughput_qps=images / forward_time_s),
        transfer_us=_transfer_split(transfer_us),
        device_queue=max(instance.device_queue for instance in instances),
    )
    raw = {"completions_per_ms": completions, "e2e_us": e2e_us, "model_us": model_us}
    if dispatch is not None:
        raw["dispatch_delay_us"] = delays_us
    if transfer_us.size:
        raw["h2d_us"], raw["d2h_us"] = transfer_us[:, 0], transfer_us[:, 1]
    return measurement, raw


def _validity(
    perf: PerfConfig, reasons: list[str], *, latency: LatencyBlock, dispatch: LatencyStats | None,
    instances: list[InstanceSamples], window_cv: float | None, host: HostTelemetry | None,
) -> Validity:  # fmt: skip
    """The measurement's verdict: its shortfalls (``reasons``) and a missed latency bound make it invalid;
    withheld percentiles, an unjudged bound and the load's cautions are warnings."""
    warnings = stats.insufficient_percentiles(latency.e2e)
    if perf.search == "none":  # a peak search judges its probes by the bound itself
        bound = perf.latency_bound_ms
        missed, unjudged = stats.latency_bound_notes(bound, latency.e2e.p99, unknown="the e2e p99 was withheld")
        reasons, warnings = reasons + missed, warnings + unjudged
    warnings += _cautions(perf, latency=latency, dispatch=dispatch, instances=instances, window_cv=window_cv)
    warnings += _other_load(host)
    return Validity(valid=not reasons, reasons=tuple(reasons), warnings=tuple(warnings))


def _host_memory(
    reports: list[WorkerReport], host: HostSampler | None, *, start: float, end: float
) -> tuple[HostTelemetry | None, int]:
    """The host telemetry of the window ``[start, end]`` and the workers' peak resident memory: the sum of the
    peaks they report of themselves (``ru_maxrss``), or a sample's, when one read more. The kernel counts a
    process's pages in per-thread caches that run some pages behind: a sample can read up to a few hundred kB
    above ``ru_maxrss``."""
    reported = sum(report.peak_rss_bytes for report in reports)
    if host is None:
        return None, reported
    telemetry = host_telemetry(host.samples, start=start, end=end, interval_s=host.interval_s)
    return telemetry, max(reported, telemetry.rss_peak_bytes if telemetry is not None else 0)


def _transfer_split(transfer_us: np.ndarray) -> TransferSplit | None:
    """Host -> device and device -> host copy times from [calls, 2] samples; ``None`` when none were timed."""
    if not transfer_us.size:
        return None
    return TransferSplit(h2d=stats.latency_stats(transfer_us[:, 0]), d2h=stats.latency_stats(transfer_us[:, 1]))


def offline_queue_served_early(perf: PerfConfig, *, forward_time_s: float, requests: int) -> bool:
    """An offline queue served in full before ``perf.min_duration_s``, sized long enough (not cut by
    ``perf.max_duration_s``): the call time it was sized by was slower than the window's calls."""
    return (
        perf.scenario == "offline"
        and forward_time_s < perf.min_duration_s
        and requests >= perf.open_loop_requests(None)
        and perf.offline_queue_s >= perf.min_duration_s
    )


def _shortfalls(
    perf: PerfConfig,
    *,
    stability: StabilityWatch | None,
    forward_time_s: float,
    batches: int,
    requests: int,
    target_qps: float | None,
) -> list[str]:
    """Why a measurement falls short of the minimums it was asked for (each makes it invalid)."""
    reasons = []
    bound = f" (stopped at perf.max_duration_s={perf.max_duration_s})" if perf.max_duration_s is not None else ""
    if stability is not None and not stability.stable:
        watched = len(stability.window_throughput_qps)
        ended = f" (perf.max_windows={perf.max_windows})" if watched >= perf.max_windows else bound
        reasons.append(
            f"throughput not stable within perf.stability_pct={perf.stability_pct}% after {watched} windows{ended}"
        )
    scheduled = perf.open_loop_requests(target_qps) if perf.scenario != "closed" else 0
    if stability is None and forward_time_s < perf.min_duration_s:
        why = (
            f": the offline queue of {requests} requests, sized to last that long by the call time a measurement "
            "before it was served at, was served faster (still warming up: raise perf.warmup, or perf.iterations)"
            if offline_queue_served_early(perf, forward_time_s=forward_time_s, requests=requests)
            else bound
        )
        reasons.append(f"forward time {forward_time_s:.3f} s < perf.min_duration_s={perf.min_duration_s}{why}")
    if perf.scenario == "closed" and stability is None and batches < perf.batches_floor:
        reasons.append(f"{batches} batches < {perf.batches_floor} (perf.iterations, perf.min_samples){bound}")
    if requests < scheduled:
        reasons.append(f"{requests} requests served < {scheduled} scheduled{bound}")
    return reasons


def _cautions(
    perf: PerfConfig,
    *,
    latency: LatencyBlock,
    dispatch: LatencyStats | None,
    instances: list[InstanceSamples],
    window_cv: float | None,
) -> list[str]:
    """What a reader of a valid measurement should know: the load generator's own lateness, a server that fell
    behind its arrivals, a throughput that varied across windows."""
    warnings = []
    if dispatch is not None and dispatch.avg > DISPATCH_DELAY_SHARE * latency.e2e.avg:
        warnings.append(
            f"the load generator dispatched {dispatch.avg:.0f} us late on average (max {dispatch.max:.0f} us) after "
            f"requests were due: {dispatch.avg / latency.e2e.avg:.1%} of the mean latency is its own lateness"
        )
    behind = _fell_behind(instances)
    if behind:
        warnings.append(behind)
    if window_cv is not None and window_cv > perf.max_window_cv:
        what = "served / offered" if perf.scenario == "server" else "throughput"
        warnings.append(
            f"{what} CV across {perf.windows} windows is {window_cv:.3f} > perf.max_window_cv={perf.max_window_cv}"
        )
    return warnings


def _other_load(host: HostTelemetry | None) -> list[str]:
    """Warnings for CPU work beside the harness's during the window: other processes, the hypervisor's steal."""
    if host is None or host.other_cpu_pct is None or host.steal_pct is None:
        return []
    warnings = []
    if host.other_cpu_pct > OTHER_LOAD_PCT:
        warnings.append(
            f"other processes used {host.other_cpu_pct:.0f}% of the machine's CPU during the window (the harness "
            f"and its workers not counted): the timings were taken beside that work"
        )
    if host.steal_pct > OTHER_LOAD_PCT:
        warnings.append(
            f"the hypervisor gave {host.steal_pct:.0f}% of this VM's CPU to other guests during the window (steal "
            "time): the timings were taken on a shared machine"
        )
    return warnings


def _window_cv(windows: np.ndarray, instances: list[InstanceSamples], *, start: float, end: float) -> float | None:
    """How much the throughput moved across the windows: its CV, or in the server scenario the CV of each
    window's throughput over the rate its scheduled arrivals offered it. Poisson arrivals alone spread a
    window's count by 1/sqrt(count) (0.13 for 400 requests in 8 windows), and a server that keeps up follows
    them: that spread is the schedule's, not the server's. ``None`` when a window was offered nothing."""
    arrivals = [instance.start + instance.arrivals_s for instance in instances if instance.arrivals_s.size]
    if not arrivals:
        return stats.coefficient_of_variation(windows)
    edges = np.linspace(start, end, windows.size + 1)
    offered = np.histogram(np.concatenate(arrivals), edges)[0] / np.diff(edges)
    return stats.coefficient_of_variation(windows / offered) if offered.all() else None


def _fell_behind(instances: list[InstanceSamples]) -> str | None:
    """Server scenario: a warning when the instances served their requests clearly slower than they arrived."""
    served = offered = 0.0
    for instance in instances:
        if instance.arrivals_s.size and instance.arrivals_s[-1] > 0 and instance.last_completion_s:
            served += len(instance.samples) / instance.last_completion_s
            offered += len(instance.samples) / instance.arrivals_s[-1]
    if served >= KEEP_UP_SHARE * offered:
        return None
    return (
        f"the server fell behind its arrivals: it served {served:.4g} img/s of the {offered:.4g} offered "
        f"({100 * served / offered:.2g}%), so its queue grew all run and the latencies measure the run's length, "
        "not the build: lower perf.target_qps, or find the highest rate it sustains with perf.search=peak"
    )


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
