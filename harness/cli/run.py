"""``harness run`` / ``harness build``: Hydra apps over ``conf/`` (run folders, ``-m`` sweeps, launchers) that run
the pipeline per job, print its summary, track it, and close a sweep cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import itertools
import logging
import signal
import sys
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn


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
    from harness.tracking import log_run_dir
    from harness.tracking.store import Store, sync_command
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


def pipeline_task(cfg: Any) -> None:
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
        signal.signal(signal.SIGTERM, interrupt)
    hydra_config = HydraConfig.get()
    config = resolve_config(plain(cfg))
    run_dir = Path(hydra_config.runtime.output_dir)
    multirun = hydra_config.mode == RunMode.MULTIRUN
    if multirun and SIDE_BY_SIDE_LAUNCHER in str(hydra_config.launcher.get("_target_", "")):
        # Its jobs run at once and write to the terminal they share: their bars overwrote each other on one line.
        config = replace(config, progress=False)
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


def rerun_command(arguments: list[str]) -> int:
    """``harness rerun RUN [overrides] [-m] [--print]``: a run's saved config composed again (the overrides that
    give it back, checked setting by setting), with the user's overrides after them, run as ``harness run`` runs
    it; ``--print`` prints the command and runs nothing."""
    import shlex

    from harness.config.reproduce import override_value, reproducing_overrides, with_own_overrides
    from harness.errors import HarnessError
    from harness.report import folder_kind, record_folder
    from harness.result import RESULT_FILE, load_result

    usage = (
        "usage: harness rerun RUN [KEY=VALUE ...] [-m] [--print]\n\nRuns a run again: the config its result.json "
        "saved (RUN: the run folder or that file), composed as harness run overrides and checked to give every saved "
        "setting back, with your overrides after it. --print prints the command and runs nothing."
    )
    if arguments[:1] in (["-h"], ["--help"]):
        print(usage)
        return 0
    if not arguments or arguments[0].startswith("-"):
        print(usage, file=sys.stderr)
        return 2
    folder, own = record_folder(Path(arguments[0])), [item for item in arguments[1:] if item != "--print"]
    try:
        if folder_kind(folder) == "sweep":
            raise HarnessError(f"{folder}: a sweep: rerun one of its jobs ({folder}/N), or the sweep with harness run")
        result = load_result(folder)
    except HarnessError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        saved = reproducing_overrides(result.to_dict()["config"], result.config.task)  # type: ignore[arg-type]
    except HarnessError as error:
        print(f"error: {folder / RESULT_FILE}: its config cannot be run again: {error}", file=sys.stderr)
        return 2
    overrides = with_own_overrides([*saved, f"rerun_of={override_value(result.run_uid)}"], own)
    print(f"rerun of {folder / RESULT_FILE}: harness {result.config.task} {shlex.join(overrides)}", flush=True)
    if "--print" in arguments:
        return 0
    return hydra_command(result.config.task, pipeline_task, overrides)


# The launcher whose jobs run at once on this machine, each with the terminal's stderr (`hydra/launcher=parallel`).
SIDE_BY_SIDE_LAUNCHER = "JoblibLauncher"

# Hydra's flags that each make a mode of their own (a run, a sweep, a config print, ...): one at a time.
HYDRA_MODES = ("-r", "--run", "-m", "--multirun", "-c", "--cfg", "-i", "--info", "-sc", "--shell-completion")


def hydra_command(config_name: str, task: Callable[[Any], None], arguments: list[str]) -> int:
    import hydra

    from harness.config.store import CONF_DIR, register_schema
    from harness.errors import ConfigError, counted

    arguments = _flags_first(arguments)
    refused = _refused_flags(arguments) or _refused_stages(config_name, arguments)
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        return 2
    # The check resolves every job once more than its run will: what resolving logs (a deprecated key) is said
    # by the run, in its log, not also here, before logging is set up, once per job.
    logging.disable(logging.WARNING)
    try:
        _check_jobs(config_name, arguments)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        logging.disable(logging.NOTSET)
    register_schema()
    app = hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(task)
    sys.argv = [f"harness {config_name}", *arguments]
    global _session
    _session = _Session()
    from harness.tracking.sweep import STARTED_SWEEPS

    STARTED_SWEEPS.clear()
    logging.getLogger("submitit").addFilter(_SacctOnce())
    try:
        app()
    except KeyboardInterrupt:
        return _stop_interrupted()
    unsuccessful = dict.fromkeys(_session.failed_jobs, "failed")
    for sweep in STARTED_SWEEPS:
        unsuccessful.update(_unsuccessful_jobs(sweep))
    if unsuccessful:
        jobs = ", ".join(f"{job} ({status})" for job, status in sorted(unsuccessful.items()))
        print(f"error: {counted(len(unsuccessful), 'job')} did not succeed: {jobs}", file=sys.stderr)
        return 1
    return 0


def _flags_first(arguments: list[str]) -> list[str]:
    """Hydra's flags (with their values) before its overrides, each group in the order given.

    Hydra's parser takes its overrides in one stretch: `harness run model=vitl14 -m perf.batch=1,8` stopped with
    "unrecognized arguments: perf.batch=1,8". Arguments its parser refuses are left as they are, for Hydra to
    say why.
    """
    parsed = _parsed(arguments)
    if parsed is None:
        return arguments
    overrides = parsed.overrides
    flags, pending = [], list(overrides)
    for argument in arguments:
        if pending and argument == pending[0]:
            pending.pop(0)
        else:
            flags.append(argument)
    return [*flags, *overrides]


def _parsed(arguments: list[str]) -> Any | None:
    """Hydra's own reading of the command line (its flags, and ``overrides``), or ``None`` where its parser
    refuses it (Hydra then says why)."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()

    def refuse(message: str) -> NoReturn:
        raise ValueError(message)

    parser.error = refuse  # type: ignore[method-assign]
    try:
        return parser.parse_intermixed_args(arguments)
    except ValueError:
        return None


