"""The tracking store: which MLflow store and experiment the config names, one client on it with retries for
a locked SQLite file, and Ctrl-C held while a write is in flight (a write cut short leaves SQLite locked).

Signals and locks: ``docs/tracking.md``.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from harness.config.schema import PathsConfig, TrackingConfig
from harness.errors import TrackingError, masked
from harness.tracking.records import shorten

log = logging.getLogger(__name__)

T = TypeVar("T")
# MLflow opens an experiment of this kind as a classic machine-learning experiment (the runs table), not
# on the GenAI overview of traces and token usage; the note is the experiment's description in the UI.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_TAGS = {
    EXPERIMENT_KIND_TAG: "custom_model_development",
    "mlflow.note.content": (
        "DINOv2 retrieval deployments measured by the harness: one run per build and load, a parent run per sweep. "
        "Headline metrics: throughput_qps, e2e_latency_p50_ms, model_latency_p50_ms, map_medium, map_hard, "
        "parity_min_cos; the full result tree is below them (perf.*, accuracy.*, build.*), settings are params, "
        "identity and validity are tags."
    ),
}
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# Runs per search call: MLflow's own default and most (SEARCH_MAX_RESULTS_DEFAULT), asked for by name.
SEARCH_PAGE_SIZE = 1000
_holding = False  # an outermost ``held_interrupts`` block is open in the main thread


@contextmanager
def held_interrupts() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) and SIGTERM while the block writes to the store; deliver them when it ends.

    A write to a SQLite store that Ctrl-C cuts short while it commits leaves its transaction open: this process
    keeps the file locked, and its next write (the interrupted run's own record, the sweep's parent) waits on
    that lock, 20 s per attempt, retry after retry. A second signal during the block is delivered at once, for
    a store that does not answer. Blocks nest (the outermost delivers); only the main thread receives signals.
    """
    global _holding
    if _holding or threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {number: signal.getsignal(number) for number in HELD_SIGNALS}
    holding = [number for number, handler in previous.items() if handler not in (signal.SIG_IGN, None)]

    def restore() -> None:
        for number in holding:
            signal.signal(number, previous[number])

    def hold(number: int, _frame: object) -> None:
        if held:
            held.clear()  # delivered here, not again when the block ends
            restore()
            signal.raise_signal(number)
            return
        held.append(number)
        # Not print(): the handler may run while this thread is inside a write to sys.stderr (a reentrant call).
        os.write(2, b"interrupt: finishing the write to the tracking store first (again to stop now)\n")

    for number in holding:
        signal.signal(number, hold)
    _holding = True
    try:
        yield
    finally:
        _holding = False
        restore()
        if held:
            signal.raise_signal(held[0])


def runs_table_url(base: str, experiment_id: str) -> str:
    """The UI page to open first: the experiment's runs table, in the model-training (not GenAI) view."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


SQLITE_PREFIX = "sqlite:///"


def sqlite_database(uri: str) -> Path | None:
    """The database file of a SQLite store's URI; ``None`` for any other store."""
    return Path(uri.removeprefix(SQLITE_PREFIX)).expanduser() if uri.startswith(SQLITE_PREFIX) else None


def resolve_store(tracking: TrackingConfig, paths: PathsConfig) -> tuple[str, str | None]:
    """(tracking URI, artifact location for new experiments or ``None`` to let a server decide).

    A SQLite store keeps its artifacts beside its database file: left to MLflow, they would go to ``./mlruns``
    in whatever folder the command was started from.
    """
    uri = tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    database = sqlite_database(uri or "")
    if uri and database is not None:
        return uri, (database.resolve().parent / "mlartifacts").as_uri()
    if uri:
        return uri, None
    outputs = paths.path("outputs").resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{outputs / 'mlflow.db'}", (outputs / "mlartifacts").as_uri()


def store_overrides(tracking: TrackingConfig, paths: PathsConfig) -> str:
    """The overrides that make a later command (``harness sync``, ``harness ui``) use this store and experiment,
    wherever it is started: a bare command would use its own folder's default store."""
    uri = masked(resolve_store(tracking, paths)[0])
    return f"tracking.uri={shlex.quote(uri)} tracking.experiment={shlex.quote(tracking.experiment)}"


def sync_command(tracking: TrackingConfig | None, paths: PathsConfig | None, folder: Path) -> str:
    """The ``harness sync`` command that logs ``folder`` to this store later, from any folder (bare, without a
    config to name the store)."""
    store = f"{store_overrides(tracking, paths)} " if tracking is not None and paths is not None else ""
    return f"harness sync {store}{folder.resolve()}"


# What a failed request to a tracking server comes down to, found in the exception text of MLflow's HTTP client
# (a URL, the retry pool and the connection object around it): pattern -> the reason as a user reads it.
_SERVER_FAILURES = (
    (re.compile(r"Failed to establish a new connection: (\[Errno -?\d+\] [^\"')]+)"), "cannot connect ({})"),
    (re.compile(r"Read timed out\. \(read timeout=([\d.]+)\)"), "no answer within {} s (tracking.http_timeout_s)"),
)


