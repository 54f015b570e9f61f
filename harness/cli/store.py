"""``harness sync`` (log run and sweep folders once) and ``harness ui`` (the MLflow UI on the configured store)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from harness.cli.arguments import config_or_exit, split_arguments

UI_STOP_GRACE_S = 10.0


def sync(arguments: list[str]) -> int:
    """``harness sync [overrides] DIR...``: log run or sweep folders that are not tracked yet, exactly once."""
    import argparse

    from harness.config.commands import StoreCommandConfig
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
    from harness.tracking import finish_sweep
    from harness.tracking.store import Store

    parser = argparse.ArgumentParser(
        prog="harness sync",
        description="Log run folders (result.json) and sweep folders (sweep.json) to the tracking store. Folders "
        "already logged there are skipped and nothing logged is changed, so it is safe to repeat; jobs of a "
        "sweep without a result.json are listed.",
    )
    parser.add_argument("items", nargs="+", metavar="KEY=VALUE|DIR", help="overrides (tracking.uri=...) and folders")
    overrides, folders = split_arguments(parser.parse_intermixed_args(arguments).items)
    if not folders:
        parser.error("no run or sweep folder given")
    config = config_or_exit(StoreCommandConfig, overrides)
    if not config.tracking.enabled:  # it logged all the same
        parser.error("tracking.enabled=false (tracking=off): harness sync does nothing but log to the store")
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


def ui(arguments: list[str]) -> int:
    """``harness ui [--port N] [overrides]``: the MLflow UI on the configured store, on 127.0.0.1."""
    import argparse

    from harness.config.commands import StoreCommandConfig
    from harness.errors import HarnessError, masked
    from harness.tracking.store import Store, resolve_store, runs_table_url

    parser = argparse.ArgumentParser(
        prog="harness ui",
        description="Serve the MLflow UI for the configured tracking store on 127.0.0.1 until Ctrl-C. "
        "It opens on the runs table of the harness's experiment.",
    )
    parser.add_argument("--port", type=_port, default=5000, help="TCP port on 127.0.0.1 (default 5000)")
    parser.add_argument(
        "overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. tracking.uri=..."
    )
    options = parser.parse_intermixed_args(arguments)
    config = config_or_exit(StoreCommandConfig, options.overrides)
    configs = config.tracking, config.paths
    try:
        uri, artifacts = resolve_store(*configs)
        if uri.startswith(("http://", "https://")):
            print(f"the tracking store is a server: open {masked(uri)}")
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
    # MLflow 3.17's server imports a Starlette module that warns of its own deprecation at every start: a
    # traceback-like line the user can do nothing about.
    quiet = "ignore:starlette.middleware.wsgi is deprecated"
    environment["PYTHONWARNINGS"] = ",".join(filter(None, (os.environ.get("PYTHONWARNINGS"), quiet)))
    server = subprocess.Popen(command, env=environment, start_new_session=True)
    try:
        url = runs_table_url(f"http://127.0.0.1:{options.port}", experiment_id)
        print(f"MLflow UI on {url} (store {masked(uri)}); Ctrl-C stops it", flush=True)
        code = server.wait()
        print(f"error: the MLflow UI exited with code {code}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (the command line turns it into one)
        _stop_group(server)
        return 0


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
