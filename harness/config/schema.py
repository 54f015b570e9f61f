"""Typed configuration of one run: the schema of what ``conf/`` composes.

Every group of ``conf/`` maps onto one frozen dataclass here. The dataclasses declare types and checks only:
every default lives in the group's YAML file in ``conf/`` (with a comment per key, the user's documentation),
and ``harness.config.store`` registers these classes as Hydra's schema so a wrong type or an unknown key is
refused when the config is composed. ``__post_init__`` only checks values; files, plugins and the
environment are looked at by ``harness.resolve``, once, before any stage runs.

Image sizes are (H, W) everywhere, shapes [C, H, W] or [N, C, H, W].
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from harness.errors import ConfigError, unknown_name_message

Precision = Literal["fp32", "fp16", "bf16", "int8", "int8_dynamic"]
# Precisions that are ONNX Runtime quantizations of the fp32 ONNX build (float input and output).
QUANTIZED: tuple[str, ...] = ("int8", "int8_dynamic")
Stage = Literal["build", "perf", "accuracy"]
Exporter = Literal["legacy", "dynamo"]
IoDtype = Literal["fp32", "native"]
ExternalData = Literal["auto", "always", "never"]

STAGES: tuple[str, ...] = get_args(Stage)
MIN_OPSET = 18
# Samples p99 needs to be reported (at most 1% of them above it, with 99% confidence; harness.perf.stats).
P99_MIN_SAMPLES = 662
# Fields that ``harness.resolve`` fills in: not part of the composed config, so not in Hydra's schema.
RESOLVED = {"resolved": True}


def check_seed(key: str, seed: int) -> None:
    """Seeds feed numpy's generators, which take non-negative integers only."""
    if seed < 0:
        raise ConfigError(f"{key}={seed}: expected a seed >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """``model`` group: which backbone, with which weights, for which input size (H, W)."""

    variant: str
    weights: str
    seed: int
    input_size: tuple[int, int]

    def __post_init__(self) -> None:
        if not self.weights:
            raise ConfigError("model.weights='': expected 'official', 'random' or a checkpoint path")


@dataclass(frozen=True)
class QuantizationConfig:
    """``precision.quantization`` (int8 precisions): how ONNX Runtime quantizes the fp32 ONNX build.

    Attributes:
        mode: ``static`` (QDQ graph, activation ranges calibrated on ``calibration``) or ``dynamic`` (activation
            ranges computed per call, weights int8).
        per_channel: one weight scale per output channel instead of one per tensor.
        reduce_range: 7-bit weights. ``auto`` turns it on for x86 CPUs without VNNI, whose u8 x s8 kernels
            (VPMADDUBSW) saturate int16 sums with full-range weights.
        quantize_ops: operator types run in int8; every other operator (LayerNormalization, Softmax, Gelu,
            the residual adds) stays float.
        float_nodes: node names kept float even when their type is in ``quantize_ops``.
        quantize_outputs: static only: also quantize the outputs of ``quantize_ops`` (int8 chains such as
            QLinearMatMul). ``false`` keeps them float (MatMulIntegerToFloat), so the operators between them
            (Softmax) never sit inside a quantize/dequantize pair that the runtime could fuse into int8.
    """

    mode: Literal["static", "dynamic"]
    per_channel: bool
    reduce_range: Literal["auto", "true", "false"]
    quantize_ops: tuple[str, ...]
    float_nodes: tuple[str, ...]
    quantize_outputs: bool

    def __post_init__(self) -> None:
        if not self.quantize_ops:
            raise ConfigError("precision.quantization.quantize_ops=[]: expected at least one operator type")


@dataclass(frozen=True)
class PrecisionConfig:
    """``precision`` group: the numeric format of the artifact and how close to fp32 torch it must stay."""

    name: Precision
    parity_min_cosine: float
    parity_max_abs_error: float | None
    quantization: QuantizationConfig | None

    def __post_init__(self) -> None:
        if not 0.0 < self.parity_min_cosine <= 1.0:
            raise ConfigError(f"precision.parity_min_cosine={self.parity_min_cosine!r}: expected a value in (0, 1]")
        if (self.name in QUANTIZED) != (self.quantization is not None):
            raise ConfigError(
                f"precision.quantization: expected a quantization block exactly for {list(QUANTIZED)}, "
                f"got {'none' if self.quantization is None else 'one'} for precision {self.name}"
            )
        if self.quantization is not None and (self.quantization.mode == "dynamic") != (self.name == "int8_dynamic"):
            raise ConfigError(
                f"precision.quantization.mode={self.quantization.mode}: precision {self.name} is "
                f"{'dynamic' if self.name == 'int8_dynamic' else 'static'}"
            )


@dataclass(frozen=True)
class CalibrationConfig:
    """``calibration`` node: the images static int8 builds take their activation ranges from.

    Attributes:
        method: ``minmax``, ``entropy`` or ``percentile`` (ONNX Runtime's calibrators).
        percentile: the percentile ``percentile`` keeps.
        images: how many images.
        seed: which images: the views made, or the files drawn from ``folder``.
        source: ``views`` (random crops, rotations and recolourings of the shipped photos, made with ``seed``:
            never the parity photos, and not the synthetic set when the seeds differ) or ``folder`` (JPEGs in
            ``folder``, e.g. another dataset's ``jpg/``; never the evaluated dataset's own).
        folder: the folder for ``source=folder``.
    """

    method: Literal["minmax", "entropy", "percentile"]
    percentile: float
    images: int
    seed: int
    source: Literal["views", "folder"]
    folder: str | None

    def __post_init__(self) -> None:
        if self.images < 1:
            raise ConfigError(f"calibration.images={self.images}: expected >= 1")
        check_seed("calibration.seed", self.seed)
        if not 0.0 < self.percentile <= 100.0:
            raise ConfigError(f"calibration.percentile={self.percentile}: expected a value in (0, 100]")
        if (self.source == "folder") != bool(self.folder):
            raise ConfigError(f"calibration.folder={self.folder!r}: required exactly when calibration.source=folder")


@dataclass(frozen=True)
class BuildConfig:
    """``build`` node: how the deployable artifact is produced and checked."""

    format: Literal["onnx"]
    exporter: Exporter
    opset: int
    io_dtype: IoDtype
    external_data: ExternalData
    parity_images: int
    force: bool

    def __post_init__(self) -> None:
        if self.opset < MIN_OPSET:
            raise ConfigError(f"build.opset={self.opset}: expected >= {MIN_OPSET}")
        if self.parity_images < 2:
            raise ConfigError(f"build.parity_images={self.parity_images}: expected >= 2 (one batch of 1, one larger)")


@dataclass(frozen=True)
class PerfConfig:
    """``perf`` group: the load, vamp-style (``-i`` instances, ``-p`` processes, ``-b`` batch, ``-s`` shape).

    Attributes:
        instances: concurrent model instances (each loads its own copy).
        processes: OS processes sharing the instances out round-robin; at most ``instances``.
        batch: images per call.
        shape: [C, H, W] of one image; ``null`` takes it from the vdsp params or ``model.input_size``.
        iterations: at least this many batches in total across instances (``null``: the minimums alone).
        duration_s: deprecated alias of ``min_duration_s`` (folded into it by ``harness.resolve``).
        warmup: untimed calls per instance before measuring (after the first, cold, call).
        mode: ``sync`` (one request at a time per instance) or ``async`` (a queue of ``queue_depth`` per instance).
        queue_depth: requests in flight per instance in async mode.
        inputs: ``random`` (seeded normal) or ``photos`` (real photos, preprocessed).
        repeats: independent runs, each in fresh processes; the median is the headline.
        min_duration_s: the run goes on until it has measured at least this long (as MLPerf LoadGen does)...
        min_samples: ...and completed at least this many batches (and ``iterations``).
        max_duration_s: it stops here even if a minimum is not met, and is then invalid (``null``: no bound).
        strict: an invalid measurement, a withheld percentile or a window CV above the bound fails the run.
        windows: time slices for the throughput coefficient of variation.
        max_window_cv: above this CV a warning is printed and recorded.
        start_timeout_s: longest wait for workers to load their models.
        scenario: ``closed`` (vamp's loop: each instance sends the next request when the last returns),
            ``server`` (open loop: Poisson arrivals at ``target_qps``, latency from each request's scheduled
            arrival) or ``offline`` (every request queued at the start; throughput only).
        target_qps: server: the offered rate (images per second over all instances); with ``search=peak``
            the first probe.
        max_queue_delay_ms: open loop: longest wait for a batch of ``batch`` requests to fill after its first
            request arrived.
        arrival_seed: server: seed of the arrival schedule (the same seed replays the same arrivals).
        search: ``none``, or ``peak``: the highest ``target_qps`` whose p99 latency stays within
            ``latency_bound_ms``, by bracketing then bisection; every probe is kept.
        latency_bound_ms: the p99 end-to-end bound: a peak search's criterion; otherwise a measurement whose
            p99 exceeds it is invalid (MLPerf's server rule), and one whose p99 is withheld is warned unjudged.
        search_tolerance: peak search stops when the bracket is narrower than this share of its low end.
        max_probes: peak search: most probes (each one a measurement of its own).
        efficiency: closed loop, ONNX Runtime on CPU, fp32/fp16: also time the model's GEMMs alone (cached per
            machine) and report FLOPs, GFLOP/s and efficiency (``perf.efficiency`` in the result).
        stability: closed loop: instead of the minimums, measure in windows of ``stability_window_s`` until the
            throughput of the last 3 windows agrees within ``stability_pct`` percent of their mean (perf_analyzer's
            rule), or ``max_windows`` have passed; the result says whether and after how many windows.
    """

    instances: int
    processes: int
    batch: int
    shape: tuple[int, int, int] | None
    iterations: int | None
    duration_s: float | None
    warmup: int
    mode: Literal["sync", "async"]
    queue_depth: int
    inputs: Literal["random", "photos"]
    repeats: int
    min_duration_s: float
    min_samples: int
    max_duration_s: float | None
    strict: bool
    windows: int
    max_window_cv: float
    start_timeout_s: float
    scenario: Literal["closed", "server", "offline"]
    target_qps: float | None
    max_queue_delay_ms: float
    arrival_seed: int
    search: Literal["none", "peak"]
    latency_bound_ms: float | None
    search_tolerance: float
    max_probes: int
    efficiency: bool
    stability: bool
    stability_window_s: float
    stability_pct: float
    max_windows: int

    @property
    def batches_floor(self) -> int:
        """Batches a measurement runs at least: ``iterations`` and ``min_samples``, whichever is more."""
        return max(self.iterations or 0, self.min_samples)

    def open_loop_requests(self, target_qps: float | None) -> int:
        """Open loop: requests (one image each) over all instances. Server: the batch floor, and enough to
        fill ``min_duration_s`` at ``target_qps`` (and p99's 662 when searching); offline: floor x batch."""
        if self.scenario == "offline":
            return self.batches_floor * self.batch
        assert target_qps is not None
        least = P99_MIN_SAMPLES if self.search == "peak" else 0
        return max(self.batches_floor, least, math.ceil(target_qps * self.min_duration_s))

    def __post_init__(self) -> None:
        self._check_amounts()
        self._check_scenario()
        self._check_watch_and_search()

    def _check_amounts(self) -> None:
        for name in ("instances", "processes", "batch", "queue_depth", "repeats", "windows", "min_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"perf.{name}={getattr(self, name)!r}: expected a positive int")
        if self.processes > self.instances:
            raise ConfigError(
                f"perf.processes={self.processes}: expected <= perf.instances={self.instances} "
                "(each process drives at least one instance, as in vamp)"
            )
        if self.min_duration_s < 0:
            raise ConfigError(f"perf.min_duration_s={self.min_duration_s}: expected >= 0")
        if self.max_duration_s is not None and self.max_duration_s <= 0:
            raise ConfigError(f"perf.max_duration_s={self.max_duration_s}: expected > 0 or null")
        if self.iterations is not None and self.iterations < self.instances:
            raise ConfigError(f"perf.iterations={self.iterations}: expected >= perf.instances={self.instances}")
        if self.warmup < 0:
            raise ConfigError(f"perf.warmup={self.warmup}: expected >= 0")
        check_seed("perf.arrival_seed", self.arrival_seed)
        if self.windows < 2 or self.max_window_cv < 0:
            raise ConfigError(
                f"perf.windows={self.windows}, perf.max_window_cv={self.max_window_cv}: expected >= 2 windows (one "
                "window has no variation to measure) and a CV >= 0"
            )

    def _check_scenario(self) -> None:
        if self.scenario == "server" and (self.target_qps is None or self.target_qps <= 0):
            needs = "perf.search=peak needs a rate > 0 to start from" if self.search == "peak" else (
                "perf.scenario=server needs an arrival rate > 0"
            )  # fmt: skip
            raise ConfigError(f"perf.target_qps={self.target_qps}: {needs}")
        if self.max_queue_delay_ms < 0:
            raise ConfigError(f"perf.max_queue_delay_ms={self.max_queue_delay_ms}: expected >= 0")
        if self.scenario != "closed" and self.mode != "sync":
            # Taken silently, it went into result.json and MLflow as if the run had been async.
            raise ConfigError(
                f"perf.mode={self.mode}: says how the closed loop keeps requests in flight; perf.scenario="
                f"{self.scenario} issues them itself (perf.batch and perf.max_queue_delay_ms batch them): leave sync"
            )
        if self.scenario != "server" and (self.target_qps is not None or self.max_queue_delay_ms > 0):
            setting = "perf.target_qps" if self.target_qps is not None else "perf.max_queue_delay_ms"
            raise ConfigError(
                f"{setting}={getattr(self, setting.split('.')[1])}: a setting of the server scenario's arrivals and "
                f"batching; perf.scenario={self.scenario} has neither (set perf.scenario=server, or leave it unset)"
            )
        if self.latency_bound_ms is not None and self.latency_bound_ms <= 0:
            raise ConfigError(f"perf.latency_bound_ms={self.latency_bound_ms}: expected a p99 bound > 0 (or null)")

    def _check_watch_and_search(self) -> None:
        if self.stability:
            if self.scenario != "closed":
                raise ConfigError(f"perf.stability=true: watches the closed loop, got perf.scenario={self.scenario}")
            if self.stability_window_s <= 0 or self.stability_pct <= 0 or self.max_windows < 3:
                raise ConfigError(
                    f"perf.stability_window_s={self.stability_window_s}, perf.stability_pct={self.stability_pct}, "
                    f"perf.max_windows={self.max_windows}: expected a window > 0, a percentage > 0, >= 3 windows"
                )
        if self.search == "peak":
            if self.repeats != 1:
                raise ConfigError(f"perf.repeats={self.repeats}: perf.search=peak measures each probe once (use 1)")
            if self.scenario != "server":
                raise ConfigError(
                    f"perf.search=peak: searches the server scenario's rate, got perf.scenario={self.scenario}"
                )
            if self.latency_bound_ms is None or self.latency_bound_ms <= 0:
                raise ConfigError(
                    f"perf.latency_bound_ms={self.latency_bound_ms}: perf.search=peak needs a p99 bound > 0"
                )
            if not 0 < self.search_tolerance < 1 or self.max_probes < 2:
                raise ConfigError(
                    f"perf.search_tolerance={self.search_tolerance}, perf.max_probes={self.max_probes}: "
                    "expected a tolerance in (0, 1) and at least 2 probes"
                )


@dataclass(frozen=True)
class DatasetConfig:
    """``dataset`` group: a retrieval dataset in the revisitop layout under ``root`` (default ``paths.data``).

    Attributes:
        name: ``roxford5k``, ``rparis6k`` (``harness data download``) or ``synthetic`` (written on first use).
        root: dataset root; ``null`` is ``paths.data``.
        on_bad_image: ``fail`` names the corrupt or missing file and stops; ``skip`` gives it a zero descriptor
            and lists it in the result.
        synthetic_images, synthetic_queries, synthetic_seed: the synthetic set's size and seed.
    """

    name: Literal["roxford5k", "rparis6k", "synthetic"]
    root: str | None
    on_bad_image: Literal["fail", "skip"]
    synthetic_images: int
    synthetic_queries: int
    synthetic_seed: int


@dataclass(frozen=True)
class AccuracyConfig:
    """``accuracy`` node: the retrieval protocol options and how features are extracted.

    Attributes:
        crop_queries: crop query images to their ``bbx`` (revisitop protocol); the vendor recipe does not.
        normalization: ``per_image`` (L2 per descriptor: cosine, the standard) or ``per_dimension`` (the vendor
            accuracy script's, needed to reproduce its numbers).
        batch: images per backend call during extraction.
        workers: processes decoding and preprocessing JPEGs (0: in the main process).
        compare_fp32: for a precision other than fp32, extract again with the fp32 build of the same weights
            and report the neighbour overlap and mAP deltas (``accuracy.fp32`` in the result; twice the time).
    """

    crop_queries: bool
    normalization: Literal["per_image", "per_dimension"]
    batch: int
    workers: int
    compare_fp32: bool

    def __post_init__(self) -> None:
        if self.batch < 1 or self.workers < 0:
            raise ConfigError(
                f"accuracy.batch={self.batch}, accuracy.workers={self.workers}: expected batch >= 1, workers >= 0"
            )


@dataclass(frozen=True)
class VdspConfig:
    """``vdsp`` group: the preprocessing, as the vendor's vdsp params describe it.

    Attributes:
        path: a vendor vdsp params JSON (any of its formats); ``null`` uses ``params``.
        params: the same JSON inline; ``null`` (with no path) is the torchvision-equivalent default.
    """

    path: str | None
    params: dict[str, Any] | None


# (x, y, width, height) of a crop of the resized image.
Crop = tuple[int, int, int, int]


@dataclass(frozen=True)
class VdspParams:
    """One vdsp preprocessing op, normalised across the vendor's JSON formats (see ``docs/vdsp.md``).

    Attributes:
        op_type: the vendor op name (or number, as text).
        input_format: pixel layout the op reads (``RGB_PLANAR``...).
        output_size: (height, width) after resize.
        mean, std: per channel (R, G, B order), on the scale ``norma_type`` implies.
        norma_type, resize_type, color_cvt_code: names from the documented sets, or ``code N`` when undocumented.
        crop: (x, y, width, height) after resize, or ``None``.
        input_size: (height, width) of the decoded image the op reads on the device (``IimageHeight`` /
            ``IimageWidth``), or ``None`` where the params do not say (the default preprocessing).
        source_format: ``new``, ``legacy-flat``, ``legacy-proplist`` or ``default``.
    """

    op_type: str
    input_format: str
    output_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    norma_type: str
    resize_type: str
    color_cvt_code: str
    crop: Crop | None = None
    input_size: tuple[int, int] | None = None
    source_format: str = "new"

    @property
    def tensor_size(self) -> tuple[int, int]:
        """(height, width) of the tensor the op hands the model: the crop's where it crops, else the resize's."""
        if self.crop is None:
            return self.output_size
        return self.crop[3], self.crop[2]


# The tracking stores MLflow 3.17 writes runs to, by URI scheme (a database, a server, Databricks).
TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc")


@dataclass(frozen=True)
class TrackingConfig:
    """``tracking`` group: where runs are logged (MLflow).

    Attributes:
        enabled: log runs at all (``result.json`` is written either way).
        uri: tracking URI; ``null`` uses ``$MLFLOW_TRACKING_URI``, else SQLite at ``<paths.outputs>/mlflow.db``
            with artifacts under ``<paths.outputs>/mlartifacts``.
        experiment: MLflow experiment name.
        log_model: also upload the built artifact files (ONNX models can be large).
        http_timeout_s: per-request timeout against a tracking server.
        http_retries: retries per request against a server (0: fail fast and leave the run for ``harness sync``).
        sqlite_retries: retries of a write that found the SQLite store locked by a concurrent job.
    """

    enabled: bool
    uri: str | None
    experiment: str
    log_model: bool
    http_timeout_s: float
    http_retries: int
    sqlite_retries: int

    def __post_init__(self) -> None:
        if self.uri is None:
            return
        scheme = self.uri.split(":", 1)[0].split("+", 1)[0] if ":" in self.uri else ""
        if scheme == "file" or not scheme:
            # MLflow 3.17 refuses its file store ("maintenance mode") at the first write, after the run.
            raise ConfigError(
                f"tracking.uri={self.uri!r}: MLflow's file store is in maintenance mode and refuses new runs; "
                "use a database, e.g. sqlite:///<folder>/mlflow.db, or a server, http://host:port"
            )
        if scheme not in TRACKING_SCHEMES:
            raise ConfigError(f"tracking.uri={self.uri!r}: {unknown_name_message('scheme', scheme, TRACKING_SCHEMES)}")


@dataclass(frozen=True)
class PathsConfig:
    """``paths`` group: where caches, datasets and run outputs live (``~`` expanded by ``harness.resolve``)."""

    root: str
    cache: str
    data: str
    outputs: str

    def path(self, name: Literal["root", "cache", "data", "outputs"]) -> Path:
        return Path(getattr(self, name)).expanduser()


@dataclass(frozen=True)
class GateRule:
    """One metric's rule in the regression gate (``gate`` group).

    Attributes:
        kind: ``perf`` (noisy: decided by statistics over repeats), ``accuracy`` or ``parity`` (deterministic for
            an artifact and its data: decided by an absolute tolerance).
        better: ``higher`` or ``lower``.
        threshold: perf: the relative change tolerated in the bad direction (0.05 = 5%); accuracy: points of
            mAP / mP; parity: cosine.
    """

    kind: Literal["perf", "accuracy", "parity"]
    better: Literal["higher", "lower"]
    threshold: float

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ConfigError(f"gate rule threshold={self.threshold}: expected >= 0")


@dataclass(frozen=True)
class GateConfig:
    """``gate`` group: how ``harness gate`` decides (see ``docs/gate.md``).

    Attributes:
        rules: metric name (as in MLflow's headline metrics) -> its rule.
        min_repeats: perf repeats needed on each side; fewer is inconclusive.
        alpha: significance level of the two-sided Mann-Whitney U test.
        confidence: level of the bootstrap interval of the ratio of medians.
        bootstrap_resamples: resamples for that interval.
        seed: seed of the bootstrap (a decision is reproducible).
    """

    rules: dict[str, GateRule]
    min_repeats: int
    alpha: float
    confidence: float
    bootstrap_resamples: int
    seed: int

    def __post_init__(self) -> None:
        if self.min_repeats < 2 or not 0 < self.alpha < 1 or not 0 < self.confidence < 1:
            raise ConfigError(
                f"gate.min_repeats={self.min_repeats}, gate.alpha={self.alpha}, gate.confidence={self.confidence}: "
                "expected min_repeats >= 2 and alpha, confidence in (0, 1)"
            )
        check_seed("gate.seed", self.seed)


@dataclass(frozen=True)
class StoreCommandConfig:
    """What ``harness sync``, ``report``, ``ui`` and ``vamp-parse`` read of the composed config: the store."""

    tracking: TrackingConfig
    paths: PathsConfig


@dataclass(frozen=True)
class DataCommandConfig:
    """What ``harness data`` reads: where datasets live, and the synthetic set's size and seed."""

    dataset: DatasetConfig
    paths: PathsConfig


@dataclass(frozen=True)
class GateCommandConfig:
    """What ``harness gate`` reads of ``conf/gate.yaml``: its rules, and the store MLflow baselines come from."""

    gate: GateConfig
    tracking: TrackingConfig
    paths: PathsConfig


@dataclass(frozen=True)
class RunConfig:
    """The whole config of one ``harness`` command, as composed and then resolved.

    ``backend`` is the registered plugin's own config dataclass (chosen by ``backend.name`` in
    ``harness.resolve``); ``preprocessing`` is the vdsp params in force, already read and parsed.
    """

    task: str
    stages: tuple[Stage, ...]
    progress: bool
    model: ModelConfig
    precision: PrecisionConfig
    build: BuildConfig
    perf: PerfConfig
    dataset: DatasetConfig
    accuracy: AccuracyConfig
    calibration: CalibrationConfig
    vdsp: VdspConfig
    tracking: TrackingConfig
    paths: PathsConfig
    backend: Any
    preprocessing: VdspParams | None = field(default=None, metadata=RESOLVED)

    def __post_init__(self) -> None:
        if not self.stages or len(set(self.stages)) < len(self.stages):
            raise ConfigError(f"stages={list(self.stages)}: expected a non-empty subset of {list(STAGES)}, each once")

    @property
    def vdsp_params(self) -> VdspParams:
        """The preprocessing in force; set by ``harness.resolve``."""
        if self.preprocessing is None:
            raise ConfigError("config is not resolved: call harness.resolve.resolve_config first")
        return self.preprocessing

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """[C, H, W] of one image: ``perf.shape``, else the vdsp op's tensor (the model's input size by default)."""
        if self.perf.shape:
            return self.perf.shape
        return (3, *self.vdsp_params.tensor_size)

    def portable(self) -> RunConfig:
        """This config with ``backend`` as a plain mapping: what ``result.json`` stores, readable without plugins."""
        backend = self.backend if isinstance(self.backend, dict) else asdict(self.backend)
        return replace(self, backend=json.loads(json.dumps(backend)))
