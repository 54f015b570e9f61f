"""``harness <command> [hydra overrides]``: one Hydra app per command over the shared ``conf/`` tree.

``harness --help`` lists the commands; ``harness <command> --help`` shows a command's options. Pipeline
commands (``run``, ``build``) are Hydra apps (run folders, ``-m`` sweeps, launchers); utility commands
(``sync``, ``ui``) compose the same config tree without creating run folders.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `harness --help` stays fast
    import argparse

    from harness.config.schema import GateConfig, TrackingConfig
    from harness.gate import GateResult
    from harness.tracking import Store

UI_STOP_GRACE_S = 10.0


@dataclass(frozen=True)
class Command:
    """A CLI command: its one-line help and what runs it (arguments after the command name -> exit code)."""

    help: str
    main: Callable[[list[str]], int]


@dataclass
class _Session:
    """What one Hydra command has done so far, for its exit code and for a clean stop on Ctrl-C."""

    failed_jobs: list[str] = field(default_factory=list)
    sweep_dir: Path | None = None
    run_dir: Path | None = None
    config: Any = None


_session = _Session()


def _track(config: Any, run_dir: Path, sweep_dir: Path | None) -> None:
    """Log a finished run folder; a tracker failure is a warning, never a lost or failed run."""
    from harness.errors import HarnessError
    from harness.tracking import Store, log_run_dir, sync_command
    from harness.tracking.sweep import ui_hint

    try:
        if not config.tracking.enabled:
            return
        store = Store(config.tracking, config.paths)
        record, _ = log_run_dir(store, run_dir, sweep_dir=sweep_dir)
        print(f"  tracked    MLflow run {record.run_id}: {ui_hint(store, config.paths)}", flush=True)
    except HarnessError as error:
        later = sync_command(config.tracking, config.paths, run_dir)
        print(f"warning: run not tracked ({error}); result.json is kept: {later}", file=sys.stderr, flush=True)


def _pipeline_task(cfg: Any) -> None:
    """Run the pipeline for one composed config; print the summary and, last, the path of result.json."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from harness.config.store import plain
    from harness.perf.vamp import VAMP_FILE
    from harness.pipeline import run
    from harness.resolve import resolve_config
    from harness.summary import format_summary

    if threading.current_thread() is threading.main_thread():
        # In a SLURM job submitit ignores SIGTERM (its preemption warning); ``scancel`` must end the run as
        # interrupted, with its result.json written and its MLflow run closed before SLURM's SIGKILL.
        signal.signal(signal.SIGTERM, _interrupt)
    hydra_config = HydraConfig.get()
    config = resolve_config(plain(cfg))
    run_dir = Path(hydra_config.runtime.output_dir)
    multirun = hydra_config.mode == RunMode.MULTIRUN
    sweep_dir = Path(hydra_config.sweep.dir) if multirun else None  # type: ignore[arg-type]
    _session.sweep_dir, _session.run_dir, _session.config = sweep_dir, run_dir, config
    try:
        result = run(config, run_dir=run_dir)
    except KeyboardInterrupt:
        _track(config, run_dir, sweep_dir)  # the interrupted run is logged as KILLED, never left RUNNING
        raise
    print(format_summary(result), flush=True)
    if (run_dir / VAMP_FILE).exists():
        print((run_dir / VAMP_FILE).read_text(), end="", flush=True)
    _track(config, run_dir, sweep_dir)
    if result.error:
        print(f"error: {result.error.message}", file=sys.stderr, flush=True)
        _session.failed_jobs.append(result.run_dir)
    print(Path(result.run_dir) / "result.json", flush=True)
    if result.error and not multirun:
        raise SystemExit(1)