def _refused_flags(arguments: list[str]) -> str | None:
    """Why Hydra would stop on these flags with a traceback instead of a message, or ``None``."""
    modes = [argument for argument in arguments if argument.split("=", 1)[0] in HYDRA_MODES]
    if len(modes) > 1:  # a ValueError
        flags = ", ".join(f"{long} ({short})" for short, long in zip(HYDRA_MODES[::2], HYDRA_MODES[1::2], strict=True))
        return f"{' and '.join(modes)}: Hydra takes one of {flags} at a time"
    shown = [following for flag, following in itertools.pairwise(arguments) if flag in ("-c", "--cfg")]
    shown += [argument.split("=", 1)[1] for argument in arguments if argument.startswith("--cfg=")]
    if "hydra" in shown and "--resolve" in arguments:
        # The hydra node is resolved alone, where the run folder's ${paths.outputs} is not: an InterpolationKeyError.
        return (
            "--cfg hydra --resolve: the run folders are under paths.outputs, which Hydra resolves only in the whole "
            "config: use --cfg all --resolve"
        )
    return None


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


def interrupt(*_: object) -> None:
    """SIGTERM (``kill``, ``scancel``) stops a run the way Ctrl-C does."""
    raise KeyboardInterrupt


def _stop_interrupted() -> int:
    """After Ctrl-C: close the sweep (summary, parent run KILLED), say in one line what was kept; exit 130."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the bookkeeping short
    from harness.errors import HarnessError, counted
    from harness.report import markdown_table, sweep_rows, write_summary
    from harness.tracking import end_sweep, finish_sweep
    from harness.tracking.store import Store, sync_command

    where = interrupted_where(_session.run_dir)
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


def interrupted_where(run_dir: Path | None) -> str:
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


def _refused_stages(config_name: str, arguments: list[str]) -> str | None:
    """Why ``harness build`` refuses a ``stages`` override (it ran the other stages as ``harness run`` would)."""
    staged = next((item for item in arguments if item.lstrip("+~").split("=", 1)[0] == "stages"), None)
    if config_name != "build" or staged is None or staged.split("=", 1)[-1].replace(" ", "") == "[build]":
        return None
    return f"{staged}: harness build runs the build stage only; harness run {staged} runs the stages named"


def _check_jobs(config_name: str, arguments: list[str]) -> None:
    """Compose and resolve every job's config before Hydra creates a run folder or a sweep starts.

    A config that does not resolve is not a run: it raises ``ConfigError`` naming the key, and in a sweep
    every invalid job with the overrides that make it differ, so none is a silent gap. Other sweepers and
    Hydra's informational flags (``--cfg``, ``--help``...) are left to Hydra.
    """
    from harness.config.store import compose_with_hydra, sweep_plan
    from harness.errors import ConfigError
    from harness.resolve import resolve_config

    multirun = any(argument in ("-m", "--multirun") for argument in arguments)
    overrides = [argument for argument in arguments if argument not in ("-m", "--multirun")]
    if any(argument.startswith("-") for argument in overrides):
        parsed = _parsed(arguments)
        if parsed is not None and parsed.cfg is not None:
            # What --cfg shows must compose: Hydra's own report of one that does not is several lines and exit 1
            # (a traceback for `model=null`). Composing only: --cfg also shows a config that does not resolve.
            compose_with_hydra(parsed.overrides, config_name)
        return
    if not multirun:
        composed, hydra = compose_with_hydra(overrides, config_name)
        outputs = resolve_config(composed).paths.path("outputs")
        _check_hydra_folders(hydra, multirun=False, outputs=[outputs])
        return
    plan = sweep_plan(overrides, config_name)
    if plan is None:
        return
    invalid = []
    every_outputs = set()
    for number, job in enumerate(plan.jobs):
        try:
            composed, hydra = compose_with_hydra(list(job), config_name)
            every_outputs.add(resolve_config(composed).paths.path("outputs"))
        except ConfigError as error:
            invalid.append(f"sweep job {number} ({plan.varying(number)}): {error}")
    if len(invalid) == 1:
        raise ConfigError(invalid[0])
    if invalid:
        raise ConfigError(
            f"{len(invalid)} of {len(plan.jobs)} sweep jobs are invalid, nothing was run:\n  " + "\n  ".join(invalid)
        )
    _check_hydra_folders(hydra, multirun=True, outputs=sorted(every_outputs))  # the sweep's, as any job composes it


# Where a sweep's jobs go: every command that reads a sweep (its summary, sync, gate, report) finds job N there.
JOB_SUBDIR = "${hydra.job.num}"


def _check_hydra_folders(hydra: Any, *, multirun: bool, outputs: list[Path]) -> None:
    """Refuse a run folder that holds a finished run's ``result.json`` (a sweep folder, a sweep's ``sweep.json``):
    only a fixed ``hydra.run.dir`` / ``hydra.sweep.dir`` can, and the new run would write over that result while
    the earlier run's ``tracking.json`` made it pass for logged: "tracked" named the MLflow run holding the
    earlier numbers, and the new ones were in no store. Refuse a sweep's job folders named otherwise than by
    number too (its jobs ran, and the sweep called every one of them missing), and a job that changes into its
    run folder (``paths`` relative to it put a store in every run folder). Then create the ``outputs`` folders
    and try the run (sweep) folder, each failure one line."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from harness.errors import ConfigError
    from harness.report import SWEEP_FILE
    from harness.result import RESULT_FILE

    if hydra.job.chdir:
        raise ConfigError(
            "hydra.job.chdir=true: paths resolve against the folder harness is started in; a job moved into its "
            "run folder made its own MLflow store and dataset copy there: keep hydra.job.chdir=false"
        )
    subdir = typing.cast(dict, OmegaConf.to_container(hydra.sweep, resolve=False))["subdir"]  # as written
    if multirun and subdir != JOB_SUBDIR:
        raise ConfigError(
            f"hydra.sweep.subdir={subdir}: a sweep's job N is read from <sweep dir>/N (its summary, sync, gate, "
            f"report): keep hydra.sweep.subdir={JOB_SUBDIR}"
        )
    record, key, what = (SWEEP_FILE, "hydra.sweep.dir", "sweep") if multirun else (RESULT_FILE, "hydra.run.dir", "run")
    try:
        folder = Path(OmegaConf.select(hydra, key.removeprefix("hydra."), throw_on_missing=True))
    except OmegaConfBaseException as error:  # an interpolation that fails: Hydra's own report was a traceback
        raise ConfigError(f"{key}: {str(error).splitlines()[0]}") from None
    if (folder / record).exists():
        raise ConfigError(
            f"{key}={folder}: holds an earlier {what} ({record}); a {what} writes a folder of its own, so that "
            f"one's results are kept: choose another {key}, or remove the folder"
        )
    # Nothing is created before every refusal above: a refused run leaves no folder behind.
    for outputs_folder in outputs:
        _create_folder(
            outputs_folder, f"paths.outputs={outputs_folder}: cannot create the run folders there", keep=True
        )
    # Its name may hold the time, which Hydra reads again when it creates the folder: the one made here goes.
    _create_folder(folder, f"{key}={folder}: cannot create the {what} folder", keep=False)


def _create_folder(folder: Path, failure: str, *, keep: bool) -> None:
    """Create ``folder`` now, where a failure is one line (``failure``, then why): Hydra creates the run or sweep
    folder before any harness code runs, and its failure there was a chain of tracebacks. Without ``keep`` it is
    removed again if it was not there before (its parents stay: Hydra makes them next)."""
    from harness.errors import ConfigError, unwritable_reason

    existed = folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{failure} ({unwritable_reason(folder, error, folder=True)})") from None
    if not keep and not existed:
        folder.rmdir()
