"""The GPU device check rehearsed on the CPU: it runs as one command, prints its table, writes its JSON, and
imports nothing the accelerator machine lacks (Hydra, MLflow, psutil, scipy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ABSENT_ON_THE_DEVICE = ("hydra", "omegaconf", "mlflow", "psutil", "scipy", "matplotlib", "skimage")


@pytest.mark.process
def test_the_device_check_runs_on_the_cpu_with_only_what_the_device_machine_has(tmp_path: Path) -> None:
    out = tmp_path / "check.json"
    script = (
        "import sys, json\n"
        "import bench.device_check as check\n"
        f"code = check.main(['--device', 'cpu', '--cases', 'tiny14_reg4:2,tiny14_reg4:1', '--parity', 'tiny14_reg4',"
        f" '--modes', 'eager,host_io async', '--seconds', '0.2', '--cache', {str(tmp_path / 'cache')!r}, '--out', {str(out)!r}])\n"
        "print('IMPORTED', json.dumps(sorted({name.split('.')[0] for name in sys.modules})))\n"
        "sys.exit(code)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    imported = set(json.loads(done.stdout.split("IMPORTED ", 1)[1]))
    assert not imported & set(ABSENT_ON_THE_DEVICE), imported & set(ABSENT_ON_THE_DEVICE)
    assert "case             mode" in done.stdout and "tiny14_reg4 b2   eager" in done.stdout
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["parity"] == {"tiny14_reg4": {"fp32": pytest.approx(1.0)}}
    rows = {(row["case"], row["mode"]): row for row in report["rows"]}
    assert set(rows) == {
        (case, mode) for case in ("tiny14_reg4 b2", "tiny14_reg4 b1") for mode in ("eager", "host_io async")
    }
    assert "h2d_ms_p50" not in rows[("tiny14_reg4 b2", "host_io async")]  # the CPU copies nothing to a device
    for row in rows.values():
        assert row["img_s"] > 0 and row["samples"] > 0 and 0 < row["efficiency"] < 1.5
        assert (row["p50_ms"] is None) == (row["samples"] < 11) and row["p99_ms"] is None  # 662 samples for p99
        assert "telemetry" not in row  # no NVML device: absent, never zero
    assert report["environment"]["device"] == "cpu" and "device_name" not in report["environment"]
    # The GPU targets are listed as not measured on a CPU, never as met.
    assert [target["met"] for target in report["targets"][:3]] == [None, None, None]


def test_a_spent_budget_lists_the_remaining_rows_as_skipped(tmp_path: Path) -> None:
    import bench.device_check as check

    out = tmp_path / "check.json"
    code = check.main([
        "--device", "cpu", "--cases", "tiny14_reg4:1", "--parity", "", "--modes", "eager", "--budget-s", "0",
        "--cache", str(tmp_path / "cache"), "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["mode"] == "eager" and row["skipped"] == "--budget-s 0.0 spent"


def test_a_failing_build_is_recorded_and_the_rows_measured_before_it_are_already_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import bench.device_check as check

    out = tmp_path / "check.json"
    on_disk_when_it_failed = []

    def compile_fails(*args: object, **kwargs: object) -> Path:
        on_disk_when_it_failed.append(json.loads(out.read_text()))
        raise RuntimeError("inductor: no kernel for this shape")

    monkeypatch.setattr(check, "compile_package", compile_fails)
    code = check.main([
        "--device", "cpu", "--cases", "tiny14_reg4:1", "--parity", "", "--modes", "aoti+graph,eager",
        "--seconds", "0.1", "--skip", "efficiency", "--cache", str(tmp_path / "cache"), "--out", str(out),
    ])  # fmt: skip
    assert code == 1
    (before,) = on_disk_when_it_failed
    assert [(row["mode"], row["samples"] > 0) for row in before["rows"]] == [("eager", True)]
    rows = {row["mode"]: row for row in json.loads(out.read_text())["rows"]}
    assert rows["aoti+graph"]["error"] == "RuntimeError: inductor: no kernel for this shape"
    assert rows["eager"]["img_s"] > 0
    captured = capsys.readouterr()
    assert "Traceback" in captured.err and "failed (1): tiny14_reg4 b1 aoti+graph" in captured.out
    assert not out.with_name(out.name + ".partial").exists()


def test_an_unknown_variant_is_refused_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import bench.device_check as check

    with pytest.raises(SystemExit) as refused:
        check.main(["--device", "cpu", "--cases", "tiny14_reg4:1,vitl14_rg4:64", "--cache", str(tmp_path)])
    assert refused.value.code == 2 and "vitl14_rg4" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_every_mode_runs_in_exactly_one_phase() -> None:
    import bench.device_check as check

    in_phases = [mode for phase in check.PHASES for mode in phase]
    assert sorted(in_phases) == sorted(check.MODES)
    # The autotuned compile costs minutes per batch size: run only when named.
    assert check.parse_args([]).modes == [mode for mode in check.MODES if mode != "autotune+graph"]
    assert check.parse_args(["--modes", "anchor,autotune+graph"]).modes == ["anchor", "autotune+graph"]


def test_a_row_its_mode_says_would_overrun_the_budget_is_skipped_before_it_starts(tmp_path: Path) -> None:
    import time

    import bench.device_check as check

    args = check.parse_args(["--device", "cpu", "--modes", "eager", "--skip", "efficiency", "--cache", str(tmp_path)])
    report = check.Report({}, None, time.perf_counter())
    report.rows.append(
        {"case": "tiny14_reg4 b2", "variant": "tiny14_reg4", "batch": 2, "mode": "eager", "wall_s": 90.0}
    )
    report.rows.append({"case": "vits14 b2", "variant": "vits14", "batch": 2, "mode": "eager", "wall_s": 900.0})
    check.run_case(check.Case("tiny14_reg4", 1), ["eager"], args, time.perf_counter() + 60, report)
    assert (
        report.rows[-1]["skipped"]
        == "--budget-s 280.0 would be passed: its longest 'eager' row of tiny14_reg4 took 90 s"
    )
    check.run_case(check.Case("tiny14_reg4", 1), ["eager"], args, time.perf_counter() + 120, report)
    assert report.rows[-1]["samples"] > 0  # 90 s expected, 120 s left: measured


def test_a_row_carries_the_device_readings_of_its_measured_window_only() -> None:
    import bench.device_check as check
    from harness.nvml import DeviceSample, NvmlSampler

    sampler = NvmlSampler(nvml=None, handle=None)
    sampler.samples = [
        DeviceSample(at=at, utilization_pct=util, memory_used_mb=900.0, power_w=power, temperature_c=55.0,
                     sm_clock_mhz=1980.0)
        for at, util, power in ((0.5, 100.0, 700.0), (1.0, 90.0, 300.0), (2.0, 100.0, 500.0), (3.5, 0.0, 60.0))
    ]  # fmt: skip
    row = check.with_telemetry({"img_s": 2000.0}, sampler, start=1.0, end=3.0)  # the compile and the idle tail out
    telemetry = row["telemetry"]
    assert telemetry["samples"] == 2 and telemetry["card_power_w"] == 400.0 and telemetry["ai_utilize_pct"] == 95.0
    assert telemetry["images_per_joule"] == 5.0 and telemetry["source"] == "nvml"
    assert check.with_telemetry({"img_s": 1.0}, None, start=1.0, end=3.0) == {"img_s": 1.0}


def test_a_gemm_timing_longer_than_the_model_is_timed_again_and_if_still_longer_shown_as_disturbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A GEMM-only timing taken while the machine was busy (here: a pip install unpacking beside the check) was
    # cached and read as efficiency 310-440%, in every row of the case and every later check.
    import bench.device_check as check

    args = ["--device", "cpu", "--cases", "tiny14_reg4:1", "--parity", "", "--modes", "eager", "--seconds", "0.2",
            "--cache", str(tmp_path / "cache")]  # fmt: skip
    busy_us = 1e6  # a second for a tiny model's GEMMs: far past any model time
    real = check.gemm_time_us
    cached = [busy_us]
    calls: list[bool] = []

    def busy_when_cached(*positional: object, reuse: bool = True) -> float:
        calls.append(reuse)
        if not reuse:  # timed again now, and cached in place of the busy one
            cached[0] = real(*positional, reuse=reuse)  # type: ignore[arg-type]
        return cached[0]

    monkeypatch.setattr(check, "gemm_time_us", busy_when_cached)
    assert check.main([*args, "--out", str(tmp_path / "retimed.json")]) == 0
    (row,) = json.loads((tmp_path / "retimed.json").read_text())["rows"]
    assert calls[:2] == [True, False] and calls.count(False) == 1
    assert 0 < row["efficiency"] < 1.5 and "efficiency_note" not in row

    monkeypatch.setattr(check, "gemm_time_us", lambda *positional, reuse=True: busy_us)
    capsys.readouterr()
    assert check.main([*args, "--out", str(tmp_path / "disturbed.json")]) == 0  # a caveat, not a failed row
    (row,) = json.loads((tmp_path / "disturbed.json").read_text())["rows"]
    assert row["efficiency"] is None and row["efficiency_note"].startswith("disturbed: the GEMMs alone took")
    printed = capsys.readouterr().out
    assert "efficiency disturbed: the GEMMs alone took" in printed
    assert any(line.startswith("tiny14_reg4 b1   eager") and line.split()[6] == "?" for line in printed.splitlines())
