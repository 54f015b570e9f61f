"""Build stage: the deployable artifact for a config, cached by content and checked against torch fp32.

``build_artifact`` returns a cache hit or exports, checks parity on real photos, and only then publishes
the artifact with its ``build.json`` manifest.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import onnx
import torch

from harness import __version__
from harness.config.schema import RunConfig
from harness.export import cache, onnx_export
from harness.export.parity import check_parity
from harness.fileio import sha256_of
from harness.models import dinov2
from harness.result import ArtifactFile, BuildManifest, BuildResult, WeightsInfo

log = logging.getLogger(__name__)

MANIFEST_SCHEMA_VERSION = 1


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


def build_artifact(config: RunConfig, model: dinov2.DinoVisionTransformer, weights: WeightsInfo) -> BuildResult:
    """Return the verified artifact for ``config``, building it unless a valid cached copy exists."""
    started = time.perf_counter()
    cache_root = cache.prepare_cache_root(config.paths.path("cache") / "builds")
    fields = cache_key_fields(config, model, weights)
    key = cache.content_key(fields)
    height, width = config.model.input_size
    name = f"{model.spec.name}-{height}x{width}-{config.precision.name}-{config.build.format}-{key}"
    folder = cache_root / name
    manifest = None if config.build.force else cache.load_cached(folder, BuildManifest)
    cache_hit = manifest is not None
    if isinstance(manifest, BuildManifest):
        log.info("build cache hit artifact=%s", folder)
        parity = check_parity(
            folder / manifest.model_file,
            model,
            precision=config.precision,
            build=config.build,
            input_size=config.model.input_size,
        )
    else:
        manifest = _build_into_cache(config, model, fields=fields, key=key, name=name, folder=folder)
        parity = manifest.parity
    return BuildResult(
        artifact_path=str((folder / manifest.model_file).resolve()),
        cache_hit=cache_hit,
        manifest=manifest,
        parity=parity,
        time_s=time.perf_counter() - started,
    )


def _build_into_cache(
    config: RunConfig,
    model: dinov2.DinoVisionTransformer,
    *,
    fields: dict[str, object],
    key: str,
    name: str,
    folder: Path,
) -> BuildManifest:
    log.info("build start artifact=%s exporter=%s opset=%d", name, config.build.exporter, config.build.opset)
    staging = folder.with_name(f".staging-{name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        model_path = staging / f"{name}.onnx"
        export_started = time.perf_counter()
        external = onnx_export.export_onnx(
            model,
            precision=config.precision.name,
            input_size=config.model.input_size,
            build=config.build,
            path=model_path,
        )
        export_time_s = time.perf_counter() - export_started
        parity = check_parity(
            model_path, model, precision=config.precision, build=config.build, input_size=config.model.input_size
        )
        manifest = BuildManifest(
            schema_version=MANIFEST_SCHEMA_VERSION,
            artifact_name=name,
            format=config.build.format,
            model_file=model_path.name,
            cache_key=key,
            key_fields=fields,
            files=tuple(
                ArtifactFile(name=path.name, size_bytes=path.stat().st_size, sha256=sha256_of(path))
                for path in sorted(staging.iterdir())
            ),
            external_data=external,
            export_time_s=round(export_time_s, 3),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            parity=parity,
        )
        cache.publish(staging, folder, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("build done artifact=%s export_time_s=%.1f external_data=%s", folder, export_time_s, external)
    return manifest
