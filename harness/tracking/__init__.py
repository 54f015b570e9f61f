"""Tracking stage: runs and sweeps in MLflow, after ``result.json`` is safely on disk.

Every run folder is logged at most once: a logged run gets ``tracking.json`` beside its ``result.json``,
and its MLflow run carries the result's ``run_uid`` as the tag ``harness.run_uid``, so a second attempt
(``harness sync``) finds it instead of logging it again. A sweep's parent run is identified the same way
by ``harness.sweep_uid`` from ``<sweep dir>/sweep.json``, created under a file lock so concurrent jobs
agree on one parent.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from harness.errors import DataError, TrackingError, masked
from harness.fileio import locked, progress_bar, sha256_of, write_json_atomic
from harness.perf.vamp import VAMP_REPEAT_FILE
from harness.report import SWEEP_FILE, planned_settings
from harness.report.render import RunSet
from harness.result import RunResult, load_result
from harness.tracking.records import metrics_of, params_of, shorten, tags_of
from harness.tracking.store import Store, held_interrupts

log = logging.getLogger(__name__)

TRACKING_FILE = "tracking.json"
RUN_UID_TAG = "harness.run_uid"
SWEEP_UID_TAG = "harness.sweep_uid"
VAMP_SHA_TAG = "harness.vamp_sha256"
ARTIFACT_FILES = ("result.json", "perf_vamp.txt", "perf_samples.npz")
# result.json status -> MLflow run status.
RUN_STATUS = {"ok": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}


def _epoch_ms(timestamp: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time from ``result.json`` (when the run really ran)."""
    return int(datetime.fromisoformat(timestamp).timestamp() * 1000)


@dataclass(frozen=True)
class TrackingRecord:
    """``tracking.json``: where a run folder was logged, and which of its results (``run_uid``: the logged
    ``result.json``'s; absent from files written before it was kept)."""

    uri: str
    experiment_id: str
    run_id: str
    parent_run_id: str | None
    logged_at: str
    run_uid: str | None = None

    def names(self, result: RunResult) -> bool:
        """Whether this record is of ``result``: a result written over the logged one is not logged."""
        return self.run_uid in (None, result.run_uid)


def start_sweep(sweep_dir: Path, overrides: list[str], jobs: list[list[str]] | None = None) -> dict[str, object]:
    """Create ``<sweep_dir>/sweep.json`` (the sweep's identity) unless it exists; return its content."""
    path = sweep_dir / SWEEP_FILE
    with locked(path):
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
    with locked(path):
        record = json.loads(path.read_text())
        parent = str(record.get("parent_run_id") or "")
        identity = (SWEEP_UID_TAG, str(record["sweep_uid"]))
        if parent and record.get("uri") == store.uri and _still_logged(store, parent, identity):
            return parent
        found = store.find(SWEEP_UID_TAG, record["sweep_uid"])
        if found is None:
            tags = {SWEEP_UID_TAG: record["sweep_uid"], "harness.kind": "sweep", "sweep_dir": str(sweep_dir.resolve())}
            started_ms = _epoch_ms(record["started_at"]) if record.get("started_at") else None
            found = store.call(
                lambda: store.client.create_run(
                    store.experiment_id, start_time=started_ms, tags=tags, run_name=f"sweep {sweep_dir.name}"
                )
            )
            params = {"sweep.overrides": shorten(masked(" ".join(record.get("overrides") or [])))}
            store.call(lambda: store.client.log_batch(found.info.run_id, params=_params(params)))
        record.update(parent_run_id=found.info.run_id, uri=store.uri)
        write_json_atomic(path, record)
        return str(found.info.run_id)


def _still_logged(store: Store, run_id: str, identity: tuple[str, str]) -> bool:
    """Whether a run a ``tracking.json`` or ``sweep.json`` names is still in the store, not deleted, and is the
    one the folder holds now (its ``identity`` tag, the run's or sweep's uid, agrees). One deleted in the UI, or
    from a store started afresh, is logged again (the folder read "already logged" for ever, and a sweep's jobs
    were logged as children of a parent the store did not have); so is a result written over the one logged."""
    from mlflow.exceptions import MlflowException

    try:
        run = store.call(lambda: store.client.get_run(run_id))
    except TrackingError as error:
        cause = error.__cause__
        if isinstance(cause, MlflowException) and cause.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    tag, uid = identity
    return bool(run.info.lifecycle_stage == "active" and run.data.tags.get(tag) == uid)


