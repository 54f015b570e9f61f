"""Tracking stage: runs and sweeps in MLflow, after ``result.json`` is safely on disk.

Every run folder is logged at most once: a logged run gets ``tracking.json`` beside its ``result.json``,
and its MLflow run carries the result's ``run_uid`` as the tag ``harness.run_uid``, so a second attempt
(``harness sync``) finds it instead of logging it again. A sweep's parent run is identified the same way
by ``harness.sweep_uid`` from ``<sweep dir>/sweep.json``, created under a file lock so concurrent jobs
agree on one parent.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shlex
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from harness.config.schema import PathsConfig, TrackingConfig
from harness.errors import DataError, TrackingError
from harness.fileio import progress_bar, sha256_of, write_json_atomic
from harness.perf.vamp import VAMP_REPEAT_FILE
from harness.report import SWEEP_FILE, planned_settings
from harness.report.render import RunSet
from harness.result import RunResult, load_result
from harness.tracking.records import metrics_of, params_of, shorten, tags_of

log = logging.getLogger(__name__)

TRACKING_FILE = "tracking.json"
RUN_UID_TAG = "harness.run_uid"
SWEEP_UID_TAG = "harness.sweep_uid"
VAMP_SHA_TAG = "harness.vamp_sha256"
ARTIFACT_FILES = ("result.json", "perf_vamp.txt", "perf_samples.npz")
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
# result.json status -> MLflow run status.
RUN_STATUS = {"ok": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
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


def _epoch_ms(timestamp: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time from ``result.json`` (when the run really ran)."""
    return int(datetime.fromisoformat(timestamp).timestamp() * 1000)


@dataclass(frozen=True)
class TrackingRecord:
    """``tracking.json``: where a run folder was logged."""

    uri: str
    experiment_id: str
    run_id: str
    parent_run_id: str | None
    logged_at: str


def runs_table_url(base: str, experiment_id: str) -> str:
    """The UI page to open first: the experiment's runs table, in the model-training (not GenAI) view."""
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


SQLITE_PREFIX = "sqlite:///"


def resolve_store(tracking: TrackingConfig, paths: PathsConfig) -> tuple[str, str | None]:
    """(tracking URI, artifact location for new experiments or ``None`` to let a server decide).

    A SQLite store keeps its artifacts beside its database file: left to MLflow, they would go to ``./mlruns``
    in whatever folder the command was started from.
    """
    uri = tracking.uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri.startswith(SQLITE_PREFIX):
        database = Path(uri.removeprefix(SQLITE_PREFIX)).expanduser().resolve()
        return uri, (database.parent / "mlartifacts").as_uri()
    if uri:
        return uri, None
    outputs = paths.path("outputs").resolve()
    outputs.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{outputs / 'mlflow.db'}", (outputs / "mlartifacts").as_uri()


def store_overrides(tracking: TrackingConfig, paths: PathsConfig) -> str:
    """The overrides that make a later command (``harness sync``, ``harness ui``) use this store and experiment,
    wherever it is started: a bare command would use its own folder's default store."""
    uri = resolve_store(tracking, paths)[0]
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


def _reason(error: BaseException) -> str:
    """One line saying why a store operation failed: the network cause when there is one, else the first line."""
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
                raise TrackingError(f"tracking store {self.uri}: {_reason(error)}") from error
        raise AssertionError("unreachable: the loop returns or raises")


