"""The load generator: instances in threads, one clock for all.

Layout (vamp's): ``instances`` model copies are dealt round-robin to ``processes`` OS processes (spawned
fresh, so nothing is shared but the artifact file: ``harness.perf.workers``); inside a process each instance
has its own thread, and runtimes release the GIL while they compute. Every instance loads, makes one cold
call and warms up; the process then collects and freezes its heap (``startup_heap_frozen``), reports ready and,
once released, measures.

As in MLPerf LoadGen, the load generator never touches the model or the data: it receives a ready
backend factory (the system under test) and ready input batches (the sample library).

Instances run vamp's closed loop (``sync`` / ``async``), or an open-loop schedule (``server``, ``offline``:
``harness.perf.openloop``). Each adds the images it completed to a shared per-instance counter when the
parent watches the throughput for stability.

Per batch each instance keeps two float32 numbers (end-to-end and model latency in microseconds): 8 bytes
per sample, in chunks. Completion times are counted in 1 ms bins (``CompletionHistogram``), which grows
with the run's duration, not its iterations; nothing else grows.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import math
import os
import resource
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from harness.backends import BackendFactory, in_flight_limit
from harness.perf.openloop import poisson_arrivals, serve_schedule, tighten_timer_slack, waiter

CHUNK_SAMPLES = 65536
COMPLETION_BIN_S = 0.001


class Sampler(Protocol):
    """Telemetry taken in the harness's process while the workers run (``pids``: the worker processes)."""

    def start(self, pids: Sequence[int]) -> None: ...
    def stop(self) -> None: ...


class SampleBuffer:
    """Growable columns of float32 samples, allocated in fixed chunks (no per-sample Python objects)."""

    def __init__(self, columns: int, capacity_hint: int | None = None) -> None:
        self.columns = columns
        self.chunk = min(capacity_hint, CHUNK_SAMPLES) if capacity_hint else CHUNK_SAMPLES
        self.chunks = [np.empty((self.chunk, columns), dtype=np.float32)]
        self.used = 0

    def append(self, *values: float) -> None:
        if self.used == self.chunk:
            self.chunks.append(np.empty((self.chunk, self.columns), dtype=np.float32))
            self.used = 0
        self.chunks[-1][self.used] = values
        self.used += 1

    def array(self) -> np.ndarray:
        return np.concatenate([*self.chunks[:-1], self.chunks[-1][: self.used]])


class CompletionHistogram:
    """Batches completed per ``COMPLETION_BIN_S`` since an instance's start, and the last completion time."""

    def __init__(self) -> None:
        self.counts = np.zeros(4096, dtype=np.int32)
        self.last_s = 0.0

    def add(self, offset_s: float, count: int = 1) -> None:
        index = int(offset_s / COMPLETION_BIN_S)
        if index >= self.counts.size:
            self.counts = np.concatenate([self.counts, np.zeros(max(index + 1, self.counts.size), dtype=np.int32)])
        self.counts[index] += count
        self.last_s = max(self.last_s, offset_s)

    def array(self) -> np.ndarray:
        return self.counts[: int(self.last_s / COMPLETION_BIN_S) + 1].copy()