@held_interrupts()
def log_run_dir(store: Store, run_dir: Path, *, sweep_dir: Path | None = None) -> tuple[TrackingRecord, bool]:
    """Log one run folder unless it already is; returns its record and whether this call logged it."""
    existing = run_dir / TRACKING_FILE
    result = load_result(run_dir)
    if existing.exists():
        record = TrackingRecord(**json.loads(existing.read_text()))
        identity = (RUN_UID_TAG, result.run_uid)
        if record.names(result) and record.uri == store.uri and _still_logged(store, record.run_id, identity):
            return record, False
    record_data = result.to_dict()
    parent = ensure_parent(store, sweep_dir) if sweep_dir is not None else None
    found = store.find(RUN_UID_TAG, result.run_uid)
    if found is not None and found.info.status != "RUNNING":
        record = _record(store, found.info.run_id, parent, result)
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
    record = _record(store, run_id, parent, result)
    write_json_atomic(existing, asdict(record))
    log.info("tracked run_id=%s uri=%s", run_id, masked(store.uri))
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
    with locked(path):
        record = json.loads(path.read_text())
        if not record.get("finished_at"):
            record.update(finished_at=_now(), status=status)
            write_json_atomic(path, record)


def record_job_ending(sweep_dir: Path, number: int, ending: str) -> None:
    """Record in ``sweep.json`` how sweep job ``number`` ended when the launcher saw it end without success
    (``CANCELLED (SLURM job 12_1)``...): a job that never started has no folder to say it."""
    path = sweep_dir / SWEEP_FILE
    with locked(path):
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


def _record(store: Store, run_id: str, parent: str | None, result: RunResult) -> TrackingRecord:
    return TrackingRecord(
        uri=store.uri, experiment_id=store.experiment_id, run_id=run_id, parent_run_id=parent,
        logged_at=_now(), run_uid=result.run_uid,
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
    for path in sorted(run_dir.glob("*.log")):  # Hydra's job log: how the run went, and why a failed one failed
        store.call(partial(store.client.log_artifact, run_id, str(path)))
    if (run_dir / ".hydra").is_dir():  # as Hydra wrote them but for passwords: overrides are kept verbatim
        with tempfile.TemporaryDirectory() as shown:
            for path in sorted((run_dir / ".hydra").glob("*.yaml")):
                (Path(shown) / path.name).write_text(masked(path.read_text()))
            store.call(lambda: store.client.log_artifacts(run_id, shown, artifact_path="hydra"))
    folder = result.build.artifact_folder if result.build else None
    if result.build and folder is not None:  # a torch module run built nothing to attach
        cached: dict[Path, str | None] = {folder / "build.json": None}  # file -> its folder among the artifacts
        if store.tracking.log_model:
            cached.update({folder / record.name: "model" for record in result.build.artifact[1].files})
        gone = [path.name for path in cached if not path.exists()]
        if gone:
            # Synced later, or on another machine: the build cache is a cache. result.json keeps the manifest.
            log.warning("%s: not attached, no longer in the build cache %s: %s", run_dir, folder, ", ".join(gone))
        for path, artifact_path in cached.items():
            if path.exists():
                store.call(partial(store.client.log_artifact, run_id, str(path), artifact_path=artifact_path))


def download_runs(store: Store, folder: Path, *, progress: bool = True, found: RunSet | None = None) -> RunSet:
    """Every run (not sweep parents) of the store's experiment, with its ``result.json`` and raw perf samples
    downloaded into ``<folder>/<run id>/``; returns them as the report's runs, added to ``found`` (default: a new
    set; a result that cannot be read is named among the set's unreadable)."""
    found = RunSet() if found is None else found
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
