"""Who else measured on this device at the same time: perf windows claimed in a shared folder.

Timings of runs that overlapped on one device (``hydra/launcher=parallel`` on one CPU, two users on one
GPU) are not comparable. Every perf stage claims its window in ``<paths.outputs>/.perf-windows/``: a small
JSON file with its host, device, run folder and start time, completed with its end time. When its own
window ends, a run looks for other claims on the same host and device whose windows overlap it. Both runs of
an overlapping pair see each other: the first to finish sees the other's start, the second sees the first's
end. A claim whose process died without an end is judged by whether that process still exists: the
process with its pid, started before the claim (a pid is reused once its process is gone).

A closing run deletes this host's claims that no window can overlap any more: those that ended (or whose
process died) before every window still open on the host started. Claims of other hosts sharing the folder
are kept for ``STALE_AFTER_S``, since whether their processes live cannot be told from here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from harness.fileio import write_json_atomic
from harness.processes import process_alive

CLAIMS_FOLDER = ".perf-windows"
STALE_AFTER_S = 7 * 24 * 3600.0
# A claim is deleted only this long after the last window it could overlap opened: a run that takes its start
# time just before another run lists the folder writes its claim just after.
PRUNE_MARGIN_S = 60.0


@dataclass(frozen=True)
class WindowClaim:
    """One perf stage's time on a device (epoch seconds; ``end`` is ``None`` while it runs)."""

    run_dir: str
    host: str
    device: str
    pid: int
    start: float
    end: float | None


@dataclass
class ContentionProbe:
    """Filled in when the window closes: the run folders that measured on the same device meanwhile."""

    overlapping: tuple[str, ...] = ()


@contextlib.contextmanager
def claimed_window(folder: Path, *, run_dir: Path, device: str) -> Iterator[ContentionProbe]:
    """Claim the enclosed time on ``device``; on exit, the probe names every run that overlapped it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uuid.uuid4().hex}.json"
    claim = WindowClaim(
        run_dir=str(run_dir.resolve()), host=socket.gethostname(), device=device, pid=os.getpid(),
        start=time.time(), end=None,
    )  # fmt: skip
    write_json_atomic(path, asdict(claim))
    probe = ContentionProbe()
    try:
        yield probe
    finally:
        claim = replace(claim, end=time.time())
        write_json_atomic(path, asdict(claim))
        others = dict(_others(folder, path))
        probe.overlapping = tuple(sorted(other.run_dir for other in others.values() if _overlap(claim, other)))
        _forget_past({**others, path: claim}, claim.host)


def _others(folder: Path, own: Path) -> Iterator[tuple[Path, WindowClaim]]:
    now = time.time()
    for path in folder.glob("*.json"):
        if path == own:
            continue
        try:
            claim = WindowClaim(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # being replaced right now, or not a claim
        if now - (claim.end or claim.start) > STALE_AFTER_S:
            path.unlink(missing_ok=True)
            continue
        yield path, claim


def _forget_past(claims: dict[Path, WindowClaim], host: str) -> None:
    """Delete the claims of ``host`` that ended before every window still open on it started (minus a margin)."""
    mine = {path: claim for path, claim in claims.items() if claim.host == host}
    ends = {path: _end(claim) for path, claim in mine.items()}
    still_open = [mine[path].start for path, end in ends.items() if end is None]
    horizon = min(still_open, default=time.time()) - PRUNE_MARGIN_S
    for path, end in ends.items():
        if end is not None and end < horizon:
            path.unlink(missing_ok=True)


def _end(claim: WindowClaim) -> float | None:
    """When a claim's window ended: its end, the start of one whose process died without one, ``None`` while open."""
    if claim.end is not None:
        return claim.end
    return None if process_alive(claim.pid, claim.start) else claim.start


def _overlap(own: WindowClaim, other: WindowClaim) -> bool:
    if (other.host, other.device) != (own.host, own.device) or other.run_dir == own.run_dir:
        return False
    own_end = own.end if own.end is not None else time.time()
    other_end = _end(other)
    return other.start < own_end and (own_end if other_end is None else other_end) > own.start
