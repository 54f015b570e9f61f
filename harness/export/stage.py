"""Build stage: the deployable artifact for a config, cached by content and checked against torch fp32.

``build_artifact`` returns a cache hit or exports, checks parity on real photos, and only then publishes
the artifact with its ``build.json`` manifest.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import onnx
import onnxruntime
import torch

from harness import __version__
from harness.config.convert import dotted_value
from harness.config.schema import PrecisionConfig, RunConfig, unmeasured_settings
from harness.environment import cpu_isa
from harness.export import cache, onnx_export, quantize
from harness.export.parity import check_parity
from harness.export.quantize import CalibrationSet, calibration_set, resolve_reduce_range
from harness.fileio import elapsed_ticker
from harness.models import dinov2
from harness.result.build import (  # fmt: skip
    BuildManifest,
    BuildResult,
    ParityResult,
    QuantizationRecord,
    ToolchainRecord,
    WeightsInfo,
)

log = logging.getLogger(__name__)

MANIFEST_SCHEMA_VERSION = 1
# The float build an int8 artifact is quantized from, checked as an fp32 run checks it (conf/precision/fp32.yaml).
FLOAT_BASE = PrecisionConfig(name="fp32", parity_min_cosine=0.99999, parity_max_abs_error=None, quantization=None)


def cache_key_fields(config: RunConfig, model: dinov2.DinoVisionTransformer, weights: WeightsInfo) -> dict[str, object]:
    """Everything that determines the artifact's bytes."""
    return {
        "architecture": asdict(model.spec),
        "weights": weights.digest,
        "precision": config.precision.name,
        "io_dtype": config.build.io_dtype,
        "input_size": list(config.model.input_size),
        "format": config.build.format,
        "exporter": config.build.exporter,
        "opset": config.build.opset,
        "external_data": config.build.external_data,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "harness": __version__},
        "source_sha256": cache.source_digest(dinov2, onnx_export),
    }


def _calibration_read(config: RunConfig) -> dict[str, object]:
    """The calibration settings, those the quantizer does not read at their unset values (the percentile of a method
    other than ``percentile``): they make the same artifact, so they are a cache hit."""
    settings = asdict(config.calibration)
    unused = unmeasured_settings(functools.partial(dotted_value, asdict(config)))
    return {key: unused.get(f"calibration.{key}", value) for key, value in settings.items()}


