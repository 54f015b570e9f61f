"""``result.json``: the record of one run, as typed, light dataclasses.

Every stage's result type lives here, so reading a result back (``load_result``), the summary, reports, the
gate and tracking import neither torch nor onnxruntime. The schema (version 2) is documented in the README.
Every stage has a fixed slot; a stage that did not run is ``null``, never a different shape.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from harness.config.convert import from_mapping
from harness.config.schema import RunConfig
from harness.errors import DataError, HarnessError
from harness.fileio import write_json_atomic

SCHEMA_VERSION = 2
RESULT_FILE = "result.json"
WeightsKind = Literal["official", "random", "path"]


@dataclass(frozen=True)
class WeightsInfo:
    """Provenance of the weights a model was built with.

    Attributes:
        kind: ``official``, ``random`` or ``path``.
        source: URL, file path, or ``random(seed=N)``.
        sha256: digest of the checkpoint file; ``None`` for random weights.
        digest: what identifies the weights in cache keys (the sha256, or ``random-seed<N>``).
    """

    kind: WeightsKind
    source: str
    sha256: str | None
    digest: str


@dataclass(frozen=True)
class ParityResult:
    """Agreement of artifact features with torch fp32 features.

    Attributes:
        images: names of the photos compared.
        min_cosine: smallest per-image cosine similarity.
        mean_cosine: mean per-image cosine similarity.
        max_abs_error: largest absolute difference of any feature element.
        threshold_min_cosine: the configured bound on ``min_cosine``.
        threshold_max_abs_error: the configured bound on ``max_abs_error`` (``None``: not checked).
        runtime: what ran the artifact (``onnxruntime <version> CPUExecutionProvider``).
        passed: both bounds hold.
    """

    images: tuple[str, ...]
    min_cosine: float
    mean_cosine: float
    max_abs_error: float
    threshold_min_cosine: float
    threshold_max_abs_error: float | None
    runtime: str
    passed: bool


@dataclass(frozen=True)
class ArtifactFile:
    """One file of an artifact: name within its folder, size in bytes, sha256 hex digest."""

    name: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class CalibrationRecord:
    """The images a static int8 build was calibrated on: where from, which, and a digest of the model inputs."""

    method: str
    source: str
    seed: int
    images: tuple[str, ...]
    inputs_sha256: str


@dataclass(frozen=True)
class QuantizationRecord:
    """How an int8 artifact was made from its fp32 ONNX build, and what its graph holds.

    Attributes:
        base_artifact: the verified fp32 build quantized (its artifact name).
        reduce_range: 7-bit weights were used (``auto`` resolved for this CPU).
        cpu_isa: the building CPU's instruction sets (int8 speed and the ``auto`` choice depend on them).
        op_counts: operator type -> count in the int8 graph (QuantizeLinear, MatMulInteger...).
        float_ops: operator types of the graph that run in float.
        calibration: the calibration set (static only).
    """

    mode: str
    base_artifact: str
    per_channel: bool
    reduce_range: bool
    cpu_isa: tuple[str, ...]
    quantize_ops: tuple[str, ...]
    float_nodes: tuple[str, ...]
    op_counts: dict[str, int]
    float_ops: tuple[str, ...]
    calibration: CalibrationRecord | None


@dataclass(frozen=True)
class ToolchainRecord:
    """How a vendor toolchain compiled a device model from the verified fp32 ONNX build.

    Attributes:
        base_artifact: the fp32 ONNX build given to the compiler as its checkpoint (artifact name).
        model_prefix: what the profiler loads (``-m``), relative to the artifact folder (``<name>/mod``).
        spec_file: the build spec as written, relative to the artifact folder.
        spec: the build spec's content, as given to the compiler (its ``workspace.path`` is the staging folder
            the artifact was built in before it was verified and moved into the cache).
        versions: each tool's reported version.
        command: the compile command as run.
        compile_time_s: the compiler's wall time.
    """

    base_artifact: str
    model_prefix: str
    spec_file: str
    spec: dict[str, object]
    versions: dict[str, str]
    command: tuple[str, ...]
    compile_time_s: float


@dataclass(frozen=True)
class BuildManifest:
    """``build.json``: what an artifact is and how it was made (schema in the README)."""

    schema_version: int
    artifact_name: str
    format: str
    model_file: str
    cache_key: str
    key_fields: dict[str, object]
    files: tuple[ArtifactFile, ...]
    external_data: bool
    export_time_s: float
    created_at: str
    parity: ParityResult
    quantization: QuantizationRecord | None = None
    toolchain: ToolchainRecord | None = None


@dataclass(frozen=True)
class BuildResult:
    """The build stage's section of ``result.json``.

    Attributes:
        artifact_path: absolute path of the model file to load (a toolchain build: the prefix its profiler loads).
        cache_hit: the artifact came from the cache (no export in this run).
        manifest: the artifact's ``build.json``.
        parity: this run's parity check (a cache hit is re-checked too).
        time_s: wall time of the stage, seconds.
    """

    artifact_path: str
    cache_hit: bool
    manifest: BuildManifest
    parity: ParityResult
    time_s: float

    @property
    def artifact_folder(self) -> Path:
        """The cached artifact's folder (``build.json`` and every file of the manifest)."""
        return Path(self.artifact_path).parents[len(Path(self.manifest.model_file).parts) - 1]


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
    """

    cpu_util_pct: float
    cpu_util_per_core_pct: tuple[float, ...]
    rss_mean_bytes: int
    rss_peak_bytes: int
    samples: int
    interval_s: float


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
        load_time_s: mean model load time per instance (``None``: a vendor profiler that does not report it).
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
    (``p99_ms`` is ``None`` when the probe had too few samples for a p99, which then does not pass)."""

    target_qps: float
    throughput_qps: float
    p50_ms: float | None
    p99_ms: float | None
    samples: int
    passed: bool


