"""Resumable, verified downloads.

A file is streamed into ``<dest>.part``; an interrupted transfer leaves the part file so the next call
resumes with an HTTP ``Range`` request. A finished transfer is checked against the expected size and
sha256 (when known), then renamed into place atomically, and its size and digest are written to
``<dest>.sha256.json``. Reusing a file re-verifies it against that record, so a file corrupted on disk is
never used.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shlex
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.errors import DownloadError
from harness.fileio import CHUNK_BYTES, byte_progress, locked, sha256_of, write_json_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileRecord:
    """What a verified download is: its source, size in bytes and sha256 hex digest."""

    url: str
    size_bytes: int
    sha256: str


def record_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256.json")


def fetch(
    url: str, dest: Path, *, sha256: str | None = None, timeout_s: float = 60.0, progress: bool = True
) -> FileRecord:
    """Download ``url`` to ``dest`` unless a verified copy is already there.

    Args:
        url: http(s) or file URL.
        dest: final path; its folder is created.
        sha256: expected hex digest, when published. Without one, the first download's digest is recorded
            and every later reuse is checked against it.
        timeout_s: socket timeout per read.
        progress: show a tqdm bar.

    Returns:
        The verified record.

    Raises:
        DownloadError: unreachable URL (with how to fetch it by hand), truncated transfer (the part file is
            kept for resume), size or checksum mismatch (the bad file is removed), unwritable folder.
    """
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DownloadError(f"cannot create download folder {dest.parent}: {error.strerror}") from None
    # Jobs of a sweep fetching the same file at once: one streams it, the others wait and then verify its copy
    # (two appending to one part file made a file that was neither).
    with locked(dest):
        if dest.exists():
            return verify_existing(dest, url=url, sha256=sha256, progress=progress)
        return _fetch_new(url, dest, sha256=sha256, timeout_s=timeout_s, progress=progress)


def _fetch_new(url: str, dest: Path, *, sha256: str | None, timeout_s: float, progress: bool) -> FileRecord:
    part = dest.with_name(dest.name + ".part")
    digest, size = _stream_to_part(url, part, timeout_s=timeout_s, progress=progress)
    if sha256 is not None and digest != sha256:
        part.unlink()
        raise DownloadError(f"{url}: sha256 {digest} does not match the expected {sha256}; the download was removed")
    record = FileRecord(url=url, size_bytes=size, sha256=digest)
    write_json_atomic(record_path(dest), asdict(record))
    os.replace(part, dest)
    log.info("downloaded url=%s path=%s size_bytes=%d sha256=%s", url, dest, size, digest)
    return record


def verify_existing(dest: Path, *, url: str, sha256: str | None, progress: bool) -> FileRecord:
    """Check a previously downloaded file against its record (and the published digest, if any)."""
    expected = sha256
    recorded_size = None
    if record_path(dest).exists():
        try:
            stored = json.loads(record_path(dest).read_text())
            expected, recorded_size = expected or str(stored["sha256"]), int(stored["size_bytes"])
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise DownloadError(
                f"{record_path(dest)}: unreadable record of {dest.name} ({type(error).__name__}: {error}); delete "
                "both and run again"
            ) from None
    size = dest.stat().st_size
    if recorded_size is not None and size != recorded_size:
        raise DownloadError(f"{dest}: size {size} bytes differs from the recorded {recorded_size}; delete it and retry")
    digest = sha256_of(dest, progress=progress)
    if expected is not None and digest != expected:
        raise DownloadError(f"{dest}: sha256 {digest} does not match {expected}; delete it and retry")
    if not record_path(dest).exists():
        write_json_atomic(record_path(dest), asdict(FileRecord(url=url, size_bytes=size, sha256=digest)))
    log.info("reusing verified download path=%s sha256=%s", dest, digest)
    return FileRecord(url=url, size_bytes=size, sha256=digest)


def _unsatisfied_length(header: str | None) -> int | None:
    """The file's length from a 416 response's ``Content-Range: bytes */<length>`` (RFC 9110); ``None`` where the
    server does not say."""
    match = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", header or "")
    return int(match.group(1)) if match else None


def _stream_to_part(url: str, part: Path, *, timeout_s: float, progress: bool) -> tuple[str, int]:
    """Append the rest of ``url`` to ``part``; returns (sha256, total size)."""
    offset = part.stat().st_size if part.exists() else 0
    digest = hashlib.sha256()
    if offset:
        with open(part, "rb") as handle:
            for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
                digest.update(chunk)
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            if _unsatisfied_length(error.headers.get("Content-Range")) == offset:  # the part holds every byte
                return digest.hexdigest(), offset
            # Longer than the file (another version of it, say), or a size the server does not say: start over.
            log.warning("restarting download url=%s: the %d bytes of %s do not match the file", url, offset, part)
            part.unlink()
            return _stream_to_part(url, part, timeout_s=timeout_s, progress=progress)
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        by_hand = shlex.join(["curl", "-L", "-C", "-", "-o", str(part.with_suffix("")), url])
        raise DownloadError(f"cannot download {url} ({reason}); fetch it by hand with `{by_hand}`") from None
    with response:
        if offset and response.status != 206:  # server ignored the range: start over
            offset, digest = 0, hashlib.sha256()
        remaining = response.headers.get("Content-Length")
        total = offset + int(remaining) if remaining is not None else None
        received = offset
        mode = "ab" if offset else "wb"
        # Where no bar is drawn (a log file), this line says what the wait is for.
        log.info("downloading url=%s path=%s from_byte=%d size_bytes=%s", url, part, offset, total)
        with open(part, mode) as handle, byte_progress(total, f"download {part.stem}", progress, initial=offset) as bar:
            try:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    handle.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as error:
                raise DownloadError(
                    f"{url}: transfer interrupted at {received} bytes ({error}); run again to resume"
                ) from None
    if total is not None and received != total:
        raise DownloadError(
            f"{url}: truncated at {received} of {total} bytes; the partial file {part} is kept, run again to resume"
        )
    return digest.hexdigest(), received
