"""Child processes the harness starts (perf workers, image decoders): always fresh, spawned interpreters."""

from __future__ import annotations

import multiprocessing
from multiprocessing.context import SpawnContext


def spawn_context() -> SpawnContext:
    """The spawn context, usable from any parent process.

    joblib's loky workers set the start method 'loky', which a spawned child is then told to use and cannot
    resolve ("cannot find context for 'loky'"); such a process only needs plain spawn, so it is reset here.
    """
    if multiprocessing.get_start_method(allow_none=True) not in (None, "spawn", "fork", "forkserver"):
        multiprocessing.set_start_method("spawn", force=True)
    return multiprocessing.get_context("spawn")
