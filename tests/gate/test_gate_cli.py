"""`harness gate` on real runs: the sleep backend (known service time) and the tiny ONNX model slowed by CPU hogs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness.result import load_result
from harness.tracking import start_sweep
from tests.conftest import harness_environment, harness_in, measuring_runs

pytestmark = pytest.mark.process
SLEEP_RUN = [
    "run",
    "debug=tiny",
    "backend=sleep",
    "stages=[perf]",
    "perf.min_duration_s=0.5",
    "backend.latency_us=2000",
]


harness = harness_in

# Gating a run against itself (or against a rerun of its own config) is x1.0000 by construction, but whether the
# interval clears 5% depends on how quiet the host was over the repeats: a busy CI host once made it straddle
# (throughput x1.0000 in [0.9445, 1.0588]). Tests of the gate's plumbing tolerate 50%; tests of its statistics
# (tests/gate/test_decide.py, the CPU-hog regression below) keep the default rules.
TOLERANT = [
    f"gate.rules.{metric}.threshold=0.5" for metric in ("throughput_qps", "e2e_latency_p50_ms", "model_latency_p50_ms")
]
# The same for promotion: this VM's hypervisor steal passes 10% under load now and then, which rightly makes a run no
# baseline by default; tests of the plumbing promote whatever ran beside them (the CPU-hog test refuses its slowed
# run with the default).
BUSY_HOST_BASELINE = "gate.max_other_load_pct=100"


def run_folder(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stderr
    return str(Path(done.stdout.strip().splitlines()[-1]).parent)


def test_a_run_against_itself_passes_and_every_exit_code_says_why(tmp_path: Path) -> None:
    baseline = run_folder(harness(tmp_path, *SLEEP_RUN, "perf.repeats=5", "tracking=off"))
    baseline_file = tmp_path / "baselines" / "sleep.json"
    # Named twice (its folder, then the result.json a run prints): one run, one entry (it wrote two).
    promoted = harness(tmp_path, "gate", "--promote", baseline, str(Path(baseline) / "result.json"), "--baseline",
                       str(baseline_file), "tracking=off", BUSY_HOST_BASELINE)  # fmt: skip
    assert promoted.returncode == 0 and "1 entry written" in promoted.stdout and promoted.stderr == ""
    entry = json.loads(baseline_file.read_text())["entries"][0]
    assert len(entry["metrics"]["throughput_qps"]) == 5 and "map_medium" not in entry["metrics"]
    assert set(entry) == {"label", "config_hash", "hardware_fingerprint", "metrics", "config"}
    assert entry["config"]["backend.latency_us"] == "2000.0" and "paths.outputs" not in entry["config"]

    itself = harness(tmp_path, "gate", baseline, baseline, "--baseline", str(baseline_file), "tracking=off", *TOLERANT)
    assert itself.returncode == 0, itself.stdout + itself.stderr
    assert itself.stdout.count("| throughput_qps | ") == 1  # a candidate named twice is decided once
    assert "gate verdict: **pass** (exit 0)" in itself.stdout and "| throughput_qps | " in itself.stdout
    assert (Path(baseline) / "gate.md").read_text() in itself.stdout
    # The path a run prints last names its result.json: the table still goes beside it, not into the working folder.
    (Path(baseline) / "gate.md").unlink()
    printed = str(Path(baseline) / "result.json")
    by_file = harness(tmp_path, "gate", printed, "--baseline", str(baseline_file), "tracking=off", *TOLERANT)
    assert by_file.returncode == 0 and f"gate report: {Path(baseline) / 'gate.md'}\n" in by_file.stdout
    nested = tmp_path / "reports" / "gates" / "gate.md"  # its folders made as needed
    elsewhere = harness(tmp_path, "gate", baseline, "--baseline", str(baseline_file), "--report", str(nested),
                        "tracking=off", *TOLERANT)  # fmt: skip
    assert elsewhere.returncode == 0 and elsewhere.stderr == "" and nested.read_text() in elsewhere.stdout

    other = run_folder(harness(tmp_path, *SLEEP_RUN, "backend.latency_us=2500", "perf.repeats=5", "tracking=off"))
    unmatched = harness(tmp_path, "gate", other, "--baseline", str(baseline_file), "tracking=off")
    assert unmatched.returncode == 4 and "unusable: no baseline for config hash" in unmatched.stdout

    # A baseline the gate cannot decide speed against is still promoted, and the promotion says so at once.
    few = run_folder(harness(tmp_path, *SLEEP_RUN, "perf.repeats=2", "tracking=off"))
    warned = harness(tmp_path, "gate", "--promote", few, "--baseline", str(tmp_path / "few.json"), "tracking=off")
    assert warned.returncode == 0 and "1 entry written" in warned.stdout
    assert warned.stderr.strip() == (
        f"warning: {few}: 2 perf repeats; the gate decides speed with >= 5 a side (gate.min_repeats), so against it "
        "speed gates inconclusive: measure the baseline with perf.repeats=5"
    )
    # Several such runs are one warning naming them (a 24-job sweep printed the same sentence 24 times).
    copy = shutil.copytree(few, tmp_path / "few copy")
    warned = harness(tmp_path, "gate", "--promote", few, copy, "--baseline", str(tmp_path / "two.json"), "tracking=off")
    assert warned.returncode == 0 and warned.stderr.strip() == (
        f"warning: {few}, {copy}: 2 perf repeats each; the gate decides speed with >= 5 a side (gate.min_repeats), "
        "so against them speed gates inconclusive: measure the baseline with perf.repeats=5"
    )
    assert (
        f"nearest baseline {baseline_file}:{Path(baseline).name} differs in backend.latency_us: 2000.0 -> 2500.0\n"
        in (unmatched.stdout)
    )

    sweep = tmp_path / "sweep"
    start_sweep(sweep, ["backend.latency_us=2000,2000"], [["backend.latency_us=2000"]] * 2)
    for job in ("0", "1"):
        shutil.copytree(baseline, sweep / job)
    (sweep / "1" / "result.json").write_text('{"schema_version": 2, "sta')  # a copy cut short
    partly = harness(tmp_path, "gate", str(sweep), "--baseline", str(baseline_file), "tracking=off")
    assert partly.returncode == 4 and "| 0 | throughput_qps | " in partly.stdout, partly.stdout  # job 0 decided
    assert f"- 1: unusable: {sweep / '1' / 'result.json'}: cannot read result (" in partly.stdout
    by_record = harness(tmp_path, "gate", str(sweep / "sweep.json"), "--baseline", str(baseline_file), "tracking=off")
    assert (by_record.returncode, by_record.stdout) == (partly.returncode, partly.stdout)  # the sweep's own record

    few = run_folder(harness(tmp_path, *SLEEP_RUN, "perf.repeats=3", "tracking=off"))
    inconclusive = harness(tmp_path, "gate", few, "--baseline", str(baseline_file), "tracking=off")
    assert inconclusive.returncode == 3 and "needs >= 5 repeats a side to decide, has 5 and 3" in inconclusive.stdout
    rerun = harness(tmp_path, "gate", few, "--baseline", str(baseline_file), "--rerun", "1", "tracking=off", *TOLERANT)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert (Path(few) / "gate-reruns" / "1" / "result.json").is_file() and "| 5/6 | pass |" in rerun.stdout
    first = (Path(few) / "gate-reruns" / "1" / "result.json").read_bytes()
    assert load_result(Path(few) / "gate-reruns" / "1").config.rerun_of == load_result(few).run_uid
    again = harness(tmp_path, "gate", few, "--baseline", str(baseline_file), "--rerun", "1", "tracking=off", *TOLERANT)
    assert again.returncode == 0 and "| 5/6 | pass |" in again.stdout, again.stdout + again.stderr
    # a later gate's rerun is a measurement of its own: the first one's stays
    assert (Path(few) / "gate-reruns" / "1" / "result.json").read_bytes() == first
    assert (Path(few) / "gate-reruns" / "2" / "result.json").is_file()

    entry["hardware_fingerprint"] = "0123456789ab"
    baseline_file.write_text(json.dumps({"schema_version": 1, "entries": [entry]}))
    elsewhere = harness(tmp_path, "gate", baseline, "--baseline", str(baseline_file), "tracking=off")
    assert elsewhere.returncode == 4 and "no baseline measured on this hardware" in elsewhere.stdout
    allowed = harness(
        tmp_path,
        "gate",
        baseline,
        "--baseline",
        str(baseline_file),
        "--allow-hardware-mismatch",
        "tracking=off",
        *TOLERANT,
    )
    assert allowed.returncode == 0 and "hardware differs" in allowed.stdout

    assert harness(tmp_path, "gate", baseline).returncode == 2  # --baseline is required
    missing = harness(tmp_path, "gate", baseline, "--baseline", str(tmp_path / "nowhere.json"), "tracking=off")
    assert missing.returncode == 4 and missing.stderr.startswith(
        f"error: {tmp_path / 'nowhere.json'}: cannot read the baseline"
    )
    mistyped = harness(tmp_path, "gate", str(tmp_path / "no-such-run"), "--baseline", str(baseline_file))
    assert mistyped.returncode == 4 and mistyped.stderr.startswith(
        f"error: {tmp_path / 'no-such-run'}: no such folder, nor an MLflow run id (32 hex digits)"
    )
    missing_result = harness(tmp_path, "gate", str(tmp_path / "result.json"), "--baseline", str(baseline_file))
    assert (
        missing_result.returncode == 4
        and missing_result.stderr == f"error: {tmp_path / 'result.json'}: no such result file\n"
    )
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # tracking is on, yet a typo creates no store


def test_a_candidate_slowed_by_cpu_hogs_is_a_regression_and_mlflow_holds_the_verdict(tmp_path: Path) -> None:
    onnx_run = [
        "run",
        "debug=tiny",
        "stages=[build,perf]",
        "perf.repeats=5",
        "perf.iterations=null",
        "perf.min_duration_s=0.6",
    ]
    baseline = run_folder(harness(tmp_path, *onnx_run))
    # The baseline is promoted whatever this VM's steal was (24% once); the slowed run below, with the default limit.
    promoted = harness(tmp_path, "gate", "--promote", baseline, "--baseline", "mlflow", BUSY_HOST_BASELINE)
    assert promoted.returncode == 0, promoted.stderr
    printed = harness(tmp_path, "gate", "--promote", str(Path(baseline) / "result.json"), "--baseline", "mlflow",
                      BUSY_HOST_BASELINE)  # fmt: skip
    assert printed.returncode == 0 and printed.stdout == promoted.stdout  # the path a run prints names its folder
    candidate = subprocess.Popen(
        [sys.executable, "-m", "harness", *onnx_run], cwd=tmp_path, env=harness_environment(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        while candidate.poll() is None and not measuring_runs(tmp_path / "outputs"):
            time.sleep(0.02)
        # One busy loop per core from the start of its perf stage: the run gets about half the CPU, a regression
        # far beyond any threshold.
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)]
        stdout, stderr = candidate.communicate(timeout=300)
    finally:
        for process in [candidate, *hogs]:
            process.kill()
            process.wait()
    slowed = run_folder(subprocess.CompletedProcess(candidate.args, candidate.returncode, stdout, stderr))
    gated = harness(tmp_path, "gate", slowed, "--baseline", "mlflow")
    assert gated.returncode == 1, gated.stdout + gated.stderr
    assert "gate verdict: **fail** (exit 1)" in gated.stdout and "| throughput_qps |" in gated.stdout
    assert "error: gate fail" in gated.stderr
    # Measured beside the busy loops, it is decided (and said to be) but never made a baseline.
    assert ": measured beside other work (other processes up to" in gated.stdout
    slowed_id = json.loads((Path(slowed) / "tracking.json").read_text())["run_id"]
    for store in ("mlflow", str(tmp_path / "slowed.json")):
        refused = harness(tmp_path, "gate", "--promote", slowed, "--baseline", store)
        assert refused.returncode == 4 and "can be a baseline, and 1 is not" in refused.stderr, refused.stderr
        assert "measured beside other work (other processes up to" in refused.stderr
    assert not (tmp_path / "slowed.json").exists()
    slowed_tags = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}").get_run(slowed_id).data.tags
    assert slowed_tags["harness.beside_other_work"].startswith("measured beside other work (other processes up to")
    assert slowed_tags.get("harness.baseline") != "true"
    broken = harness(tmp_path, "run", "debug=tiny", "stages=[build]", "model.weights=/no/such.pth")
    assert broken.returncode == 1
    refused = harness(tmp_path, "gate", "--promote", str(Path(broken.stdout.strip().splitlines()[-1]).parent),
                      "--baseline", "mlflow")  # fmt: skip
    assert refused.returncode == 4 and "can be a baseline, and 1 is not" in refused.stderr
    assert "(the run ended failed)" in refused.stderr
    itself = harness(tmp_path, "gate", baseline, "--baseline", "mlflow")  # the baseline run is no baseline of its own
    assert itself.returncode == 4 and "unusable: no baseline for config hash" in itself.stdout, itself.stdout
    assert "nearest baseline" not in itself.stdout
    build_only = [*(item for item in onnx_run if not item.startswith("stages=")), "stages=[build]"]
    other = run_folder(harness(tmp_path, *build_only, "build.parity_images=3"))
    unmatched = harness(tmp_path, "gate", other, "--baseline", "mlflow")
    baseline_run = json.loads((Path(baseline) / "tracking.json").read_text())["run_id"]
    assert f"nearest baseline mlflow run {baseline_run} differs in build.parity_images: 2 -> 3\n" in unmatched.stdout
    run_id = json.loads((Path(slowed) / "tracking.json").read_text())["run_id"]
    tags = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}").get_run(run_id).data.tags
    assert tags["harness.gate.verdict"] == "fail" and tags["harness.gate.throughput_qps"] == "fail"
    assert (
        tags["harness.gate.map_medium" if "harness.gate.map_medium" in tags else "harness.gate.parity_min_cos"]
        == "pass"
    )
    # Where that much other work is routine, its owner raises the limit, and the run is a baseline (from its
    # tagged numbers in MLflow, from its result.json in a file).
    for store in ("mlflow", str(tmp_path / "slowed.json")):
        tolerant = harness(tmp_path, "gate", "--promote", slowed, "--baseline", store, BUSY_HOST_BASELINE)
        assert tolerant.returncode == 0, tolerant.stderr
    assert (
        MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}").get_run(slowed_id).data.tags["harness.baseline"]
        == "true"
    )
    assert json.loads((tmp_path / "slowed.json").read_text())["entries"][0]["label"].endswith(Path(slowed).name)


def test_a_verdict_is_tagged_in_the_store_its_run_was_logged_to(tmp_path: Path) -> None:
    elsewhere = tmp_path / "team" / "mlflow.db"
    logged = run_folder(harness(tmp_path, *SLEEP_RUN, "perf.repeats=5", f"tracking.uri=sqlite:///{elsewhere}"))
    baseline_file = tmp_path / "sleep.json"
    assert (
        harness(tmp_path, "gate", "--promote", logged, "--baseline", str(baseline_file), BUSY_HOST_BASELINE).returncode
        == 0
    )
    gated = harness(tmp_path, "gate", logged, "--baseline", str(baseline_file), *TOLERANT)  # the default store
    assert gated.returncode == 0 and gated.stderr == "", gated.stdout + gated.stderr
    run_id = json.loads((Path(logged) / "tracking.json").read_text())["run_id"]
    assert MlflowClient(f"sqlite:///{elsewhere}").get_run(run_id).data.tags["harness.gate.verdict"] == "pass"
    assert not (tmp_path / "outputs" / "mlflow.db").exists()  # gating folders against a file reads no store

    elsewhere.unlink()
    gone = harness(tmp_path, "gate", logged, "--baseline", str(baseline_file), *TOLERANT)
    assert gone.returncode == 0 and not elsewhere.exists()  # the verdict stands; no empty store in its place
    store = f"sqlite:///{elsewhere}"
    assert (
        gone.stderr == f"warning: 1 verdict not tagged in {store} (tracking store {store}: the database file is gone)\n"
    )
