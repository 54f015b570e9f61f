"""One run: resolved config -> stages -> ``result.json``.

The config flows ``conf/`` -> ``harness.resolve`` (a typed ``RunConfig``) -> inputs checked -> weights
(their provenance) -> build (the model and its artifact) -> perf -> accuracy -> ``RunResult``. Whatever
happens once the run has started, ``result.json`` is written: a failed stage yields ``status: failed`` with
the error, and the stages that finished before it keep their results; an interrupt (Ctrl-C) yields
``status: interrupted`` and is re-raised.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.accuracy.stage import check_dataset_present, run_accuracy
from harness.backends import check_backend, fp32_reference_backend, is_toolchain
from harness.backends.torch_config import checks_module
from harness.config.schema import RunConfig
from harness.data.calibration import calibration_files
from harness.environment import capture
from harness.errors import ConfigError, DataError, HarnessError, MeasurementInvalid
from harness.export.cache import prepare_cache_root
from harness.fileio import write_text_atomic
from harness.models.provenance import resolve_weights
from harness.models.variants import get_variant
from harness.perf.stage import run_perf, strict_problems
from harness.perf.toolchain import run_toolchain_perf
from harness.perf.vamp import VAMP_FILE, vamp_report
from harness.processes import refuse_unguarded_main
from harness.resolve import resolve_config
from harness.result import RESULT_FILE, SCHEMA_VERSION, RunError, RunResult, write_result
from harness.result.accuracy import AccuracyResult
from harness.result.build import BuildResult, WeightsInfo
from harness.result.perf import PerfResult

log = logging.getLogger(__name__)


@dataclass
class _Finished:
    """What the stages that finished produced: a failed stage leaves the ones before it in the result."""

    weights: WeightsInfo | None = None
    build: BuildResult | None = None
    perf: PerfResult | None = None
    accuracy: AccuracyResult | None = None


def run(config: RunConfig | dict[str, Any], *, run_dir: Path) -> RunResult:
    """Run the stages of ``config`` (a ``RunConfig``, or a composed mapping that is resolved first) in ``run_dir``.

    A config that does not resolve, or a ``run_dir`` that holds an earlier run's ``result.json``, raises
    ``ConfigError`` before anything is written: it is not a run.
    Harness errors after that end the run with ``status: failed``; any other exception is a bug: it is
    recorded the same way and then re-raised.
    """
    if not isinstance(config, RunConfig):
        config = resolve_config(config)
    if (run_dir / RESULT_FILE).exists():
        raise ConfigError(
            f"run_dir={run_dir}: holds an earlier run ({RESULT_FILE}); a run writes a folder of its own, so that "
            "one's results are kept: choose another run_dir, or remove the folder"
        )
    started_at = datetime.now(UTC)
    clock = time.perf_counter()
    finished = _Finished()
    error: BaseException | None = None
    try:
        _run_stages(config, run_dir, finished)
    except (Exception, KeyboardInterrupt) as caught:  # recorded in result.json below; all but harness errors re-raised
        error = caught
        # The run's log file is its post-mortem: it says how the run ended, with the traceback of a bug.
        if isinstance(caught, KeyboardInterrupt):
            log.warning("run interrupted (SIGINT or SIGTERM)")
        else:
            log.error("run failed: %s", caught, exc_info=not isinstance(caught, HarnessError))
    result = RunResult(
        schema_version=SCHEMA_VERSION,
        status="interrupted" if isinstance(error, KeyboardInterrupt) else "failed" if error else "ok",
        run_uid=uuid.uuid4().hex,
        run_dir=str(run_dir.resolve()),
        started_at=started_at.isoformat(timespec="milliseconds"),
        finished_at=datetime.now(UTC).isoformat(timespec="milliseconds"),
        duration_s=round(time.perf_counter() - clock, 3),
        stages=config.stages,
        config=config.portable(),
        environment=capture(),
        error=_run_error(error),
        weights=finished.weights,
        build=finished.build,
        perf=finished.perf,
        accuracy=finished.accuracy,
    )
    write_result(result, run_dir)
    if error is not None and not isinstance(error, HarnessError):
        raise error
    return result


def _run_stages(config: RunConfig, run_dir: Path, finished: _Finished) -> None:
    """Inputs checked, weights, build, perf, accuracy: each stage's result into ``finished`` as it ends."""
    check_inputs(config)
    spec = get_variant(config.model.variant)
    log.info(
        "stage=model variant=%s weights=%s input_size=%s", spec.name, config.model.weights, config.model.input_size
    )
    checkpoint, finished.weights = resolve_weights(
        spec, weights=config.model.weights, seed=config.model.seed, cache_dir=config.paths.path("cache"),
        progress=config.progress,
    )  # fmt: skip
    fp32_build: BuildResult | None = None
    compare_fp32 = "accuracy" in config.stages and config.accuracy.compare_fp32 and config.precision.name != "fp32"
    if "build" in config.stages and (config.backend.loads_artifact or checks_module(config.backend)):
        # Imported here: the build is the only stage that needs torch in this process (seconds to import).
        from harness.export.build import run_build

        with_fp32 = compare_fp32 and fp32_reference_backend(config.backend).loads_artifact
        finished.build, fp32_build = run_build(
            config, checkpoint=checkpoint, weights=finished.weights, with_fp32=with_fp32
        )
    elif "build" in config.stages:
        log.info("stage=build nothing to build: backend=%s runs no built artifact", config.backend.name)
    artifact_path = finished.build.artifact_path if finished.build else None
    if "perf" in config.stages and is_toolchain(config.backend):
        finished.perf = run_toolchain_perf(config, model_prefix=artifact_path, run_dir=run_dir)
    elif "perf" in config.stages:
        finished.perf = run_perf(config, artifact_path=artifact_path, run_dir=run_dir)
        write_text_atomic(run_dir / VAMP_FILE, vamp_report(finished.perf))
    if finished.perf is not None:
        problems = strict_problems(finished.perf, config.perf.unused_notes(profiler=is_toolchain(config.backend)))
        if config.perf.strict and problems:
            raise MeasurementInvalid(f"perf.strict=true and the measurement falls short: {'; '.join(problems)}")
    if "accuracy" in config.stages:
        finished.accuracy = run_accuracy(
            config, artifact_path=artifact_path, run_dir=run_dir, weights_kind=finished.weights.kind,
            fp32_artifact_path=fp32_build.artifact_path if fp32_build and compare_fp32 else None,
        )  # fmt: skip


