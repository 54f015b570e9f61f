"""``harness gate``: decide candidates against their baseline, or ``--promote`` runs to be the baseline."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.cli.arguments import config_or_exit, split_arguments

if TYPE_CHECKING:  # imported where used: `harness --help` stays fast
    import argparse

    from harness.config.commands import GateConfig
    from harness.config.schema import TrackingConfig
    from harness.gate import GateResult
    from harness.tracking.store import Store


def gate(arguments: list[str]) -> int:
    """``harness gate CANDIDATE... --baseline FILE|mlflow`` / ``harness gate --promote RUN... --baseline ...``."""
    from harness.config.commands import GateCommandConfig
    from harness.errors import HarnessError
    from harness.gate.sources import candidate_kind
    from harness.tracking.store import Store

    parser = _gate_parser()
    options = parser.parse_intermixed_args(arguments)
    overrides, named = split_arguments(options.items)
    if not named:
        parser.error("no candidate given")
    candidates = _once_each(named)
    if options.rerun < 0:
        parser.error(f"--rerun {options.rerun}: expected a number of re-measurements, 0 or more")
    ignored = [
        option
        for option, given in (("--rerun", options.rerun), ("--report", options.report),
                              ("--allow-hardware-mismatch", options.allow_hardware_mismatch))
        if given
    ]  # fmt: skip
    if options.promote and ignored:
        parser.error(f"--promote writes a baseline and decides nothing: {', '.join(ignored)} would be ignored")
    if options.report is not None and options.report.is_dir():
        parser.error(f"--report {options.report}: a folder; give the file to write, e.g. {options.report / 'gate.md'}")
    config = config_or_exit(GateCommandConfig, overrides, "gate")
    try:
        # The configured store is opened only to read from it: a gate over run folders against a baseline file
        # needs none (the verdicts are tagged in the stores the runs were logged to).
        run_ids = [candidate for candidate in candidates if candidate_kind(candidate) == "mlflow"]
        store = Store(config.tracking, config.paths) if options.baseline == "mlflow" or run_ids else None
        if options.promote:
            _promote(candidates, options.baseline, store, config.gate)
            return 0
        result = _decide(candidates, options, config.gate, store)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 4
    _publish_verdict(result, options, candidates[0], config.tracking, store)
    return result.exit_code


def _gate_parser() -> argparse.ArgumentParser:
    import argparse

    parser = argparse.ArgumentParser(
        prog="harness gate",
        description="Compare candidate runs with their baseline (same config hash, same hardware) and decide: "
        "exit 0 pass, 1 regression, 3 inconclusive, 4 unusable input (2: bad arguments or config). "
        "Rules: conf/gate/default.yaml.",
    )
    parser.add_argument(
        "items",
        nargs="+",
        metavar="CANDIDATE|KEY=VALUE",
        help="run folders, sweep folders or MLflow run ids; gate.* / tracking.* / paths.* overrides",
    )
    parser.add_argument(
        "--baseline",
        required=True,
        help="a baseline JSON file (reports/baselines/NAME.json), or 'mlflow' for runs tagged harness.baseline=true",
    )
    parser.add_argument(
        "--promote", action="store_true", help="make the given runs the baseline instead of gating them"
    )
    parser.add_argument(
        "--rerun", type=int, default=0, metavar="N", help="re-measure an inconclusive candidate run up to N times"
    )
    parser.add_argument(
        "--allow-hardware-mismatch", action="store_true", help="compare with a baseline from other hardware"
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=None,
        help="write the markdown table here (default: gate.md beside the first candidate)",
    )
    return parser


def _once_each(candidates: list[str]) -> list[str]:
    """Each candidate once, as first named: a run named by its folder and by its result.json was decided twice
    (two rows of each metric) and promoted twice (two baseline entries)."""
    from harness.gate.sources import is_run_id
    from harness.report import record_folder

    first: dict[str, str] = {}
    for candidate in candidates:
        first.setdefault(
            candidate if is_run_id(candidate) else str(record_folder(Path(candidate)).resolve()), candidate
        )
    return list(first.values())


def _promote(candidates: list[str], baseline: str, store: Store | None, settings: GateConfig) -> None:
    """Make the candidates the baseline: tag their MLflow runs, or write their entries into a baseline file.
    A run with fewer perf repeats than the gate decides on is promoted with a warning saying so."""
    from harness.errors import counted, named
    from harness.gate.evidence import PERF_METRICS
    from harness.gate.sources import candidate_evidence, promote_in_mlflow, write_baseline_file

    evidence = [item for candidate in candidates for item in candidate_evidence(candidate, store)]
    if baseline == "mlflow":
        assert store is not None  # opened for an MLflow baseline
        for candidate in candidates:
            promoted = promote_in_mlflow(store, candidate, max_other_load_pct=settings.max_other_load_pct)
            runs = "run" if len(promoted) == 1 else "runs"
            print(f"baseline: MLflow {runs} {', '.join(promoted)} tagged harness.baseline=true")
    else:
        write_baseline_file(Path(baseline), evidence, max_other_load_pct=settings.max_other_load_pct)
        print(f"baseline: {counted(len(evidence), 'entry', 'entries')} written to {baseline}")
    runs_with: dict[int, list[str]] = {}  # perf repeats -> the runs measured with that few: one warning each
    for item in evidence:
        repeats = max((len(item.metrics.get(name, ())) for name in PERF_METRICS), default=0)
        if 0 < repeats < settings.min_repeats:
            runs_with.setdefault(repeats, []).append(item.label)
    for repeats, labels in runs_with.items():
        each, them = (" each", "them") if len(labels) > 1 else ("", "it")
        print(
            f"warning: {named(labels, among=len(evidence))}: {counted(repeats, 'perf repeat')}{each}; the gate "
            f"decides speed with >= {settings.min_repeats} a side (gate.min_repeats), so against {them} speed gates "
            f"inconclusive: measure the baseline with perf.repeats={settings.min_repeats}",
            file=sys.stderr,
        )


def _decide(
    candidates: list[str], options: argparse.Namespace, settings: GateConfig, store: Store | None
) -> GateResult:
    """The gate's verdict on every candidate against its baseline (file entries, or tagged MLflow runs)."""
    from harness.gate import rerun_perf, run_gate
    from harness.gate.sources import (
        candidate_evidence,
        entries_for,
        every_mlflow_baseline,
        mlflow_baselines,
        read_baseline_file,
    )  # fmt: skip

    evidence = [item for candidate in candidates for item in candidate_evidence(candidate, store)]
    if options.baseline == "mlflow":
        assert store is not None  # opened for an MLflow baseline
        own = frozenset(item.tracked[1] for item in evidence if item.tracked and item.tracked[0] == store.uri)
        lookup = functools.partial(mlflow_baselines, store, candidates=own)
        every_baseline = functools.partial(every_mlflow_baseline, store, candidates=own)
    else:
        entries = read_baseline_file(Path(options.baseline))
        lookup = functools.partial(entries_for, entries)
        every_baseline = functools.partial(list, entries)
    return run_gate(
        evidence, lookup, settings, allow_hardware_mismatch=options.allow_hardware_mismatch,
        rerun=options.rerun, rerunner=rerun_perf, every_baseline=every_baseline,
    )  # fmt: skip