def existing_store(uri: str, tracking: TrackingConfig, *, opened: StoreClient | None = None) -> StoreClient:
    """A client on a store that runs were logged to (``opened`` itself when it is that store): a SQLite file that
    is gone is an error, not a new store."""
    if opened is not None and opened.uri == uri:
        return opened
    if uri.startswith(SQLITE_PREFIX) and not Path(uri.removeprefix(SQLITE_PREFIX)).expanduser().exists():
        raise TrackingError(f"tracking store {uri}: the database file is gone")
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
        """Every run of the experiment that matches, page after page (MLflow returns 1000 at most per call)."""
        runs: list[Any] = []
        token = None
        while True:
            page = self.call(
                partial(
                    self.client.search_runs, [self.experiment_id], filter_string=filter_string, order_by=order_by,
                    page_token=token,
                )
            )  # fmt: skip
            runs += page
            token = page.token
            if not token:
                return runs


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def start_sweep(sweep_dir: Path, overrides: list[str], jobs: list[list[str]] | None = None) -> dict[str, object]:
    """Create ``<sweep_dir>/sweep.json`` (the sweep's identity) unless it exists; return its content."""
    path = sweep_dir / SWEEP_FILE
    with _locked(path):
        if path.exists():
            return json.loads(path.read_text())
        record: dict[str, object] = {
            "sweep_uid": uuid.uuid4().hex,
            "overrides": overrides,
            "jobs": jobs,
            "started_at": _now(),
            "finished_at": None,
            "status": "running",
            "parent_run_id": None,
            "uri": None,
        }
        write_json_atomic(path, record)
        return record


def ensure_parent(store: Store, sweep_dir: Path) -> str:
    """The MLflow run id of the sweep's parent, creating the parent exactly once."""
    path = sweep_dir / SWEEP_FILE
    with _locked(path):
        record = json.loads(path.read_text())
        if record.get("parent_run_id") and record.get("uri") == store.uri:
            return str(record["parent_run_id"])
        found = store.find(SWEEP_UID_TAG, record["sweep_uid"])
        if found is None:
            tags = {SWEEP_UID_TAG: record["sweep_uid"], "harness.kind": "sweep", "sweep_dir": str(sweep_dir.resolve())}
            started_ms = _epoch_ms(record["started_at"]) if record.get("started_at") else None
            found = store.call(
                lambda: store.client.create_run(
                    store.experiment_id, start_time=started_ms, tags=tags, run_name=f"sweep {sweep_dir.name}"
                )
            )
            params = {"sweep.overrides": shorten(" ".join(record.get("overrides") or []))}
            store.call(lambda: store.client.log_batch(found.info.run_id, params=_params(params)))
        record.update(parent_run_id=found.info.run_id, uri=store.uri)
        write_json_atomic(path, record)
        return str(found.info.run_id)


@held_interrupts()
def log_run_dir(store: Store, run_dir: Path, *, sweep_dir: Path | None = None) -> tuple[TrackingRecord, bool]:
    """Log one run folder unless it already is; returns its record and whether this call logged it."""
    existing = run_dir / TRACKING_FILE
    if existing.exists():
        record = TrackingRecord(**json.loads(existing.read_text()))
        if record.uri == store.uri:
            return record, False
    result = load_result(run_dir)
    record_data = result.to_dict()
    parent = ensure_parent(store, sweep_dir) if sweep_dir is not None else None
    found = store.find(RUN_UID_TAG, result.run_uid)
    if found is not None and found.info.status != "RUNNING":
        record = _record(store, found.info.run_id, parent)
        write_json_atomic(existing, asdict(record))
        return record, False
    if found is not None:  # a logging attempt died half way: start it over
        store.call(lambda: store.client.delete_run(found.info.run_id))
    tags = tags_of(record_data)
    if parent:
        tags["mlflow.parentRunId"] = parent
    started_ms, finished_ms = _epoch_ms(result.started_at), _epoch_ms(result.finished_at)
    run = store.call(
        lambda: store.client.create_run(
            store.experiment_id, start_time=started_ms, tags=tags, run_name=_run_name(result, sweep_dir)
        )
    )
    run_id = run.info.run_id
    from mlflow.entities import Metric

    metrics = [
        Metric(key, value, finished_ms, step)
        for key, values in metrics_of(record_data).items()
        for step, value in enumerate(values)
    ]
    params = _params(params_of(record_data["config"]))  # type: ignore[arg-type]
    for start in range(0, max(len(metrics), len(params)), 100):
        store.call(
            partial(
                store.client.log_batch, run_id, metrics=metrics[start : start + 100], params=params[start : start + 100]
            )
        )
    _log_artifacts(store, run_id, run_dir, result)
    store.call(lambda: store.client.set_terminated(run_id, status=RUN_STATUS[result.status], end_time=finished_ms))
    record = _record(store, run_id, parent)
    write_json_atomic(existing, asdict(record))
    log.info("tracked run_id=%s uri=%s", run_id, store.uri)
    return record, True


