"""Content-addressed artifact cache.

An artifact folder ``<paths.cache>/builds/<variant>-<H>x<W>-<precision>-onnx-<key>/`` holds the model file(s)
and ``build.json``. ``key`` hashes everything that determines the bytes (architecture, weights digest,
precision, I/O dtype, input size, exporter options, library versions, the model and exporter source), so a
changed input is a new folder and an unchanged one is a hit. Folders are built under a temporary name and
renamed into place, so a reader never sees a half-written artifact; a folder whose files do not match
their recorded sha256 is deleted and rebuilt.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from harness.config.convert import from_mapping
from harness.errors import BuildError, ConfigError, unwritable_reason
from harness.fileio import sha256_of, write_json_atomic
from harness.processes import STAGING_PREFIX, staging_folder
from harness.result.build import ArtifactFile

T = TypeVar("T")

log = logging.getLogger(__name__)

MANIFEST_NAME = "build.json"
KEY_HEX_DIGITS = 12


def content_key(fields: dict[str, object]) -> str:
    """Hex digest of the canonical JSON of ``fields``, shortened to ``KEY_HEX_DIGITS``."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:KEY_HEX_DIGITS]


def source_digest(*modules: object) -> str:
    """sha256 over the source files of ``modules``: editing the model or exporter invalidates the cache."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(Path(module.__file__).read_bytes())  # type: ignore[attr-defined]
    return digest.hexdigest()


def prepare_cache_root(cache_root: Path) -> Path:
    """Create the builds folder and prove it is writable, or raise a ``ConfigError`` naming ``paths.cache``."""
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        probe = cache_root / f".write-probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        why = unwritable_reason(cache_root, error, folder=True)
        raise ConfigError(f"paths.cache={str(cache_root.parent)!r}: build cache is not writable ({why})") from None
    return cache_root


def load_cached(folder: Path, manifest_type: type[T]) -> T | None:
    """The manifest of a cached artifact whose files all match their digests, else ``None`` (corrupt ones removed)."""
    if not folder.exists():
        return None
    try:
        manifest = from_mapping(manifest_type, json.loads((folder / MANIFEST_NAME).read_text()))
        for record in manifest.files:  # type: ignore[attr-defined]
            path = folder / record.name
            if not path.is_file() or path.stat().st_size != record.size_bytes or sha256_of(path) != record.sha256:
                raise ValueError(f"{record.name} does not match its recorded size and sha256")
    except (OSError, ValueError, ConfigError) as error:
        log.warning("corrupt cached artifact path=%s reason=%s: rebuilding", folder, error)
        shutil.rmtree(folder, ignore_errors=True)  # it may be gone already: `harness cache --remove-unused`
        return None
    # Its manifest's time is when it was last used (``harness cache`` removes what has not been for long). A cache
    # others share may be read-only here: the artifact is used all the same.
    with contextlib.suppress(OSError):
        os.utime(folder / MANIFEST_NAME)
    return manifest


@dataclass(frozen=True)
class CachedBuild:
    """One artifact folder of the build cache, as ``harness cache`` lists it.

    Attributes:
        folder: ``<paths.cache>/builds/<name>``.
        size_bytes: every file in it.
        created_at: when it was built (its manifest's ``created_at``); ``None`` where the manifest is unreadable.
        last_used: when a run last used it (or built it), seconds since the epoch: its manifest's time.
        versions: the libraries it was built with (harness, torch, onnx...), from its key.
    """

    folder: Path
    size_bytes: int
    created_at: str | None
    last_used: float
    versions: dict[str, str]


def cached_builds(cache_root: Path) -> list[CachedBuild]:
    """Every artifact folder under ``cache_root`` (``<paths.cache>/builds``), least recently used first; a build
    still being written (a staging folder) is not one."""
    builds = []
    for folder in sorted(cache_root.iterdir()) if cache_root.is_dir() else ():
        if not folder.is_dir() or folder.name.startswith(STAGING_PREFIX):
            continue
        manifest_file = folder / MANIFEST_NAME
        try:
            manifest = json.loads(manifest_file.read_text())
            last_used = manifest_file.stat().st_mtime
        except (OSError, ValueError):  # a folder no run can use: listed, so that it can be removed
            manifest, last_used = {}, folder.stat().st_mtime
        files = [path for path in folder.rglob("*") if path.is_file()]
        versions = (manifest.get("key_fields") or {}).get("versions") or {}
        builds.append(CachedBuild(folder, sum(path.stat().st_size for path in files), manifest.get("created_at"),
                                  last_used, {str(name): str(version) for name, version in versions.items()}))  # fmt: skip
    return sorted(builds, key=lambda build: build.last_used)


def staging_for(folder: Path) -> AbstractContextManager[Path]:
    """An empty folder beside ``folder``, this process's own, to build an artifact in; removed afterwards
    (``publish`` has renamed it into place by then, unless the build failed)."""
    return staging_folder(folder.parent, folder.name)


def artifact_files(staging: Path) -> tuple[ArtifactFile, ...]:
    """Every file under ``staging``: its path relative to it, size and sha256 (what a cache hit is checked by)."""
    return tuple(
        ArtifactFile(name=str(path.relative_to(staging)), size_bytes=path.stat().st_size, sha256=sha256_of(path))
        for path in sorted(staging.rglob("*"))
        if path.is_file()
    )


def publish(staging: Path, folder: Path, manifest: T, *, replace: bool = False) -> T:
    """Write ``build.json`` into ``staging`` and rename it to ``folder``; returns the manifest now in place.

    ``replace`` (a forced rebuild) removes an existing ``folder`` first. Otherwise an artifact another job
    published under the same content key while this one was building is kept, since it may be in use: this
    job's copy is dropped and the other's manifest returned.
    """
    write_json_atomic(staging / MANIFEST_NAME, asdict(manifest))  # type: ignore[call-overload]
    if replace and folder.exists():
        shutil.rmtree(folder)
    for _ in range(2):
        try:
            os.rename(staging, folder)
            return manifest
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise BuildError(f"cannot move the built artifact into {folder}: {error.strerror}") from None
        existing = load_cached(folder, type(manifest))  # a corrupt one is removed, and the rename tried again
        if existing is not None:
            log.info("artifact %s was published by another job first: using that copy", folder)
            return existing
    raise BuildError(f"cannot move the built artifact into {folder}: another job keeps publishing a corrupt copy")
