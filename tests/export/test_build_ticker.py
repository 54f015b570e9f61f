"""Builds that report no progress of their own (an ONNX export and its parity check, an AOTInductor compile, a
vendor compile) show on a terminal what is being built and for how long, redrawn while the work runs."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import pytest

from harness import fileio
from harness.fileio import elapsed_ticker
from harness.pipeline import run
from tests.conftest import run_config
from tests.perf.test_loadgen import Terminal


def test_the_line_is_redrawn_while_the_block_runs_and_cleared_after(monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    monkeypatch.setattr(fileio, "TICK_S", 0.05)
    with elapsed_ticker("build vitl14", enabled=True):
        time.sleep(0.5)
    frames = re.findall(r"build vitl14: 00:00", terminal.getvalue())
    assert len(frames) >= 4  # drawn at the start, then redrawn by the ticker as the block ran
    assert terminal.getvalue().endswith("\r")  # the line is cleared, not left behind
    drawn = len(terminal.getvalue())
    time.sleep(0.2)
    assert len(terminal.getvalue()) == drawn  # and its ticker stopped with the block
    with elapsed_ticker("build vitl14", enabled=False):
        time.sleep(0.1)
    assert len(terminal.getvalue()) == drawn


@pytest.mark.parametrize("progress", [True, False])
def test_an_onnx_build_shows_its_artifact_and_time(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, progress: bool
) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    result = run(
        run_config(cache_dir, "stages=[build]", "tracking=off", f"progress={progress}"), run_dir=tmp_path / "r"
    )
    assert result.build is not None and not result.build.cache_hit
    name = result.build.artifact_folder.name
    shown = set(re.findall(r"(build [^:\r]+): \d\d:\d\d", terminal.getvalue()))
    assert shown == ({f"build {name}"} if progress else set())


def test_a_torch_module_check_shows_what_it_checks(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A torch.compile of ViT-L inside the check takes a minute, and nothing was shown.
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    result = run(run_config(cache_dir, "stages=[build]", "tracking=off", "backend=torch"), run_dir=tmp_path / "r")
    assert result.build is not None and result.build.parity.passed
    shown = set(re.findall(r"(build [^:\r]+): \d\d:\d\d", terminal.getvalue()))
    assert shown == {"build check of tiny14_reg4 eager module on cpu"}
