"""The load generator's worker processes: spawned fresh, loaded, released together, collected.

Each worker process drives its share of the instances (``harness.perf.loadgen.run_instances``). The parent
blocks on pipes and process sentinels, never spins: a worker that raises sends its error back as data; one
that dies is reported with how it ended (its exit status, or the signal that killed it) and the last lines it
wrote to stderr (a runtime's crash message, or the Python traceback ``faulthandler`` prints on a fatal signal);
either fails the run instead of hanging it.
With a ``StabilityWatch`` the parent reads a shared per-instance image counter every window and stops the
workers once the throughput is stable.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import multiprocessing.connection
import os
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.errors import MeasurementInvalid
from harness.fileio import progress_bar, progress_bars_in_this_process_only
from harness.perf.loadgen import Sampler, StopSignals, WorkerReport, WorkerTask, run_instances
from harness.processes import die_with_parent, exit_description, spawn_context

STDERR_TAIL_BYTES = 4000


def _worker_main(
    task: WorkerTask,
    inputs_file: str,
    connection: Any,
    go: Any,
    stderr_path: str,
    signals: StopSignals | None = None,
) -> None:
    """Entry point of a worker process: results and errors both travel back over ``connection`` as data.

    ``task`` arrives without its input batch, which is read from ``inputs_file`` (see ``run_workers``). Its
    stderr goes to ``stderr_path`` (the parent shows it afterwards, and keeps its tail if the worker dies);
    ``faulthandler`` adds the Python stack of a fatal signal (a segfault in a runtime) to it.
    """
    die_with_parent()
    with open(stderr_path, "ab", buffering=0) as stderr_file:
        os.dup2(stderr_file.fileno(), 2)
    faulthandler.enable()
    progress_bars_in_this_process_only()  # the parent terminates a worker that reported while it exits
    try:
        task = dataclasses.replace(task, inputs=np.load(inputs_file))
        report = run_instances(task, ready=lambda: connection.send(("ready", None)), go=go.wait, signals=signals)
        connection.send(("done", report))
    except BaseException as error:  # every failure crosses the process boundary as data
        connection.send(("error", (type(error).__name__, str(error), traceback.format_exc())))
    finally:
        connection.close()


@dataclass
class StabilityWatch:
    """perf_analyzer's rule: measure in windows of ``window_s`` until the throughput of the last 3 agrees
    within ``pct`` percent of their mean, or ``max_windows`` have passed. Filled in by ``run_workers``."""

    window_s: float
    pct: float
    max_windows: int
    window_throughput_qps: list[float] = field(default_factory=list)
    stable: bool = False

    def settled(self) -> bool:
        last = self.window_throughput_qps[-3:]
        if len(last) < 3 or min(last) <= 0:
            return False
        mean = sum(last) / 3
        return max(abs(value - mean) for value in last) <= self.pct / 100 * mean

    def watch(self, signals: StopSignals) -> None:
        """Until the stop: every ``window_s`` read the images completed, and stop once settled or out of windows."""
        counted, clock = 0, time.perf_counter()
        while not signals.stop.wait(self.window_s):
            total, now = sum(signals.images), time.perf_counter()
            self.window_throughput_qps.append((total - counted) / (now - clock))
            counted, clock = total, now
            self.stable = self.settled()
            if self.stable or len(self.window_throughput_qps) >= self.max_windows:
                signals.stop.set()


@dataclass(frozen=True)
class ProgressWatch:
    """A terminal bar of the images the workers have completed, redrawn every ``interval_s`` from the counters
    they share with the parent (made only for a watched measurement: one written to a log file shares none)."""

    label: str
    interval_s: float = 0.5

    def watch(self, signals: StopSignals) -> None:
        with progress_bar(enabled=True, desc=self.label, unit=" img") as bar:
            while not signals.stop.wait(self.interval_s):
                bar.update(sum(signals.images) - bar.n)
            bar.update(sum(signals.images) - bar.n)  # the whole count, as the window ended
            bar.refresh()


def run_workers(
    tasks: list[WorkerTask],
    *,
    start_timeout_s: float,
    stability: StabilityWatch | None = None,
    samplers: Sequence[Sampler] = (),
    progress: ProgressWatch | None = None,
) -> list[WorkerReport]:
    """Run ``tasks`` in fresh processes, load them all, release them together, return their reports.

    With ``stability`` the workers run until it says the throughput is stable (or is out of windows); the
    ``samplers`` (host, device telemetry) sample from the release until the workers are done; ``progress``
    draws the images completed meanwhile.
    """
    context = spawn_context()
    go = context.Event()
    signals = None
    if stability is not None or progress is not None:
        instances = sum(len(task.instances) for task in tasks)
        signals = StopSignals(images=context.RawArray("q", instances), stop=context.Event())
    workers = []
    with tempfile.TemporaryDirectory(prefix="harness-perf-") as folder:
        inputs_files: dict[int, Path] = {}  # id of a batch -> its file: the workers of a run share one batch
        for task in tasks:
            parent_end, child_end = context.Pipe(duplex=False)
            stderr_path = Path(folder) / f"worker{task.worker}.stderr"
            # The batch goes through a file, the rest of the task (1 kB) through the start pipe: Python writes a
            # spawned child's arguments into that pipe before start() returns, and blocks while it is full (64 kB
            # on Linux), so a child that died before reading them all (killed, out of memory, a script that
            # starts the harness again) left the parent waiting there forever.
            inputs_file = inputs_files.get(id(task.inputs))
            if inputs_file is None:
                inputs_file = inputs_files[id(task.inputs)] = Path(folder) / f"inputs{len(inputs_files)}.npy"
                np.save(inputs_file, task.inputs)
            process = context.Process(
                target=_worker_main,
                args=(
                    dataclasses.replace(task, inputs=task.inputs[:0]), str(inputs_file), child_end, go,
                    str(stderr_path), signals,
                ),
                name=f"perf-worker-{task.worker}",
            )  # fmt: skip
            process.start()
            child_end.close()
            workers.append(_Worker(task, process, parent_end, stderr_path))
        watchers: list[threading.Thread] = []
        try:
            _collect(workers, expect="ready", timeout_s=start_timeout_s)
            for name, watch in (("stability", stability), ("progress", progress)):
                if watch is not None and signals is not None:
                    watchers.append(threading.Thread(target=watch.watch, args=(signals,), name=name, daemon=True))
                    watchers[-1].start()
            for sampler in samplers:
                sampler.start([worker.process.pid for worker in workers])
            go.set()
            return _collect(workers, expect="done", timeout_s=None)
        finally:
            for sampler in samplers:
                sampler.stop()
            if signals is not None:
                signals.stop.set()  # a run that ended otherwise (its bound, an error) ends the watches too
                for watcher in watchers:
                    watcher.join()
            for worker in workers:
                if worker.process.is_alive():
                    worker.process.terminate()
                worker.process.join(timeout=10)
                worker.connection.close()
                _forward_stderr(worker.stderr_path)


@dataclass(frozen=True)
class _Worker:
    task: WorkerTask
    process: Any
    connection: Any
    stderr_path: Path


def _forward_stderr(path: Path) -> None:
    """Show what a worker wrote to stderr (warnings, a runtime's messages) on ours, after the fact."""
    if path.exists() and path.stat().st_size:
        sys.stderr.write(path.read_text(errors="replace"))
        sys.stderr.flush()


def stderr_tail(path: Path) -> str:
    """The last ``STDERR_TAIL_BYTES`` a worker wrote to stderr, as text ('' when it wrote nothing)."""
    if not path.exists():
        return ""
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - STDERR_TAIL_BYTES))
        return handle.read().decode(errors="replace").strip()


