"""Typed configuration of one run: the schema of what ``conf/`` composes.

Every group of ``conf/`` maps onto one frozen dataclass here (``perf`` in ``harness.config.perf``; the gate's
and the other commands' in ``harness.config.commands``). The dataclasses declare types and checks only:
every default lives in the group's YAML file in ``conf/`` (with a comment per key, the user's documentation),
and ``harness.config.store`` registers these classes as Hydra's schema so a wrong type or an unknown key is
refused when the config is composed. ``__post_init__`` only checks values; files, plugins and the
environment are looked at by ``harness.resolve``, once, before any stage runs.

Image sizes are (H, W) everywhere, shapes [C, H, W] or [N, C, H, W].
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

from harness.config.convert import check_seed
from harness.config.perf import MINIMUMS, PerfConfig
from harness.config.perf import UNSET as PERF_UNSET
from harness.errors import ConfigError, as_written, masked, unknown_name_message

Precision = Literal["fp32", "fp16", "bf16", "int8", "int8_dynamic"]
# Precisions that are ONNX Runtime quantizations of the fp32 ONNX build (float input and output).
QUANTIZED: tuple[str, ...] = ("int8", "int8_dynamic")
Stage = Literal["build", "perf", "accuracy"]
Exporter = Literal["legacy", "dynamo"]
IoDtype = Literal["fp32", "native"]
ExternalData = Literal["auto", "always", "never"]

STAGES: tuple[str, ...] = get_args(Stage)
MIN_OPSET = 18
# Fields that ``harness.resolve`` fills in: not part of the composed config, so not in Hydra's schema.
RESOLVED = {"resolved": True}
# Backend settings added after runs were first saved, with the values that run as runs ran before the setting
# existed: a config at one of them hashes as it did then (``harness.tracking.records.config_hash``), and a saved
# config without the setting gets the first (``harness gate --rerun`` of an earlier run).
BACKEND_SETTINGS_ADDED_LATER: dict[str, dict[str, tuple[object, ...]]] = {
    "onnxruntime": {"session_config": (None, {})},
    "sleep": {"warming_calls": (0,), "warming_us": (0.0,)},
}
# Settings that say where a tool or cache is, or bound or force the work, but not what a run measures: a forced
# rebuild makes the same artifact, a timeout only fails a run that overruns it, TensorRT's engine folder and the
# vendor tools' paths are places (like paths.*; the tools' versions are recorded with the build). Hashed at their
# unset values rather than left out, so that a config at them keeps the hash it had.
NOT_WHAT_IS_MEASURED = (
    "build.force", "perf.start_timeout_s", "backend.compile_timeout_s", "backend.profile_timeout_s",
    "backend.trt_engine_cache", "backend.vamc", "backend.vamp",
)  # fmt: skip
# Values of the settings ``unmeasured_settings`` may name (those only some runs use, and those above), by dotted key,
# when left unset (conf/'s; a test keeps them equal).
UNMEASURED_SETTINGS_UNSET: dict[str, object] = {
    "calibration.method": "minmax", "calibration.percentile": 99.999, "calibration.images": 32,
    "calibration.seed": 1000, "calibration.source": "views", "calibration.folder": None, "build.io_dtype": "fp32",
    "accuracy.compare_fp32": True, **{f"perf.{key}": PERF_UNSET[key] for key in MINIMUMS},
    "perf.warmup": PERF_UNSET["warmup"], "build.force": False, "perf.start_timeout_s": PERF_UNSET["start_timeout_s"],
    "backend.compile_timeout_s": 3600.0, "backend.profile_timeout_s": 1800.0, "backend.trt_engine_cache": None,
    "backend.vamc": None, "backend.vamp": None,
}  # fmt: skip


def unmeasured_settings(setting: Callable[[str], object]) -> dict[str, object]:
    """The settings a run does not use, or that do not say what it measures (``NOT_WHAT_IS_MEASURED``), by dotted key,
    with their unset values: ``setting`` reads a dotted key of its config (a string value as itself). The config
    hash takes them at those values, so the fp32 job of a sweep such as ``-m precision=fp32,int8
    calibration.images=64`` pairs with a default fp32 run, and a run with ``build.force=true`` with its baseline.

    The calibration set is static int8's alone (its percentile only ``method=percentile``'s); the I/O dtype is
    only ONNX Runtime's fp16 build's (fp32 and the quantizations take fp32; the vendor toolchain compiles the fp32
    build; torch builds no ONNX); an fp32 run has no fp32 build to compare its features with; the perf minimums
    are not used under ``perf.stability``, whose rule decides how long the run measures; the vendor profiler has
    no flag for the warm-up."""
    unmeasured = list(NOT_WHAT_IS_MEASURED)
    if setting("precision.quantization.mode") != "static":
        unmeasured += [key for key in UNMEASURED_SETTINGS_UNSET if key.startswith("calibration.")]
    elif setting("calibration.method") != "percentile":
        unmeasured.append("calibration.percentile")
    if (setting("precision.name"), setting("backend.name")) != ("fp16", "onnxruntime"):
        unmeasured.append("build.io_dtype")
    if setting("precision.name") == "fp32":
        unmeasured.append("accuracy.compare_fp32")
    if setting("perf.stability") in (True, "true"):  # a params value is a string
        unmeasured += [f"perf.{key}" for key in MINIMUMS]
    if setting("backend.name") == "vastai":
        unmeasured.append("perf.warmup")
    return {key: UNMEASURED_SETTINGS_UNSET[key] for key in unmeasured}


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
            raise ConfigError(
                f"calibration.folder={as_written(self.folder)}: required exactly when calibration.source=folder"
            )


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
class RunConfig:
    """The whole config of one ``harness`` command, as composed and then resolved.

    ``backend`` is the registered plugin's own config dataclass (chosen by ``backend.name`` in
    ``harness.resolve``); ``preprocessing`` is the vdsp params in force, already read and parsed. ``rerun_of`` is
    the ``run_uid`` of the run this one measures again (``harness rerun``, ``harness gate --rerun``): where it came
    from, not what it measures.
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
    rerun_of: str | None
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
        """This config with ``backend`` as a plain mapping and any password in ``tracking.uri`` masked: what
        ``result.json`` stores (and MLflow gets as params), readable without plugins."""
        backend = self.backend if isinstance(self.backend, dict) else asdict(self.backend)
        uri = None if self.tracking.uri is None else masked(self.tracking.uri)
        return replace(self, backend=json.loads(json.dumps(backend)), tracking=replace(self.tracking, uri=uri))
