"""The build stage's records: the weights a run used, the artifact's manifest (``build.json``) and its parity."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

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

    A torch module run (``backend=torch``, ``backend.artifact=module``) has no artifact: each worker builds the
    module in memory, so ``artifact_path``, ``cache_hit`` and ``manifest`` are ``None`` and ``parity`` is the
    module's.

    Attributes:
        artifact_path: absolute path of the model file to load (a toolchain build: the prefix its profiler loads).
        cache_hit: the artifact came from the cache (no export in this run).
        manifest: the artifact's ``build.json``.
        parity: this run's parity check (a cache hit is re-checked too).
        time_s: wall time of the stage, seconds.
    """

    artifact_path: str | None
    cache_hit: bool | None
    manifest: BuildManifest | None
    parity: ParityResult
    time_s: float

    @property
    def artifact(self) -> tuple[Path, BuildManifest]:
        """(the model file, its manifest) of a build that made an artifact (a module run made none)."""
        assert self.artifact_path is not None and self.manifest is not None, "a torch module run has no artifact"
        return Path(self.artifact_path), self.manifest

    @property
    def artifact_folder(self) -> Path | None:
        """The cached artifact's folder (``build.json`` and every file of the manifest), ``None`` for a module."""
        if self.manifest is None:
            return None
        path, manifest = self.artifact
        return path.parents[len(Path(manifest.model_file).parts) - 1]
