"""Typed configuration of one run: what ``conf/`` composes, validated (house style rules 7, 8, 12).

Every group of ``conf/`` maps onto one frozen dataclass here. ``__post_init__`` only checks values; the
environment (installed providers, writable folders, files) is looked at when a stage starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from harness.config.convert import from_mapping
from harness.errors import ConfigError
from harness.models.variants import get_variant

Precision = Literal["fp32", "fp16"]
Stage = Literal["build"]
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
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError(f"stages=[]: expected a non-empty subset of {list(STAGES)}")

    @classmethod
    def from_dict(cls, data: object) -> RunConfig:
        return from_mapping(cls, data)