def _hydra_command(config_name: str, task: Callable[[Any], None], arguments: list[str]) -> int:
    import hydra

    from harness.config.store import CONF_DIR, register_schema
    from harness.errors import ConfigError, counted

    try:
        _check_jobs(config_name, arguments)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    register_schema()
    app = hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(task)
    sys.argv = [f"harness {config_name}", *arguments]
    global _session
    _session = _Session()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    from harness.tracking.sweep import STARTED_SWEEPS

    STARTED_SWEEPS.clear()
    logging.getLogger("submitit").addFilter(_SacctOnce())
    try:
        app()
    except KeyboardInterrupt:
        return _stop_interrupted()
    finally:
        signal.signal(signal.SIGTERM, previous)
    unsuccessful = dict.fromkeys(_session.failed_jobs, "failed")
    for sweep in STARTED_SWEEPS:
        unsuccessful.update(_unsuccessful_jobs(sweep))
    if unsuccessful:
        jobs = ", ".join(f"{job} ({status})" for job, status in sorted(unsuccessful.items()))
        print(f"error: {counted(len(unsuccessful), 'job')} did not succeed: {jobs}", file=sys.stderr)
        return 1
    return 0


def _unsuccessful_jobs(sweep_dir: Path) -> dict[str, str]:
    """Job folder -> status of each sweep job that did not end ``ok`` (wherever it ran: another process,
    another node; a job the cluster cancelled before it started is ``cancelled``)."""
    from harness.report import sweep_rows

    return {
        str((sweep_dir / row["job"]).resolve()): row["status"] for row in sweep_rows(sweep_dir) if row["status"] != "ok"
    }


class _SacctOnce(logging.Filter):
    """On a cluster without SLURM accounting, submitit warns on every poll that ``sacct`` failed; say it once."""

    def __init__(self) -> None:
        super().__init__()
        self.said = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        if self.said:
            return False
        self.said = True
        record.msg, record.args = (
            "SLURM accounting (sacct) is off on this cluster: job states are read from squeue (said once per sweep)",
            (),
        )
        return True


def _interrupt(*_: object) -> None:
    """SIGTERM (``kill``, ``scancel``) stops a run the way Ctrl-C does."""
    raise KeyboardInterrupt


