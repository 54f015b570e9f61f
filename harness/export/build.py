"""The build stage's choice of artifact: an ONNX build (quantized from a verified fp32 build for int8), an
AOTInductor package for the torch backend, or a vendor toolchain's compile of the fp32 ONNX build; for the torch
module, which each worker builds in memory, the module's parity check alone.

Its own module because it is the only stage that needs the torch model in the run's process: the pipeline
imports it only when the build stage runs, so a run without one never pays for torch's import.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from harness.backends import is_toolchain
from harness.backends.torch_config import checks_module
from harness.config.schema import RunConfig
from harness.export.aot import build_aot_package, wants_aot_package
from harness.export.device import compile_for_device
from harness.export.stage import FLOAT_BASE, build_artifact
from harness.export.torch_module import check_module
from harness.models.variants import get_variant
from harness.models.weights import backbone_from
from harness.result.build import BuildResult, WeightsInfo

log = logging.getLogger(__name__)


def run_build(
    config: RunConfig, *, checkpoint: Path | None, weights: WeightsInfo, with_fp32: bool
) -> tuple[BuildResult, BuildResult | None]:
    """(the run's build, the verified fp32 build it was made from or is compared with, else ``None``).

    ``with_fp32`` asks for the fp32 build even where the run's own build does not need it (accuracy compares
    against it).
    """
    model = backbone_from(
        get_variant(config.model.variant), checkpoint=checkpoint, seed=config.model.seed,
        input_size=config.model.input_size,
    )  # fmt: skip
    toolchain = is_toolchain(config.backend)
    made = config.backend.name if toolchain else "aoti" if wants_aot_package(config.backend) else config.build.format
    log.info("stage=build precision=%s format=%s", config.precision.name, made)
    fp32_build: BuildResult | None = None
    if config.precision.quantization is not None or with_fp32 or toolchain:
        # One verified fp32 build: what an int8 build quantizes, a toolchain compiles, accuracy compares to.
        fp32_build = build_artifact(replace(config, precision=FLOAT_BASE), model, weights)
    if toolchain:
        assert fp32_build is not None
        return compile_for_device(config, model, fp32_build), fp32_build
    if wants_aot_package(config.backend):
        return build_aot_package(config, model, weights), fp32_build
    if checks_module(config.backend):
        return check_module(config, model), fp32_build
    return build_artifact(config, model, weights, base=fp32_build), fp32_build
