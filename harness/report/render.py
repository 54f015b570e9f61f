"""``index.md`` and a self-contained ``index.html`` (images inlined) over many runs: the plots and the table."""

from __future__ import annotations

import base64
import dataclasses
import html
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from harness.errors import DataError, counted, named
from harness.fileio import write_text_atomic
from harness.report import blank_row, column_names, folder_kind, job_dirs, markdown_table, row_of, swept_settings
from harness.report.plots import PLOTS, LabelledRun, Plot
from harness.result import RunResult, load_result
from harness.result.perf import OTHER_LOAD_PCT, PerfResult, other_work_note, worst_other_work


@dataclass(frozen=True)
class ReportFiles:
    """What a report wrote, and its ``caveats``: what a reader must know before comparing its runs' numbers."""

    folder: Path
    index_md: Path
    index_html: Path
    plots: tuple[Plot, ...]
    caveats: tuple[str, ...]


@dataclass
class RunSet:
    """The runs to report on, and each of their ``result.json`` files that cannot be read: label -> why. One
    unreadable file leaves the others reported, and is named, not skipped silently."""

    runs: list[LabelledRun] = field(default_factory=list)
    unreadable: dict[str, str] = field(default_factory=dict)
    # Each label asked for: the distinct of the run that holds it bare, None once runs share it
    asked: dict[str, str | None] = field(default_factory=dict, repr=False)

    def add(self, label: str, run_dir: Path, *, distinct: str | None = None) -> None:
        """Add the run in ``run_dir`` as ``label``; where runs share a label (two MLflow runs of one name, two
        folders ``0`` of two sweeps) each of them gets its ``distinct`` (default: the folder's parent) beside
        it, the first one too, since plots and tables tell runs apart by label alone."""
        distinct = distinct or f"{run_dir.parent.name}/{run_dir.name}"
        if label not in self.asked:
            self.asked[label] = distinct
        else:
            if (holder := self.asked[label]) is not None:
                self._relabel(label, f"{label} ({holder})")
                self.asked[label] = None
            label = f"{label} ({distinct})"
        taken = {run.label for run in self.runs} | set(self.unreadable)
        unique, count = label, 1
        while unique in taken:
            count += 1
            unique = f"{label} #{count}"
        try:
            self.runs.append(LabelledRun(unique, load_result(run_dir), run_dir))
        except DataError as error:
            self.unreadable[unique] = str(error)

    def _relabel(self, label: str, new_label: str) -> None:
        self.runs = [dataclasses.replace(run, label=new_label) if run.label == label else run for run in self.runs]
        if label in self.unreadable:
            self.unreadable = {new_label if key == label else key: why for key, why in self.unreadable.items()}


def sweep_runs(sweep_dir: Path, *, prefix: str = "", found: RunSet | None = None) -> RunSet:
    """The finished jobs of a sweep, labelled by job number (after ``prefix``), added to ``found`` (default: a
    new set)."""
    found = RunSet() if found is None else found
    for job in job_dirs(sweep_dir):
        found.add(f"{prefix}job {job.name}", job)
    return found


def folder_runs(folders: list[Path]) -> RunSet:
    """Runs from run folders and sweep folders, in the order given."""
    found = RunSet()
    for folder in folders:
        if folder_kind(folder) == "sweep":
            # The sweep's name before each job only where it tells runs of several folders apart.
            sweep_runs(folder, prefix=f"{folder.name}/" if len(folders) > 1 else "", found=found)
        else:
            found.add(folder.name, folder)
    return found


