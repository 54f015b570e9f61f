"""Open-loop load: requests arrive on a schedule made before the run, whatever the system under test does.

``server`` (MLPerf's Server scenario, Triton perf_analyzer's request-rate mode): Poisson arrivals at a
target rate, seeded, so a run can be replayed exactly. ``offline``: every request is there at the start.
A server instance batches what has arrived, up to ``batch`` requests, waiting at most ``max_queue_delay_s``
after the oldest waiting request arrived (a serving system's dynamic batcher). Each request's latency is
counted from its **scheduled** arrival, never from when the loop got round to it: a system that stalls
cannot hide the queue that built up behind the stall (no coordinated omission).

``serve_schedule`` takes the clock and the sleep as arguments, so its bookkeeping is tested on a fake clock.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def poisson_arrivals(rate_qps: float, count: int, seed: int) -> np.ndarray:
    """``count`` arrival offsets (seconds from the start) of a Poisson process at ``rate_qps``, reproducible
    per ``seed``: cumulative sums of exponential inter-arrival times with mean ``1 / rate_qps``."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_qps, size=count)
    return np.cumsum(gaps)


@dataclass(frozen=True)
class ServedRequests:
    """Per request: end-to-end latency from its scheduled arrival and its batch's model time (microseconds);
    per call: the batch sizes served, in order; and when each call completed (seconds from the start)."""

    latency_us: np.ndarray
    model_us: np.ndarray
    batch_sizes: np.ndarray
    call_done_s: np.ndarray


def serve_schedule(
    arrivals: np.ndarray,
    *,
    batch: int,
    max_queue_delay_s: float,
    run_batch: Callable[[int], float | None],
    now: Callable[[], float],
    sleep: Callable[[float], None],
    start: float | None = None,
) -> ServedRequests:
    """Serve ``arrivals`` (seconds after ``now()`` at the call) with one server that batches.

    ``run_batch(k)`` runs one call on ``k`` requests and returns its model time in microseconds when the
    runtime measures it, else ``None`` (the call's own wall time is used). ``start`` (default: ``now()``) is
    the moment the schedule's offsets count from.
    """
    start = now() if start is None else start
    count = len(arrivals)
    latency = np.empty(count, dtype=np.float64)
    model = np.empty(count, dtype=np.float64)
    sizes: list[int] = []
    done_at: list[float] = []
    first = 0
    while first < count:
        elapsed = now() - start
        if arrivals[first] > elapsed:
            sleep(arrivals[first] - elapsed)
            # A clock read after a sleep is never taken as earlier than the moment slept to (float rounding).
            elapsed = max(now() - start, arrivals[first])
        deadline = arrivals[first] + max_queue_delay_s
        last = min(int(np.searchsorted(arrivals, elapsed, side="right")), first + batch)
        while last - first < batch and last < count and elapsed < deadline:
            wake = min(arrivals[last], deadline)
            sleep(wake - elapsed)
            elapsed = max(now() - start, wake)
            last = min(int(np.searchsorted(arrivals, elapsed, side="right")), first + batch)
        called = now()
        measured = run_batch(last - first)
        finished = now()
        latency[first:last] = (finished - start - arrivals[first:last]) * 1e6
        model[first:last] = measured if measured is not None else (finished - called) * 1e6
        sizes.append(last - first)
        done_at.append(finished - start)
        first = last
    return ServedRequests(
        latency_us=latency, model_us=model, batch_sizes=np.asarray(sizes), call_done_s=np.asarray(done_at)
    )
