"""Perf runs that measure on one device at the same time are marked contended, both of them."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import psutil

from harness.perf.contention import claimed_window


def test_overlapping_windows_on_one_device_see_each_other(tmp_path: Path) -> None:
    folder = tmp_path / "claims"
    probes = {}

    def measure(name: str, delay_s: float, length_s: float, device: str) -> None:
        time.sleep(delay_s)
        with claimed_window(folder, run_dir=tmp_path / name, device=device) as probe:
            time.sleep(length_s)
        probes[name] = probe.overlapping

    jobs = [("a", 0.0, 0.6, "cpu"), ("b", 0.2, 0.6, "cpu"), ("gpu", 0.1, 0.3, "cuda:0"), ("later", 1.0, 0.1, "cpu")]
    threads = [threading.Thread(target=measure, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert probes["a"] == (str(tmp_path / "b"),) and probes["b"] == (str(tmp_path / "a"),)
    assert probes["gpu"] == () and probes["later"] == ()  # another device; after both had finished


def test_a_claim_left_by_a_dead_process_counts_only_until_its_start(tmp_path: Path) -> None:
    folder = tmp_path / "claims"
    folder.mkdir()
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    (folder / "dead.json").write_text(
        f'{{"run_dir": "/old", "host": "{os.uname().nodename}", "device": "cpu", "pid": {dead_pid}, '
        f'"start": {time.time() - 60}, "end": null}}'
    )
    with claimed_window(folder, run_dir=tmp_path / "now", device="cpu") as probe:
        time.sleep(0.05)
    assert probe.overlapping == ()


def test_a_claim_whose_pid_now_belongs_to_a_newer_process_is_not_taken_for_live(tmp_path: Path) -> None:
    # A run that died hours ago left its claim open; its pid has since gone to another process (this one,
    # started after the claim). Taken for live, it marked every later run on the machine contended.
    folder = tmp_path / "claims"
    folder.mkdir()
    started = psutil.Process(os.getpid()).create_time()
    for name, claimed in (("reused", started - 3600), ("live", time.time() - 0.5)):
        (folder / f"{name}.json").write_text(
            f'{{"run_dir": "/{name}", "host": "{socket.gethostname()}", "device": "cpu", "pid": {os.getpid()}, '
            f'"start": {claimed}, "end": null}}'
        )
    with claimed_window(folder, run_dir=tmp_path / "now", device="cpu") as probe:
        time.sleep(0.05)
    assert probe.overlapping == ("/live",)  # the same process, still running since its claim