@dataclass(frozen=True)
class LoadPlan:
    """How each instance is driven.

    Attributes:
        mode: ``sync`` (one request at a time) or ``async`` (``queue_depth`` requests in flight).
        queue_depth: requests in flight per instance in async mode (waiting or in service); a ``Pipelined``
            backend has up to ``min(queue_depth, max_in_flight())`` of them queued on its device at once.
        warmup: untimed calls after the cold first call.
        min_duration_s: each instance measures at least this long (and its iterations)...
        max_duration_s: ...but stops here whatever is unmet (``None``: no bound).
        scenario: ``closed`` (the loops above), or open loop (``harness.perf.openloop``): ``server`` (Poisson
            arrivals at ``rate_qps`` per instance, seeded with ``arrival_seed`` + the instance number) or
            ``offline`` (every request there at the start, as many as last ``offline_queue_s`` at the warm-up's
            fastest call); ``iterations`` then counts requests (one image each), offline the least of them.
        max_queue_delay_s: open loop: how long a request may wait for its batch to fill.
        until_stopped: closed loop with a stability rule: run until the parent says the throughput is stable
            (or ``max_duration_s``); iterations and minimum duration are the rule's business then.
        fill_batches: open loop: every call runs the whole input batch, its requests and filler rows whose
            outputs are dropped, for a backend that runs one program per batch size (a new size would compile or
            capture inside the measured window).
        offline_queue_s: offline: how long each instance's queue is sized to last (``PerfConfig.offline_queue_s``).
        offline_call_s: offline: the time of one call to size the queue by, in place of the warm-up's fastest
            (``None``): a measurement again, of a queue the warm-up sized too short, sized by the rate it served.
    """

    mode: Literal["sync", "async"]
    queue_depth: int
    warmup: int
    min_duration_s: float
    max_duration_s: float | None
    scenario: Literal["closed", "server", "offline"] = "closed"
    rate_qps: float | None = None
    max_queue_delay_s: float = 0.0
    arrival_seed: int = 0
    until_stopped: bool = False
    fill_batches: bool = False
    offline_queue_s: float = 0.0
    offline_call_s: float | None = None

    def arrivals(self, instance: int, count: int) -> np.ndarray:
        """Open loop: this instance's scheduled arrivals (seconds from its start), cut at ``max_duration_s``."""
        if self.scenario == "offline":
            arrivals = np.zeros(count)
        else:
            assert self.rate_qps is not None  # the stage sets it for the server scenario
            arrivals = poisson_arrivals(self.rate_qps, count, self.arrival_seed + instance)
        return arrivals if self.max_duration_s is None else arrivals[arrivals < self.max_duration_s]


@dataclass(frozen=True)
class WorkerTask:
    """Everything one worker process needs (picklable).

    Attributes:
        iterations: the least batches each instance runs (it goes on while ``plan.min_duration_s`` is unmet).
        inputs: the batch every instance feeds on every call, made before any worker starts.
    """

    worker: int
    instances: tuple[int, ...]
    iterations: tuple[int, ...]
    factory: BackendFactory
    inputs: np.ndarray
    plan: LoadPlan


@dataclass(frozen=True)
class InstanceSamples:
    """One instance's measurement.

    Attributes:
        start: ``time.perf_counter()`` when it began measuring (one clock for every process on a machine).
        samples: [rows, 2] float32: end-to-end and model latency, microseconds; a row per batch (closed loop)
            or per request (open loop).
        completions: rows completed per ``COMPLETION_BIN_S`` after ``start``.
        last_completion_s: seconds from ``start`` to its last completion.
        calls: inference calls made (batches).
        dispatch_delay_us: per call, how late the open loop dispatched it after it was due (empty: closed loop).
        transfer_us: [calls, 2] float32 host-to-device and device-to-host copy time per call, microseconds, where
            the backend times its copies itself (else empty).
        device_queue: the most calls it had queued on the backend's device at once (1: one at a time).
        arrivals_s: server scenario: its scheduled arrivals, seconds from ``start`` (empty in the other
            scenarios): with the completions they say whether the instance kept up with the rate, overall and
            window by window.
    """

    instance: int
    worker: int
    load_s: float
    first_call_us: float
    start: float
    samples: np.ndarray
    completions: np.ndarray
    last_completion_s: float
    calls: int
    dispatch_delay_us: np.ndarray
    transfer_us: np.ndarray
    device_queue: int
    arrivals_s: np.ndarray


@dataclass(frozen=True)
class WorkerReport:
    worker: int
    pid: int
    instances: tuple[InstanceSamples, ...]
    cpu_s: float
    wall_s: float
    peak_rss_bytes: int
    peak_device_bytes: int | None


