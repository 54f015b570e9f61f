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
        f" '--modes', 'eager', '--seconds', '0.2', '--cache', {str(tmp_path / 'cache')!r}, '--out', {str(out)!r}])\n"
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
    assert set(rows) == {("tiny14_reg4 b2", "eager"), ("tiny14_reg4 b1", "eager")}
    for row in rows.values():
        assert row["img_s"] > 0 and row["samples"] > 0 and 0 < row["efficiency"] < 1.5
        assert (row["p50_ms"] is None) == (row["samples"] < 11) and row["p99_ms"] is None  # 662 samples for p99
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
