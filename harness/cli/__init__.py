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
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from harness.cli.cache import cache
from harness.cli.data import data, eval_features, vamp_parse
from harness.cli.gate import gate
from harness.cli.report import report
from harness.cli.run import hydra_command, interrupt, pipeline_task, rerun_command
from harness.cli.store import sync, ui


@dataclass(frozen=True)
class Command:
    """A CLI command: its one-line help and what runs it (arguments after the command name -> exit code)."""

    help: str
    main: Callable[[list[str]], int]


COMMANDS: dict[str, Command] = {
    "run": Command(
        "run the configured stages (build, perf, accuracy) for one config, or a sweep with -m",
        functools.partial(hydra_command, "run", pipeline_task),
    ),
    "build": Command(
        "build and parity-check the deployable artifact only",
        functools.partial(hydra_command, "build", pipeline_task),
    ),
    "rerun": Command(
        "run a run's saved config again (from its result.json), with overrides after it; --print: the command only",
        rerun_command,
    ),
    "eval-features": Command(
        "revisitop metrics for precomputed descriptors (.npy/.npz or per-image .npz folder)", eval_features
    ),
    "vamp-parse": Command("saved vamp outputs to JSON (--log: and to MLflow runs)", vamp_parse),
    "data": Command("download Revisited Oxford/Paris, or write the synthetic dataset (revisitop layout)", data),
    "gate": Command("regression gate: compare runs with their baseline (statistics over repeats for perf)", gate),
    "report": Command("plots and an index (md + self-contained html) over run folders, sweeps or MLflow", report),
    "cache": Command("list the build cache; --remove-unused DAYS removes the builds no run has used since", cache),
    "sync": Command("log run or sweep folders that are not tracked yet (idempotent)", sync),
    "ui": Command("start the MLflow UI on the configured store (127.0.0.1, --port N)", ui),
}


def usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: harness <command> [hydra overrides] [-m]  |  harness --version", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
    lines += ["", "`harness run --help` shows the config groups and options."]
    return "\n".join(lines)


def mask_passwords_in_logs() -> None:
    """Every log record's message with the passwords of URLs masked, whichever logger made it and however Hydra
    configures the handlers: Hydra's launchers log each job's overrides verbatim, a ``tracking.uri`` with them."""
    from harness.errors import masked

    make = logging.getLogRecordFactory()
    if getattr(make, "masks_passwords", False):  # a second command in one process (the Python API, tests)
        return

    def record_masked(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format is the handler's to report, as it would be without this factory
            return record
        if "@" in message:
            record.msg, record.args = masked(message), None
        return record

    record_masked.masks_passwords = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(record_masked)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the command named by the first argument."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments:  # a usage error, as for an unknown command: a script that forgot its command must not pass
        print(usage(), file=sys.stderr)
        return 2
    if arguments[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if arguments[0] in ("-V", "--version"):
        from harness import __version__

        print(f"harness {__version__}")
        return 0
    name, rest = arguments[0], arguments[1:]
    if name not in COMMANDS:
        from harness.errors import unknown_name_message

        print(f"error: {unknown_name_message('command', name, COMMANDS)}", file=sys.stderr)
        return 2
    mask_passwords_in_logs()
    # SIGTERM (``kill``, ``timeout``, ``scancel``) stops every command the way Ctrl-C does, so its cleanup runs:
    # a staging folder removed, a UI's server stopped, a run's result.json written and its MLflow run closed.
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        return COMMANDS[name].main(rest)
    except KeyboardInterrupt:  # run and build close their runs and sweeps themselves and return 130
        print(f"interrupted: harness {name} stopped before it finished", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def entry_point() -> None:
    try:
        code = main()
    except BrokenPipeError:
        # The reader of stdout went away (``harness vamp-parse ... | head``): stop quietly, as a Unix filter does,
        # with the status a shell gives a process killed by SIGPIPE; Python would print a traceback, then fail
        # again flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 128 + signal.SIGPIPE
    finally:
        # On exit the interpreter runs one last cycle collection over every object still alive: with torch,
        # MLflow and SQLAlchemy loaded that takes over a second of every command. Python does not promise that
        # objects alive at exit are finalized, and everything the harness writes is closed by now, so those
        # objects are frozen out of that collection.
        gc.freeze()
    sys.exit(code)
