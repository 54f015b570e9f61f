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

import bisect
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# The last stretch of a wait before a scheduled arrival is spun, not slept: a sleeping thread wakes up late
# (tens to hundreds of microseconds on a busy VM), and that lateness would be counted as the system's latency.
SPIN_S = 0.0005


def precise_sleep(seconds: float, *, share_gil: bool = False) -> None:
    """Sleep ``seconds``, spinning the last ``SPIN_S`` of it. With ``share_gil`` (other instances' threads in
    the process) every turn of the spin yields the GIL, at the price of a later wake-up."""
    deadline = time.perf_counter() + seconds
    if seconds > SPIN_S:
        time.sleep(seconds - SPIN_S)
    while time.perf_counter() < deadline:
        if share_gil:
            time.sleep(0)


def poisson_arrivals(rate_qps: float, count: int, seed: int) -> np.ndarray:
    """``count`` arrival offsets (seconds from the start) of a Poisson process at ``rate_qps``, reproducible
    per ``seed``: cumulative sums of exponential inter-arrival times with mean ``1 / rate_qps``."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate_qps, size=count)
    return np.cumsum(gaps)


@dataclass(frozen=True)
class ServedRequests:
    """Per request: end-to-end latency from its scheduled arrival and its batch's model time (microseconds);
    per call: the batch sizes served, in order, when each call completed (seconds from the start), and how
    late the loop dispatched it (microseconds after the moment it was due: its batch ready and the server free).
    """

    latency_us: np.ndarray
    model_us: np.ndarray
    batch_sizes: np.ndarray
    call_done_s: np.ndarray
    dispatch_delay_us: np.ndarray


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
    # Plain floats and lists inside the loop: its own cost between two calls is part of every queued
    # request's latency, so the arrays are built once the schedule has been served.
    schedule: list[float] = arrivals.tolist()
    count = len(schedule)
    sizes: list[int] = []
    done_at: list[float] = []
    call_model_us: list[float] = []
    delays: list[float] = []
    free_at = 0.0  # when the server was last free, seconds from the start
    first = 0
    while first < count:
        elapsed = now() - start
        arrival = schedule[first]
        if arrival > elapsed:
            sleep(arrival - elapsed)
            # A clock read after a sleep is never taken as earlier than the moment slept to (float rounding).
            elapsed = max(now() - start, arrival)
        deadline = arrival + max_queue_delay_s
        limit = min(first + batch, count)
        last = bisect.bisect_right(schedule, elapsed, first, limit)
        while last < limit and elapsed < deadline:
            wake = min(schedule[last], deadline)
            sleep(wake - elapsed)
            elapsed = max(now() - start, wake)
            last = bisect.bisect_right(schedule, elapsed, first, limit)
        # Due when the batch was ready (full, or its oldest request's queue delay ran out) and the server free;
        # anything after that is the loop's own lateness (a late wake-up), which every request of the call pays.
        due = max(free_at, deadline if last < limit else min(deadline, schedule[last - 1]))
        called = now()
        measured = run_batch(last - first)
        finished = now()
        delays.append(max(0.0, called - start - due) * 1e6)
        call_model_us.append(measured if measured is not None else (finished - called) * 1e6)
        free_at = finished - start
        done_at.append(free_at)
        sizes.append(last - first)
        first = last
    batch_sizes = np.asarray(sizes, dtype=np.int64)
    call_done_s = np.asarray(done_at)
    return ServedRequests(
        latency_us=(np.repeat(call_done_s, batch_sizes) - arrivals) * 1e6,
        model_us=np.repeat(np.asarray(call_model_us), batch_sizes),
        batch_sizes=batch_sizes,
        call_done_s=call_done_s,
        dispatch_delay_us=np.asarray(delays),
    )