def write_report(
    runs: list[LabelledRun], folder: Path, *, title: str, unreadable: dict[str, str] | None = None
) -> ReportFiles:
    """Draw every plot the runs support into ``folder`` and write ``index.md`` and ``index.html`` beside them;
    ``unreadable`` results (label -> why) are rows that say so."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = tuple(plot for name, draw in PLOTS if (plot := draw(runs, folder / name)) is not None)
    # A plot an earlier report in this folder drew and these runs cannot is not left beside the new index, where
    # it would read as theirs (and be attached with it to a sweep's MLflow run).
    for name in {name for name, _ in PLOTS} - {plot.path.name for plot in plots}:
        (folder / name).unlink(missing_ok=True)
    settings = swept_settings([run.result for run in runs])
    rows = [row_of(run.label, run.result, settings) for run in runs]
    rows += [blank_row(label, "unreadable", why) for label, why in (unreadable or {}).items()]
    created = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [
        f"# {title}",
        "",
        f"{_counts(runs, unreadable)}, written {created}. Empty cells: not measured or withheld.",
        "",
    ]
    notes = caveats(runs)
    if notes:
        lines += ["## Read with care", "", *(f"- {note}" for note in notes), ""]
    for plot in plots:
        lines += [f"## {plot.title}", "", plot.caption, "", f"![{plot.title}]({plot.path.name})", ""]
        if plot.missing:
            lines += [f"Missing (drawn as n/a or left out, never as zero): {'; '.join(plot.missing)}.", ""]
    lines += ["## Runs", "", markdown_table(rows)]
    index_md = folder / "index.md"
    write_text_atomic(index_md, "\n".join(lines))
    index_html = folder / "index.html"
    written = f"{_counts(runs, unreadable)}, written {created}"
    write_text_atomic(index_html, _html(title, written, notes, plots, rows))
    return ReportFiles(folder, index_md, index_html, plots, tuple(notes))


def caveats(runs: list[LabelledRun]) -> list[str]:
    """What the plots and table do not show and a reader comparing the runs must know, one sentence each naming
    the runs: timings taken beside another run or declared invalid, timings from several machines, mAP from
    random weights or the synthetic set, and what the accuracy stage warned about."""
    timed = [(run.label, run.result, run.result.perf) for run in runs if run.result.perf is not None]
    scored = [(run.label, run.result, run.result.accuracy) for run in runs if run.result.accuracy is not None]
    notes = []
    contended = [label for label, _, perf in timed if perf.contended_with]
    if contended:
        notes.append(
            f"{named(contended, among=len(runs))} measured on one device at the same time as another run: their "
            "timings are not comparable (run perf sweeps one job per device, e.g. the basic launcher)"
        )
    notes += [
        f"{label}: its perf measurement is invalid ({'; '.join(perf.validity.reasons)}): its timings are not the "
        "build's"
        for label, _, perf in timed
        if not perf.validity.valid
    ]
    notes += _beside_other_work(timed, among=len(runs))
    machines: dict[str, list[str]] = {}
    for label, result, _ in timed:
        machines.setdefault(_machine(result), []).append(label)
    if len(machines) > 1:
        where = "; ".join(f"{machine}: {', '.join(labels)}" for machine, labels in machines.items())
        notes.append(f"timed on {len(machines)} machines ({where}): timings across them compare machines as well")
    random = [label for label, result, _ in scored if result.weights and result.weights.kind == "random"]
    if random:
        notes.append(
            f"{named(random, among=len(runs))} ran with RANDOM weights: the mAP shows numerics, not retrieval quality"
        )
    synthetic = [label for label, _, accuracy in scored if accuracy.dataset.startswith("synthetic-")]
    if synthetic:
        notes.append(
            f"{named(synthetic, among=len(runs))} scored the synthetic set made from shipped photos: the mAP is not "
            "comparable with Revisited Oxford / Paris results"
        )
    notes += [f"{label}: {warning}" for label, _, accuracy in scored for warning in accuracy.warnings]
    return notes


def _beside_other_work(timed: list[tuple[str, RunResult, PerfResult]], *, among: int) -> list[str]:
    """The runs measured beside other work, one sentence per kind of it (other processes, hypervisor steal, or
    both) with the most any of them saw: a sweep on a busy VM had a sentence per job."""
    runs_by_kind: dict[tuple[str, ...], list[tuple[str, dict[str, float]]]] = {}
    for label, _, perf in timed:
        over = {what: pct for what, pct in worst_other_work(perf).items() if pct > OTHER_LOAD_PCT}
        if over:
            runs_by_kind.setdefault(tuple(over), []).append((label, over))
    notes = []
    for kinds, members in runs_by_kind.items():
        note = other_work_note({what: max(over[what] for _, over in members) for what in kinds})
        if len(members) == 1:
            notes.append(f"{members[0][0]} was {note}: its timings are not the build's alone")
        else:
            labels = [label for label, _ in members]
            notes.append(f"{named(labels, among=among)} were {note}: their timings are not the builds' alone")
    return notes


def _machine(result: RunResult) -> str:
    """The machine a run was timed on, in words, with its hardware fingerprint (what the gate pairs runs by)."""
    environment = result.environment
    gpus: list[dict[str, str]] = environment.get("gpus") or []  # type: ignore[assignment]
    cores = environment.get("cpu_usable") or environment.get("cpu_count")
    parts = [str(environment.get("cpu_model", "unknown CPU")), f"{cores} cores", *(gpu["name"] for gpu in gpus)]
    return f"{' / '.join(parts)} [{environment.get('hardware_fingerprint', 'unknown')}]"


def _counts(runs: list[LabelledRun], unreadable: dict[str, str] | None) -> str:
    return counted(len(runs), "run") + (f" ({len(unreadable)} more unreadable)" if unreadable else "")


def _html(title: str, written: str, notes: list[str], plots: tuple[Plot, ...], rows: list[dict[str, str]]) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        # The runs' table has a column per result field and swept setting (20 and more): it scrolls in its own box
        # rather than widening the page past the plots.
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;font-size:12px}"
        ".runs{overflow-x:auto}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right;white-space:nowrap}img{max-width:100%}"
        "</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p>{html.escape(written)}. Empty cells: not measured or withheld.</p>",
    ]
    if notes:
        parts.append(
            "<h2>Read with care</h2><ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in notes) + "</ul>"
        )
    for plot in plots:
        encoded = base64.b64encode(plot.path.read_bytes()).decode()
        parts.append(f"<h2>{html.escape(plot.title)}</h2><p>{html.escape(plot.caption)}</p>")
        parts.append(f"<img alt='{html.escape(plot.title)}' src='data:image/png;base64,{encoded}'>")
        if plot.missing:
            parts.append(f"<p>Missing (n/a, never zero): {html.escape('; '.join(plot.missing))}.</p>")
    names = column_names(rows)
    parts.append(
        "<h2>Runs</h2><div class='runs'><table><tr>"
        + "".join(f"<th>{html.escape(name)}</th>" for name in names)
        + "</tr>"
    )
    parts += [
        "<tr>" + "".join(f"<td>{html.escape(row.get(name, ''))}</td>" for name in names) + "</tr>" for row in rows
    ]
    parts.append("</table></div></body></html>")
    return "\n".join(parts)