def _stop_interrupted() -> int:
    """After Ctrl-C: close the sweep (summary, parent run KILLED), say in one line what was kept; exit 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the bookkeeping short
    from harness.errors import HarnessError, counted
    from harness.report import markdown_table, sweep_rows, write_summary
    from harness.tracking import Store, end_sweep, finish_sweep, sync_command

    where = _interrupted_where(_session.run_dir)
    sweep_dir = _session.sweep_dir
    if sweep_dir is None or not sweep_dir.is_dir():
        print(f"interrupted: {where}", file=sys.stderr)
        return 130
    rows: list[dict[str, str]] = []
    config = _session.config
    try:
        end_sweep(sweep_dir, "interrupted")
        rows = sweep_rows(sweep_dir)
        files = write_summary(rows, sweep_dir)
        print(f"\nsweep summary ({sweep_dir}):\n{markdown_table(rows)}", flush=True)
        if config is not None and config.tracking.enabled:
            finish_sweep(Store(config.tracking, config.paths), sweep_dir, files)
    except HarnessError as error:
        later = sync_command(config and config.tracking, config and config.paths, sweep_dir)
        print(f"warning: sweep not fully closed ({error}); later: {later}", file=sys.stderr)
    done = sum(row["status"] == "ok" for row in rows)
    print(f"interrupted: {where}; sweep {sweep_dir}: {counted(done, 'job')} finished before it", file=sys.stderr)
    return 130


def _interrupted_where(run_dir: Path | None) -> str:
    """Where Ctrl-C found the last run started here, as its result.json says (it may have come after the run
    ended: while it was being tracked, or between two jobs)."""
    from harness.errors import HarnessError
    from harness.result import RESULT_FILE, load_result

    if run_dir is None:
        return "no run had started"
    result_file = run_dir / RESULT_FILE
    if not result_file.is_file():
        return f"{run_dir} had not begun (no result.json)"
    try:
        status = load_result(run_dir).status
    except HarnessError as error:
        return str(error)
    return f"{result_file} (status {status})" if status == "interrupted" else f"after {result_file} (status {status})"


def _check_jobs(config_name: str, arguments: list[str]) -> None:
    """Compose and resolve every job's config before Hydra creates a run folder or a sweep starts.

    A config that does not resolve is not a run: it raises ``ConfigError`` naming the key, and in a sweep
    every invalid job with the overrides that make it differ, so none is a silent gap. Other sweepers and
    Hydra's informational flags (``--cfg``, ``--help``...) are left to Hydra.
    """
    from harness.config.store import compose, sweep_plan
    from harness.errors import ConfigError
    from harness.resolve import resolve_config

    multirun = any(argument in ("-m", "--multirun") for argument in arguments)
    overrides = [argument for argument in arguments if argument not in ("-m", "--multirun")]
    if any(argument.startswith("-") for argument in overrides):
        return
    if not multirun:
        _check_outputs(resolve_config(compose(overrides, config_name)).paths.path("outputs"))
        return
    plan = sweep_plan(overrides, config_name)
    if plan is None:
        return
    invalid = []
    outputs = set()
    for number, job in enumerate(plan.jobs):
        try:
            outputs.add(resolve_config(compose(list(job), config_name)).paths.path("outputs"))
        except ConfigError as error:
            invalid.append(f"sweep job {number} ({plan.varying(number)}): {error}")
    if len(invalid) == 1:
        raise ConfigError(invalid[0])
    if invalid:
        raise ConfigError(
            f"{len(invalid)} of {len(plan.jobs)} sweep jobs are invalid, nothing was run:\n  " + "\n  ".join(invalid)
        )
    for folder in sorted(outputs):
        _check_outputs(folder)


def _check_outputs(folder: Path) -> None:
    """Create ``paths.outputs`` now, where a failure is one line: Hydra creates the run folder under it before
    any harness code runs, and its failure there is a chain of tracebacks."""
    from harness.errors import ConfigError, unwritable_reason

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"paths.outputs={folder}: cannot create the run folders there ({unwritable_reason(folder, error, folder=True)})"
        ) from None


def _split(arguments: list[str]) -> tuple[list[str], list[str]]:
    """(hydra overrides, other arguments): an override is ``key=value`` that is not an existing path."""
    overrides = [argument for argument in arguments if "=" in argument and not Path(argument).exists()]
    return overrides, [argument for argument in arguments if argument not in overrides]


def _command_config(
    reads: type[Any], overrides: list[str], config_name: str = "run", *, overlays: tuple[str, ...] = ()
) -> Any:
    """What a command reads of the config (``harness.config.store.command_config``); one that does not resolve
    exits 2 with its one-line error, as for ``run``."""
    from harness.config.store import command_config
    from harness.errors import ConfigError

    try:
        return command_config(reads, overrides, config_name, overlays=overlays)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def _sync(arguments: list[str]) -> int:
    """``harness sync [overrides] DIR...``: log run or sweep folders that are not tracked yet, exactly once."""
    import argparse

    from harness.config.schema import StoreCommandConfig
    from harness.errors import HarnessError
    from harness.report import (
        SWEEP_FILE,
        folder_kind,
        job_dirs,
        missing_jobs,
        record_folder,
        sweep_rows,
        write_summary,
    )
    from harness.tracking import Store, finish_sweep

    parser = argparse.ArgumentParser(
        prog="harness sync",
        description="Log run folders (result.json) and sweep folders (sweep.json) to the tracking store. Folders "
        "already logged there are skipped and nothing logged is changed, so it is safe to repeat; jobs of a "
        "sweep without a result.json are listed.",
    )
    parser.add_argument("items", nargs="+", metavar="KEY=VALUE|DIR", help="overrides (tracking.uri=...) and folders")
    overrides, folders = _split(parser.parse_intermixed_args(arguments).items)
    if not folders:
        parser.error("no run or sweep folder given")
    config = _command_config(StoreCommandConfig, overrides)
    try:
        # Every folder first: a typo logs nothing and creates no store.
        kinds = {folder: folder_kind(folder) for folder in (record_folder(Path(item)) for item in folders)}
        store = Store(config.tracking, config.paths)
        failed = 0
        for folder, kind in kinds.items():
            if kind == "sweep":
                for job in job_dirs(folder):
                    failed += not _sync_run(store, job, folder)
                for number, reason in missing_jobs(folder).items():
                    print(f"{folder / str(number)}: no result.json, nothing to log: {reason}")
                files = write_summary(sweep_rows(folder), folder)
                parent = finish_sweep(store, folder, files, report_dir=folder / "report")
                print(f"sweep {folder}: parent run {parent}")
            else:
                failed += not _sync_run(store, folder, folder.parent if (folder.parent / SWEEP_FILE).exists() else None)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 1 if failed else 0


def _sync_run(store: Any, folder: Path, sweep_dir: Path | None) -> bool:
    """Log one run folder; a result that cannot be read is named and the next folder is still synced (a store
    that fails stops the command: every other folder would fail the same way)."""
    from harness.errors import DataError
    from harness.tracking import log_run_dir

    try:
        record, logged = log_run_dir(store, folder, sweep_dir=sweep_dir)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return False
    print(f"{folder}: {'logged as' if logged else 'already logged as'} {record.run_id}")
    return True


def _ui(arguments: list[str]) -> int:
    """``harness ui [--port N] [overrides]``: the MLflow UI on the configured store, on 127.0.0.1."""
    import argparse

    from harness.config.schema import StoreCommandConfig
    from harness.errors import HarnessError
    from harness.tracking import Store, resolve_store, runs_table_url

    parser = argparse.ArgumentParser(
        prog="harness ui",
        description="Serve the MLflow UI for the configured tracking store on 127.0.0.1 until Ctrl-C. "
        "It opens on the runs table of the harness's experiment.",
    )
    parser.add_argument("--port", type=_port, default=5000, help="TCP port on 127.0.0.1 (default 5000)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. tracking.uri=...")
    options = parser.parse_intermixed_args(arguments)
    config = _command_config(StoreCommandConfig, options.overrides)
    configs = config.tracking, config.paths
    try:
        uri, artifacts = resolve_store(*configs)
        if uri.startswith(("http://", "https://")):
            print(f"the tracking store is a server: open {uri}")
            return 0
        # Before the server starts, so that the two never create a new store's tables at the same time.
        experiment_id = Store(*configs).experiment_id  # created as a classic ML experiment if it is new
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    busy = _port_in_use(options.port)
    if busy:
        print(
            f"error: port {options.port} on 127.0.0.1 is not free ({busy}): choose another with --port N",
            file=sys.stderr,
        )
        return 1
    command = [
        sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
        "--port", str(options.port), "--workers", "1",
    ]  # fmt: skip
    if artifacts:
        command += ["--default-artifact-root", artifacts]
    # The UI serves runs only: MLflow's job runner and its task-queue consumers are not needed.
    environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(command, env=environment, start_new_session=True)
    previous = signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        url = runs_table_url(f"http://127.0.0.1:{options.port}", experiment_id)
        print(f"MLflow UI on {url} (store {uri}); Ctrl-C stops it", flush=True)
        code = server.wait()
        print(f"error: the MLflow UI exited with code {code}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        _stop_group(server)
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def _port(text: str) -> int:
    import argparse

    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a TCP port, 1 to 65535")
    return int(text)


def _port_in_use(port: int) -> str | None:
    """Why ``port`` cannot be bound on 127.0.0.1 (e.g. 'Address already in use'), or ``None`` when it can."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as error:
            return error.strerror or str(error)
    return None


