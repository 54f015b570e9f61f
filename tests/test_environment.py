"""The environment a result records: what makes two runs' timings comparable (the hardware fingerprint)."""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path

import pytest

from harness.environment import capture, cpu_model


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity")
    or len(os.sched_getaffinity(0)) != (os.cpu_count() or 0)
    or os.cpu_count() == 1,
    reason="needs CPU affinity over every core of a machine with 2 or more",
)
def test_a_run_pinned_to_fewer_cores_is_on_other_hardware(tmp_path: Path) -> None:
    whole = capture(tmp_path)
    every_core = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(every_core)})  # as `taskset -c 0` or a container's cpuset would
    try:
        pinned = capture(tmp_path)
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
