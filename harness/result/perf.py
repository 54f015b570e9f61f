"""The perf stage's records: one measurement (latency statistics, validity, host and device telemetry), and
the run's headline with its repeats, peak-search probes, efficiency and stability."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

# Above this share of the machine's CPU, work other than the harness's (other processes, or the hypervisor's
# other guests: steal time) during the window is called out: the timings were taken beside it. An idle VM here
# reads about 1%.
OTHER_LOAD_PCT = 10.0


@dataclass(frozen=True)
class LatencyStats:
    """Latency summary in microseconds; a percentile is ``None`` when too few samples support it (or, from a
    vendor profiler's summary, when it did not print it); ``std``, ``min`` and ``max`` likewise when a profiler's
    summary lacks them."""

    count: int
    avg: float
    std: float | None
    min: float | None
    max: float | None
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None


@dataclass(frozen=True)
class LatencyBlock:
    """End-to-end (submit -> result, queueing included) and model (the backend call alone) latencies."""

    e2e: LatencyStats
    model: LatencyStats


@dataclass(frozen=True, kw_only=True)
class Validity:
    """Whether a measurement can be trusted, and every reason it cannot (or is weaker than asked)."""

    valid: bool
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class HostTelemetry:
    """The host during the measured window, sampled every ``interval_s`` (``harness.perf.host``).

    Attributes:
        cpu_util_pct: mean CPU use over all cores, percent of one core's capacity (100: every core busy).
        cpu_util_per_core_pct: mean use of each core, percent.
        rss_mean_bytes, rss_peak_bytes: the perf workers' resident memory summed, mean and largest sample.
        samples: samples inside the window.
        other_cpu_pct: CPU use of every process but the harness, its perf workers and their children, percent of
            the machine (100: every core busy with other work); ``None`` in results written before it was kept.
        steal_pct: the share of the machine's CPU the hypervisor gave to other guests (steal time), percent.
    """

    cpu_util_pct: float
    cpu_util_per_core_pct: tuple[float, ...]
    rss_mean_bytes: int
    rss_peak_bytes: int
    samples: int
    interval_s: float
    other_cpu_pct: float | None = None
    steal_pct: float | None = None


@dataclass(frozen=True)
class TransferSplit:
    """Per-call copy times, CUDA events on the backend's copy stream: input host -> device, features back."""

    h2d: LatencyStats
    d2h: LatencyStats


@dataclass(frozen=True, kw_only=True)
class Measurement:
    """One independent run of the load.

    Attributes:
        samples: images completed in the measured phase (batches x batch).
        batches: backend calls completed.
        forward_time_s: release of all workers to the last completion.
        throughput_qps: samples / forward_time_s (images per second).
        latency_us: end-to-end and model latency statistics, microseconds.
        load_time_s: mean load time per instance, importing the runtime in the fresh worker and loading the model
            (``None``: a vendor profiler that does not report it).
        first_call_us: mean cold first-call time per instance, apart from the steady state (``None`` likewise).
        window_throughput_qps: throughput in ``perf.windows`` equal time slices (empty from a profiler's summary).
        window_cv: coefficient of variation of those (``None`` without them, or when a slice is under 20 ms); in
            the server scenario, of each slice's throughput over the rate its scheduled arrivals offered it.
        cpu_utilization_pct: CPU time of the worker processes (or the vendor profiler) over its wall time x the
            machine's cores (not only those of the process's CPU affinity: ONNX Runtime's default thread pool
            pins its threads to every physical core, outside a ``taskset``).
        peak_host_memory_bytes: sum over worker processes (or the profiler process) of their peak resident memory
            (never below a sample of the host telemetry's, which the kernel's lagging page counts can read higher).
        peak_device_memory_bytes: peak device memory allocated (torch on CUDA), else ``None``.
        validity: see ``Validity``.
        host: CPU use per core and worker memory sampled during the window (``None``: a run shorter than one
            sample interval, or a vendor profiler's run).
        dispatch_delay_us: open loop only: per call, how late the load generator dispatched it after it was due
            (its batch ready and the server free). Every request of the call pays it inside its latency: it is
            the load generator's own error, near zero when the host wakes its thread on time.
        telemetry: the accelerator sampled during the window (NVML on CUDA, or the vendor profiler's report).
        transfer_us: where the backend copies each batch itself (torch on CUDA with ``backend.host_io``), the
            per-call host-to-device and device-to-host times beside the model time of ``latency_us.model``.
        device_queue: the most calls one instance had queued on its device at once (a backend with a device
            queue in async mode, torch on CUDA: 2); 1: each call served before the next was submitted.
    """

    samples: int
    batches: int
    forward_time_s: float
    throughput_qps: float
    latency_us: LatencyBlock
    load_time_s: float | None
    first_call_us: float | None
    window_throughput_qps: tuple[float, ...]
    window_cv: float | None
    cpu_utilization_pct: float
    peak_host_memory_bytes: int
    peak_device_memory_bytes: int | None
    validity: Validity
    host: HostTelemetry | None = None
    dispatch_delay_us: LatencyStats | None = None
    telemetry: DeviceTelemetry | None = None
    transfer_us: TransferSplit | None = None
    device_queue: int = 1


@dataclass(frozen=True)
class Efficiency:
    """How close the measurement comes to the device's matrix throughput (``harness.perf.efficiency``).

    Attributes:
        flops_per_image: the architecture's FLOPs for one image (2 per multiply-add).
        flops_per_image_onnx: the same counted from the artifact's graph (MatMul, Gemm, Conv), the cross-check.
        achieved_gflops: ``flops_per_image`` x measured throughput.
        gemm_time_us: the model's GEMMs at the run's batch and dtype run alone, same runtime and threads, on the
            cores the run used: one instance's time divided by the instances whose threads fit side by side.
        model_time_us: the measured model time per batch: the mean model latency when one call ran at a time,
            else the run's wall time per batch (overlapping calls each last as long as the device is shared).
        efficiency: ``gemm_time_us / model_time_us``: the share of the run that is irreducible matrix work.
        gemm_gflops: the rate the GEMMs alone reach on those cores.
        runtime: what timed the GEMMs.
    """

    flops_per_image: int
    flops_per_image_onnx: int | None
    achieved_gflops: float
    gemm_time_us: float
    model_time_us: float
    efficiency: float
    gemm_gflops: float
    runtime: str


@dataclass(frozen=True)
class Stability:
    """A measurement run until its throughput was stable: whether it got there, after how many windows of
    ``window_s``, the rule (last 3 windows within ``pct`` percent of their mean) and every window's rate."""

    stable: bool
    windows: int
    window_s: float
    pct: float
    window_throughput_qps: tuple[float, ...]


@dataclass(frozen=True)
class DeviceTelemetry:
    """What the device reported about the measured window, in vamp's fields (``None``: not reported).

    Attributes:
        ai_utilize_pct: accelerator utilisation, percent (vamp's ``ai utilize (%)``).
        die_memory_used_mb: device memory in use, MB (``die memory used (MB)``).
        card_power_w: board power, watts (``card power (W)``).
        temperature_c: temperature, degrees Celsius (``temperature (°C)``).
        images_per_joule: throughput / power, where power was reported.
        source: what reported them (``vamp``, ``nvml``).
        sm_clock_mhz: mean SM clock over the window (NVML).
        samples: readings in the window (NVML samples at 20 Hz; ``None``: the tool's own summary).
    """

    ai_utilize_pct: float | None
    die_memory_used_mb: float | None
    card_power_w: float | None
    temperature_c: float | None
    images_per_joule: float | None
    source: str
    sm_clock_mhz: float | None = None
    samples: int | None = None


@dataclass(frozen=True)
class Probe:
    """One measurement of a peak-rate search: the offered rate, what was achieved, and whether p99 met the bound
    (``p99_ms`` is ``None`` when the probe had too few samples for a p99, which then does not pass); ``repeat``:
    which of the ``perf.repeats`` searches it belongs to."""

    target_qps: float
    throughput_qps: float
    p50_ms: float | None
    p99_ms: float | None
    samples: int
    passed: bool
    repeat: int = 0


def searches(probes: Sequence[Probe]) -> list[list[Probe]]:
    """A run's peak-rate searches in order (``perf.repeats`` of them; none without a search), each its probes."""
    count = max((probe.repeat for probe in probes), default=-1) + 1
    return [[probe for probe in probes if probe.repeat == repeat] for repeat in range(count)]


def search_peaks(probes: Sequence[Probe]) -> list[float | None]:
    """Each search's peak, in order: the highest rate among its probes that passed (``None`` where none did)."""
    return [max((probe.target_qps for probe in search if probe.passed), default=None) for search in searches(probes)]


def search_prefix(repeat: int, count: int) -> str:
    """``search 2 of 5: `` before what is said of one of several searches; nothing when there is one."""
    return f"search {repeat + 1} of {count}: " if count > 1 else ""


def server_tails(measurements: Sequence[Measurement]) -> tuple[str, list[float]]:
    """Which end-to-end percentile ranks server repeats (``p99``, or ``p50`` where a repeat withholds its p99)
    and each repeat's, in microseconds (a repeat with no sample at all ranks worst)."""
    latencies = [measurement.latency_us.e2e for measurement in measurements]
    which = "p99" if all(e2e.p99 is not None for e2e in latencies) else "p50"
    values = [getattr(e2e, which) for e2e in latencies]
    return which, [math.inf if value is None else value for value in values]


@dataclass(frozen=True, kw_only=True)
class PerfResult(Measurement):
    """The perf section of ``result.json``: the median repeat's measurement, the load, and every repeat.

    ``device`` is what the load ran on (``cpu``, ``cuda:0``, ``vastai:0``); ``contended_with`` lists the run
    folders of other perf runs that measured on the same device of the same host at the same time (their timings
    and these are not comparable). ``samples_source`` says where the statistics come from: ``harness`` (derived
    from per-batch samples, kept in ``samples_file``) or ``vamp`` (the summary the vendor profiler printed, kept
    verbatim in ``perf_vamp.txt``: its percentiles are the ones it printed, and its repeats are the evidence).
    ``queue_depth`` is the requests each instance kept in flight (``perf.queue_depth`` in the closed loop's async
    mode, else 1). ``filled_batches``: every open-loop call ran the full ``batch`` (its requests, then filler rows
    whose outputs were dropped), as the backend runs one program per batch size; its model time is the full
    batch's.
    ``efficiency_undefined`` says why ``efficiency`` is null (``perf.efficiency=false``, or a load it is not
    defined for).
    """

    backend: str
    backend_resolved: dict[str, object]
    instances: int
    processes: int
    batch: int
    shape: tuple[int, int, int]
    mode: str
    device: str
    contended_with: tuple[str, ...]
    iterations: int | None
    min_duration_s: float
    max_duration_s: float | None
    throughput_qps_repeats: tuple[float, ...]
    repeats: tuple[Measurement, ...] = field(default=())
    samples_file: str | None = None
    scenario: str = "closed"
    target_qps: float | None = None
    max_queue_delay_ms: float = 0.0
    latency_bound_ms: float | None = None
    peak_qps: float | None = None
    probes: tuple[Probe, ...] = field(default=())
    efficiency: Efficiency | None = None
    efficiency_undefined: str | None = None
    stability: Stability | None = None
    samples_source: Literal["harness", "vamp"] = "harness"
    queue_depth: int = 1
    filled_batches: bool = False

    @property
    def headline_repeat(self) -> int:
        """The index in ``repeats`` of the measurement the headline is (0 without repeats: the one there is).
        Found by its numbers, not its throughput alone: a server's repeats all serve about the rate offered."""
        return next(
            (
                index
                for index, repeat in enumerate(self.repeats)
                if repeat.throughput_qps == self.throughput_qps and repeat.latency_us == self.latency_us
            ),
            0,
        )


def worst_other_work(perf: PerfResult) -> dict[str, float]:
    """The most of the machine's CPU other processes, and the hypervisor's steal, took during any repeat's window
    (``"other processes"``, ``"hypervisor steal"``: percent); empty when no repeat sampled it."""
    hosts = [repeat.host for repeat in perf.repeats or (perf,) if repeat.host is not None]
    return worst_of_loads([(host.other_cpu_pct, host.steal_pct) for host in hosts])


def worst_of_loads(loads: list[tuple[float | None, float | None]]) -> dict[str, float]:
    """``worst_other_work`` of each repeat's (other processes', hypervisor steal's) share of the CPU; ``None``
    where a repeat did not sample it."""
    sampled = [(other, steal) for other, steal in loads if other is not None or steal is not None]
    if not sampled:
        return {}
    return {
        "other processes": max(other or 0.0 for other, _ in sampled),
        "hypervisor steal": max(steal or 0.0 for _, steal in sampled),
    }


def other_work_note(worst: dict[str, float], limit_pct: float = OTHER_LOAD_PCT) -> str:
    """What ``worst_other_work`` says over ``limit_pct``, in words; empty when nothing is over it."""
    over = [f"{what} up to {pct:.0f}%" for what, pct in worst.items() if pct > limit_pct]
    return f"measured beside other work ({', '.join(over)} of the CPU in a repeat)" if over else ""
