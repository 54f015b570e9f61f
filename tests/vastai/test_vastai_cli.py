"""The vendor backend in the user's commands: a sweep that mixes it with ONNX Runtime, and ``vamp-parse``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness.cli import main
from harness.pipeline import run
from harness.result import load_result
from tests.conftest import harness_in, run_config
from tests.tracking.test_mlflow import check_sweep, children_of, find_sweep_dir, runs_of
from tests.vastai.conftest import FIXTURE_LOAD, FakeTools

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vastai"


def test_a_sweep_mixes_the_vendor_toolchain_and_onnxruntime(
    tmp_path: Path, fake_tools: FakeTools, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_VAMP_FIXTURE", "vamp-fp16-zoo-readme.txt")  # -i 1 -b 1, 1024 samples
    done = harness_in(
        tmp_path, "run", "-m", "debug=tiny", "backend=vastai,onnxruntime", "precision=fp16",
        "stages=[build,perf,accuracy]", "perf.instances=1", "perf.batch=1", "perf.iterations=1024",
        "perf.min_duration_s=0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sweep = find_sweep_dir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    check_sweep(uri, sweep, expected_jobs=2)
    vastai, ort = load_result(sweep / "0"), load_result(sweep / "1")
    assert vastai.perf is not None and ort.perf is not None and vastai.accuracy is not None and ort.accuracy is not None
    assert (vastai.perf.backend, ort.perf.backend) == ("vastai", "onnxruntime")
    assert (vastai.perf.samples_source, ort.perf.samples_source) == ("vamp", "harness")
    # Same weights, same fp16 precision, same images: the device outputs rank like ONNX Runtime's.
    assert vastai.accuracy.medium.map == ort.accuracy.medium.map
    with open(sweep / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["backend"] for row in rows] == ["vastai", "onnxruntime"]
    assert all(row[column] for row in rows for column in ("throughput_qps", "map_medium", "parity_min_cos"))
    runs = runs_of(uri)
    (parent,) = [run for run in runs if run.data.tags.get("harness.kind") == "sweep"]
    by_backend = {run.data.params["backend.name"]: run for run in children_of(runs, parent.info.run_id)}
    assert by_backend["vastai"].data.metrics["throughput_qps"] == 65.8953
    assert by_backend["vastai"].data.metrics["ai_utilize_pct"] == 95.8243
    assert "ai_utilize_pct" not in by_backend["onnxruntime"].data.metrics
    shared = set(by_backend["onnxruntime"].data.metrics) & set(by_backend["vastai"].data.metrics)
    assert {"throughput_qps", "perf.latency_us.e2e.avg", "map_medium", "parity_min_cos"} <= shared


def test_vamp_parse_prints_json_and_logs_each_file_once(tmp_path: Path) -> None:
    files = [str(path) for path in sorted(FIXTURES.glob("vamp-*.txt"))]
    done = harness_in(tmp_path, "vamp-parse", *files)
    assert done.returncode == 0, done.stderr
    parsed = json.loads(done.stdout)
    assert [Path(item["file"]).name for item in parsed] == [Path(path).name for path in files]
    assert [item["throughput_qps"] for item in parsed] == [102.118, 3101.12, 65.8953]
    assert parsed[0]["latency_us"]["e2e"]["p99"] == 29387 and parsed[1]["telemetry"]["card_power_w"] == 43.7734
    uri = f"sqlite:///{tmp_path / 'vamp.db'}"
    for expected in ("logged as", "already logged as"):
        logged = harness_in(tmp_path, "vamp-parse", "--log", f"tracking.uri={uri}", *files)
        assert logged.returncode == 0, logged.stderr
        assert [
            line.split(": ", 1)[1].rsplit(" ", 1)[0] for line in logged.stderr.splitlines() if "logged" in line
        ] == [expected] * 3
    runs = runs_of(uri)
    assert len(runs) == 3
    run = next(run for run in runs if run.data.tags["harness.vamp_file"].endswith("vamp-2.1.0-percentiles.txt"))
    assert run.data.metrics["throughput_qps"] == 102.118 and run.data.metrics["e2e_latency_p99_ms"] == 29.387
    assert run.data.metrics["perf.telemetry.ai_utilize_pct"] == 94.8539
    assert [item.path for item in MlflowClient(tracking_uri=uri).list_artifacts(run.info.run_id)] == [
        "vamp-2.1.0-percentiles.txt"
    ]


def test_vamp_parse_refuses_what_is_not_vamp_output(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("throughput: fast\n")
    done = harness_in(tmp_path, "vamp-parse", str(tmp_path / "notes.txt"))
    assert done.returncode == 1 and done.stdout == ""
    assert (
        done.stderr.strip()
        == f"error: {tmp_path / 'notes.txt'}: no 'number of instances in each device' line: not a vamp report"
    )
    # A log cut short (vamp killed mid-run) was printed, and logged with --log, as a run with no numbers.
    whole = (FIXTURES / "vamp-2.1.0-percentiles.txt").read_text()
    (tmp_path / "cut.txt").write_text(whole[: whole.index("throughput")])
    cut = harness_in(tmp_path, "vamp-parse", str(tmp_path / "cut.txt"))
    assert (
        cut.returncode == 1
        and cut.stdout == ""
        and cut.stderr.strip()
        == (
            f"error: {tmp_path / 'cut.txt'}: no 'throughput (qps)' line: a report cut short (vamp stopped before its summary)"
        )
    )
    missing = harness_in(tmp_path, "vamp-parse", str(tmp_path / "absent.txt"))
    assert (
        missing.returncode == 1
        and missing.stderr.strip() == f"error: {tmp_path / 'absent.txt'}: cannot read (No such file or directory)"
    )


def test_the_gate_decides_on_vamp_repeats(
    tmp_path: Path, fake_tools: FakeTools, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline_file = tmp_path / "baseline.json"

    def vastai_run(fixture: str, name: str) -> str:
        monkeypatch.setenv("FAKE_VAMP_FIXTURE", fixture)
        config = run_config(
            tmp_path / "cache", "backend=vastai", "precision=fp16", "stages=[build,perf]", *FIXTURE_LOAD,
            "perf.repeats=5", "tracking=off",
        )  # fmt: skip
        assert run(config, run_dir=tmp_path / name).status == "ok"
        return str(tmp_path / name)

    def gate(*arguments: str) -> tuple[int, str]:
        code = main(["gate", *arguments, "--baseline", str(baseline_file), "tracking=off"])
        return code, capsys.readouterr().out

    assert gate("--promote", vastai_run("vamp-2.5.2-manual.txt", "baseline"))[0] == 0
    assert json.loads(baseline_file.read_text())["entries"][0]["metrics"]["throughput_qps"] == [3101.12] * 5
    code, report = gate(vastai_run("vamp-2.5.2-manual.txt", "same"))
    assert code == 0 and "gate verdict: **pass** (exit 0)" in report, report
    # The same card at half the throughput (vamp's own layout, twice the forward time).
    slower = tmp_path / "vamp-slower.txt"
    original = (FIXTURES / "vamp-2.5.2-manual.txt").read_text()
    slower.write_text(original.replace("3.30204", "6.60408").replace("3101.12", "1550.56"))
    code, report = gate(vastai_run(str(slower), "slower"))
    assert code == 1 and "| throughput_qps |" in report and "fail" in report, report
