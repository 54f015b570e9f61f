"""One run through ``harness.pipeline.run``: inputs checked before the first stage, strict perf, interrupts."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.pipeline import run
from harness.result import load_result
from tests.conftest import compose


def tiny(tmp_path: Path, *overrides: str) -> dict:  # type: ignore[type-arg]
    return compose(
        [
            "debug=tiny",
            f"paths.cache={tmp_path / 'cache'}",
            f"paths.data={tmp_path / 'data'}",
            "tracking=off",
            *overrides,
        ]
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.weights=/nowhere/weights.pth"], "model.weights=/nowhere/weights.pth: no such file"),
        (["dataset=roxford5k"], "gnd_roxford5k.pkl not found: run `harness data download roxford5k"),
        (["backend.providers=[CUDAExecutionProvider]"], "backend.providers: 'CUDAExecutionProvider' is not available"),
    ],
)
def test_inputs_that_can_be_checked_fail_the_run_before_the_first_stage(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    result = run(tiny(tmp_path, *overrides), run_dir=tmp_path / "run")
    assert result.status == "failed" and result.error is not None and message in result.error.message
    assert result.weights is None and result.build is None  # nothing was built or loaded first
    assert not (tmp_path / "cache" / "builds").exists()
    assert load_result(tmp_path / "run").error == result.error


def test_strict_perf_fails_a_measurement_that_falls_short_and_keeps_it(tmp_path: Path) -> None:
    loose = run(tiny(tmp_path, "backend=sleep", "stages=[perf]"), run_dir=tmp_path / "loose")
    assert loose.status == "ok" and loose.perf is not None and loose.perf.validity.warnings  # 16 batches: no p90
    strict = run(tiny(tmp_path, "backend=sleep", "stages=[perf]", "perf.strict=true"), run_dir=tmp_path / "strict")
    assert strict.status == "failed" and strict.error is not None and strict.error.type == "MeasurementInvalid"
    assert strict.error.message.startswith("perf.strict=true and the measurement falls short: p90, p95, p99 withheld")
    assert strict.perf is not None and strict.perf.batches == 16  # the measurement is kept beside the verdict
    enough = run(
        tiny(tmp_path, "backend=sleep", "stages=[perf]", "perf.strict=true", "perf.min_samples=700",
             "backend.latency_us=200", "perf.max_window_cv=1.0"),
        run_dir=tmp_path / "enough",
    )  # fmt: skip
    assert enough.status == "ok", enough.error
