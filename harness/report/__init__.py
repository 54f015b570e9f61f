"""Reports over many runs, from their ``result.json`` files: the sweep summary table here, plots in
``harness.report.plots`` and the ``index.md`` / ``index.html`` report in ``harness.report.render``."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from harness.config.convert import flatten
from harness.errors import DataError, masked
from harness.fileio import write_text_atomic
from harness.result import RESULT_FILE, RunResult, load_result

SWEEP_FILE = "sweep.json"

Column = tuple[str, Callable[[RunResult], object]]

COLUMNS: tuple[Column, ...] = (
    ("status", lambda result: result.status),
    ("variant", lambda result: result.config.model.variant),
    ("precision", lambda result: result.config.precision.name),
    ("backend", lambda result: result.config.backend["name"]),
    ("batch", lambda result: result.config.perf.batch),
    ("instances", lambda result: result.config.perf.instances),
    ("throughput_qps", lambda result: result.perf and result.perf.throughput_qps),
    ("model_p50_us", lambda result: result.perf and result.perf.latency_us.model.p50),
    ("model_p99_us", lambda result: result.perf and result.perf.latency_us.model.p99),
    # p50 and p99 beside the model's (the gate's and MLflow's headline statistics), not a mean beside a median.
    ("e2e_p50_us", lambda result: result.perf and result.perf.latency_us.e2e.p50),
    ("e2e_p99_us", lambda result: result.perf and result.perf.latency_us.e2e.p99),
    ("perf_valid", lambda result: result.perf and result.perf.validity.valid),
    ("contended", lambda result: result.perf and bool(result.perf.contended_with)),
    ("parity_min_cos", lambda result: result.build and result.build.parity.min_cosine),
    ("map_medium", lambda result: result.accuracy and result.accuracy.medium.map),
    ("map_hard", lambda result: result.accuracy and result.accuracy.hard.map),
    (
        "fp32_top10_overlap",
        lambda result: result.accuracy and result.accuracy.fp32 and result.accuracy.fp32.neighbour_overlap_at_10,
    ),
    ("error", lambda result: result.error and result.error.message),
)
COLUMN_NAMES = ("job", *(name for name, _ in COLUMNS))


# A cosine's news is in its 7th decimal: fp16's 0.9999998 read as fp32's 1 at 6 significant digits.
FLOAT_FORMATS = {"parity_min_cos": ".7f"}


def _cell(name: str, value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, FLOAT_FORMATS.get(name, ".6g"))
    return str(value)


# Settings the fixed columns show, and groups that say where a run lives or came from rather than what it measured.
SHOWN_SETTINGS = ("model.variant", "precision.name", "backend.name", "perf.batch", "perf.instances")
LOCAL_GROUPS = ("paths", "tracking", "progress", "task", "rerun_of")
# A group chosen by this key: where it differs, the group's other keys differ with it (precision=fp16 brings
# its own parity thresholds), and only the choice is a column.
GROUP_CHOICES = {"model": "model.variant", "precision": "precision.name", "backend": "backend.name",
                 "dataset": "dataset.name"}  # fmt: skip


# Free-form mappings: one setting each (a vendor's vdsp JSON is not 13 columns).
MAPPING_SETTINGS = (
    "vdsp.params",
    "backend.provider_options",
    "backend.aot_inductor_configs",
    "backend.compile_options",
    "backend.session_config",
)
LONGEST_SETTING = 40


def _settings(result: RunResult) -> dict[str, object]:
    derived = [field.name for field in dataclasses.fields(result.config) if field.metadata.get("resolved")]
    config = {name: value for name, value in dataclasses.asdict(result.config).items() if name not in derived}
    whole = {}
    for dotted in MAPPING_SETTINGS:
        group, name = dotted.split(".")
        if isinstance(config.get(group), dict) and name in config[group]:
            mapping = config[group].pop(name)
            whole[dotted] = json.dumps(mapping, sort_keys=True) if mapping else None
    return {**dict(flatten(config)), **whole}


def _setting_cell(value: object) -> str:
    text = _cell("", value) if not isinstance(value, list | tuple) else json.dumps(value)
    if len(text) <= LONGEST_SETTING:
        return text
    return f"{text[: LONGEST_SETTING - 12]}... {hashlib.sha256(text.encode()).hexdigest()[:8]}"


def swept_settings(results: list[RunResult], shown: tuple[str, ...] = SHOWN_SETTINGS) -> list[str]:
    """The dotted settings whose values differ between the runs and that are not ``shown`` otherwise (the fixed
    columns): a sweep's axes (``perf.target_qps``, ``backend.intra_op_threads``...), so that its rows can be told
    apart. In config order."""
    flattened = [_settings(result) for result in results]
    keys = list(dict.fromkeys(key for settings in flattened for key in settings))

    def differs(key: str) -> bool:
        return len({json.dumps(settings.get(key), sort_keys=True, default=str) for settings in flattened}) > 1

    chosen = {group for group, choice in GROUP_CHOICES.items() if differs(choice)}
    return [
        key
        for key in keys
        if differs(key)
        and key not in shown
        and key.split(".")[0] not in LOCAL_GROUPS
        and not (key.split(".")[0] in chosen and key != GROUP_CHOICES[key.split(".")[0]])
    ]


def setting_cells(result: RunResult, settings: list[str] | tuple[str, ...]) -> dict[str, str]:
    """The run's value of each of ``settings`` (dotted keys), as table cells."""
    values = _settings(result) if settings else {}
    return {key: _setting_cell(values.get(key)) for key in settings}


