"""AOTInductor builds: the torch backend's compiled artifact (``backend.artifact=aoti``), the analogue of
``vamc compile`` for a GPU, cached by content and checked against torch fp32 like the ONNX builds.

``torch.export`` traces the DINOv2 module at the run's batch, input size, compute dtype and device, and
AOTInductor compiles the program into a package (``.pt2``: generated kernels and their C++ wrapper as a shared
library, the weights inside) that the backend loads without recompiling. The package's metadata carries its
batch and feature width. Its parity is checked by running the parity photos through the package itself, via
the backend's own load path, against torch fp32 on the CPU, on every build and every cache hit.
"""

from __future__ import annotations

import copy
import functools
import logging
import time
from dataclasses import asdict
from pathlib import Path

import torch

from harness import __version__
from harness.backends import LoadTarget, check_backend
from harness.backends.torch_backend import AOTI_PACKAGE_SUFFIX, torch_dtype
from harness.backends.torch_config import TorchConfig
from harness.config.schema import RunConfig
from harness.environment import cpu_isa
from harness.export import aoti_package, cache
from harness.export.aoti_package import compile_package
from harness.export.stage import cached_or_built, new_manifest
from harness.export.torch_module import torch_parity
from harness.fileio import elapsed_ticker
from harness.models import dinov2
from harness.result.build import BuildManifest, BuildResult, ParityResult, WeightsInfo

log = logging.getLogger(__name__)


def wants_aot_package(backend: object) -> bool:
    """The run's backend loads an AOTInductor package, which the build stage compiles."""
    return isinstance(backend, TorchConfig) and backend.artifact == "aoti"


def _device_identity(found: dict[str, object]) -> dict[str, object]:
    """What the generated code is specific to (from the backend's environment check): the GPU's name and compute
    capability, or the CPU's ISA."""
    if "compute_capability" in found:
        return {"gpu": found["device_name"], "capability": found["compute_capability"]}
    return {"cpu_isa": cpu_isa()}


def build_aot_package(config: RunConfig, model: dinov2.DinoVisionTransformer, weights: WeightsInfo) -> BuildResult:
    """The AOTInductor package for ``config`` (its backend a ``TorchConfig`` with ``artifact=aoti``), compiled
    unless a valid cached copy exists; its parity with torch fp32 is checked in both cases."""
    started = time.perf_counter()
    backend = config.backend
    assert isinstance(backend, TorchConfig)
    found = check_backend(backend, config.precision.name)  # a missing CUDA device: one clear line, no compiler error
    dtype = config.precision.name
    fields = {
        "architecture": asdict(model.spec),
        "weights": weights.digest,
        "dtype": dtype,
        "batch": config.perf.batch,
        "input_size": list(config.model.input_size),
        "device": _device_identity(found),
        "attention": backend.attention,
        "aot_inductor_configs": backend.aot_inductor_configs,
        "versions": {"torch": torch.__version__, "harness": __version__},
        "source_sha256": cache.source_digest(dinov2, aoti_package),
    }
    key = cache.content_key(fields)
    height, width = config.model.input_size
    kind = backend.device.partition(":")[0]
    name = f"{model.spec.name}-{height}x{width}-{dtype}-aoti-{kind}-b{config.perf.batch}-{key}"
    folder = cache.prepare_cache_root(config.paths.path("cache") / "builds") / name

    def recheck(manifest: BuildManifest) -> ParityResult:
        return package_parity(config, model, folder / manifest.model_file)

    build = functools.partial(_compile_into_cache, config, model, dtype=dtype, fields=fields, key=key, folder=folder)
    return cached_or_built(config, folder, recheck=recheck, build=build, started=started)


def _compile_into_cache(
    config: RunConfig, model: dinov2.DinoVisionTransformer, *, dtype: str, fields: dict[str, object], key: str,
    folder: Path,
) -> BuildManifest:  # fmt: skip
    backend = config.backend
    assert isinstance(backend, TorchConfig)
    log.info("build start artifact=%s compiler=AOTInductor device=%s", folder.name, backend.device)
    with cache.staging_for(folder) as staging, elapsed_ticker(f"build {folder.name}", config.progress):
        path = staging / f"{folder.name}{AOTI_PACKAGE_SUFFIX}"
        compile_started = time.perf_counter()
        compile_package(
            copy.deepcopy(model).to(device=backend.device, dtype=torch_dtype(dtype)).eval(),
            batch=config.perf.batch, input_size=config.model.input_size, dtype=torch_dtype(dtype),
            device=backend.device, attention=backend.attention, inductor_configs=backend.aot_inductor_configs,
            metadata={"batch": str(config.perf.batch), "feature_dim": str(model.spec.embed_dim), "dtype": dtype},
            path=path,
        )  # fmt: skip
        compile_time_s = time.perf_counter() - compile_started
        parity = package_parity(config, model, path)
        manifest = new_manifest(
            staging, folder, format="aoti", model_file=path.name, key=key, fields=fields,
            export_time_s=compile_time_s, parity=parity,
        )  # fmt: skip
        manifest = cache.publish(staging, folder, manifest, replace=config.build.force)
    log.info("build done artifact=%s compile_time_s=%.1f", folder, compile_time_s)
    return manifest


def package_parity(config: RunConfig, reference: dinov2.DinoVisionTransformer, package: Path) -> ParityResult:
    """The parity photos through the package, loaded and run by the torch backend (filled up to its batch), against
    torch fp32 on the CPU; raises ``BuildError`` when a bound of the precision fails."""
    target = LoadTarget(
        artifact_path=str(package), model=config.model, precision=config.precision.name,
        cache_dir=str(config.paths.path("cache")),
    )  # fmt: skip
    return torch_parity(config, reference, target, name=package.name)
