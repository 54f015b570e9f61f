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
import ctypes
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# The last stretch of a wait before a scheduled arrival is spun, not slept: a sleeping thread wakes up late
# (tens to hundreds of microseconds on a busy VM), and that lateness would be counted as the system's latency.
SPIN_S = 0.0005
# Linux lets a sleeping thread's wake-up slip by its timer slack (50 us by default) so the kernel can batch
# wake-ups; the open loop's thread asks for the least (1 ns), so that its waits end when they are due.
PR_SET_TIMERSLACK = 29


def tighten_timer_slack() -> None:
    """Ask Linux to wake this thread's sleeps on time (per-thread; a no-op where ``prctl`` is missing)."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError, TypeError):  # no libc to open (TypeError on Windows), or no prctl in it
        return


def waiter(*, share_gil: bool) -> Callable[[float], float]:
    """``wait_until(deadline)`` on the ``time.perf_counter`` clock: sleep, spin the last ``SPIN_S``, and return
    the clock read that found the deadline passed. With ``share_gil`` (other instances' threads in the
    process) every turn of the spin yields the GIL, at the price of a later wake-up."""
    clock = time.perf_counter
    sleep = time.sleep

    def wait_until(deadline: float) -> float:
        remaining = deadline - clock() - SPIN_S
        if remaining > 0:
            sleep(remaining)
        while (now := clock()) < deadline:
            if share_gil:
                sleep(0)
        return now

    return wait_until


def poisson_arrivals(rate_qps: float, count: int, seed: int) -> np.ndarray:
    """``count`` arrival offsets (seconds from the start) of a Poisson process at ``rate_qps`` whose last
    arrival falls at ``count / rate_qps``, reproducible per ``seed``.

    Given when its ``count``-th arrival falls, the earlier arrivals of a Poisson process are uniform order
    statistics on the span before it: the cumulative sums of exponential gaps scaled to end there. Left free,
    the schedule's own rate misses ``rate_qps`` by 1/sqrt(count) (one standard deviation): 100 requests at
    100 qps came at 84.6/s, a server that kept up read 84.6 img/s served of 100 offered, and a schedule that
    came early ended before ``perf.min_duration_s`` and made the run invalid.
    """
    arrivals = np.cumsum(np.random.default_rng(seed).exponential(1.0, size=count))
    return arrivals * (count / rate_qps / arrivals[-1])


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
    wait_until: Callable[[float], float],
    start: float | None = None,
) -> ServedRequests:
    """Serve ``arrivals`` (seconds after ``now()`` at the call) with one server that batches.

    ``run_batch(k)`` runs one call on ``k`` requests and returns its model time in microseconds when the
    runtime measures it, else ``None`` (the call's own wall time is used). ``wait_until(t)`` returns at the
    moment ``t`` of ``now``'s clock or later, with the clock read then. ``start`` (default: ``now()``) is the
    moment the schedule's offsets count from.
    """
    start = now() if start is None else start
    # The loop's own time between one call's return and the next call is part of every queued request's
    # latency, and on a busy host each Python step there runs slowly (its cache lines were evicted while the
    # call ran): the loop keeps to plain floats on the clock's own scale and one append per call, and every
    # derived number is computed once the schedule has been served.
    schedule: list[float] = (arrivals + start).tolist()
    count = len(schedule)
    calls: list[tuple[int, float, float, float | None]] = []
    record = calls.append
    bisect_right = bisect.bisect_right
    first = 0
    while first < count:
        arrival = schedule[first]
        clock = now()
        if arrival > clock:
            clock = wait_until(arrival)
        limit = first + batch
        if limit > count:
            limit = count
        last = bisect_right(schedule, clock, first, limit)
        if last < limit:
            deadline = arrival + max_queue_delay_s
            while last < limit and clock < deadline:
                clock = wait_until(schedule[last] if schedule[last] < deadline else deadline)
                last = bisect_right(schedule, clock, first, limit)
        called = now()
        measured = run_batch(last - first)
        record((last, called, now(), measured))
        first = last
    return _served(np.asarray(schedule), calls, batch=batch, max_queue_delay_s=max_queue_delay_s, start=start)


def _served(
    schedule: np.ndarray,
    calls: list[tuple[int, float, float, float | None]],
    *,
    batch: int,
    max_queue_delay_s: float,
    start: float,
) -> ServedRequests:
    """The per-request and per-call numbers of a served schedule (absolute times on the clock's scale)."""
    ends = np.asarray([last for last, _, _, _ in calls], dtype=np.int64)
    called = np.asarray([called for _, called, _, _ in calls])
    finished = np.asarray([finished for _, _, finished, _ in calls])
    model_us = np.asarray(
        [measured if measured is not None else (done - began) * 1e6 for _, began, done, measured in calls]
    )
    firsts = np.concatenate([[0], ends])[:-1]
    batch_sizes = ends - firsts
    # Due when the batch was ready (full, or its oldest request's queue delay ran out) and the server free;
    # anything after that is the loop's own lateness (a late wake-up), which every request of the call pays.
    deadline = schedule[firsts] + max_queue_delay_s
    full = batch_sizes == np.minimum(batch, len(schedule) - firsts)
    ready = np.where(full, np.minimum(deadline, schedule[ends - 1]), deadline)
    server_free = np.concatenate([[start], finished])[:-1]
    due = np.maximum(server_free, ready)
    return ServedRequests(
        latency_us=(np.repeat(finished, batch_sizes) - schedule) * 1e6,
        model_us=np.repeat(model_us, batch_sizes),
        batch_sizes=batch_sizes,
        call_done_s=finished - start,
        dispatch_delay_us=np.maximum(0.0, called - due) * 1e6,
    )
