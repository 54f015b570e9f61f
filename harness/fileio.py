"""File helpers: atomic writes (a reader sees the old file or the new one, never half of one), locks between
processes, and digests."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

T = TypeVar("T")
log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` (made, with its folder, as needed) while the block runs: one
    process at a time, the others wait (and say so in the log)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process to finish with %s", path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_json_atomic(path: Path, payload: object) -> None:
    """``payload`` as indented, key-sorted JSON, written atomically."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True) + "\n")


def sha256_of(path: Path, *, progress: bool = False) -> str:
    """Hex sha256 of a file, streamed (with a progress bar when asked: checkpoints are gigabytes)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle, byte_progress(path.stat().st_size, f"verify {path.name}", progress) as bar:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


# How often an elapsed-time line is redrawn: it shows whole seconds.
TICK_S = 1.0


def progress_bars_in_this_process_only() -> None:
    """Make tqdm's bars in this process share a thread lock. tqdm makes a multiprocessing lock at its first bar
    (a disabled one too: torch.compile makes one while it waits for its kernels, checking a checkpoint makes
    one), a semaphore that Python's resource tracker registers; a process terminated before it exits leaks it,
    and the tracker warns about it on the harness's stderr when the harness exits. For processes whose bars
    never cross into another process (a perf worker)."""
    tqdm.set_lock(threading.RLock())


def draws_progress(enabled: bool) -> bool:
    """Whether ``progress_bar(enabled=enabled)`` draws: only on a terminal."""
    return enabled and sys.stderr.isatty()


def progress_bar(iterable: Iterable[T] | None = None, *, enabled: bool, **options: Any) -> tqdm:
    """A tqdm bar, drawn only when ``enabled`` and stderr is a terminal: redrawn into a log file (CI, SLURM),
    every update is another line fragment."""
    return tqdm(iterable, disable=None if enabled else True, leave=False, **options)


@contextmanager
def elapsed_ticker(desc: str, enabled: bool) -> Iterator[None]:
    """``desc`` and the time taken so far, redrawn every second while the block runs: for work that reports no
    progress of its own (an export, a compile, a vendor tool), drawn as ``progress_bar`` draws. The block's log
    lines are printed above it (they were run into the line)."""
    if not draws_progress(enabled):
        yield
        return
    done = threading.Event()
    with progress_bar(enabled=enabled, desc=desc, bar_format="{desc}: {elapsed}") as bar, logging_redirect_tqdm():

        def tick() -> None:
            while not done.wait(TICK_S):
                bar.refresh()

        ticker = threading.Thread(target=tick, name="elapsed-ticker", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            done.set()
            ticker.join()


def byte_progress(total: int | None, desc: str, enabled: bool, initial: int = 0) -> tqdm:
    """A progress bar counting bytes (see ``progress_bar``)."""
    return progress_bar(total=total, initial=initial, desc=desc, unit="B", unit_scale=True, enabled=enabled)