def _stop_group(server: subprocess.Popen[bytes]) -> None:
    """Stop the UI and every worker it started (its own process group): SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(server.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + UI_STOP_GRACE_S
        while time.monotonic() < deadline:
            server.poll()  # reaps the group leader: a zombie would still count as a member of the group
            try:
                os.killpg(server.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


SYNTHETIC_FLAGS = {"images": "synthetic_images", "queries": "synthetic_queries", "seed": "synthetic_seed"}


def _data(arguments: list[str]) -> int:
    """``harness data download NAME`` / ``harness data synthetic``, with ``dataset.*`` and ``paths.*`` overrides."""
    import argparse

    from harness.config.schema import DataCommandConfig
    from harness.config.store import OVERLAY_GROUPS
    from harness.data.datasets import DATASETS, download_dataset
    from harness.data.synthetic import dataset_location, write_synthetic
    from harness.errors import HarnessError, counted

    parser = argparse.ArgumentParser(
        prog="harness data",
        description="Retrieval datasets in the revisitop layout, where runs look for them: dataset.root, else "
        "paths.data (both settable as KEY=VALUE overrides, as for harness run).",
    )
    actions = parser.add_subparsers(dest="action", required=True)
    download = actions.add_parser("download", help="fetch a Revisited Oxford/Paris dataset (resumable, verified)")
    download.add_argument("name", choices=sorted(DATASETS))
    synthetic = actions.add_parser(
        "synthetic",
        help="write the synthetic dataset made from shipped photos",
        description="Write the synthetic set a run with dataset=synthetic uses: its size and seed are "
        "dataset.synthetic_images / synthetic_queries / synthetic_seed (60, 5, 0 unless overridden, e.g. by "
        "debug=tiny: 16, 2, 0).",
    )
    for flag, key in SYNTHETIC_FLAGS.items():
        synthetic.add_argument(f"--{flag}", type=int, default=None, help=f"dataset.{key}")
    for action in (download, synthetic):
        action.add_argument(
            "--root", type=Path, default=None, help="dataset root (default: dataset.root, else paths.data)"
        )
        action.add_argument(
            "overrides",
            nargs="*",
            metavar="KEY=VALUE",
            help="dataset.* / paths.* overrides, debug=... or +experiment=...",
        )
    given, rest = _split(arguments)  # overrides anywhere, also after an option (argparse takes them only before)
    options = parser.parse_args(rest)
    overrides = [*given, *options.overrides]
    overrides.append(f"dataset.name={options.name if options.action == 'download' else 'synthetic'}")
    if options.action == "synthetic":
        overrides += [
            f"dataset.{key}={getattr(options, flag)}"
            for flag, key in SYNTHETIC_FLAGS.items()
            if getattr(options, flag) is not None
        ]
    config = _command_config(DataCommandConfig, overrides, overlays=OVERLAY_GROUPS)
    root, name = dataset_location(config.dataset, config.paths)
    root = options.root or root
    try:
        if options.action == "download":
            truth = download_dataset(name, root)
        else:
            dataset = config.dataset
            truth = write_synthetic(
                root, images=dataset.synthetic_images, queries=dataset.synthetic_queries, seed=dataset.synthetic_seed
            )
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    images, queries = counted(len(truth.imlist), "database image"), counted(len(truth.qimlist), "query", "queries")
    print(f"{root / name}: {images}, {queries}")
    return 0


def _gate(arguments: list[str]) -> int:
    """``harness gate CANDIDATE... --baseline FILE|mlflow`` / ``harness gate --promote RUN... --baseline ...``."""
    from harness.config.schema import GateCommandConfig
    from harness.errors import HarnessError
    from harness.gate.sources import candidate_kind
    from harness.tracking import Store

    parser = _gate_parser()
    options = parser.parse_intermixed_args(arguments)
    overrides, candidates = _split(options.items)
    if not candidates:
        parser.error("no candidate given")
    if options.report is not None and options.report.is_dir():
        parser.error(f"--report {options.report}: a folder; give the file to write, e.g. {options.report / 'gate.md'}")
    config = _command_config(GateCommandConfig, overrides, "gate")
    try:
        # The configured store is opened only to read from it: a gate over run folders against a baseline file
        # needs none (the verdicts are tagged in the stores the runs were logged to).
        run_ids = [candidate for candidate in candidates if candidate_kind(candidate) == "mlflow"]
        store = Store(config.tracking, config.paths) if options.baseline == "mlflow" or run_ids else None
        if options.promote:
            _promote(candidates, options.baseline, store)
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


def _promote(candidates: list[str], baseline: str, store: Store | None) -> None:
    """Make the candidates the baseline: tag their MLflow runs, or write their entries into a baseline file."""
    from harness.errors import counted
    from harness.gate.sources import candidate_evidence, promote_in_mlflow, write_baseline_file

    if baseline == "mlflow":
        assert store is not None  # opened for an MLflow baseline
        for candidate in candidates:
            promoted = promote_in_mlflow(store, candidate)
            runs = "run" if len(promoted) == 1 else "runs"
            print(f"baseline: MLflow {runs} {', '.join(promoted)} tagged harness.baseline=true")
        return
    evidence = [item for candidate in candidates for item in candidate_evidence(candidate, store)]
    write_baseline_file(Path(baseline), evidence)
    print(f"baseline: {counted(len(evidence), 'entry', 'entries')} written to {baseline}")


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
        rerun=max(0, options.rerun), rerunner=rerun_perf, every_baseline=every_baseline,
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
    from harness.tracking import existing_store

    table = markdown(result)
    print(table, end="")
    folder = record_folder(Path(first_candidate))
    report = options.report or ((folder if folder.is_dir() else Path.cwd()) / "gate.md")
    try:
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


def _report(arguments: list[str]) -> int:
    """``harness report PATH... [--out DIR]``: plots and an index over run folders, sweep folders or MLflow."""
    import argparse

    from harness.config.schema import StoreCommandConfig
    from harness.errors import DataError, HarnessError, counted, unwritable_reason
    from harness.report import SWEEP_FILE, read_sweep_record, record_folder
    from harness.report.render import folder_runs, write_report
    from harness.tracking import Store, download_runs, existing_store

    parser = argparse.ArgumentParser(
        prog="harness report",
        description="Plots (PNG) and an index.md / self-contained index.html over run folders, sweep folders, or "
        "'mlflow' (every run of the configured experiment). A sweep's report is also attached to its parent run.",
    )
    parser.add_argument(
        "items",
        nargs="+",
        metavar="PATH|mlflow|KEY=VALUE",
        help="run or sweep folders, or 'mlflow'; tracking.* / paths.* overrides",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="report folder (default: reports/<name of the first folder>)"
    )
    options = parser.parse_intermixed_args(arguments)
    overrides, sources = _split(options.items)
    if not sources:
        parser.error("nothing to report on")
    sources = [source if source == "mlflow" else str(record_folder(Path(source))) for source in sources]
    config = _command_config(StoreCommandConfig, overrides)
    tracking, paths = config.tracking, config.paths
    try:
        found = folder_runs([Path(source) for source in sources if source != "mlflow"])  # a typo opens no store
        runs = list(found.runs)
        store = Store(tracking, paths) if "mlflow" in sources else None
        name = "mlflow-" + tracking.experiment if sources[0] == "mlflow" else Path(sources[0]).resolve().name
        folder = options.out or Path("reports") / name
        created = not folder.exists()
        try:  # before any download: a folder that cannot be made fails in one line, not after the work
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            why = unwritable_reason(folder, error, folder=True)
            raise DataError(f"{folder}: cannot write the report there ({why})") from None
        if "mlflow" in sources:
            assert store is not None
            downloaded = download_runs(store, folder / "runs")
            runs += downloaded.runs
            found.unreadable.update(downloaded.unreadable)
        if not runs and created:  # no report: no empty folder left behind either
            shutil.rmtree(folder, ignore_errors=True)
        if not runs and found.unreadable:
            raise DataError(next(iter(found.unreadable.values())))
        if not runs:
            places = [
                f"MLflow experiment {tracking.experiment!r}" if source == "mlflow" else source for source in sources
            ]
            raise DataError(f"nothing to report: no run in {', '.join(places)}")
        report = write_report(runs, folder, title=f"report {name}", unreadable=found.unreadable)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(
        f"report: {report.index_md} ({counted(len(report.plots), 'plot')}, {counted(len(runs), 'run')}; "
        "index.html is self-contained)"
    )
    sweeps = [Path(source) for source in sources if (Path(source) / SWEEP_FILE).exists()] if tracking.enabled else []
    for sweep in sweeps:  # in the store the sweep was logged to, whatever store tracking.* names
        try:
            record = read_sweep_record(sweep)
            uri, parent = str(record.get("uri") or ""), str(record.get("parent_run_id") or "")
            if not (uri and parent):
                continue
            client = existing_store(uri, tracking, opened=store)
            client.call(functools.partial(client.client.log_artifacts, parent, str(folder), artifact_path="report"))
            print(f"attached to MLflow parent run {parent} in {uri} (artifacts/report)")
        except HarnessError as error:
            print(f"warning: report not attached to the parent run of sweep {sweep} ({error})", file=sys.stderr)
    for why in found.unreadable.values():
        print(f"error: {why} (a row that says so in the report; the other runs are in it)", file=sys.stderr)
    return 1 if found.unreadable else 0


def _eval_features(arguments: list[str]) -> int:
    """``harness eval-features --gnd FILE (--features F.npz | --query Q.npy --database D.npy | --folder DIR)``."""
    import argparse

    from harness.accuracy.offline import evaluate_files
    from harness.errors import HarnessError

    parser = argparse.ArgumentParser(
        prog="harness eval-features", description="revisitop metrics for precomputed descriptors"
    )
    parser.add_argument("--gnd", type=Path, required=True, help="gnd_<dataset>.pkl")
    parser.add_argument("--features", type=Path, help=".npz with 'query' and 'database' matrices")
    parser.add_argument("--query", type=Path, help="query descriptors [Q, D] .npy")
    parser.add_argument("--database", type=Path, help="database descriptors [N, D] .npy")
    parser.add_argument("--folder", type=Path, help="folder of per-image .npz files (vamp --path_output)")
    parser.add_argument("--normalization", choices=("per_image", "per_dimension"), default="per_image")
    parser.add_argument("--out", type=Path, help="write the metrics JSON here")
    options = parser.parse_args(arguments)
    pair = (options.query, options.database)
    forms = [options.features is not None, options.folder is not None, pair != (None, None)]
    if forms.count(True) != 1 or (forms[2] and None in pair):
        parser.error("give one of --features F.npz, --query Q.npy with --database D.npy, or --folder DIR")
    try:
        report = evaluate_files(
            options.gnd, features=options.features, query=options.query, database=options.database,
            folder=options.folder, normalization=options.normalization, output=options.out,
        )  # fmt: skip
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for warning in report["warnings"]:  # type: ignore[attr-defined]
        print(f"warning: {warning}", file=sys.stderr)
    for setup in ("easy", "medium", "hard"):
        values: dict[str, float] = report[setup]  # type: ignore[assignment]
        print(
            f"{setup:<6} mAP {values['map']:6.2f}  mP@1 {values['mp1']:6.2f}  mP@5 {values['mp5']:6.2f}  mP@10 {values['mp10']:6.2f}"
        )
    return 0


def _vamp_parse(arguments: list[str]) -> int:
    """``harness vamp-parse [--log] [overrides] FILE...``: saved vamp outputs to JSON (and to MLflow runs)."""
    import argparse
    import json

    from harness.config.schema import StoreCommandConfig
    from harness.errors import HarnessError
    from harness.perf.vamp import parse_vamp, perf_fields

    parser = argparse.ArgumentParser(
        prog="harness vamp-parse",
        description="Parse saved vamp outputs (any version's layout) to JSON on stdout; with --log, log each as an "
        "MLflow run (once per file content) with its numbers as metrics and the file as an artifact.",
    )
    parser.add_argument("--log", action="store_true", help="also log each file to the tracking store")
    parser.add_argument("items", nargs="+", metavar="KEY=VALUE|FILE", help="overrides (tracking.uri=...) and files")
    options = parser.parse_intermixed_args(arguments)
    overrides, files = _split(options.items)
    if not files:
        parser.error("no vamp output file given")
    if overrides and not options.log:
        parser.error(f"{overrides[0]}: overrides choose the tracking store, which only --log writes to")
    config = _command_config(StoreCommandConfig, overrides) if options.log else None
    try:
        parsed = []
        for path in map(Path, files):
            try:
                text = path.read_text(errors="replace")
            except OSError as error:
                raise HarnessError(f"{path}: cannot read ({error.strerror})") from None
            parsed.append((path, perf_fields(parse_vamp(text, source=str(path)))))
        print(json.dumps([{"file": str(path), **report} for path, report in parsed], indent=2, ensure_ascii=False))
        if config is not None:
            from harness.tracking import Store, log_vamp_file

            store = Store(config.tracking, config.paths)
            for path, report in parsed:
                run_id, logged = log_vamp_file(store, path, report)
                print(f"{path}: {'logged as' if logged else 'already logged as'} {run_id}", file=sys.stderr)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


COMMANDS: dict[str, Command] = {
    "run": Command(
        "run the configured stages (build, perf, accuracy) for one config, or a sweep with -m",
        functools.partial(_hydra_command, "run", _pipeline_task),
    ),
    "build": Command(
        "build and parity-check the deployable artifact only",
        functools.partial(_hydra_command, "build", _pipeline_task),
    ),
    "eval-features": Command(
        "revisitop metrics for precomputed descriptors (.npy/.npz or per-image .npz folder)", _eval_features
    ),
    "vamp-parse": Command("saved vamp outputs to JSON (--log: and to MLflow runs)", _vamp_parse),
    "data": Command("download Revisited Oxford/Paris, or write the synthetic dataset (revisitop layout)", _data),
    "gate": Command("regression gate: compare runs with their baseline (statistics over repeats for perf)", _gate),
    "report": Command("plots and an index (md + self-contained html) over run folders, sweeps or MLflow", _report),
    "sync": Command("log run or sweep folders that are not tracked yet (idempotent)", _sync),
    "ui": Command("start the MLflow UI on the configured store (127.0.0.1, --port N)", _ui),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: harness <command> [hydra overrides] [-m]", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
    lines += ["", "`harness run --help` shows the config groups and options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the command named by the first argument."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments:  # a usage error, as for an unknown command: a script that forgot its command must not pass
        print(usage(), file=sys.stderr)
        return 2
    if arguments[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = arguments[0], arguments[1:]
    if name not in COMMANDS:
        from harness.errors import unknown_name_message

        print(f"error: {unknown_name_message('command', name, COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[name].main(rest)
    except KeyboardInterrupt:  # run and build close their runs and sweeps themselves and return 130
        print(f"interrupted: harness {name} stopped before it finished", file=sys.stderr)
        return 130


def entry_point() -> None:
    try:
        code = main()
    finally:
        # On exit the interpreter runs one last cycle collection over every object still alive: with torch,
        # MLflow and SQLAlchemy loaded that takes over a second of every command. Python does not promise that
        # objects alive at exit are finalized, and everything the harness writes is closed by now, so those
        # objects are frozen out of that collection.
        gc.freeze()
    sys.exit(code)