def row_of(label: str, result: RunResult, settings: list[str] | tuple[str, ...] = ()) -> dict[str, str]:
    """One table row: the run's label (job number or folder), the ``settings`` (``swept_settings``) it ran with,
    then every column's cell."""
    return {
        "job": label,
        **setting_cells(result, settings),
        **{name: _cell(name, extract(result)) for name, extract in COLUMNS},
    }


def blank_row(label: str, status: str, why: str) -> dict[str, str]:
    """The row of a job with no result to show: its status and why, every measured cell empty."""
    return {"job": label, **dict.fromkeys(COLUMN_NAMES[1:], ""), "status": status, "error": why}


def column_names(rows: list[dict[str, str]], *, keep_empty: bool = False) -> list[str]:
    """Every column of the rows in order (the job, swept settings, then the fixed columns), leaving out those
    empty in every row unless ``keep_empty``."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    ordered = ["job", *(name for name in names if name not in COLUMN_NAMES), *COLUMN_NAMES[1:]]
    return [name for name in ordered if keep_empty or any(row.get(name) for row in rows)]


def record_folder(path: Path) -> Path:
    """``path``, or the folder holding it when it is a run's ``result.json`` or a sweep's ``sweep.json`` (the path
    ``harness run`` prints last names the first)."""
    return path.parent if path.name in (RESULT_FILE, SWEEP_FILE) and path.is_file() else path


def folder_kind(folder: Path) -> Literal["sweep", "run"]:
    """Whether ``folder`` holds a sweep (``sweep.json``) or one run (``result.json``); else a ``DataError``."""
    if (folder / SWEEP_FILE).exists():
        return "sweep"
    if (folder / RESULT_FILE).exists():
        return "run"
    if not folder.is_dir():
        raise DataError(
            f"{folder}: " + ("a file: pass the run folder that holds it" if folder.exists() else "no such folder")
        )
    below = sorted(path.parent for path in folder.rglob(RESULT_FILE))
    hint = f"; run folders below it: {len(below)}, e.g. {below[0]} (pass them, or their sweep folders)" if below else ""
    raise DataError(f"{folder}: neither a run folder ({RESULT_FILE}) nor a sweep folder ({SWEEP_FILE}){hint}")


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job folders (those with a ``result.json``) in job order: 0, 1, ..., 9, 10, ..."""
    jobs = (path.parent for path in sweep_dir.glob("*/result.json"))
    return sorted(jobs, key=lambda path: (len(path.name), path.name))