@held_interrupts()
def log_vamp_file(store: Store, path: Path, perf: dict[str, object]) -> tuple[str, bool]:
    """Log one saved vamp output as a run (``perf``: its fields under a harness perf block's names, so its
    metrics are named as a harness run's), unless a run of the same bytes is already there; returns the run id
    and whether this call logged it."""
    digest = sha256_of(path)
    found = store.find(VAMP_SHA_TAG, digest)
    if found is not None:
        return str(found.info.run_id), False
    from mlflow.entities import Metric

    now_ms = int(time.time() * 1000)
    tags = {VAMP_SHA_TAG: digest, "harness.source": "vamp-parse", "harness.vamp_file": str(path.resolve())}
    run = store.call(lambda: store.client.create_run(store.experiment_id, tags=tags, run_name=f"vamp-{path.stem}"))
    run_id = run.info.run_id
    metrics = [Metric(key, values[0], now_ms, 0) for key, values in metrics_of({"perf": perf}).items()]
    params = _params({f"perf.{key}": str(perf[key]) for key in ("instances", "batch")})
    store.call(partial(store.client.log_batch, run_id, metrics=metrics, params=params))
    store.call(partial(store.client.log_artifact, run_id, str(path)))
    store.call(lambda: store.client.set_terminated(run_id, status="FINISHED", end_time=now_ms))
    return run_id, True


def end_sweep(sweep_dir: Path, status: str) -> None:
    """Record in ``sweep.json`` when and how the sweep ended (``finished`` or ``interrupted``), once."""
    path = sweep_dir / SWEEP_FILE
    with _locked(path):
        record = json.loads(path.read_text())
        if not record.get("finished_at"):
            record.update(finished_at=_now(), status=status)
            write_json_atomic(path, record)


def record_job_ending(sweep_dir: Path, number: int, ending: str) -> None:
    """Record in ``sweep.json`` how sweep job ``number`` ended when the launcher saw it end without success
    (``CANCELLED (SLURM job 12_1)``...): a job that never started has no folder to say it."""
    path = sweep_dir / SWEEP_FILE
    with _locked(path):
        record = json.loads(path.read_text())
        record.setdefault("job_endings", {})[str(number)] = ending
        write_json_atomic(path, record)


@held_interrupts()
def finish_sweep(store: Store, sweep_dir: Path, summary_files: list[Path], *, report_dir: Path | None = None) -> str:
    """Attach the summary table to the parent run and close it, at the time the sweep really ended.

    A parent that is already closed is left exactly as it was logged (``harness sync`` changes no logged run).
    """
    parent = ensure_parent(store, sweep_dir)
    if store.call(lambda: store.client.get_run(parent)).info.status != "RUNNING":
        return parent
    for path in summary_files:
        store.call(partial(store.client.log_artifact, parent, str(path)))
    if report_dir is not None and report_dir.is_dir():
        store.call(partial(store.client.log_artifacts, parent, str(report_dir), artifact_path="report"))
    record = json.loads((sweep_dir / SWEEP_FILE).read_text())
    ended = record.get("finished_at") or max(_job_ends(sweep_dir), default=None) or _now()
    status = "KILLED" if record.get("status") == "interrupted" else "FINISHED"
    store.call(lambda: store.client.set_terminated(parent, status=status, end_time=_epoch_ms(ended)))
    return parent


