"""``index.md`` and a self-contained ``index.html`` (images inlined) over many runs: the plots and the table."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from harness.errors import counted
from harness.fileio import write_text_atomic
from harness.report import COLUMN_NAMES, folder_kind, job_dirs, markdown_table, row_of
from harness.report.plots import PLOTS, LabelledRun, Plot
from harness.result import load_result


@dataclass(frozen=True)
class ReportFiles:
    folder: Path
    index_md: Path
    index_html: Path
    plots: tuple[Plot, ...]


def sweep_runs(sweep_dir: Path) -> list[LabelledRun]:
    """The finished jobs of a sweep, labelled by job number."""
    return [LabelledRun(f"job {job.name}", load_result(job), job) for job in job_dirs(sweep_dir)]


def folder_runs(folders: list[Path]) -> list[LabelledRun]:
    """Runs from run folders and sweep folders, in the order given."""
    runs: list[LabelledRun] = []
    for folder in folders:
        if folder_kind(folder) == "sweep":
            runs += [LabelledRun(f"{folder.name}/{run.label}", run.result, run.run_dir) for run in sweep_runs(folder)]
        else:
            runs.append(LabelledRun(folder.name, load_result(folder), folder))
    return runs


def write_report(runs: list[LabelledRun], folder: Path, *, title: str) -> ReportFiles:
    """Draw every plot the runs support into ``folder`` and write ``index.md`` and ``index.html`` beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = tuple(plot for name, draw in PLOTS if (plot := draw(runs, folder / name)) is not None)
    rows = [row_of(run.label, run.result) for run in runs]
    created = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [
        f"# {title}",
        "",
        f"{counted(len(runs), 'run')}, written {created}. Empty cells: not measured or withheld.",
        "",
    ]
    for plot in plots:
        lines += [f"## {plot.title}", "", plot.caption, "", f"![{plot.title}]({plot.path.name})", ""]
        if plot.missing:
            lines += [f"Missing (drawn as n/a or left out, never as zero): {', '.join(plot.missing)}.", ""]
    lines += ["## Runs", "", markdown_table(rows)]
    index_md = folder / "index.md"
    write_text_atomic(index_md, "\n".join(lines))
    index_html = folder / "index.html"
    write_text_atomic(index_html, _html(title, created, plots, rows))
    return ReportFiles(folder, index_md, index_html, plots)


def _html(title: str, created: str, plots: tuple[Plot, ...], rows: list[dict[str, str]]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}img{max-width:100%}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>{counted(len(rows), 'run')}, written {created}. Empty cells: not measured or withheld.</p>",
    ]
    for plot in plots:
        encoded = base64.b64encode(plot.path.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(plot.title)}</h2><p>{html.escape(plot.caption)}</p>")
        parts.append(f"<img alt='{html.escape(plot.title)}' src='data:image/png;base64,{encoded}'>")
        if plot.missing:
            parts.append(f"<p>Missing (n/a, never zero): {html.escape(', '.join(plot.missing))}.</p>")
    names = [name for name in COLUMN_NAMES if any(row[name] for row in rows)]
    parts.append("<h2>Runs</h2><table><tr>" + "".join(f"<th>{html.escape(name)}</th>" for name in names) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{html.escape(row[name])}</td>" for name in names) + "</tr>" for row in rows]
    parts.append("</table></body></html>")
    return "\n".join(parts)
