"""Resolve once: the composed config -> the complete, typed ``RunConfig`` every stage receives.

One step, before any stage runs: the tree is validated into the schema's dataclasses, the ``backend`` node
becomes its registered plugin's config dataclass, the vdsp params are read and parsed, the variant and
input size are checked against the variant table, and paths are expanded. Every error in the config or
the vdsp params is a ``ConfigError`` (or ``DataError`` for an unreadable vdsp file) raised here, naming
the key. Nothing here looks at devices or runs anything: that is each backend's ``resolve`` at stage start.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from harness.backends import check_precision, get_backend, shared_process_problem
from harness.config.convert import from_mapping
from harness.config.perf import LOAD_GENERATOR_SETTINGS, PerfConfig
from harness.config.schema import BACKEND_SETTINGS_ADDED_LATER, PathsConfig, RunConfig, VdspParams
from harness.data.synthetic import check_synthetic_set, dataset_location
from harness.errors import ConfigError, DataError
from harness.models.variants import get_variant
from harness.preprocess import default_params
from harness.vdsp import load_vdsp, parse_vdsp

log = logging.getLogger(__name__)


def resolve_config(composed: dict[str, Any]) -> RunConfig:
    """Validate and complete a composed config (``harness.config.store.compose``'s output)."""
    if not isinstance(composed, dict):
        raise ConfigError(f"config: expected a mapping, got {type(composed).__name__}")
    backend = composed.get("backend")
    if not isinstance(backend, dict) or "name" not in backend:
        raise ConfigError(f"backend={backend!r}: expected a mapping with a 'name'")
    entry = get_backend(str(backend["name"]))
    added_later = BACKEND_SETTINGS_ADDED_LATER.get(entry.name, {})
    backend = {**{key: unchanged[0] for key, unchanged in added_later.items()}, **backend}
    backend_config: Any = from_mapping(entry.config_type, backend, key="backend")
    config = from_mapping(RunConfig, {**composed, "backend": backend_config, "preprocessing": None})
    check_precision(entry, backend_config, config.precision.name)
    if entry.toolchain:
        _check_toolchain_load(config.perf, entry.name)
    shared = shared_process_problem(backend_config)
    if shared and "perf" in config.stages and config.perf.instances > config.perf.processes:
        raise ConfigError(
            f"perf.instances={config.perf.instances} with perf.processes={config.perf.processes}: {shared}; run one "
            f"instance per process (perf.processes={config.perf.instances}), or compile_mode=default with "
            "backend.cuda_graphs=true (the harness's own capture, one graph per instance)"
        )
    if backend_config.loads_artifact and {"perf", "accuracy"} & set(config.stages) and "build" not in config.stages:
        raise ConfigError(
            f"stages={list(config.stages)}: backend={entry.name} runs the artifact the build stage makes: add build"
        )
    _check_model(config)
    if "accuracy" in config.stages and config.dataset.name == "synthetic":
        dataset = config.dataset
        check_synthetic_set(dataset.synthetic_images, dataset.synthetic_queries, dataset.synthetic_seed)
    _check_calibration(config)
    preprocessing = _preprocessing(config)
    _check_input_shape(config, preprocessing, toolchain=entry.toolchain)
    return dataclasses.replace(
        config, paths=_expanded(config.paths), perf=_folded(config.perf), preprocessing=preprocessing
    )


def _folded(perf: PerfConfig) -> PerfConfig:
    """``perf.duration_s`` (the old name of the minimum duration) folded into ``perf.min_duration_s``."""
    if perf.duration_s is None:
        return perf
    log.warning("perf.duration_s is deprecated: use perf.min_duration_s (the larger of the two applies)")
    return dataclasses.replace(perf, min_duration_s=max(perf.min_duration_s, perf.duration_s), duration_s=None)


def _check_toolchain_load(perf: PerfConfig, backend: str) -> None:
    """A vendor profiler drives its own closed loop: the harness's open-loop scenarios, peak search and
    stability windows are not something it can be asked for, nor how the harness's own loop queues, feeds and
    times its calls (taken silently, such a setting read in result.json as if vamp had run by it)."""
    asked = {
        "perf.scenario": (perf.scenario, "closed"), "perf.search": (perf.search, "none"),
        "perf.stability": (perf.stability, False),
    }  # fmt: skip
    for key, (value, supported) in asked.items():
        if value != supported:
            raise ConfigError(
                f"{key}={value}: backend={backend} measures with its vendor profiler's closed loop only "
                f"({key}={supported})"
            )
    if changed := perf.set_among(LOAD_GENERATOR_SETTINGS):
        them = "them" if len(changed) > 1 else "it"
        raise ConfigError(
            f"{perf.written(changed)}: {'settings' if len(changed) > 1 else 'a setting'} of the harness's own load "
            f"generator; backend={backend} measures with its vendor profiler, which has no flag for {them} (leave "
            f"{them} unset)"
        )


def _check_calibration(config: RunConfig) -> None:
    """Static int8 calibration images must not be the images the run evaluates."""
    quantization = config.precision.quantization
    if quantization is None or quantization.mode != "static" or "accuracy" not in config.stages:
        return
    calibration, dataset = config.calibration, config.dataset
    if calibration.source == "views" and dataset.name == "synthetic" and calibration.seed == dataset.synthetic_seed:
        raise ConfigError(
            f"calibration.seed={calibration.seed}: the synthetic set evaluated is made with the same seed; "
            "calibrate on views made with another seed"
        )
    if calibration.source == "folder":
        root, name = dataset_location(dataset, config.paths)
        evaluated = root / name
        folder = Path(str(calibration.folder)).expanduser()
        if folder.resolve() == evaluated.resolve() or evaluated.resolve() in folder.resolve().parents:
            raise ConfigError(
                f"calibration.folder={folder}: holds the evaluated dataset ({evaluated}); calibrate on other images"
            )


def _check_model(config: RunConfig) -> None:
    spec = get_variant(config.model.variant)
    if config.model.weights == "official":
        spec.official_checkpoint()
    height, width = config.model.input_size
    if height <= 0 or width <= 0 or height % spec.patch_size or width % spec.patch_size:
        raise ConfigError(
            f"model.input_size={list(config.model.input_size)}: "
            f"expected positive multiples of the patch size {spec.patch_size}"
        )


def _check_input_shape(config: RunConfig, preprocessing: VdspParams, *, toolchain: bool) -> None:
    """What is fed to the model is what it was built for: every build (ONNX, AOTInductor package, the module,
    the vendor's compile) takes [3, *model.input_size], so another size is refused here, not after the build."""
    built_for = (3, *config.model.input_size)
    fed_by_perf = "perf" in config.stages or (toolchain and "build" in config.stages)
    if fed_by_perf and config.perf.shape and tuple(config.perf.shape) != built_for:
        raise ConfigError(
            f"perf.shape={list(config.perf.shape)}: the build takes {list(built_for)} (model.input_size): set "
            "model.input_size to measure another size"
        )
    fed_by_vdsp = "accuracy" in config.stages or (fed_by_perf and not config.perf.shape)
    if fed_by_vdsp and preprocessing.tensor_size != config.model.input_size:
        height, width = preprocessing.tensor_size
        made_by = "crop" if preprocessing.crop else "output"
        raise ConfigError(
            f"vdsp {made_by} {height}x{width} (H x W) does not match model.input_size={list(config.model.input_size)}"
        )


def _preprocessing(config: RunConfig) -> VdspParams:
    """The vdsp params in force: a vendor file, inline params, or the torchvision-equivalent default."""
    try:
        if config.vdsp.path:
            return load_vdsp(Path(config.vdsp.path).expanduser())
        if config.vdsp.params:
            return parse_vdsp(config.vdsp.params, source="vdsp.params")
    except DataError as error:
        raise ConfigError(f"vdsp.path: {error}" if config.vdsp.path else str(error)) from None
    return default_params(config.model.input_size)


def _expanded(paths: PathsConfig) -> PathsConfig:
    return PathsConfig(**{item.name: str(paths.path(item.name)) for item in dataclasses.fields(paths)})  # type: ignore[arg-type]