def _collect(workers: list[_Worker], *, expect: str, timeout_s: float | None) -> list[Any]:
    """Block until every worker sent ``expect``; the first error or death fails the run with its cause."""
    pending = {worker.connection: worker for worker in workers}
    received: dict[int, Any] = {}
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while pending:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready = multiprocessing.connection.wait(
            [*pending, *(worker.process.sentinel for worker in pending.values())], remaining
        )
        if not ready:
            raise MeasurementInvalid(f"perf workers did not become ready within perf.start_timeout_s={timeout_s}")
        for connection, worker in list(pending.items()):
            if connection in ready or worker.process.sentinel in ready:
                try:
                    kind, payload = connection.recv()
                except EOFError:
                    worker.process.join(timeout=5)
                    raise MeasurementInvalid(
                        f"perf worker {worker.task.worker} (pid {worker.process.pid}) "
                        f"{exit_description(worker.process.exitcode)}",
                        details=stderr_tail(worker.stderr_path) or None,
                    ) from None
                if kind == "error":
                    error_type, message, formatted = payload
                    raise MeasurementInvalid(
                        f"perf worker {worker.task.worker} failed: {error_type}: {message}", details=formatted
                    )
                received[worker.task.worker] = payload
                del pending[connection]
    return [received[worker.task.worker] for worker in workers] if expect == "done" else []
