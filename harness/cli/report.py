"""``harness report``: plots and an index over run folders, sweep folders or the MLflow experiment."""

from __future__ import annotations

import functools
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.cli.arguments import config_or_exit, split_arguments

if TYPE_CHECKING:  # imported where used: `harness --help` stays fast
    import argparse

    from harness.config.schema import TrackingConfig
    from harness.report.plots import LabelledRun
    from harness.tracking.store import Store


def report(arguments: list[str]) -> int:
    """``harness report PATH... [--out DIR]``: plots and an index over run folders, sweep folders or MLflow."""
    from harness.config.commands import StoreCommandConfig
    from harness.errors import DataError, HarnessError, counted, unwritable_reason
    from harness.report import record_folder
    from harness.report.render import folder_runs, write_report
    from harness.tracking import download_runs
    from harness.tracking.store import Store

    parser = _report_parser()
    options = parser.parse_intermixed_args(arguments)
    overrides, sources = split_arguments(options.items)
    if not sources:
        parser.error("nothing to report on")
    # A folder named twice (or by its result.json and itself) is one source.
    sources = list(dict.fromkeys(source if source == "mlflow" else str(record_folder(Path(source)).resolve())
                                 for source in sources))  # fmt: skip
    config = config_or_exit(StoreCommandConfig, overrides)
    tracking, paths = config.tracking, config.paths
    try:
        found = folder_runs([Path(source) for source in sources if source != "mlflow"])  # a typo opens no store
        store = Store(tracking, paths) if "mlflow" in sources else None
        name = _report_name(sources, tracking.experiment)
        folder = options.out or Path("reports") / name
        created = not folder.exists()
        try:  # before any download: a folder that cannot be made fails in one line, not after the work
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            why = unwritable_reason(folder, error, folder=True)
            raise DataError(f"{folder}: cannot write the report there ({why})") from None
        if store is not None:
            download_runs(store, folder / "runs", found=found)
        given, runs = len(found.runs), _once_each(found.runs)
        if not runs and created:  # no report: no empty folder left behind either
            shutil.rmtree(folder, ignore_errors=True)
        if not runs and found.unreadable:
            raise DataError(next(iter(found.unreadable.values())))
        if not runs:
            places = [
                f"MLflow experiment {tracking.experiment!r}" if source == "mlflow" else source for source in sources
            ]
            raise DataError(f"nothing to report: no run in {', '.join(places)}")
        written = write_report(runs, folder, title=f"report {name}", unreadable=found.unreadable)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if given > len(runs):
        print(
            f"note: {counted(given - len(runs), 'run')} found again under another path (the same run_uid: a sweep "
            "and its job, a folder and the store it was logged to, a copy) drawn and counted once"
        )
    for caveat in written.caveats:
        print(f"read with care: {caveat}")
    print(
        f"report: {written.index_md} ({counted(len(written.plots), 'plot')}, {counted(len(runs), 'run')}; "
        "index.html is self-contained)"
    )
    if tracking.enabled and len(sources) == 1 and sources[0] != "mlflow":
        # Only a report over the sweep alone is its report: one over several sources replaced the report of each
        # sweep among them with a report of them all.
        _attach_to_sweep(folder, Path(sources[0]), tracking, store)
    for why in found.unreadable.values():
        print(f"error: {why} (a row that says so in the report; the other runs are in it)", file=sys.stderr)
    return 1 if found.unreadable else 0


def _once_each(runs: list[LabelledRun]) -> list[LabelledRun]:
    """Each run once, by its uid, as first found: a sweep and one of its jobs, or a folder and the experiment
    it was logged to, hold the same run, and it was drawn and counted twice."""
    first: dict[str, LabelledRun] = {}
    for run in runs:
        first.setdefault(run.result.run_uid, run)
    return list(first.values())


def _report_name(sources: list[str], experiment: str) -> str:
    """The report's title and default folder name: every source's (a report over several is not the first's,
    nor written over the first's own report), the first three and a count of the rest."""
    names = ["mlflow-" + experiment if source == "mlflow" else Path(source).resolve().name for source in sources]
    return "+".join(names) if len(names) <= 3 else "+".join(names[:3]) + f"+{len(names) - 3}-more"


def _report_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="harness report",
        description="Plots (PNG) and an index.md / self-contained index.html over run folders, sweep folders, or "
        "'mlflow' (every run of the configured experiment). A report over one sweep folder alone is also attached to "
        "the sweep's MLflow parent run.",
    )
    parser.add_argument(
        "items",
        nargs="+",
        metavar="PATH|mlflow|KEY=VALUE",
        help="run or sweep folders, or 'mlflow'; tracking.* / paths.* overrides",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="report folder (default: reports/<the sources' names joined by +>)"
    )
    return parser


def _attach_to_sweep(folder: Path, source: Path, tracking: TrackingConfig, store: Store | None) -> None:
    """Attach the report in ``folder`` to the MLflow parent run of ``source`` if it is a tracked sweep, in the store
    the sweep was logged to (its ``sweep.json``), whatever store ``tracking.*`` names; a failure is a warning."""
    from harness.errors import HarnessError, masked
    from harness.report import SWEEP_FILE, read_sweep_record
    from harness.tracking.store import existing_store

    if not (source / SWEEP_FILE).exists():
        return
    try:
        record = read_sweep_record(source)
        uri, parent = str(record.get("uri") or ""), str(record.get("parent_run_id") or "")
        if not (uri and parent):
            return
        client = existing_store(uri, tracking, opened=store)
        client.call(functools.partial(client.client.log_artifacts, parent, str(folder), artifact_path="report"))
        print(f"attached to MLflow parent run {parent} in {masked(uri)} (artifacts/report)")
    except HarnessError as error:
        print(f"warning: report not attached to the parent run of sweep {source} ({error})", file=sys.stderr)
