"""Host telemetry of the measured window: CPU use per core and the perf workers' resident memory.

A thread of the harness process samples psutil every ``SAMPLE_INTERVAL_S`` while the workers run, as vamp
samples its device (``ai utilize``, ``die memory used``). A sample's CPU figures cover the interval since the
reading before it (the sampler keeps its own reference: psutil's ``cpu_percent`` keeps one per thread, so a
reference read on another thread leaves the first sample empty or stretched over an earlier thread's past), and
only samples whose whole interval lies between the first worker's release and the last completion count.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

from harness.result.perf import HostTelemetry

# 20 Hz: a one-second run still gets ~20 samples; one sample (per-core times and a few RSS reads) costs ~0.1 ms.
SAMPLE_INTERVAL_S = 0.05


@dataclass(frozen=True)
class HostSample:
    """CPU use of each core over ``[since, at]`` (perf_counter seconds), and the workers' RSS at ``at``.

    ``busy_cpu_s``: CPU seconds the machine's cores were busy over the interval, all cores together (steal
    included); ``steal_cpu_s``: of those, the seconds the hypervisor gave this VM's cores to others; ``own_cpu_s``:
    the CPU seconds of the harness's process, its perf workers and their children over the interval.
    """

    since: float
    at: float
    cpu_pct: tuple[float, ...]
    rss_bytes: int
    busy_cpu_s: float = 0.0
    steal_cpu_s: float = 0.0
    own_cpu_s: float = 0.0


class HostSampler:
    """Samples the host from ``start`` (given the worker processes' pids) until ``stop``."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.samples: list[HostSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pids: Sequence[int]) -> None:
        processes = [psutil.Process(pid) for pid in pids]
        # Not this process's other children: a sweep's parallel jobs, anything a caller started beside the run.
        own = [psutil.Process(), *_with_children(processes)]
        # Each process's last CPU reading, kept from the first: one that exits before the first sample still
        # counts with what it had used, so the harness's own CPU never runs backwards.
        last_read: dict[int, float] = {}
        reference = (time.perf_counter(), psutil.cpu_times(percpu=True), _cpu_seconds(own, last_read))
        self._thread = threading.Thread(
            target=self._sample, args=(processes, own, last_read, reference), name="host-telemetry", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(
        self, processes: list[psutil.Process], own: list[psutil.Process], last_read: dict[int, float],
        reference: tuple[float, list[Any], float],
    ) -> None:  # fmt: skip
        since, before, own_before = reference
        while not self._stop.wait(self.interval_s):
            after = psutil.cpu_times(percpu=True)
            own_after = _cpu_seconds(own, last_read)
            at = time.perf_counter()
            cpu = busy_pct(before, after)
            if cpu is None:
                continue  # no clock tick on some core yet: the next sample covers this interval too
            rss = 0
            for process in processes:
                with contextlib.suppress(psutil.Error):  # a worker that has finished holds no memory
                    rss += process.memory_info().rss
            self.samples.append(
                HostSample(
                    since=since, at=at, cpu_pct=cpu, rss_bytes=rss, busy_cpu_s=_core_seconds(before, after, _busy),
                    steal_cpu_s=_core_seconds(before, after, _steal), own_cpu_s=own_after - own_before,
                )
            )  # fmt: skip
            since, before, own_before = at, after, own_after


def _with_children(processes: list[psutil.Process]) -> list[psutil.Process]:
    """``processes`` and every process they started (a compiler's worker pool): their CPU is the run's, not
    other load on the machine."""
    found = {process.pid: process for process in processes}
    for process in processes:
        with contextlib.suppress(psutil.Error):
            found.update((child.pid, child) for child in process.children(recursive=True))
    return list(found.values())


def _cpu_seconds(processes: list[psutil.Process], last_read: dict[int, float]) -> float:
    """User + system CPU seconds of ``processes`` so far; one that has exited counts with its last reading
    (``last_read``, updated here), so the total never runs backwards."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            times = process.cpu_times()
            last_read[process.pid] = times.user + times.system
    return sum(last_read.get(process.pid, 0.0) for process in processes)


def _core_seconds(before: Sequence[Any], after: Sequence[Any], reading: Callable[[Any], float]) -> float:
    """CPU seconds of ``reading`` (busy, steal) between two ``psutil.cpu_times(percpu=True)`` readings, all cores
    together."""
    return sum(max(0.0, reading(end) - reading(start)) for start, end in zip(before, after, strict=True))


def _steal(times: Any) -> float:
    return getattr(times, "steal", 0.0)


def busy_pct(before: Sequence[Any], after: Sequence[Any]) -> tuple[float, ...] | None:
    """Per-core busy share between two ``psutil.cpu_times(percpu=True)`` readings, in percent (idle and I/O
    wait count as not busy, as in psutil's ``cpu_percent``); ``None`` when a core's counters did not move."""
    shares = []
    for start, end in zip(before, after, strict=True):
        total = _total(end) - _total(start)
        if total <= 0:
            return None
        shares.append(min(100.0, max(0.0, 100.0 * (_busy(end) - _busy(start)) / total)))
    return tuple(shares)


def _total(times: Any) -> float:
    return sum(times) - _guest_time(times)


def _busy(times: Any) -> float:
    return _total(times) - times.idle - getattr(times, "iowait", 0.0)


def _guest_time(times: Any) -> float:
    """Time in guests, which Linux counts inside ``user`` and ``nice`` as well (so it would count twice)."""
    return getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)


def host_telemetry(
    samples: Sequence[HostSample], *, start: float, end: float, interval_s: float
) -> HostTelemetry | None:
    """The samples of [start, end] summarised (``None`` when the window holds no whole sample interval)."""
    inside = [sample for sample in samples if start <= sample.since and sample.at <= end]
    if not inside:
        return None
    per_core = np.mean([sample.cpu_pct for sample in inside], axis=0)
    rss = np.array([sample.rss_bytes for sample in inside], dtype=np.float64)
    capacity_s = sum(sample.at - sample.since for sample in inside) * len(per_core)
    busy_s, steal_s, own_s = (
        sum(getattr(sample, name) for sample in inside) for name in ("busy_cpu_s", "steal_cpu_s", "own_cpu_s")
    )
    return HostTelemetry(
        cpu_util_pct=float(per_core.mean()),
        cpu_util_per_core_pct=tuple(float(value) for value in per_core),
        rss_mean_bytes=int(rss.mean()),
        rss_peak_bytes=int(rss.max()),
        samples=len(inside),
        interval_s=interval_s,
        # Process CPU times tick in 10 ms steps and the machine's per core: a few ticks either way, so never < 0.
        other_cpu_pct=max(0.0, 100.0 * (busy_s - steal_s - own_s) / capacity_s),
        steal_pct=100.0 * steal_s / capacity_s,
    )
