"""Typed configuration of one run: what ``conf/`` composes, validated (house style rules 7, 8, 12).

Every group of ``conf/`` maps onto one frozen dataclass here. ``__post_init__`` only checks values; the
environment (installed providers, writable folders, files) is looked at when a stage starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from harness.config.convert import from_mapping
from harness.errors import ConfigError
from harness.models.variants import get_variant

if TYPE_CHECKING:
    from harness.vdsp import VdspParams

Precision = Literal["fp32", "fp16"]
Stage = Literal["build", "perf", "accuracy"]
Exporter = Literal["legacy", "dynamo"]
IoDtype = Literal["fp32", "native"]
ExternalData = Literal["auto", "always", "never"]

STAGES: tuple[str, ...] = get_args(Stage)
MIN_OPSET = 18


@dataclass(frozen=True)
class ModelConfig:
    """``model`` group: which backbone, with which weights, for which input size (H, W)."""

    variant: str
    weights: str = "random"
    seed: int = 0
    input_size: tuple[int, int] = (224, 224)

    def __post_init__(self) -> None:
        spec = get_variant(self.variant)
        height, width = self.input_size
        if height <= 0 or width <= 0 or height % spec.patch_size or width % spec.patch_size:
            raise ConfigError(
                f"model.input_size={list(self.input_size)}: "
                f"expected positive multiples of the patch size {spec.patch_size}"
            )
        if not self.weights:
            raise ConfigError("model.weights='': expected 'official', 'random' or a checkpoint path")


@dataclass(frozen=True)
class PrecisionConfig:
    """``precision`` group: the numeric format of the artifact and how close to fp32 torch it must stay."""

    name: Precision
    parity_min_cosine: float
    parity_max_abs_error: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.parity_min_cosine <= 1.0:
            raise ConfigError(f"precision.parity_min_cosine={self.parity_min_cosine!r}: expected a value in (0, 1]")


@dataclass(frozen=True)
class BuildConfig:
    """``build`` node: how the deployable artifact is produced and checked."""

    format: Literal["onnx"] = "onnx"
    exporter: Exporter = "legacy"
    opset: int = MIN_OPSET
    io_dtype: IoDtype = "fp32"
    external_data: ExternalData = "auto"
    parity_images: int = 8
    force: bool = False

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
        shape: [C, H, W] of one image; ``null`` takes it from ``model.input_size``.
        iterations: batches to run in total across instances (``null`` with ``duration_s`` alone).
        duration_s: minimum measured time; with ``iterations`` both minimums must be met.
        warmup: untimed calls per instance before measuring (after the first, cold, call).
        mode: ``sync`` (one request at a time per instance) or ``async`` (a queue of ``queue_depth`` per instance).
        queue_depth: requests in flight per instance in async mode.
        inputs: ``random`` (seeded normal) or ``photos`` (real photos, preprocessed).
        repeats: independent runs, each in fresh processes; the median is the headline.
        min_duration_s: a measurement shorter than this is invalid.
        min_samples: a measurement with fewer batches than this is invalid.
        windows: time slices for the throughput coefficient of variation.
        max_window_cv: above this CV a warning is printed and recorded.
        start_timeout_s: longest wait for workers to load their models.
    """

    instances: int = 1
    processes: int = 1
    batch: int = 1
    shape: tuple[int, int, int] | None = None
    iterations: int | None = 1024
    duration_s: float | None = None
    warmup: int = 8
    mode: Literal["sync", "async"] = "sync"
    queue_depth: int = 2
    inputs: Literal["random", "photos"] = "random"
    repeats: int = 1
    min_duration_s: float = 1.0
    min_samples: int = 64
    windows: int = 8
    max_window_cv: float = 0.1
    start_timeout_s: float = 900.0

    def __post_init__(self) -> None:
        for name in ("instances", "processes", "batch", "queue_depth", "repeats", "windows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"perf.{name}={getattr(self, name)!r}: expected a positive int")
        if self.processes > self.instances:
            raise ConfigError(
                f"perf.processes={self.processes}: expected <= perf.instances={self.instances} "
                "(each process drives at least one instance, as in vamp)"
            )
        if self.iterations is None and self.duration_s is None:
            raise ConfigError("perf.iterations=null and perf.duration_s=null: set at least one")
        if self.iterations is not None and self.iterations < self.instances:
            raise ConfigError(f"perf.iterations={self.iterations}: expected >= perf.instances={self.instances}")
        if self.warmup < 0:
            raise ConfigError(f"perf.warmup={self.warmup}: expected >= 0")


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

    name: Literal["roxford5k", "rparis6k", "synthetic"] = "synthetic"
    root: str | None = None
    on_bad_image: Literal["fail", "skip"] = "fail"
    synthetic_images: int = 60
    synthetic_queries: int = 5
    synthetic_seed: int = 0


@dataclass(frozen=True)
class AccuracyConfig:
    """``accuracy`` node: the retrieval protocol options and how features are extracted.

    Attributes:
        crop_queries: crop query images to their ``bbx`` (revisitop protocol); the vendor recipe does not.
        normalization: ``per_image`` (L2 per descriptor: cosine, the standard) or ``per_dimension`` (the vendor
            accuracy script's, needed to reproduce its numbers).
        batch: images per backend call during extraction.
        workers: processes decoding and preprocessing JPEGs (0: in the main process).
    """

    crop_queries: bool = False
    normalization: Literal["per_image", "per_dimension"] = "per_image"
    batch: int = 8
    workers: int = 2

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

    path: str | None = None
    params: dict[str, object] | None = None


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

    enabled: bool = True
    uri: str | None = None
    experiment: str = "dinov2-deploy"
    log_model: bool = False
    http_timeout_s: float = 10.0
    http_retries: int = 0
    sqlite_retries: int = 20


@dataclass(frozen=True)
class PathsConfig:
    """``paths`` group: where caches, datasets and run outputs live."""

    root: str
    cache: str
    data: str
    outputs: str

    def path(self, name: Literal["root", "cache", "data", "outputs"]) -> Path:
        return Path(getattr(self, name)).expanduser()


@dataclass(frozen=True)
class RunConfig:
    """The whole composed config of one ``harness`` command."""

    task: str
    model: ModelConfig
    precision: PrecisionConfig
    paths: PathsConfig
    stages: tuple[Stage, ...] = STAGES  # type: ignore[assignment]
    build: BuildConfig = field(default_factory=BuildConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    accuracy: AccuracyConfig = field(default_factory=AccuracyConfig)
    vdsp: VdspConfig = field(default_factory=VdspConfig)
    # The registered backend's own config dataclass (see harness.backends), resolved in from_dict.
    backend: Any = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError(f"stages=[]: expected a non-empty subset of {list(STAGES)}")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """[C, H, W] of one image: ``perf.shape``, else the vdsp output size when vdsp params are given, else the
        model's input size."""
        if self.perf.shape:
            return self.perf.shape
        if self.vdsp.path or self.vdsp.params:
            width, height = self.preprocessing().output_size
            return (3, height, width)
        return (3, *self.model.input_size)

    def preprocessing(self) -> VdspParams:
        """The vdsp params in force (a vendor file, inline params, or the torchvision-equivalent default)."""
        from harness.preprocess import default_params
        from harness.vdsp import load_vdsp, parse_vdsp

        if self.vdsp.path:
            return load_vdsp(Path(self.vdsp.path).expanduser())
        if self.vdsp.params:
            return parse_vdsp(self.vdsp.params, source="vdsp.params")
        return default_params(self.model.input_size)

    @classmethod
    def from_dict(cls, data: object) -> RunConfig:
        """Validate a composed config; the ``backend`` node becomes its registered plugin's config dataclass."""
        from harness.backends import get_backend

        if not isinstance(data, dict):
            raise ConfigError(f"config: expected a mapping, got {type(data).__name__}")
        backend = data.get("backend") or {"name": "onnxruntime"}
        if not isinstance(backend, dict) or "name" not in backend:
            raise ConfigError(f"backend={backend!r}: expected a mapping with a 'name'")
        entry = get_backend(str(backend["name"]))
        return from_mapping(cls, {**data, "backend": from_mapping(entry.config_type, backend, key="backend")})