def _job_ends(sweep_dir: Path) -> list[str]:
    """When each job whose result can be read finished (an unreadable one is named where its run is logged)."""
    ends = []
    for path in sweep_dir.glob("*/result.json"):
        try:
            ends.append(load_result(path.parent).finished_at)
        except DataError:
            continue
    return ends


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _params(values: dict[str, str]) -> list[Any]:
    from mlflow.entities import Param

    return [Param(key, value) for key, value in values.items()]


def _record(store: Store, run_id: str, parent: str | None) -> TrackingRecord:
    return TrackingRecord(
        uri=store.uri, experiment_id=store.experiment_id, run_id=run_id, parent_run_id=parent,
        logged_at=_now(),
    )  # fmt: skip


# Sweep overrides the run name shows already (variant, precision, backend, batch).
NAMED_OVERRIDES = ("model", "model.variant", "precision", "precision.name", "backend", "backend.name", "perf.batch")


def _run_name(result: RunResult, sweep_dir: Path | None = None) -> str:
    """``vits14_reg4-fp16-onnxruntime-b8``, then for a sweep job the settings its jobs differ in that the name
    has no part for (``latency_us=200``): children of one sweep are told apart in the MLflow UI's run list."""
    config = result.config
    parts = [config.model.variant, config.precision.name]
    if "perf" in result.stages:
        parts += [config.backend["name"], f"b{config.perf.batch}"]
    return " ".join(["-".join(str(part) for part in parts), *_job_axes(sweep_dir, Path(result.run_dir))])


def _job_axes(sweep_dir: Path | None, run_dir: Path) -> list[str]:
    """The overrides a sweep job was planned with that differ between the sweep's jobs, as ``key=value`` (the
    key's last part), less those the run name shows; none outside a sweep."""
    if sweep_dir is None or not run_dir.name.isdigit():
        return []
    try:
        jobs = planned_settings(sweep_dir)
    except DataError:
        return []
    if int(run_dir.name) >= len(jobs):
        return []
    return [
        f"{key.rsplit('.', 1)[-1]}={value}"
        for key, value in jobs[int(run_dir.name)].items()
        if key not in NAMED_OVERRIDES and len({job.get(key) for job in jobs}) > 1
    ]


def _log_artifacts(store: Store, run_id: str, run_dir: Path, result: RunResult) -> None:
    for name in ARTIFACT_FILES:
        if (run_dir / name).exists():
            store.call(partial(store.client.log_artifact, run_id, str(run_dir / name)))
    for path in sorted(run_dir.glob(VAMP_REPEAT_FILE.format("*"))):  # a vendor profiler's every report, verbatim
        store.call(partial(store.client.log_artifact, run_id, str(path), artifact_path="vamp"))
    if (run_dir / ".hydra").is_dir():
        store.call(lambda: store.client.log_artifacts(run_id, str(run_dir / ".hydra"), artifact_path="hydra"))
    if result.build:
        folder = result.build.artifact_folder
        store.call(lambda: store.client.log_artifact(run_id, str(folder / "build.json")))
        if store.tracking.log_model:
            for record in result.build.manifest.files:
                store.call(partial(store.client.log_artifact, run_id, str(folder / record.name), artifact_path="model"))


def download_runs(store: Store, folder: Path, *, progress: bool = True) -> RunSet:
    """Every run (not sweep parents) of the store's experiment, with its ``result.json`` and raw perf samples
    downloaded into ``<folder>/<run id>/``; returns them as the report's runs (a result that cannot be read is
    named among the set's unreadable)."""
    found = RunSet()
    runs = store.search("tags.`harness.run_uid` != ''")
    for run in progress_bar(runs, enabled=progress, desc="downloading runs", unit="run"):
        target = folder / run.info.run_id
        target.mkdir(parents=True, exist_ok=True)
        for name in ("result.json", "perf_samples.npz"):
            try:
                store.client.download_artifacts(run.info.run_id, name, str(target))
            except Exception:  # an artifact the run does not have (no perf stage): its plot is left out
                continue
        if (target / "result.json").exists():
            found.add(run.info.run_name or run.info.run_id, target, distinct=run.info.run_id[:8])
    return found