@dataclass(frozen=True, kw_only=True)
class PerfResult(Measurement):
    """The perf section of ``result.json``: the median repeat's measurement, the load, and every repeat.

    ``device`` is what the load ran on (``cpu``, ``cuda:0``, ``vastai:0``); ``contended_with`` lists the run
    folders of other perf runs that measured on the same device of the same host at the same time (their timings
    and these are not comparable). ``samples_source`` says where the statistics come from: ``harness`` (derived
    from per-batch samples, kept in ``samples_file``) or ``vamp`` (the summary the vendor profiler printed, kept
    verbatim in ``perf_vamp.txt``: its percentiles are the ones it printed, and its repeats are the evidence).
    ``queue_depth`` is the requests each instance kept in flight (``perf.queue_depth`` in the closed loop's async
    mode, else 1).
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


@dataclass(frozen=True)
class SetupMetrics:
    """One setup in percent: mAP and mean precision at 1, 5, 10, over ``queries_evaluated`` queries."""

    map: float
    mp1: float
    mp5: float
    mp10: float
    queries_evaluated: int


@dataclass(frozen=True)
class Published:
    """One published result (x100); ``None`` where the source gives no number."""

    source: str
    protocol: str
    medium_map: float | None
    hard_map: float | None


@dataclass(frozen=True)
class Fp32Comparison:
    """What a lower precision changes in retrieval against the fp32 build of the same weights, same images.

    Attributes:
        reference: what gave the fp32 descriptors (the fp32 artifact, or the torch model).
        neighbour_overlap_at_10: mean over queries of the share of the top-10 database neighbours that the
            fp32 ranking also has in its top 10 (1.0: same neighbours). Meaningful with random weights too.
        min_neighbour_overlap_at_10: the worst query's share.
        descriptor_min_cosine: the smallest cosine between an image's descriptor and its fp32 descriptor.
        fp32_map: fp32 mAP per setup (easy, medium, hard), in percent.
        map_delta: this run's mAP minus fp32's per setup, in points.
    """

    reference: str
    neighbour_overlap_at_10: float
    min_neighbour_overlap_at_10: float
    descriptor_min_cosine: float
    fp32_map: dict[str, float]
    map_delta: dict[str, float]


@dataclass(frozen=True)
class AccuracyResult:
    """The accuracy section of ``result.json``."""

    dataset: str
    images: int
    queries: int
    crop_queries: bool
    normalization: str
    preprocessing: dict[str, object]
    easy: SetupMetrics
    medium: SetupMetrics
    hard: SetupMetrics
    skipped_images: tuple[str, ...]
    features_files: tuple[str, str]
    extraction_time_s: float
    images_per_s: float
    published: tuple[Published, ...] = ()
    fp32: Fp32Comparison | None = None


@dataclass(frozen=True)
class RunError:
    """Why a run failed: the exception type, its one-line message and, for a dead process, what it printed last."""

    type: str
    message: str
    details: str | None = None


@dataclass(frozen=True)
class RunResult:
    """One run. ``status`` is ``ok`` when every requested stage finished, else ``failed`` or ``interrupted``
    (Ctrl-C, SIGTERM) with ``error``.

    ``config`` is the resolved ``RunConfig``; read back from JSON its ``backend`` stays a mapping, so that
    loading a result needs no backend plugin.
    """

    schema_version: int
    status: Literal["ok", "failed", "interrupted"]
    run_uid: str
    run_dir: str
    started_at: str
    finished_at: str
    duration_s: float
    stages: tuple[str, ...]
    config: RunConfig
    environment: dict[str, object]
    weights: WeightsInfo | None = None
    build: BuildResult | None = None
    perf: PerfResult | None = None
    accuracy: AccuracyResult | None = None
    error: RunError | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-shaped (tuples as lists), exactly what ``result.json`` holds."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: object) -> RunResult:
        if isinstance(data, dict) and data.get("schema_version") != SCHEMA_VERSION:
            raise DataError(f"schema_version={data.get('schema_version')!r}: this harness reads {SCHEMA_VERSION}")
        return from_mapping(cls, data)


def write_result(result: RunResult, run_dir: Path) -> Path:
    """Write ``<run_dir>/result.json`` atomically and return its path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RESULT_FILE
    write_json_atomic(path, result.to_dict())
    return path


def load_result(path: Path | str) -> RunResult:
    """Read a ``result.json`` (or the one inside a run folder) back into a ``RunResult``."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: cannot read result ({error})") from None
    try:
        return RunResult.from_dict(data)
    except HarnessError as error:
        raise DataError(f"{path}: not a result.json of schema {SCHEMA_VERSION} ({error})") from None
