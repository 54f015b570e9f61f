"""The environment a result records: what makes two runs' timings comparable (the hardware fingerprint)."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from pathlib import Path

import pytest

from harness.environment import capture, cpu_model
from harness.pipeline import run
from tests.conftest import REPO_ROOT, compose


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity")
    or len(os.sched_getaffinity(0)) != (os.cpu_count() or 0)
    or os.cpu_count() == 1,
    reason="needs CPU affinity over every core of a machine with 2 or more",
)
def test_a_run_pinned_to_fewer_cores_is_on_other_hardware() -> None:
    whole = capture()
    every_core = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(every_core)})  # as `taskset -c 0` or a container's cpuset would
    try:
        pinned = capture()
    finally:
        os.sched_setaffinity(0, every_core)
    assert (whole["cpu_count"], whole["cpu_usable"]) == (os.cpu_count(), os.cpu_count())
    assert (pinned["cpu_count"], pinned["cpu_usable"]) == (os.cpu_count(), 1)
    assert pinned["hardware_fingerprint"] != whole["hardware_fingerprint"]  # the gate never pairs them
    # Unpinned, the fingerprint is the one results recorded before the usable cores were part of it, so the
    # baselines promoted then still pair with new runs.
    gpus = ";".join(f"{gpu['name']}|{gpu['memory']}|{gpu['driver']}" for gpu in whole["gpus"])  # type: ignore[attr-defined]
    before = f"{cpu_model()}|{os.cpu_count()}|{platform.machine()}|{platform.system()}|{gpus}"
    assert whole["hardware_fingerprint"] == hashlib.sha256(before.encode()).hexdigest()[:12]


@pytest.mark.skipif(not (REPO_ROOT / ".git").exists(), reason="the harness is not run from a git checkout")
def test_the_commit_recorded_is_the_harness_checkouts_wherever_the_run_is(tmp_path: Path) -> None:
    # The commit was read at paths.root: a run whose root is outside the checkout recorded none ("unknown").
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    config = compose(["debug=tiny", "backend=sleep", "stages=[perf]", f"paths.root={tmp_path}", "tracking=off"])
    result = run(config, run_dir=tmp_path / "run")
    assert result.environment["git"]["commit"] == head.stdout.strip()  # type: ignore[index]
    assert isinstance(result.environment["git"]["dirty"], bool)  # type: ignore[index]
