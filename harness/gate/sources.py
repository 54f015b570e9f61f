"""Where candidates and baselines come from: run and sweep folders, MLflow runs, committed baseline files.

A baseline file (``reports/baselines/<name>.json``) holds one entry per configuration and machine: its
config hash, the settings that hash covers (``config``), hardware fingerprint and per-metric values, written
by ``harness gate --promote RUN --baseline FILE``. In MLflow, a baseline is a run tagged
``harness.baseline=true``; it is matched on the tags ``harness.config_hash`` and ``hardware.fingerprint`` and
its values are read from its ``result.json`` artifact.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.errors import DataError, HarnessError, counted, masked, unwritable_reason
from harness.fileio import locked, write_json_atomic
from harness.gate.evidence import Evidence, evidence_of
from harness.report import SWEEP_FILE, folder_kind, job_dirs, record_folder
from harness.result import RESULT_FILE, RunResult, load_result
from harness.result.perf import other_work_note
from harness.tracking import TRACKING_FILE, TrackingRecord
from harness.tracking.records import OTHER_WORK_TAG, identity_of_params
from harness.tracking.store import Store, StoreClient

if TYPE_CHECKING:
    from harness.gate import GateResult, Pairing

BASELINE_SCHEMA = 1
# What a baseline file keeps of each entry's evidence besides its label (a run that failed is never written).
BASELINE_FIELDS = ("config_hash", "hardware_fingerprint", "metrics", "config")
BASELINE_TAG = "harness.baseline"


def is_run_id(text: str) -> bool:
    return len(text) == 32 and all(char in "0123456789abcdef" for char in text) and not Path(text).exists()


def candidate_kind(candidate: str) -> Literal["sweep", "run", "mlflow"]:
    """What a candidate names, judged without the tracking store, so that a mistyped path opens (or creates) none."""
    path = record_folder(Path(candidate))
    if path.suffix == ".json":  # a result file under another name
        if not path.is_file():
            raise DataError(f"{candidate}: no such result file")
        return "run"
    if is_run_id(candidate):
        return "mlflow"
    if not path.exists():
        raise DataError(f"{candidate}: no such folder, nor an MLflow run id (32 hex digits)")
    return folder_kind(path)


def candidate_evidence(candidate: str, store: Store | None) -> list[Evidence]:
    """The evidence of a run folder, each job of a sweep folder, or an MLflow run id, with the MLflow run each
    is (or was logged to)."""
    path = record_folder(Path(candidate))
    kind = candidate_kind(candidate)
    if kind == "sweep":
        jobs = job_dirs(path)
        if not jobs:
            raise DataError(f"{path}: a sweep folder without any job result")
        return [_job_evidence(job) for job in jobs]
    if kind == "run":
        folder = path if path.is_dir() else path.parent
        result = load_result(path)
        return [replace(evidence_of(result, label=str(path)), tracked=tracking_record(folder, result))]
    if store is None:
        raise DataError(f"{candidate}: an MLflow run id, but tracking is off")
    evidence = evidence_of(_mlflow_result(store, candidate), label=f"mlflow run {candidate}")
    return [replace(evidence, tracked=(store.uri, candidate))]


def _job_evidence(job: Path) -> Evidence:
    """A sweep job's evidence; one whose result cannot be read is no evidence, with why, and the sweep's other
    jobs are still decided."""
    try:
        result = load_result(job)
        return replace(evidence_of(result, label=str(job)), tracked=tracking_record(job, result))
    except DataError as error:
        return Evidence(label=str(job), config_hash="", hardware_fingerprint="", metrics={}, failure=str(error))


def tracking_record(run_dir: Path, result: RunResult | None = None) -> tuple[str, str] | None:
    """(tracking URI, run id) the folder's ``result.json`` (``result``, when the caller has read it) was logged
    to (its ``tracking.json``), or ``None`` if it was not (no record, or one of an earlier result written over
    since: a verdict must not tag that run)."""
    path = run_dir / TRACKING_FILE
    if not path.exists():
        return None
    try:
        record = TrackingRecord(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise DataError(f"{path}: unreadable ({type(error).__name__}: {error})") from None
    return (record.uri, record.run_id) if record.names(result or load_result(run_dir)) else None


def _mlflow_result(store: Store, run_id: str) -> RunResult:
    with tempfile.TemporaryDirectory(prefix="harness-gate-") as folder:
        local = store.call(lambda: store.client.download_artifacts(run_id, RESULT_FILE, folder))
        return load_result(local)


def read_baseline_file(path: Path) -> list[Evidence]:
    """The entries of a baseline file; a missing or malformed file is a ``DataError`` naming it."""
    try:
        data = json.loads(path.read_text())
        if data.get("schema_version") != BASELINE_SCHEMA:
            raise DataError(
                f"{path}: baseline schema_version={data.get('schema_version')!r}, expected {BASELINE_SCHEMA}"
            )
        entries = data["entries"]
    except OSError as error:
        raise DataError(f"{path}: cannot read the baseline ({error.strerror or error})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataError(f"{path}: not a baseline file ({type(error).__name__}: {error})") from None
    if not isinstance(entries, list):
        raise DataError(f"{path}: not a baseline file ('entries' is a {type(entries).__name__}, not a list)")
    return [_baseline_entry(path, index, entry) for index, entry in enumerate(entries)]


def _baseline_entry(path: Path, index: int, entry: Any) -> Evidence:
    """Entry ``index`` of a baseline file (a reviewed, sometimes hand-edited file): an error names the entry and
    what it lacks."""
    try:
        return Evidence(
            label=f"{path}:{entry['label']}",
            config_hash=str(entry["config_hash"]),
            hardware_fingerprint=str(entry["hardware_fingerprint"]),
            metrics={str(name): tuple(float(value) for value in values) for name, values in entry["metrics"].items()},
            config={str(key): str(value) for key, value in entry.get("config", {}).items()},
        )
    except KeyError as error:
        raise DataError(f"{path}: baseline entry {index} has no {error}") from None
    except (ValueError, TypeError, AttributeError) as error:
        raise DataError(f"{path}: baseline entry {index} is malformed ({type(error).__name__}: {error})") from None


def entries_for(entries: list[Evidence], config_hash: str) -> list[Evidence]:
    """A baseline file's entries for one config hash."""
    return [item for item in entries if item.config_hash == config_hash]


