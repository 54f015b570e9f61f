"""One run through ``harness.pipeline.run``: inputs checked before the first stage, strict perf, interrupts."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.pipeline import run
from harness.result import RunResult, load_result
from harness.summary import format_summary
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
        (
            ["precision=int8", "calibration.source=folder", "calibration.folder=/nowhere/jpg"],
            "calibration.folder=/nowhere/jpg: no such folder",
        ),
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


def test_a_build_cache_that_cannot_be_written_fails_the_run_before_the_model_is_built(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("paths.cache under a file")
    result = run(tiny(tmp_path, f"paths.cache={blocker / 'cache'}"), run_dir=tmp_path / "run")
    assert result.status == "failed" and result.error is not None and result.weights is None
    assert result.error.message == (
        f"paths.cache={str(blocker / 'cache')!r}: build cache is not writable ({blocker} is a file, not a folder)"
    )


def test_a_bug_in_a_stage_is_recorded_logged_with_its_traceback_and_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken_stage(*_: object, **__: object) -> None:
        raise ZeroDivisionError("a bug in the perf stage")

    monkeypatch.setattr("harness.pipeline.run_perf", broken_stage)
    with pytest.raises(ZeroDivisionError):
        run(tiny(tmp_path, "backend=sleep", "stages=[perf]"), run_dir=tmp_path / "run")
    recorded = load_result(tmp_path / "run")
    assert recorded.status == "failed" and recorded.error is not None and recorded.error.type == "ZeroDivisionError"
    (logged,) = [record for record in caplog.records if record.getMessage().startswith("run failed")]
    assert logged.levelname == "ERROR" and logged.exc_info is not None  # the traceback is in the run's log file


@pytest.mark.usefixtures("quiet_host")
def test_strict_perf_fails_a_measurement_that_falls_short_and_keeps_it(tmp_path: Path) -> None:
    loose = run(tiny(tmp_path, "backend=sleep", "stages=[perf]"), run_dir=tmp_path / "loose")
    assert loose.status == "ok" and loose.perf is not None and loose.perf.validity.warnings  # 16 batches: no p90
    stated = re.search(r"img/s over (\S+) s", format_summary(loose))
    assert stated and float(stated[1]) == pytest.approx(
        loose.perf.forward_time_s, rel=1e-3
    )  # 4 significant digits: a short run is not "0.02 s"
    strict = run(tiny(tmp_path, "backend=sleep", "stages=[perf]", "perf.strict=true"), run_dir=tmp_path / "strict")
    assert strict.status == "failed" and strict.error is not None and strict.error.type == "MeasurementInvalid"
    assert strict.error.message.startswith("perf.strict=true and the measurement falls short: p90, p95, p99 withheld")
    assert strict.perf is not None and strict.perf.batches == 16  # the measurement is kept beside the verdict
    enough = strict_run(tmp_path / "enough", "perf.min_samples=700", "backend.latency_us=200", "perf.max_window_cv=1.0")
    assert enough.status == "ok", enough.error
    # The API writes into the folder it is given: a second run there replaced the first's result.json.
    kept = (tmp_path / "loose" / "result.json").read_bytes()
    with pytest.raises(ConfigError, match=r"^run_dir=\S+loose: holds an earlier run \(result.json\); a run writes a "):
        run(tiny(tmp_path, "backend=sleep", "stages=[perf]"), run_dir=tmp_path / "loose")
    assert (tmp_path / "loose" / "result.json").read_bytes() == kept


@pytest.fixture
def quiet_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """Other work on this shared VM (the hypervisor's steal reaches 15-20% of it under load) is not judged: it fails
    a strict run, as it should, but is not what the tests using this fixture are about."""
    monkeypatch.setattr("harness.perf.measurement.OTHER_LOAD_PCT", 100.0)


def strict_run(run_dir: Path, *overrides: str) -> RunResult:
    return run(tiny(run_dir, "backend=sleep", "stages=[perf]", "perf.strict=true", *overrides), run_dir=run_dir)


@pytest.mark.usefixtures("quiet_host")
def test_minimums_a_stability_run_leaves_unused_are_noted_without_failing_a_strict_run(tmp_path: Path) -> None:
    # debug=tiny's minimums (16 iterations, 0 s, 1 sample): the note says they were not used, and the measurement,
    # long enough for its p99, meets perf.strict.
    stable = strict_run(
        tmp_path / "stable", "perf.stability=true", "perf.stability_window_s=0.4", "perf.stability_pct=50",
        "backend.latency_us=200", "perf.max_window_cv=1.0",
    )  # fmt: skip
    assert stable.status == "ok", stable.error
    assert stable.perf is not None and stable.perf.stability is not None and stable.perf.stability.stable
    assert any(warning.startswith("perf.iterations=16, perf.min_duration_s=0.0, perf.min_samples=1 not used: ")
               for warning in stable.perf.validity.warnings)  # fmt: skip


@pytest.mark.process
def test_a_run_with_nothing_to_build_records_its_weights_without_importing_torch(tmp_path: Path) -> None:
    # The sleep backend runs no model: its build stage makes nothing, and the model is never built.
    checkpoint = tmp_path / "weights.pth"
    checkpoint.write_bytes(b"\x80 not read: no stage here builds the model")
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from harness.pipeline import run\n"
        "from tests.conftest import compose\n"
        f"result = run(compose(['debug=tiny', 'backend=sleep', 'stages=[build,perf]', 'perf.iterations=5', 'tracking=off',"
        f" 'model.weights={checkpoint}', 'paths.cache={tmp_path / 'cache'}']), run_dir=Path({str(tmp_path / 'run')!r}))\n"
        "print('TORCH', 'torch' in sys.modules, result.status)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "TORCH False ok"
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["build"] is None and result["perf"]["throughput_qps"] > 0
    weights = result["weights"]
    assert weights["kind"] == "path" and weights["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()


def test_a_run_builds_nothing_it_would_not_run_and_says_so(tmp_path: Path) -> None:
    result = run(tiny(tmp_path, "backend=torch", "stages=[build,perf]", "perf.iterations=3"), run_dir=tmp_path / "run")
    assert result.status == "ok", result.error
    assert result.build is not None and result.build.artifact_path is None  # its module's parity only
    assert result.perf is not None and result.perf.backend == "torch"
    assert not (tmp_path / "cache" / "builds").exists()  # no ONNX export behind its back
    sleep = run(tiny(tmp_path, "backend=sleep", "stages=[build,perf]", "perf.iterations=3"), run_dir=tmp_path / "sleep")
    assert sleep.status == "ok" and sleep.build is None
    assert "none built: backend=sleep runs no built artifact" in format_summary(sleep)

    def startup(result: RunResult) -> list[list[str]]:
        return [line.split(maxsplit=1) for line in format_summary(result).splitlines() if line.startswith("  startup ")]

    def duration(seconds: float) -> str:
        return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1000:.3g} ms"

    perf = result.perf
    load, first_call = duration(perf.load_time_s), duration(perf.first_call_us / 1e6)  # type: ignore[arg-type,operator]
    assert startup(result) == [
        [
            "startup",
            f"runtime and model load {load}, cold first call {first_call} per instance: before the measured window",
        ]
    ]
    compiled = dataclasses.replace(perf, backend_resolved={**perf.backend_resolved, "runs": "module, torch.compile"})
    assert startup(dataclasses.replace(result, perf=compiled))[0][1].endswith(
        "per instance (torch.compile compiles in it): before the measured window"
    )


def test_the_latency_line_sets_p50_beside_p50_and_mean_beside_mean(tmp_path: Path) -> None:
    result = run(tiny(tmp_path, "backend=sleep", "stages=[perf]", "perf.iterations=20"), run_dir=tmp_path / "run")
    assert result.perf is not None
    model, e2e = result.perf.latency_us.model, result.perf.latency_us.e2e
    assert model.p50 is not None and e2e.p50 is not None and model.p99 is None
    (line,) = [
        line.split(maxsplit=1)[1] for line in format_summary(result).splitlines() if line.startswith("  latency")
    ]
    assert line == (
        f"model p50 {model.p50 / 1e3:.2f} ms, avg {model.avg / 1e3:.2f} ms, p99 n/a (too few samples); "
        f"e2e p50 {e2e.p50 / 1e3:.2f} ms, avg {e2e.avg / 1e3:.2f} ms, p99 n/a (too few samples)"
    )


def test_a_window_too_short_to_sample_the_host_says_so(tmp_path: Path) -> None:
    result = run(tiny(tmp_path, "backend=sleep", "stages=[perf]", "perf.iterations=3"), run_dir=tmp_path / "run")
    assert result.status == "ok", result.error
    assert result.perf is not None and result.perf.host is None and result.perf.forward_time_s < 0.05
    lines = [line.split(maxsplit=1) for line in format_summary(result).splitlines() if line.startswith("  host ")]
    assert lines == [["host", f"not sampled: the {result.perf.forward_time_s:.3g} s window held no whole 50 ms "
                      "sampling interval (the first starts before the workers' release)"]]  # fmt: skip


@pytest.mark.parametrize(
    ("overrides", "why"),
    [
        (["precision=int8"], "ONNX Runtime's GEMMs are timed in fp32 and fp16, not int8"),
        (["backend=sleep"], "it is defined for the onnxruntime and torch backends, not backend=sleep"),
        (
            ["perf.scenario=server", "perf.target_qps=200"],
            "it is defined for a fixed batch (closed loop, offline), not the server scenario's arrival-made ones",
        ),
    ],
)
def test_a_run_without_an_efficiency_says_why(tmp_path: Path, overrides: list[str], why: str) -> None:
    result = run(tiny(tmp_path, "stages=[build,perf]", "perf.iterations=3", *overrides), run_dir=tmp_path / "run")
    assert result.status == "ok", result.error
    assert result.perf is not None and result.perf.efficiency is None and result.perf.efficiency_undefined == why
    assert f"  efficiency  not measured: {why}" in format_summary(result).splitlines()
    assert load_result(tmp_path / "run").perf.efficiency_undefined == why  # type: ignore[union-attr]


def test_a_summary_says_when_tensorrt_may_compute_an_fp32_artifact_in_fp16(tmp_path: Path) -> None:
    config = tiny(
        tmp_path, "stages=[build,perf]", "backend.providers=[TensorrtExecutionProvider]", "backend.trt_fp16=true"
    )
    result = run(config, run_dir=tmp_path / "run")  # no TensorRT here: the run fails, its config is still summarised
    assert ["precision", "fp32 artifact; TensorRT may run its layers in fp16 (backend.trt_fp16=true)"] in [
        line.split(maxsplit=1) for line in format_summary(result).splitlines()
    ]
    plain = run(tiny(tmp_path, "backend=sleep", "stages=[perf]", "perf.iterations=3"), run_dir=tmp_path / "plain")
    assert ["precision", "fp32"] in [line.split(maxsplit=1) for line in format_summary(plain).splitlines()]


@pytest.mark.parametrize(("repeats", "which"), [(3, "the median"), (2, "the slower middle one")])
def test_a_headline_over_repeats_names_their_spread(tmp_path: Path, repeats: int, which: str) -> None:
    config = tiny(tmp_path, "backend=sleep", "stages=[perf]", "perf.iterations=8", f"perf.repeats={repeats}")
    result = run(config, run_dir=tmp_path / "run")
    assert result.perf is not None
    every = result.perf.throughput_qps_repeats
    assert result.perf.throughput_qps == sorted(every)[(repeats - 1) // 2]
    perf_line = next(line for line in format_summary(result).splitlines() if line.split()[0] == "perf")
    assert perf_line.endswith(f", {which} of {repeats} repeats ({min(every):.2f} to {max(every):.2f} img/s)")
    single = run(tiny(tmp_path, "backend=sleep", "stages=[perf]", "perf.iterations=8"), run_dir=tmp_path / "one")
    assert "repeats" not in format_summary(single)


@pytest.mark.parametrize(
    ("overrides", "runtime"),
    [
        ([], r"onnxruntime [\d.]+: CPUExecutionProvider on cpu, 1 thread \(backend.intra_op_threads\)"),
        (
            ["backend=torch", "backend.compile=true", "backend.attention=math"],
            r"torch \S+: module, torch.compile mode=default, math attention on cpu, 1 thread \(backend.threads\)",
        ),
        (["backend=torch"], r"torch \S+: eager module on cpu, 1 thread \(backend.threads\)"),
    ],
)
def test_the_summary_says_what_the_backend_ran(tmp_path: Path, overrides: list[str], runtime: str) -> None:
    threads = "backend.threads=1" if "backend=torch" in overrides else "backend.intra_op_threads=1"
    config = tiny(tmp_path, "stages=[build,perf]", "perf.iterations=3", threads, *overrides)
    result = run(config, run_dir=tmp_path / "run")
    assert result.status == "ok", result.error
    line = next(
        line.split(maxsplit=1)[1] for line in format_summary(result).splitlines() if line.split()[0] == "runtime"
    )
    assert re.fullmatch(runtime, line), line


def test_an_efficiency_turned_off_is_not_explained_back(tmp_path: Path) -> None:
    config = tiny(tmp_path, "backend=sleep", "stages=[perf]", "perf.iterations=3", "perf.efficiency=false")
    result = run(config, run_dir=tmp_path / "run")
    assert result.perf is not None and result.perf.efficiency_undefined == "perf.efficiency=false"
    assert "efficiency" not in format_summary(result)


def test_bf16_is_a_precision_the_torch_backend_runs_and_every_label_names(tmp_path: Path) -> None:
    result = run(
        tiny(tmp_path, "backend=torch", "precision=bf16", "stages=[perf,accuracy]", "perf.iterations=3"),
        run_dir=tmp_path / "run",
    )
    assert result.status == "ok", result.error
    assert result.perf is not None and result.perf.efficiency is not None
    assert result.perf.efficiency.runtime.endswith("bfloat16")  # the GEMMs were timed in the dtype the model ran
    assert result.accuracy is not None and result.accuracy.fp32 is not None  # compared with fp32, as fp16 is
    assert result.accuracy.fp32.descriptor_min_cosine < 1  # bf16 features differ from fp32's
    assert "precision   bf16" in format_summary(result)
    with pytest.raises(
        ConfigError, match=r"precision=bf16: backend 'onnxruntime' runs \[.*\] \(backend=torch runs it\)"
    ):
        run(tiny(tmp_path, "precision=bf16"), run_dir=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()


def test_the_summary_says_how_an_async_load_was_served(tmp_path: Path) -> None:
    lines = []
    for in_flight in (2, 1):
        result = run(
            tiny(tmp_path, "backend=sleep", "stages=[perf]", "perf.iterations=6", "perf.mode=async",
                 "perf.queue_depth=3", f"backend.in_flight={in_flight}"),
            run_dir=tmp_path / f"run{in_flight}",
        )  # fmt: skip
        assert result.status == "ok", result.error
        lines.append(next(line for line in format_summary(result).splitlines() if line.strip().startswith("perf ")))
    assert "async 3 in flight (2 at once on the device)" in lines[0]
    assert "async 3 in flight (served one at a time)" in lines[1]
    offline = run(
        tiny(tmp_path, "backend=sleep", "stages=[perf]", "perf.scenario=offline", "perf.batch=2", "perf.iterations=3"),
        run_dir=tmp_path / "offline",
    )
    assert "sleep b2 i1 p1 offline (all 6 requests queued at the start): " in format_summary(offline)


@pytest.mark.process
@pytest.mark.parametrize("guarded", [False, True], ids=["unguarded", "guarded"])
def test_a_script_using_the_python_api_is_refused_at_once_without_the_main_guard(tmp_path: Path, guarded: bool) -> None:
    # A spawned worker imports the script again; unguarded, the run used to hang (forever) after its build.
    call = (
        f"result = harness.run(harness.compose(['debug=tiny', 'stages=[build,perf,accuracy]', 'accuracy.workers=2',"
        f" 'tracking=off', 'paths.root={tmp_path}', 'paths.cache={tmp_path / 'cache'}']), run_dir=Path({str(tmp_path / 'run')!r}))\n"
        "print(result.status)\n"
    )
    body = "".join(f"    {line}\n" for line in call.splitlines()) if guarded else call
    script = tmp_path / "measure.py"
    script.write_text(
        "from pathlib import Path\nimport harness\n" + ('if __name__ == "__main__":\n' if guarded else "") + body
    )
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = load_result(tmp_path / "run")
    if guarded:
        assert done.stdout.split() == ["ok"] and result.perf is not None and result.accuracy is not None
        return
    assert done.stdout.split() == ["failed"] and result.error is not None
    assert result.error.message.startswith(f"{script}:3 starts the harness at the script's top level")
    assert result.build is None  # refused before the first stage, not after a build that may take minutes
