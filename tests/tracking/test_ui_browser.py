"""`harness ui` as a person sees it: a real headless Chromium on the runs table of a real sweep.

The screenshot in the README (docs/images/mlflow-runs.png) is made by this test: run it with
``HARNESS_UPDATE_SCREENSHOT=1`` to refresh it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REPO_ROOT, free_port, harness_environment

pytestmark = [pytest.mark.process, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1920, 1000)
SCREENSHOT = REPO_ROOT / "docs" / "images" / "mlflow-runs.png"


def chromium(*arguments: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
        f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=20000", *arguments,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium: apt-get install chromium")
def test_the_ui_opens_on_the_runs_table_of_a_classic_ml_experiment(tmp_path: Path) -> None:
    environment = harness_environment(tmp_path)
    sweep = subprocess.run(
        [
            sys.executable, "-m", "harness", "run", "-m", "debug=tiny", "backend=sleep", "stages=[perf]",
            "perf.iterations=64", "backend.latency_us=1000,2000",
        ],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert sweep.returncode == 0, sweep.stderr
    port = free_port()
    ui = subprocess.Popen(
        [sys.executable, "-m", "harness", "ui", "--port", str(port)], cwd=tmp_path, env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert ui.stdout is not None
        url = ui.stdout.readline().split()[3]  # "MLflow UI on <url> (store ...)"
        assert url.startswith(f"http://127.0.0.1:{port}/#/experiments/") and "workflowType=machine_learning" in url
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        shot = tmp_path / "runs.png"
        page = chromium("--dump-dom", f"--screenshot={shot}", url)  # one page load: its DOM and its picture
        assert page.returncode == 0, page.stderr[-2000:]
        assert (
            "sweep " in page.stdout
            and "Model training" in page.stdout
            and "DINOv2 retrieval deployments" in page.stdout
        )
        with Image.open(shot) as image:
            assert image.size == WINDOW
            assert np.unique(np.asarray(image.convert("L").resize((96, 50)))).size > 20  # a rendered page, not blank
        if os.environ.get("HARNESS_UPDATE_SCREENSHOT"):
            shutil.copyfile(shot, SCREENSHOT)
    finally:
        ui.send_signal(signal.SIGINT)
        ui.wait(timeout=30)
