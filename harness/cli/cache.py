"""``harness cache``: the build cache's artifacts (size, when built and last used, with which libraries), and
removing those no run has used for a while.

Every artifact is cached under a key that covers the library versions and the model's source, so an upgrade
builds anew beside the old copies and nothing removes them: a ViT-g build is gigabytes.
"""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import UTC, datetime

from harness.cli.arguments import config_or_exit, split_arguments

DAY_S = 86400.0


def cache(arguments: list[str]) -> int:
    """``harness cache [paths.cache=DIR] [--remove-unused DAYS [--dry-run]]``."""
    from harness.config.commands import CacheCommandConfig
    from harness.errors import counted
    from harness.export.cache import cached_builds
    from harness.models.provenance import checkpoint_folder

    parser = argparse.ArgumentParser(
        prog="harness cache",
        description="List the build cache (<paths.cache>/builds): each artifact's size, when it was built and last "
        "used, and the libraries it was built with, least recently used first. A run rebuilds whatever it needs "
        "that is gone.",
    )
    parser.add_argument("items", nargs="*", metavar="KEY=VALUE", help="paths.cache=DIR (as harness run reads it)")
    parser.add_argument("--remove-unused", type=float, metavar="DAYS",
                        help="remove the builds no run has used (or built) for DAYS days")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="with --remove-unused: say what would go, remove none")
    options = parser.parse_intermixed_args(arguments)
    overrides, others = split_arguments(options.items)
    if others:
        parser.error(f"unrecognized arguments: {' '.join(others)} (settings are KEY=VALUE)")
    if options.remove_unused is not None and options.remove_unused < 0:
        parser.error(f"--remove-unused {options.remove_unused:g}: expected days >= 0")
    if options.dry_run and options.remove_unused is None:
        parser.error("--dry-run goes with --remove-unused DAYS")
    cache_dir = config_or_exit(CacheCommandConfig, overrides).paths.path("cache")
    root = cache_dir / "builds"
    builds = cached_builds(root)
    if options.remove_unused is None:
        rows = [(build.folder.name, _size(build.size_bytes), _built(build.created_at), _when(build.last_used),
                 " ".join(f"{name} {version}" for name, version in build.versions.items()))
                for build in builds]  # fmt: skip
        print("| artifact | size | built | last used | built with |\n|---|---|---|---|---|")
        print("".join(f"| {' | '.join(row)} |\n" for row in rows), end="")
        total = sum(build.size_bytes for build in builds)
        print(f"{counted(len(builds), 'build')}, {_size(total)} in {root}")
        downloads = [path for path in checkpoint_folder(cache_dir).glob("*") if path.is_file()]
        if downloads:
            # Checkpoints are downloads, verified by their checksums: never removed here (rm removes one).
            weights = sum(path.stat().st_size for path in downloads)
            print(f"{counted(len(downloads), 'checkpoint')}, {_size(weights)} in {checkpoint_folder(cache_dir)} (kept)")
        return 0
    cutoff = time.time() - options.remove_unused * DAY_S
    unused = [build for build in builds if build.last_used < cutoff]
    verb = "would remove" if options.dry_run else "removed"
    for build in unused:
        if not options.dry_run:
            # A run that has it open keeps reading it; one that starts its build stage builds it again.
            shutil.rmtree(build.folder, ignore_errors=True)
        print(f"{verb} {build.folder} ({_size(build.size_bytes)}, last used {_when(build.last_used)})")
    freed = sum(build.size_bytes for build in unused)
    print(
        f"{verb} {counted(len(unused), 'build')} unused for {options.remove_unused:g} days ({_size(freed)}); "
        f"{len(builds) - len(unused)} kept in {root}"
    )
    return 0


def _size(size_bytes: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size_bytes >= scale:
            return f"{size_bytes / scale:.1f} {unit}"
    return f"{size_bytes} B"


def _built(created_at: str | None) -> str:
    """A manifest's ``created_at`` as ``_when`` writes times, or why there is none."""
    if created_at is None:
        return "unreadable build.json"
    try:
        return _when(datetime.fromisoformat(created_at).timestamp())
    except ValueError:
        return created_at


def _when(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).strftime("%Y-%m-%d %H:%M UTC")