def quantized_key_fields(config: RunConfig, base: BuildResult, calibration: CalibrationSet | None) -> dict[str, object]:
    """Everything that determines an int8 artifact's bytes: its fp32 base, the quantizer's settings as
    resolved for this CPU, and the calibration set's identity and model inputs."""
    assert config.precision.quantization is not None
    quantization = asdict(config.precision.quantization)
    quantization["reduce_range"] = resolve_reduce_range(config.precision.quantization.reduce_range, cpu_isa())
    return {
        "base_artifact": base.artifact[1].cache_key,
        "precision": config.precision.name,
        "quantization": quantization,
        "calibration": None
        if calibration is None
        else {**_calibration_read(config), "inputs_sha256": calibration.inputs_sha256},
        "versions": {"onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "harness": __version__},
        "source_sha256": cache.source_digest(quantize),
    }


def build_artifact(
    config: RunConfig, model: dinov2.DinoVisionTransformer, weights: WeightsInfo, *, base: BuildResult | None = None
) -> BuildResult:
    """Return the verified artifact for ``config``, building it unless a valid cached copy exists.

    An int8 precision quantizes the verified fp32 ONNX artifact: ``base`` when the caller already has it,
    else built (or found) here.
    """
    started = time.perf_counter()
    cache_root = cache.prepare_cache_root(config.paths.path("cache") / "builds")
    produce: Callable[[Path], tuple[bool, QuantizationRecord | None]]
    if config.precision.quantization is None:
        fields = cache_key_fields(config, model, weights)
        produce = functools.partial(_export, config, model)
    else:
        base = base or build_artifact(dataclasses.replace(config, precision=FLOAT_BASE), model, weights)
        static = config.precision.quantization.mode == "static"
        calibration = calibration_set(config.calibration, config.vdsp_params) if static else None
        fields = quantized_key_fields(config, base, calibration)
        produce = functools.partial(_quantize, config, base, calibration)
    key = cache.content_key(fields)
    height, width = config.model.input_size
    name = f"{model.spec.name}-{height}x{width}-{config.precision.name}-{config.build.format}-{key}"
    folder = cache_root / name
    recheck = functools.partial(_recheck_parity, config, model, folder)
    build = functools.partial(_build_into_cache, config, model, fields=fields, key=key, folder=folder, produce=produce)
    return cached_or_built(config, folder, recheck=recheck, build=build, started=started)


def cached_or_built(
    config: RunConfig,
    folder: Path,
    *,
    recheck: Callable[[BuildManifest], ParityResult],
    build: Callable[[], BuildManifest],
    started: float,
) -> BuildResult:
    """The artifact in ``folder``: a valid cached copy (unless ``build.force``) whose parity ``recheck`` checks
    again, else one ``build`` makes, checks and publishes there."""
    manifest = None if config.build.force else cache.load_cached(folder, BuildManifest)
    cache_hit = manifest is not None
    if isinstance(manifest, BuildManifest):
        log.info("build cache hit artifact=%s", folder)
        parity = recheck(manifest)
    else:
        manifest = build()
        parity = manifest.parity
    return BuildResult(
        artifact_path=str((folder / manifest.model_file).resolve()),
        cache_hit=cache_hit,
        manifest=manifest,
        parity=parity,
        time_s=time.perf_counter() - started,
    )


def _recheck_parity(
    config: RunConfig, model: dinov2.DinoVisionTransformer, folder: Path, manifest: BuildManifest
) -> ParityResult:
    return check_parity(
        folder / manifest.model_file, model, precision=config.precision, build=config.build,
        input_size=config.model.input_size,
    )  # fmt: skip


def _build_into_cache(
    config: RunConfig,
    model: dinov2.DinoVisionTransformer,
    *,
    fields: dict[str, object],
    key: str,
    folder: Path,
    produce: Callable[[Path], tuple[bool, QuantizationRecord | None]],
) -> BuildManifest:
    name = folder.name
    log.info("build start artifact=%s exporter=%s opset=%d", name, config.build.exporter, config.build.opset)
    with cache.staging_for(folder) as staging, elapsed_ticker(f"build {name}", config.progress):
        model_path = staging / f"{name}.onnx"
        export_started = time.perf_counter()
        external, quantization = produce(model_path)
        export_time_s = time.perf_counter() - export_started
        parity = check_parity(
            model_path, model, precision=config.precision, build=config.build, input_size=config.model.input_size
        )
        manifest = new_manifest(
            staging, folder, format=config.build.format, model_file=model_path.name, key=key, fields=fields,
            export_time_s=export_time_s, parity=parity, external_data=external, quantization=quantization,
        )  # fmt: skip
        manifest = cache.publish(staging, folder, manifest, replace=config.build.force)
    log.info("build done artifact=%s export_time_s=%.1f external_data=%s", folder, export_time_s, external)
    return manifest


def new_manifest(
    staging: Path, folder: Path, *, format: str, model_file: str, key: str, fields: dict[str, object],
    export_time_s: float, parity: ParityResult, external_data: bool = False,
    quantization: QuantizationRecord | None = None, toolchain: ToolchainRecord | None = None,
) -> BuildManifest:  # fmt: skip
    """The ``build.json`` of an artifact built in ``staging`` for the cache ``folder`` (every file listed)."""
    return BuildManifest(
        schema_version=MANIFEST_SCHEMA_VERSION,
        artifact_name=folder.name,
        format=format,
        model_file=model_file,
        cache_key=key,
        key_fields=fields,
        files=cache.artifact_files(staging),
        external_data=external_data,
        export_time_s=round(export_time_s, 3),
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        parity=parity,
        quantization=quantization,
        toolchain=toolchain,
    )


def _export(
    config: RunConfig, model: dinov2.DinoVisionTransformer, path: Path
) -> tuple[bool, QuantizationRecord | None]:
    external = onnx_export.export_onnx(
        model, precision=config.precision.name, input_size=config.model.input_size, build=config.build, path=path
    )
    return external, None


def _quantize(
    config: RunConfig, base: BuildResult, calibration: CalibrationSet | None, path: Path
) -> tuple[bool, QuantizationRecord | None]:
    assert config.precision.quantization is not None
    base_path, base_manifest = base.artifact
    external = base_manifest.external_data
    record = quantize.quantize_onnx(
        base_path, path, base_artifact=base_manifest.artifact_name,
        quantization=config.precision.quantization, calibration_config=config.calibration, calibration=calibration,
        external=external,
    )  # fmt: skip
    return external, record