class _Instance:
    """One model instance driven by one thread."""

    def __init__(self, task: WorkerTask, index: int, iterations: int, signals: StopSignals | None = None) -> None:
        self.task = task
        self.signals = signals
        self.index = index
        self.iterations = iterations
        self.backend: Any = None
        self.samples = SampleBuffer(2, iterations)
        self.transfers = SampleBuffer(2, iterations)
        self.completions = CompletionHistogram()
        self.load_s = 0.0
        self.first_call_us = 0.0
        self.start = 0.0
        self.calls = 0
        self.prepared_rows = len(task.inputs)
        self.dispatch_delay_us = np.zeros(0, dtype=np.float32)
        self.device_queue = 1
        self.arrivals_s = np.zeros(0)
        self.warm_call_s = 0.0

    def prepare(self) -> None:
        started = time.perf_counter()
        self.backend = self.task.factory()
        self.backend.prepare(self.task.inputs)
        self.load_s = time.perf_counter() - started
        started = time.perf_counter()
        self.backend.infer()
        self.backend.outputs()
        self.first_call_us = (time.perf_counter() - started) * 1e6
        self.warm_call_s = self.first_call_us / 1e6
        for _ in range(self.task.plan.warmup):
            started = time.perf_counter()
            self.backend.infer()
            self.backend.outputs()
            self.warm_call_s = min(self.warm_call_s, time.perf_counter() - started)

    def offline_requests(self) -> int:
        """The offline queue: at least this instance's share of the batch floor, and enough full batches to last
        ``plan.offline_queue_s`` at the warm-up's fastest call, or at ``plan.offline_call_s`` (MLPerf's Offline
        scenario sizes its one query from an expected rate the same way)."""
        call_s = self.task.plan.offline_call_s or self.warm_call_s
        if call_s <= 0:
            return self.iterations
        calls = math.ceil(self.task.plan.offline_queue_s / call_s)
        return max(self.iterations, calls * len(self.task.inputs))

    def _keep_going(self, done: int) -> bool:
        """Both minimums extend the run; the upper bound ends it whatever is unmet (judged by the stage).

        Both durations are judged on the last completion, not the clock: the stage measures forward time to the
        last completion, and a check a few microseconds after it would otherwise end a run just short of its
        minimum, or of the bound it was stopped at.
        """
        plan = self.task.plan
        if plan.max_duration_s is not None and self.completions.last_s >= plan.max_duration_s:
            return False
        if plan.until_stopped and self.signals is not None:
            return not self.signals.stop.is_set()
        return done < self.iterations or self.completions.last_s < plan.min_duration_s

    def _serve(self, submitted: float, finish: Callable[[], float | None]) -> None:
        """Complete one request stamped ``submitted``: ``finish`` (the backend's ``infer``, or ``collect`` for a
        call it already has queued), then its outputs, and record it."""
        called = time.perf_counter()
        device_us = finish()
        model_done = time.perf_counter()
        self.backend.outputs()
        done = time.perf_counter()
        self._record_transfer()
        model_us = device_us if device_us is not None else (model_done - called) * 1e6
        self.samples.append((done - submitted) * 1e6, model_us)
        self.completions.add(done - self.start)
        self.calls += 1
        if self.signals is not None:
            self.signals.images[self.index] += len(self.task.inputs)

    def _run_batch(self, rows: int) -> float | None:
        """One open-loop call on the first ``rows`` requests of the input batch (placed anew when it changes), or
        on the whole batch when the plan fills batches."""
        if rows != self.prepared_rows and not self.task.plan.fill_batches:
            self.backend.prepare(self.task.inputs[:rows])
            self.prepared_rows = rows
        device_us = self.backend.infer()
        self.backend.outputs()
        self._record_transfer()
        if self.signals is not None:
            self.signals.images[self.index] += rows
        return device_us

    def _record_transfer(self) -> None:
        transfer = self.backend.last_transfer_us()
        if transfer is not None:
            self.transfers.append(*transfer)

    def _run_open_loop(self) -> None:
        plan = self.task.plan
        tighten_timer_slack()
        requests = self.offline_requests() if plan.scenario == "offline" else self.iterations
        arrivals = plan.arrivals(self.index, requests)
        if plan.scenario == "server":
            self.arrivals_s = arrivals
        served = serve_schedule(
            arrivals, batch=len(self.task.inputs),
            max_queue_delay_s=plan.max_queue_delay_s, run_batch=self._run_batch, now=time.perf_counter,
            wait_until=waiter(share_gil=len(self.task.instances) > 1), start=self.start,
        )  # fmt: skip
        for latency_us, model_us in zip(served.latency_us, served.model_us, strict=True):
            self.samples.append(latency_us, model_us)
        for done_s, rows in zip(served.call_done_s, served.batch_sizes, strict=True):
            self.completions.add(float(done_s), int(rows))
        self.calls = len(served.batch_sizes)
        self.dispatch_delay_us = served.dispatch_delay_us.astype(np.float32)

    def run(self) -> None:
        self.start = time.perf_counter()
        if self.task.plan.scenario != "closed":
            self._run_open_loop()
            return
        self._run_closed(1 if self.task.plan.mode == "sync" else self.task.plan.queue_depth)

    def _run_closed(self, in_flight: int) -> None:
        """Closed loop with ``in_flight`` requests outstanding; the client's and the server's loop in one thread.

        A request is issued (stamped) when an earlier one completes and frees its place, so its end-to-end time
        is its wait behind earlier requests plus its own service. A ``Pipelined`` backend has up to
        ``max_in_flight()`` of them queued on its device: each waiting request is submitted as soon as there
        is room, so its copy and launch overlap the call before it; the oldest is then collected.
        """
        depth = self.device_queue = min(in_flight, in_flight_limit(self.backend))
        # One at a time, ``infer`` runs the whole call when it is served.
        submit, finish = (
            (self.backend.submit, self.backend.collect) if depth > 1 else (lambda: None, self.backend.infer)
        )
        waiting: collections.deque[float] = collections.deque()
        queued: collections.deque[float] = collections.deque()
        issued = 0
        while True:
            while len(waiting) + len(queued) < in_flight and self._keep_going(issued):
                waiting.append(time.perf_counter())
                issued += 1
            while waiting and len(queued) < depth:
                submit()
                queued.append(waiting.popleft())
            if not queued:
                return
            self._serve(queued.popleft(), finish)

    def report(self) -> InstanceSamples:
        if self.backend is not None:
            self.backend.close()
        return InstanceSamples(
            instance=self.index, worker=self.task.worker, load_s=self.load_s, first_call_us=self.first_call_us,
            start=self.start, samples=self.samples.array(), completions=self.completions.array(),
            last_completion_s=self.completions.last_s, calls=self.calls, dispatch_delay_us=self.dispatch_delay_us,
            transfer_us=self.transfers.array(), device_queue=self.device_queue, arrivals_s=self.arrivals_s,
        )  # fmt: skip


