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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import psutil

from harness.result.perf import HostTelemetry

# 20 Hz: a one-second run still gets ~20 samples; one sample (per-core times and a few RSS reads) costs ~0.1 ms.
SAMPLE_INTERVAL_S = 0.05


@dataclass(frozen=True)
class HostSample:
    """CPU use of each core over ``[since, at]`` (perf_counter seconds), and the workers' RSS at ``at``."""

    since: float
    at: float
    cpu_pct: tuple[float, ...]
    rss_bytes: int


class HostSampler:
    """Samples the host from ``start`` (given the worker processes' pids) until ``stop``."""

    def __init__(self, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self.samples: list[HostSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, pids: Sequence[int]) -> None:
        processes = [psutil.Process(pid) for pid in pids]
        reference = (time.perf_counter(), psutil.cpu_times(percpu=True))
        self._thread = threading.Thread(
            target=self._sample, args=(processes, reference), name="host-telemetry", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self, processes: list[psutil.Process], reference: tuple[float, list[Any]]) -> None:
        since, before = reference
        while not self._stop.wait(self.interval_s):
            after = psutil.cpu_times(percpu=True)
            at = time.perf_counter()
            cpu = busy_pct(before, after)
            if cpu is None:
                continue  # no clock tick on some core yet: the next sample covers this interval too
            rss = 0
            for process in processes:
                with contextlib.suppress(psutil.Error):  # a worker that has finished holds no memory
                    rss += process.memory_info().rss
            self.samples.append(HostSample(since=since, at=at, cpu_pct=cpu, rss_bytes=rss))
            since, before = at, after


def busy_pct(before: Sequence[Any], after: Sequence[Any]) -> tuple[float, ...] | None:
    """Per-core busy share between two ``psutil.cpu_times(percpu=True)`` readings, in percent (idle and I/O
    wait count as not busy, as in psutil's ``cpu_percent``); ``None`` when a core's counters did not move."""
    shares = []
    for start, end in zip(before, after, strict=True):
        idle = [end.idle - start.idle, getattr(end, "iowait", 0.0) - getattr(start, "iowait", 0.0)]
        total = sum(end) - sum(start) - _guest_time(end) + _guest_time(start)
        if total <= 0:
            return None
        shares.append(min(100.0, max(0.0, 100.0 * (total - sum(idle)) / total)))
    return tuple(shares)


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
    return HostTelemetry(
        cpu_util_pct=float(per_core.mean()),
        cpu_util_per_core_pct=tuple(float(value) for value in per_core),
        rss_mean_bytes=int(rss.mean()),
        rss_peak_bytes=int(rss.max()),
        samples=len(inside),
        interval_s=interval_s,
    )