def _publish_verdict(
    result: GateResult, options: argparse.Namespace, first_candidate: str, tracking: TrackingConfig, store: Store | None
) -> None:
    """Print the table and the verdict, write ``gate.md`` (beside the first candidate's run or sweep folder, by
    default), and tag the verdicts in the stores the runs were logged to."""
    from harness.errors import unwritable_reason
    from harness.fileio import write_text_atomic
    from harness.gate import markdown
    from harness.gate.sources import tag_verdicts
    from harness.report import record_folder
    from harness.tracking.store import existing_store

    table = markdown(result)
    print(table, end="")
    folder = record_folder(Path(first_candidate))
    report = options.report or ((folder if folder.is_dir() else Path.cwd()) / "gate.md")
    try:
        report.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(report, table)
        print(f"gate report: {report}")
    except OSError as error:  # the verdict above stands, and so does its exit status
        print(f"warning: gate report not written to {report} ({unwritable_reason(report, error)})", file=sys.stderr)
    if tracking.enabled:
        clients = functools.partial(existing_store, tracking=tracking, opened=store)  # one call per store
        for failure in tag_verdicts(clients, result, baseline=options.baseline):
            print(f"warning: {failure}", file=sys.stderr)
    print(
        f"{'error: ' if result.exit_code else ''}gate {result.verdict}",
        file=sys.stderr if result.exit_code else sys.stdout,
    )