@dataclass(frozen=True)
class StopSignals:
    """Shared with the workers of a watched measurement (for stability, or a progress bar): images completed per
    instance (each slot written by its own instance only) and the parent's stop (obeyed with
    ``plan.until_stopped`` only)."""

    images: Any  # multiprocessing RawArray of int64, one slot per instance
    stop: Any  # multiprocessing Event


def run_instances(
    task: WorkerTask, *, ready: Any = None, go: Any = None, signals: StopSignals | None = None
) -> WorkerReport:
    """Drive this worker's instances: load and warm up all, signal ``ready``, wait for ``go``, measure."""
    instances = [
        _Instance(task, index, iterations, signals)
        for index, iterations in zip(task.instances, task.iterations, strict=True)
    ]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(instances) + 1)
    release = threading.Event()

    def drive(instance: _Instance) -> None:
        try:
            instance.prepare()
            barrier.wait()
            release.wait()
            instance.run()
        except threading.BrokenBarrierError:
            return
        except BaseException as error:  # handed to the worker's main thread, which re-raises it
            errors.append(error)
            barrier.abort()

    threads = [
        threading.Thread(target=drive, args=(instance,), name=f"instance-{instance.index}") for instance in instances
    ]
    for thread in threads:
        thread.start()
    with contextlib.suppress(threading.BrokenBarrierError):  # a failed instance broke it; handled just below
        barrier.wait()
    if errors:
        release.set()
        for thread in threads:
            thread.join()
        raise errors[0]
    with startup_heap_frozen():
        if ready is not None:
            ready()
        if go is not None:
            go()
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        release.set()
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    cpu_s, wall_s = time.process_time() - cpu_started, time.perf_counter() - wall_started
    return WorkerReport(
        worker=task.worker,
        pid=os.getpid(),
        instances=tuple(instance.report() for instance in instances),
        cpu_s=cpu_s,
        wall_s=wall_s,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        peak_device_bytes=_device_peak_bytes(),
    )


@contextlib.contextmanager
def startup_heap_frozen() -> Iterator[None]:
    """Python's cycle collector kept off the heap the process built before its measured window.

    A full collection walks every object the collector tracks. A worker that imported torch and built a model
    holds enough of them for one to take about 100 ms on a 2-core VM, and one came due a few calls into the
    window (the tiny model at batch 1: one call of 95 ms among calls of 1.1 ms, its mean latency 7 ms instead of
    1.1; in the server scenario every request arriving meanwhile waits for it too). Collected here, before the
    window, and frozen (``gc.freeze``: moved where no collection looks), that heap costs the window nothing,
    while whatever the backend allocates per call is still collected, and paid for, inside it. Unfrozen after,
    as a process that measures in its own heap (the device check) goes on working.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _device_peak_bytes() -> int | None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated())
    return None
