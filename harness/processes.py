"""Child processes the harness starts: perf workers and image decoders (always fresh, spawned interpreters),
and external tools (vendor compilers and profilers) run to completion with their output and cost captured;
and what processes leave behind: whether the one that left a record still runs, folders only one of them writes."""

from __future__ import annotations

import ast
import contextlib
import ctypes
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.context import SpawnContext
from pathlib import Path
from types import ModuleType
from typing import Any

from harness.errors import ConfigError
from harness.fileio import elapsed_ticker

# linux/prctl.h: the signal a process gets when the thread that started it ends.
PR_SET_PDEATHSIG = 1
# psutil's process start time is the boot time (whole seconds) plus the start in clock ticks: up to a second off.
PROCESS_START_SLACK_S = 2.0
STAGING_PREFIX = ".staging-"


def process_alive(pid: int, since: float) -> bool:
    """Whether the process ``pid`` that left a record at ``since`` (epoch seconds) still runs: the pid exists and
    was started before the record. A pid is reused once its process is gone, so a process started later is
    another one."""
    import psutil  # here, not at the top: the GPU device check imports this module without psutil installed

    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    return started <= since + PROCESS_START_SLACK_S


@contextlib.contextmanager
def staging_folder(parent: Path, name: str) -> Iterator[Path]:
    """A fresh folder under ``parent`` for ``name`` that only this process writes (named after its host and pid),
    to build something in before renaming it into place; removed afterwards.

    The staging folders of ``name`` that a dead process of this host left (killed by SIGKILL or the OOM killer,
    it never cleaned up: an artifact's copy of gigabytes each time) are removed first. Other hosts' are left:
    a cache on a shared filesystem may be in use there.
    """
    host = socket.gethostname()
    for stale in parent.glob(f"{STAGING_PREFIX}{name}-{host}-*"):
        # Matched whole: host "node" must not take "node-5"'s folders for its own.
        owner = re.fullmatch(r"(\d+)-[0-9a-f]{8}", stale.name.removeprefix(f"{STAGING_PREFIX}{name}-{host}-"))
        with contextlib.suppress(OSError):
            if owner and not process_alive(int(owner[1]), stale.stat().st_mtime):
                shutil.rmtree(stale, ignore_errors=True)
    staging = parent / f"{STAGING_PREFIX}{name}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the one that started it ends (a no-op where ``prctl`` is missing).

    A perf worker measures for its whole window without reading from its parent: with the parent killed
    (SIGKILL, the OOM killer) it went on loading the device for up to ``perf.max_duration_s``, unseen by the
    next run's contention check.
    """
    _death_with(os.getppid())()


def _death_with(parent: int) -> Callable[[], None]:
    """What makes the calling process die with ``parent``: prctl looked up here, so that a forked child calls
    it without loading a library (the child of a threaded parent must not take the loader's lock)."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError, TypeError):  # no libc to open (TypeError on Windows), or no prctl in it
        return lambda: None

    def request() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent ended before the request was made
            os._exit(1)

    return request


# What a signal that ends a process usually means, for the message that reports it.
SIGNAL_CAUSES = {
    signal.SIGKILL: "the kernel's out-of-memory killer sends it when memory runs out (see `dmesg`), as does a "
    "scheduler's hard limit",
    signal.SIGSEGV: "a crash in native code (a runtime or a driver)",
    signal.SIGABRT: "a native library aborted (its message is on stderr)",
}


def exit_description(code: int | None) -> str:
    """How a process ended, in words: ``exited with status 3``, or ``was killed by SIGKILL (why that happens)``
    for the negative codes Python gives a process that a signal ended."""
    if code is None:
        return "ended without an exit status"
    if code >= 0:
        return f"exited with status {code}"
    try:
        killer = signal.Signals(-code)
    except ValueError:
        return f"was killed by signal {-code}"
    cause = SIGNAL_CAUSES.get(killer)
    return f"was killed by {killer.name}" + (f": {cause}" if cause else "")


def spawn_context() -> SpawnContext:
    """The spawn context, usable from any parent process (see ``refuse_unguarded_main`` for the one it is not).

    joblib's loky workers set the start method 'loky', which a spawned child is then told to use and cannot
    resolve ("cannot find context for 'loky'"); such a process only needs plain spawn, so it is reset here.
    """
    refuse_unguarded_main()
    if multiprocessing.get_start_method(allow_none=True) not in (None, "spawn", "fork", "forkserver"):
        multiprocessing.set_start_method("spawn", force=True)
    return multiprocessing.get_context("spawn")


def refuse_unguarded_main() -> None:
    """Raise ``ConfigError`` when the harness is being started from a script's top level outside
    ``if __name__ == "__main__":``.

    A spawned child imports the parent's main script again before it runs its target
    (https://docs.python.org/3/library/multiprocessing.html, "Safe importing of main module"), so it would start
    the harness again, and Python stops it with an error on stderr. A decoder pool then starts a new worker for
    each one that dies, forever, and a perf worker dies with Python's advice in a traceback: here the run is
    refused with the script's line instead.
    """
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or path is None or not _imported_again_by_spawn(main, path):
        return
    frame = sys._getframe(1)
    while frame is not None and not (frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return  # the script has finished running its top level: a child importing it again starts nothing
    try:
        tree = ast.parse(Path(path).read_text(), filename=path)
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return  # nothing to read the guard from: let Python's own check speak
    line = frame.f_lineno
    if any(_is_main_guard(node) and node.lineno <= line <= (node.end_lineno or line) for node in tree.body):
        return
    raise ConfigError(
        f'{path}:{line} starts the harness at the script\'s top level, outside `if __name__ == "__main__":`. '
        "The harness's worker processes are spawned, and each spawned process imports the script again, so it "
        "would start the harness again: put the call under that guard"
    )


def _imported_again_by_spawn(main: ModuleType, path: str) -> bool:
    """Whether a spawned child re-imports ``main`` (CPython's ``multiprocessing.spawn`` skips a package's
    ``__main__`` module, run by ``python -m package``, and IPython's)."""
    name = getattr(main.__spec__, "name", None)
    if name is not None:
        return name != "__main__" and not name.endswith(".__main__")
    return Path(path).stem != "ipython"


def _is_main_guard(node: ast.stmt) -> bool:
    """``if __name__ == "__main__":`` (either operand first)."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare) or len(node.test.comparators) != 1:
        return False
    if not isinstance(node.test.ops[0], ast.Eq):
        return False
    operands = {ast.dump(node.test.left), ast.dump(node.test.comparators[0])}
    return operands == {ast.dump(ast.Name(id="__name__", ctx=ast.Load())), ast.dump(ast.Constant(value="__main__"))}


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


def _kill_group(leader: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(leader, signal.SIGKILL)


def run_tool(
    argv: Sequence[str], *, timeout_s: float, cwd: Path | None = None, env: Mapping[str, str] | None = None,
    progress: str | None = None,
) -> ToolRun:  # fmt: skip
    """Run ``argv`` to completion (killed with its process group after ``timeout_s``), capturing its output, its
    own CPU time (``wait4`` reports it for exactly this child) and its sampled peak memory. ``progress`` says what
    the tool is doing; on a terminal it is drawn with the time the tool has taken so far (a vendor compile takes
    minutes, and its output is kept for the run's record, not shown as it comes)."""
    import psutil  # here, not at the top: the GPU device check imports this module without psutil installed

    chunks: list[bytes] = []
    peaks: dict[int, int] = {}
    started = time.perf_counter()
    process = subprocess.Popen(
        list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
        env=None if env is None else dict(env), start_new_session=True,
        # A SIGKILLed harness runs no cleanup: the tool would go on compiling for up to its hour-long timeout.
        preexec_fn=_death_with(os.getpid()),
    )  # fmt: skip
    try:  # from the moment the tool exists: an interrupt a moment later (importing psutil) missed the kill
        assert process.stdout is not None
        reader = threading.Thread(target=lambda: chunks.extend(iter(process.stdout.read1, b"")), daemon=True)  # type: ignore[union-attr]
        reader.start()
        tool, deadline = psutil.Process(process.pid), started + timeout_s
        with elapsed_ticker(progress or "", enabled=progress is not None):
            while reader.is_alive() and (remaining := deadline - time.perf_counter()) > 0:
                _sample_rss(tool, peaks)
                reader.join(min(RSS_SAMPLE_S, remaining))
    except BaseException:
        # Ctrl-C or SIGTERM stopping the harness: the tool's session of its own keeps the terminal's signal from
        # it, and a vendor compile went on for up to its hour-long timeout after the harness had ended.
        _kill_group(process.pid)
        process.wait()
        raise
    timed_out = reader.is_alive()
    if timed_out:
        _kill_group(process.pid)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join(5.0)
    process.stdout.close()
    return ToolRun(
        argv=tuple(argv), returncode=process.returncode, output=b"".join(chunks).decode(errors="replace"),
        wall_s=time.perf_counter() - started, cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_bytes=sum(peaks.values()), timed_out=timed_out,
    )  # fmt: skip