def write_baseline_file(path: Path, evidence: list[Evidence], *, max_other_load_pct: float) -> None:
    """Add (or replace, per config hash and machine) entries in a baseline file; only runs that ended ``ok``, with
    a valid perf measurement taken beside no more than ``max_other_load_pct`` of other work."""
    check_promotable(
        {
            item.label: why
            for item in evidence
            if (why := item.failure or item.perf_problem or item.beside(max_other_load_pct))
        },
        max_other_load_pct,
    )
    try:
        # One promotion at a time: two at once (CI jobs promoting their runs into one file) each read the file
        # before the other wrote it, and the later write dropped the earlier one's entries.
        with locked(path):
            entries = read_baseline_file(path) if path.exists() else []
            replaced = {(item.config_hash, item.hardware_fingerprint) for item in evidence}
            kept = [item for item in entries if (item.config_hash, item.hardware_fingerprint) not in replaced]
            write_json_atomic(path, _baseline_record(path, [*kept, *evidence]))
    except OSError as error:
        raise DataError(f"{path}: cannot write the baseline ({unwritable_reason(path, error)})") from None


def _baseline_record(path: Path, evidence: list[Evidence]) -> dict[str, object]:
    return {
        "schema_version": BASELINE_SCHEMA,
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "entries": [
            {
                "label": item.label.split(":", 1)[-1] if item.label.startswith(str(path)) else Path(item.label).name,
                **{key: value for key, value in asdict(item).items() if key in BASELINE_FIELDS},
            }
            for item in evidence
        ],
    }


def mlflow_baselines(store: Store, config_hash: str, *, candidates: frozenset[str] = frozenset()) -> list[Evidence]:
    """Runs tagged as baseline for this config hash, the newest per machine, read from their ``result.json``;
    never one of the ``candidates`` (MLflow run ids): a run promoted and then gated would pass against itself."""
    query = f"tags.`{BASELINE_TAG}` = 'true' and tags.`harness.config_hash` = '{config_hash}'"
    runs = store.search(query, order_by=["attributes.start_time DESC"])
    newest: dict[str, str] = {}
    for run in runs:
        if run.info.run_id in candidates:
            continue
        newest.setdefault(run.data.tags.get("hardware.fingerprint", "unknown"), run.info.run_id)
    return [evidence_of(_mlflow_result(store, run_id), label=f"mlflow run {run_id}") for run_id in newest.values()]


def every_mlflow_baseline(store: Store, *, candidates: frozenset[str] = frozenset()) -> list[Evidence]:
    """Every run tagged as baseline, with its settings from its params and no values: what a candidate without
    a baseline is compared with to say which settings differ."""
    runs = store.search(f"tags.`{BASELINE_TAG}` = 'true'")
    return [
        Evidence(
            label=f"mlflow run {run.info.run_id}",
            config_hash=run.data.tags.get("harness.config_hash", "unknown"),
            hardware_fingerprint=run.data.tags.get("hardware.fingerprint", "unknown"),
            metrics={},
            config=identity_of_params(run.data.params),
        )
        for run in runs
        if run.info.run_id not in candidates
    ]


