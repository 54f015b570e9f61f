"""Reports: tables over many runs (a sweep's summary), from their ``result.json`` files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from harness.fileio import write_text_atomic

COLUMNS: tuple[tuple[str, str], ...] = (
    ("job", "job"),
    ("status", "status"),
    ("variant", "config.model.variant"),
    ("precision", "config.precision.name"),
    ("backend", "config.backend.name"),
    ("batch", "config.perf.batch"),
    ("instances", "config.perf.instances"),
    ("throughput_qps", "perf.throughput_qps"),
    ("model_p50_us", "perf.latency_us.model.p50"),
    ("model_p99_us", "perf.latency_us.model.p99"),
    ("e2e_avg_us", "perf.latency_us.e2e.avg"),
    ("perf_valid", "perf.validity.valid"),
    ("parity_min_cos", "build.parity.min_cosine"),
    ("map_medium", "accuracy.medium.map"),
    ("map_hard", "accuracy.hard.map"),
    ("error", "error.message"),
)


def _lookup(tree: object, dotted: str) -> object:
    for part in dotted.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's job folders (those with a ``result.json``) in job order: 0, 1, ..., 9, 10, ..."""
    jobs = (path.parent for path in sweep_dir.glob("*/result.json"))
    return sorted(jobs, key=lambda path: (len(path.name), path.name))


def sweep_rows(sweep_dir: Path) -> list[dict[str, str]]:
    """One row per job folder (``<sweep_dir>/<n>/result.json``), in job order."""
    rows = []
    for job in job_dirs(sweep_dir):
        result = {**json.loads((job / "result.json").read_text()), "job": job.name}
        rows.append({name: _cell(_lookup(result, dotted)) for name, dotted in COLUMNS})
    return rows


def write_summary(rows: list[dict[str, str]], folder: Path) -> list[Path]:
    """``summary.csv`` and ``summary.md`` in ``folder``; returns both paths."""
    names = [name for name, _ in COLUMNS]
    csv_path, markdown_path = folder / "summary.csv", folder / "summary.md"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names)
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(markdown_path, markdown_table(rows))
    return [csv_path, markdown_path]


def markdown_table(rows: list[dict[str, str]]) -> str:
    names = [name for name, _ in COLUMNS if any(row[name] for row in rows)]
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(row[name].replace("|", "/") for name in names) + " |" for row in rows]
    return "\n".join(lines) + "\n"