def read_sweep_record(sweep_dir: Path) -> dict[str, object]:
    """``<sweep_dir>/sweep.json``: the sweep's identity, its planned jobs and how it ended."""
    try:
        return json.loads((sweep_dir / SWEEP_FILE).read_text())
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not text (UnicodeDecodeError)
        raise DataError(f"{sweep_dir / SWEEP_FILE}: cannot read the sweep record ({error})") from None


def missing_jobs(sweep_dir: Path) -> dict[int, str]:
    """Planned jobs without a ``result.json``: job number -> why (never a silent gap in a summary)."""
    record = read_sweep_record(sweep_dir)
    planned: list[list[str]] = record.get("jobs") or []  # type: ignore[assignment]
    interrupted = record.get("status") == "interrupted"
    endings: dict[str, str] = record.get("job_endings") or {}  # type: ignore[assignment]
    missing = {}
    for number, overrides in enumerate(planned):
        if (sweep_dir / str(number) / RESULT_FILE).exists():
            continue
        started = (sweep_dir / str(number)).is_dir()
        reason = endings.get(str(number)) or ("stopped without a result" if started else "not run")
        if interrupted:
            reason += " (sweep interrupted)"
        missing[number] = f"{reason}: {masked(' '.join(overrides))}"  # shown, and uploaded in the summary
    return missing


def planned_settings(sweep_dir: Path) -> list[dict[str, str]]:
    """Each planned job's ``key=value`` overrides as key -> value (``+`` dropped), in job order."""
    planned: list[list[str]] = read_sweep_record(sweep_dir).get("jobs") or []  # type: ignore[assignment]
    return [dict(override.lstrip("+").split("=", 1) for override in job if "=" in override) for job in planned]


def sweep_rows(sweep_dir: Path) -> list[dict[str, str]]:
    """One row per planned job (``<sweep_dir>/<n>/result.json``, or why there is none), in job order.

    A job without a result is ``cancelled`` when its launcher saw the cluster cancel it, else ``missing``; one
    whose ``result.json`` cannot be read is ``unreadable``, with why, and the other jobs are still summarised.
    """
    rows: dict[int, dict[str, str]] = {}
    results = {}
    for job in job_dirs(sweep_dir):
        try:
            results[int(job.name)] = load_result(job)
        except DataError as error:
            rows[int(job.name)] = blank_row(job.name, "unreadable", str(error))
    settings = swept_settings(list(results.values()))
    rows.update({number: row_of(str(number), result, settings) for number, result in results.items()})
    missing = missing_jobs(sweep_dir)
    planned = planned_settings(sweep_dir) if missing else []
    for number, reason in missing.items():
        row = blank_row(str(number), "cancelled" if reason.startswith("CANCELLED") else "missing", reason)
        # What it would have run with, from its planned overrides, where they set a column's setting.
        rows[number] = {"job": row["job"], **{key: planned[number].get(key, "") for key in settings}, **row}
    return [rows[number] for number in sorted(rows)]


def write_summary(rows: list[dict[str, str]], folder: Path) -> list[Path]:
    """``summary.csv`` (every fixed column, a stable schema) and ``summary.md`` in ``folder``; returns both."""
    names = column_names(rows, keep_empty=True)
    csv_path, markdown_path = folder / "summary.csv", folder / "summary.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, restval="")
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(markdown_path, markdown_table(rows))
    return [csv_path, markdown_path]


def markdown_table(rows: list[dict[str, str]]) -> str:
    names = column_names(rows)
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(row.get(name, "").replace("|", "/") for name in names) + " |" for row in rows]
    return "\n".join(lines) + "\n"