def check_inputs(config: RunConfig) -> None:
    """What can be checked before the first stage is: a stage that would fail on it later never starts."""
    if "accuracy" in config.stages:
        check_dataset_present(config)
    if config.model.weights not in ("official", "random"):
        weights = Path(config.model.weights).expanduser()
        if not weights.is_file() or not os.access(weights, os.R_OK):
            reason = "not readable" if weights.is_file() else "no such file"
            raise DataError(f"model.weights={config.model.weights}: {reason}")
    if {"perf", "accuracy"} & set(config.stages):
        check_backend(config.backend, config.precision.name)
    load_in_workers = "perf" in config.stages and not is_toolchain(config.backend)
    if load_in_workers or ("accuracy" in config.stages and config.accuracy.workers > 0):
        refuse_unguarded_main()  # before the build: the stage that spawns would refuse it only after
    quantization = config.precision.quantization
    static = quantization is not None and quantization.mode == "static"
    if "build" in config.stages and static and config.calibration.source == "folder":
        calibration_files(config.calibration)  # the build draws the same files again from the same seed
    if "build" in config.stages and config.backend.loads_artifact:
        prepare_cache_root(config.paths.path("cache") / "builds")  # before the model is built for it


def _run_error(error: BaseException | None) -> RunError | None:
    if error is None:
        return None
    if isinstance(error, KeyboardInterrupt):
        return RunError(type="KeyboardInterrupt", message="interrupted (SIGINT or SIGTERM) while the run was going")
    return RunError(type=type(error).__name__, message=str(error), details=getattr(error, "details", None))
