"""Perf runs that measure on one device at the same time are marked contended, both of them."""

from __future__ import annotations

import json
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


def write_claim(folder: Path, name: str, *, start: float, end: float | None, pid: int = 1, host: str = "") -> None:
    claim = {"run_dir": f"/{name}", "host": host or socket.gethostname(), "device": "cpu", "pid": pid}
    (folder / f"{name}.json").write_text(json.dumps({**claim, "start": start, "end": end}))


def test_a_closing_run_deletes_this_hosts_claims_no_window_can_overlap_any_more(tmp_path: Path) -> None:
    folder = tmp_path / "claims"
    folder.mkdir()
    now = time.time()
    dead_pid = 2**22 + 12345  # above the default pid_max: no such process
    write_claim(folder, "ended-an-hour-ago", start=now - 3700, end=now - 3600)
    write_claim(folder, "died-two-hours-ago", start=now - 7200, end=None, pid=dead_pid)
    write_claim(folder, "ended-just-now", start=now - 20, end=now - 10)  # a run listing the folder may not see ours
    write_claim(folder, "other-host", start=now - 3700, end=now - 3600, host="elsewhere")  # its liveness is unknown
    with claimed_window(folder, run_dir=tmp_path / "now", device="cpu"):
        pass
    left = sorted(path.stem for path in folder.glob("*.json"))
    assert [name for name in left if len(name) != 32] == ["ended-just-now", "other-host"]  # and our own, uuid-named


def test_claims_that_a_window_still_open_may_overlap_are_kept(tmp_path: Path) -> None:
    # pid 1 runs as long as the machine (or container): a claim it made when it started is open all along.
    folder = tmp_path / "claims"
    folder.mkdir()
    opened = psutil.Process(1).create_time() + 1
    write_claim(folder, "open", start=opened, end=None)
    write_claim(folder, "ended-while-open", start=opened - 5, end=opened + 1)
    write_claim(folder, "ended-before-open", start=opened - 300, end=opened - 120)
    with claimed_window(folder, run_dir=tmp_path / "now", device="cpu") as probe:
        pass
    left = sorted(path.stem for path in folder.glob("*.json") if len(path.stem) != 32)
    assert left == ["ended-while-open", "open"]
    assert probe.overlapping == ("/open",)