# The Python module SQLAlchemy imports for a database store -> the package that provides it.
DATABASE_DRIVERS = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "pyodbc": "pyodbc",
}


def _reason(error: BaseException) -> str:
    """One line saying why a store operation failed: a missing database driver, the network cause when there is
    one, else the first line."""
    if isinstance(error, ModuleNotFoundError) and error.name:
        package = DATABASE_DRIVERS.get(error.name.split(".")[0])
        install = f": pip install '{package}'" if package else ""
        return (
            f"its database driver is not installed (no Python module {error.name!r}{install}), or log through an "
            "MLflow tracking server (tracking.uri=http://...)"
        )
    text = str(error).strip()
    for pattern, reason in _SERVER_FAILURES:
        found = pattern.search(text)
        if found:
            return reason.format(found.group(1))
    return shorten(text.splitlines()[0], 300) if text else type(error).__name__


class StoreClient:
    """An MLflow client on one store (its URI), with retries for a locked SQLite file: what acts on runs by id."""

    def __init__(self, uri: str, tracking: TrackingConfig) -> None:
        # MLflow reads these per request; the config makes them explicit and recorded instead of ambient.
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = str(tracking.http_retries)
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(int(max(1, tracking.http_timeout_s)))
        os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"  # one result.json is no download to watch
        # MLflow prints a server's run and experiment URLs, with any password in the URI, for each run it ends:
        # the harness prints one line per run itself (``ui_hint``), without it.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        # MLflow's own "Creating initial MLflow database tables..." lines, in its own format amid the harness's:
        # the harness says it once, in its log.
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        if (database := sqlite_database(uri)) is not None and not database.exists():
            log.info("new MLflow store %s", uri)
        from mlflow.tracking import MlflowClient

        self.tracking = tracking
        self.uri = uri
        # A database MLflow cannot open, or a URI from MLFLOW_TRACKING_URI it does not take, fails here.
        self.client = self.call(lambda: MlflowClient(tracking_uri=self.uri))

    def call(self, operation: Callable[[], T]) -> T:
        """Run one client operation, whole (``held_interrupts``); retry while SQLite is locked; any failure
        becomes a ``TrackingError``."""
        for attempt in range(self.tracking.sqlite_retries + 1):
            try:
                with held_interrupts():
                    return operation()
            except Exception as error:  # MLflow raises many types (MlflowException, requests, SQLAlchemy)
                if "database is locked" in str(error) and attempt < self.tracking.sqlite_retries:
                    time.sleep(min(2.0, 0.05 * 2**attempt))
                    continue
                raise TrackingError(f"tracking store {masked(self.uri)}: {_reason(error)}") from error
        raise AssertionError("unreachable: the loop returns or raises")


def existing_store(uri: str, tracking: TrackingConfig, *, opened: StoreClient | None = None) -> StoreClient:
    """A client on a store that runs were logged to (``opened`` itself when it is that store): a SQLite file that
    is gone is an error, not a new store."""
    if opened is not None and opened.uri == uri:
        return opened
    if (database := sqlite_database(uri)) is not None and not database.exists():
        raise TrackingError(f"tracking store {masked(uri)}: the database file is gone")
    return StoreClient(uri, tracking)


class Store(StoreClient):
    """The configured store and experiment (``tracking.*``): where runs are logged and searched."""

    def __init__(self, tracking: TrackingConfig, paths: PathsConfig) -> None:
        uri, artifact_location = resolve_store(tracking, paths)
        super().__init__(uri, tracking)
        self.experiment_id = self.call(lambda: self._experiment(tracking.experiment, artifact_location))

    def _experiment(self, name: str, artifact_location: str | None) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            if EXPERIMENT_KIND_TAG not in found.tags:  # made by an older harness: becomes a classic ML experiment
                for key, value in EXPERIMENT_TAGS.items():
                    self.client.set_experiment_tag(found.experiment_id, key, value)
            return str(found.experiment_id)
        try:
            return str(self.client.create_experiment(name, artifact_location=artifact_location, tags=EXPERIMENT_TAGS))
        except Exception:  # another job created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def find(self, tag: str, value: str) -> Any | None:
        runs = self.search(f"tags.`{tag}` = '{value}'")
        return runs[0] if runs else None

    def search(self, filter_string: str, *, order_by: list[str] | None = None) -> list[Any]:
        """Every run of the experiment that matches, page after page (``SEARCH_PAGE_SIZE`` runs a call)."""
        runs: list[Any] = []
        token = None
        while True:
            page = self.call(
                partial(
                    self.client.search_runs, [self.experiment_id], filter_string=filter_string, order_by=order_by,
                    max_results=SEARCH_PAGE_SIZE, page_token=token,
                )
            )  # fmt: skip
            runs += page
            token = page.token
            if not token:
                return runs