def tag_verdicts(clients: Callable[[str], StoreClient], result: GateResult, *, baseline: str) -> list[str]:
    """Record each tracked candidate's verdict on its MLflow run (``harness.gate.*`` tags), in the store it was
    logged to (``clients``: tracking URI -> a client on it). Returns why a store could not be tagged, per store."""
    failures = []
    by_store: dict[str, list[tuple[str, Pairing]]] = {}
    for pairing in result.pairings:
        if pairing.candidate.tracked is not None:
            uri, run_id = pairing.candidate.tracked
            by_store.setdefault(uri, []).append((run_id, pairing))
    for uri, pairings in by_store.items():
        try:
            client = clients(uri)
            for run_id, pairing in pairings:
                tags = {
                    "harness.gate.verdict": pairing.verdict,
                    "harness.gate.baseline": pairing.baseline.label if pairing.baseline else baseline,
                }
                tags.update({f"harness.gate.{decision.metric}": decision.outcome for decision in pairing.decisions})
                for key, value in tags.items():
                    client.call(partial(client.client.set_tag, run_id, key, value[:5000]))
        except HarnessError as error:
            failures.append(f"{counted(len(pairings), 'verdict')} not tagged in {masked(uri)} ({error})")
    return failures


def promote_in_mlflow(store: Store, candidate: str, *, max_other_load_pct: float) -> list[str]:
    """Tag the candidate's MLflow runs as the baseline (the previous baseline of the same config and machine loses it);
    only runs ``write_baseline_file`` would write."""
    run_ids = [_run_id_of(item, store) for item in _run_sources(candidate)]
    client = store.client
    tags_of_run = {run_id: store.call(partial(client.get_run, run_id)).data.tags for run_id in run_ids}
    check_promotable(
        {
            f"mlflow run {run_id}": why
            for run_id, tags in tags_of_run.items()
            if (why := _why_no_baseline(tags, max_other_load_pct))
        },
        max_other_load_pct,
    )
    for run_id, tags in tags_of_run.items():
        query = (
            f"tags.`{BASELINE_TAG}` = 'true' and tags.`harness.config_hash` = '{tags.get('harness.config_hash')}' "
            f"and tags.`hardware.fingerprint` = '{tags.get('hardware.fingerprint')}'"
        )
        for previous in store.search(query):
            store.call(partial(client.set_tag, previous.info.run_id, BASELINE_TAG, "false"))
        store.call(partial(client.set_tag, run_id, BASELINE_TAG, "true"))
    return run_ids


def _why_no_baseline(tags: dict[str, str], max_other_load_pct: float) -> str:
    """Why an MLflow run cannot be a baseline, read from its tags (empty when it can)."""
    if tags.get("harness.status") != "ok":
        return f"the run ended {tags.get('harness.status')}"
    if tags.get("harness.perf_valid") == "false":
        return "its perf measurement is invalid"
    if tags.get("harness.contended") == "true":
        return "its perf was measured beside another job on one device"
    if OTHER_WORK_TAG in tags:
        beside = other_work_note(json.loads(tags[OTHER_WORK_TAG]), max_other_load_pct)
    else:  # logged before the numbers were: its note, over the measurement's own 10%
        beside = tags.get("harness.beside_other_work", "")
    if beside:
        return f"its perf was {beside}"
    return ""


def check_promotable(failures: dict[str, str], max_other_load_pct: float) -> None:
    """A ``DataError`` naming every run (label -> why) that is no baseline: one that did not end ``ok``, or whose
    perf measurement is invalid or was taken beside another job on its device or other work (a baseline slowed by
    it would let a slower candidate pass)."""
    if failures:
        named = "; ".join(f"{label} ({why})" for label, why in failures.items())
        raise DataError(
            "only runs that ended ok with a valid measurement, taken with no other perf run on their device and no "
            f"other work over {max_other_load_pct:g}% of the CPU (gate.max_other_load_pct), can be a baseline, and "
            f"{len(failures)} {'is' if len(failures) == 1 else 'are'} not: {named} (promote the others by their run "
            "folders, or run them again)"
        )


def _run_sources(candidate: str) -> list[str]:
    path = record_folder(Path(candidate))  # the result.json or sweep.json a command printed names its folder
    if (path / SWEEP_FILE).exists():
        return [str(job) for job in job_dirs(path)]
    return [str(path)]


def _run_id_of(source: str, store: Store) -> str:
    if is_run_id(source):
        return source
    tracked = tracking_record(Path(source))
    if tracked is None:
        raise DataError(
            f"{source}: not logged to MLflow yet (no {TRACKING_FILE} of its result.json): run `harness sync {source}` "
            "first"
        )
    uri, run_id = tracked
    if uri != store.uri:
        raise DataError(f"{source}: logged to {masked(uri)}, not to {masked(store.uri)}")
    return run_id
