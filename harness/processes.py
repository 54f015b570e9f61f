"""Child processes the harness starts: perf workers and image decoders (always fresh, spawned interpreters),
and external tools (vendor compilers and profilers) run to completion with their output and cost captured."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.context import SpawnContext
from pathlib import Path
from typing import Any


def spawn_context() -> SpawnContext:
    """The spawn context, usable from any parent process.

    joblib's loky workers set the start method 'loky', which a spawned child is then told to use and cannot
    resolve ("cannot find context for 'loky'"); such a process only needs plain spawn, so it is reset here.
    """
    if multiprocessing.get_start_method(allow_none=True) not in (None, "spawn", "fork", "forkserver"):
        multiprocessing.set_start_method("spawn", force=True)
    return multiprocessing.get_context("spawn")


# How often a running tool's memory is read: resident memory has no exact peak for a child of a large process
# (the kernel's ru_maxrss counts the parent's pages the child had before it exec'd), so it is sampled.
RSS_SAMPLE_S = 0.05


@dataclass(frozen=True)
class ToolRun:
    """One finished run of an external tool: its command, exit status, output and what it cost the host.

    Attributes:
        argv: the command as run.
        returncode: the exit status (negative: killed by that signal).
        output: stdout and stderr, interleaved as the tool wrote them.
        wall_s: seconds from start to exit.
        cpu_s: user + system CPU seconds of the tool process (its own children included once they are reaped).
        peak_rss_bytes: the sum over the tool's processes of the largest resident memory sampled every
            ``RSS_SAMPLE_S`` (a peak shorter than that can be missed).
        timed_out: it was killed after ``timeout_s``.
    """

    argv: tuple[str, ...]
    returncode: int
    output: str
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    timed_out: bool

    def tail(self, lines: int = 12) -> str:
        """The last ``lines`` lines of the output, for error messages."""
        return "\n".join(self.output.rstrip().splitlines()[-lines:])


def _sample_rss(tool: Any, peaks: dict[int, int]) -> None:
    """Record the resident memory of ``tool`` (a ``psutil.Process``) and its descendants in ``peaks``."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for process in [tool, *tool.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                peaks[process.pid] = max(peaks.get(process.pid, 0), process.memory_info().rss)


def run_tool(
    argv: Sequence[str], *, timeout_s: float, cwd: Path | None = None, env: Mapping[str, str] | None = None
) -> ToolRun:
    """Run ``argv`` to completion (killed with its process group after ``timeout_s``), capturing its output, its
    own CPU time (``wait4`` reports it for exactly this child) and its sampled peak memory."""
    started = time.perf_counter()
    process = subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
        env=None if env is None else dict(env), start_new_session=True,
    )  # fmt: skip
    chunks: list[bytes] = []
    assert process.stdout is not None
    reader = threading.Thread(target=lambda: chunks.extend(iter(process.stdout.read1, b"")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    import psutil  # here, not at the top: the GPU device check imports this module without psutil installed

    tool, peaks = psutil.Process(process.pid), dict[int, int]()
    deadline = started + timeout_s
    while reader.is_alive() and (remaining := deadline - time.perf_counter()) > 0:
        _sample_rss(tool, peaks)
        reader.join(min(RSS_SAMPLE_S, remaining))
    timed_out = reader.is_alive()
    if timed_out:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join(5.0)
    process.stdout.close()
    return ToolRun(
        argv=tuple(argv), returncode=process.returncode, output=b"".join(chunks).decode(errors="replace"),
        wall_s=time.perf_counter() - started, cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_bytes=sum(peaks.values()), timed_out=timed_out,
    )  # fmt: skip
