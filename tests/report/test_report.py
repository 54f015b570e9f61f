"""Reports over real runs: every plot drawn at its size, the table equal to the runs, withheld values missing."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from harness.pipeline import run
from harness.report.figures import DPI, FIGURE_SIZE_IN
from harness.report.plots import LabelledRun, pareto_front
from harness.report.render import RunSet, folder_runs, write_report
from harness.result import RunResult
from harness.result.perf import HostTelemetry, Probe
from tests.conftest import REPO_ROOT, compose

PLOT_FILES = {
    "throughput_vs_batch.png", "latency_percentiles.png", "latency_cdf.png", "accuracy_vs_throughput.png",
    "precision_deltas.png", "latency_vs_throughput.png",
}  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[LabelledRun]:
    """Four real runs of the tiny model: fp32 / fp16 x batch 1 / 2, 16 batches each (too few for p90 and p99)."""
    root = tmp_path_factory.mktemp("report-runs")
    made = []
    for precision in ("fp32", "fp16"):
        for batch in (1, 2):
            composed = compose(
                ["debug=tiny", f"precision={precision}", f"perf.batch={batch}", f"paths.cache={root / 'cache'}",
                 f"paths.data={root / 'data'}", f"paths.outputs={root / 'outputs'}", "tracking=off"]
            )  # fmt: skip
            run_dir = root / f"{precision}-b{batch}"
            result = run(composed, run_dir=run_dir)
            assert result.status == "ok", result.error
            made.append(run_dir)
    return folder_runs(made).runs


@pytest.fixture
def saved(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The figures the plot functions draw, by file name, kept open instead of written."""
    from harness.report import plots

    figures: dict[str, Any] = {}
    monkeypatch.setattr(plots, "save", lambda figure, path: figures.setdefault(path.name, figure))
    return figures


def test_every_plot_and_index_is_written_and_the_table_equals_the_runs(runs: list[LabelledRun], tmp_path: Path) -> None:
    report = write_report(runs, tmp_path / "report", title="tiny sweep")
    assert {plot.path.name for plot in report.plots} == PLOT_FILES
    for plot in report.plots:
        with Image.open(plot.path) as image:
            # Bar plots grow downwards by the room their tick labels take (they stand upright past 24 characters).
            assert image.format == "PNG" and image.size[0] == int(FIGURE_SIZE_IN[0] * DPI)
            assert int(FIGURE_SIZE_IN[1] * DPI) <= image.size[1] <= int((FIGURE_SIZE_IN[1] + 4) * DPI)
    index = report.index_md.read_text()
    header = next(line for line in index.splitlines() if line.startswith("| job |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    for labelled in runs:
        row = next(line for line in index.splitlines() if line.startswith(f"| {labelled.label} |"))
        cells = dict(zip(columns, (cell.strip() for cell in row.strip("|").split("|")), strict=True))
        assert float(cells["throughput_qps"]) == pytest.approx(labelled.result.perf.throughput_qps, rel=1e-5)  # type: ignore[union-attr]
        assert float(cells["map_medium"]) == pytest.approx(labelled.result.accuracy.medium.map, rel=1e-5)  # type: ignore[union-attr]
        assert cells.get("model_p99_us", "") == ""  # withheld: an empty cell (or no column at all), never 0
        e2e_p50 = labelled.result.perf.latency_us.e2e.p50  # type: ignore[union-attr]
        assert e2e_p50 is not None and float(cells["e2e_p50_us"]) == pytest.approx(e2e_p50, rel=1e-5)
        # fp16's parity differs from fp32's in the 7th decimal: rounded to 6 digits both read 1
        assert cells["parity_min_cos"] == f"{labelled.result.build.parity.min_cosine:.7f}"  # type: ignore[union-attr]
    fp16_parity = {run.result.build.parity.min_cosine for run in runs if run.result.config.precision.name == "fp16"}  # type: ignore[union-attr]
    assert all(f"{value:.6g}" == "1" and f"{value:.7f}" != "1.0000000" for value in fp16_parity), fp16_parity
    page = report.index_html.read_text()
    assert page.count("src='data:image/png;base64,") == len(PLOT_FILES) and not re.search(r"src='(?!data:)", page)
    assert f"<p>{len(runs)} runs, written" in page
    single = write_report(runs[:1], tmp_path / "single", title="one run")
    assert "\n1 run, written" in single.index_md.read_text() and "<p>1 run, written" in single.index_html.read_text()


def test_n_a_marks_stay_inside_the_axes_and_every_series_is_in_the_legend() -> None:
    # A precision-deltas plot of runs without an accuracy stage: only negative parity deltas, the mAP series
    # missing everywhere. The marks once sat above y=0, which was the top of the axes, and ran into the title.
    import matplotlib.pyplot as plt

    from harness.report.figures import grouped_bars, new_figure

    figure, axes = new_figure()
    values = {"map_medium": [None, None, None], "parity_x1e4": [-1.6, -0.1, None]}
    missing = grouped_bars(
        axes, ["fp16", "int8", "int8 b4"], tuple(values), lambda index, name: values[name][index], rotation=20,
        groups="rows",
    )  # fmt: skip
    assert missing == ["map_medium of all 3 rows", "parity_x1e4 of int8 b4"]
    assert [text.get_text() for text in axes.get_legend().get_texts()] == ["map_medium", "parity_x1e4"]
    figure.canvas.draw()
    inside = axes.get_window_extent()
    marks = [text.get_window_extent() for text in axes.texts if text.get_text() == "n/a"]
    assert len(marks) == 4
    assert all(
        inside.x0 <= mark.x0 and mark.x1 <= inside.x1 and inside.y0 <= mark.y0 and mark.y1 <= inside.y1
        for mark in marks
    )
    plt.close(figure)


def test_a_zero_delta_is_labelled_so_it_reads_as_measured_and_every_label_is_inside_the_axes() -> None:
    # fp16 against fp32 on the synthetic set: mAP unchanged (bars of no height), parity down by 2.6e-7.
    import matplotlib.pyplot as plt

    from harness.report.figures import grouped_bars, new_figure

    figure, axes = new_figure()
    values = {"map_medium": [0.0], "parity_x1e4": [-0.0026], "top10_lost_pct": [None]}
    grouped_bars(axes, ["fp16"], tuple(values), lambda index, name: values[name][index], rotation=20,
                  value_labels=True)  # fmt: skip
    figure.canvas.draw()
    inside = axes.get_window_extent()
    labels = {text.get_text(): text.get_window_extent() for text in axes.texts}
    assert set(labels) == {"0", "-0.0026", "n/a"}
    assert all(inside.y0 <= box.y0 and box.y1 <= inside.y1 for box in labels.values())
    low, high = axes.get_ylim()
    assert low < -0.0026 and high > 0  # room beyond the longest bar and above the zero one
    plt.close(figure)


def test_many_runs_with_long_labels_keep_every_tick_label_and_title_inside_the_figure() -> None:
    # 23 runs of three sweeps and a store differing in a dozen settings: the first labels, slanted, ran off the
    # figure's left edge, the title off its right, and the bars shrank to a strip (tight_layout gave up).
    import matplotlib.pyplot as plt

    from harness.report.figures import LABEL_CHARS, grouped_bars, label_of, new_figure

    cells = {"stages": '["build", "perf", "accuracy"]', "model.input_size": "[224, 224]", "precision.name": "fp32",
             "perf.batch": "1", "perf.repeats": "5"}  # fmt: skip
    labels = [label_of(f"17-22-01-699554/job {number}", cells) for number in range(23)]
    assert all(len(label) <= LABEL_CHARS for label in labels) and labels[0].endswith("\u2026")
    figure, axes = new_figure()
    grouped_bars(axes, labels, ("p50", "p99"), lambda index, name: 1.0 + index, rotation=30)
    axes.set_title("Latency percentiles (n/a: too few samples for that percentile)")
    figure.tight_layout()
    figure.canvas.draw()
    whole = figure.bbox
    for text in [*axes.get_xticklabels(), axes.title]:
        box = text.get_window_extent()
        assert whole.x0 <= box.x0 and box.x1 <= whole.x1 and whole.y0 <= box.y0 and box.y1 <= whole.y1, text
    assert axes.get_window_extent().height > 0.4 * whole.height  # the bars keep most of the figure
    plt.close(figure)


def test_a_label_names_each_setting_once_when_the_run_name_carries_it() -> None:
    # MLflow names a sweep's job by the axes its jobs differ in; a report from the store added them again:
    # "tiny14_reg4-fp32-sleep-b1 latency_us=4400 latency_us=4400".
    from harness.report.figures import label_of

    cells = {"backend.latency_us": "4400", "perf.repeats": "5", "precision.name": "fp16"}
    assert label_of("tiny-fp32-sleep-b1 latency_us=4400", cells) == (
        "tiny-fp32-sleep-b1 latency_us=4400 repeats=5 precision=fp16"
    )
    assert label_of("job 3", cells) == "job 3 latency_us=4400 repeats=5 precision=fp16"
    # The run name's parts are its variant, precision, backend and batch: "...-fp16-... precision=fp16" said one twice.
    swept = {"precision.name": "fp16", "perf.batch": "8", "backend.intra_op_threads": "2"}
    assert label_of("tiny14_reg4-fp16-onnxruntime-b8", swept) == "tiny14_reg4-fp16-onnxruntime-b8 intra_op_threads=2"
    assert label_of("job 1", swept) == "job 1 precision=fp16 batch=8 intra_op_threads=2"


def test_lines_that_share_a_colour_do_not_share_a_dash() -> None:
    # Past 10 curves matplotlib's colours come round again: curve 11 was drawn exactly as curve 1.
    import matplotlib.pyplot as plt

    from harness.report.figures import line_style, new_figure

    figure, axes = new_figure()
    lines = [axes.plot([0, 1], [0, index], linestyle=line_style(index))[0] for index in range(25)]
    looks = [(line.get_color(), line.get_linestyle()) for line in lines]
    assert len(set(looks)) == len(looks)
    plt.close(figure)


def test_throughput_starts_at_zero_and_each_point_names_its_precision_inside_the_axes(
    runs: list[LabelledRun], tmp_path: Path, saved: dict[str, Any]
) -> None:
    from harness.report import plots

    plots.throughput_vs_batch(runs, tmp_path / "throughput.png")
    plots.accuracy_vs_throughput(runs, tmp_path / "accuracy.png")
    plots.latency_vs_throughput(runs, tmp_path / "latency.png")
    fastest = max(max(run.result.perf.throughput_qps_repeats) for run in runs)  # type: ignore[union-attr]
    (throughput_axes,) = saved["throughput.png"].axes
    # heights read as ratios; the highest point (its bar's top) is drawn whole, not cut in half by the frame
    low, high = throughput_axes.get_ylim()
    assert low == 0 and high >= 1.05 * fastest
    (latency_axes,) = saved["latency.png"].axes
    assert latency_axes.get_xlim()[0] == 0 and latency_axes.get_ylim()[0] == 0
    figure = saved["accuracy.png"]
    low, high = figure.axes[0].get_xlim()  # throughputs as far apart as their ratio, as in the other plots
    assert low == 0 and high >= 1.05 * max(run.result.perf.throughput_qps for run in runs)  # type: ignore[union-attr]
    figure.tight_layout()
    figure.canvas.draw()
    (axes,) = figure.axes
    labels = {text.get_text(): text.get_window_extent() for text in axes.texts}
    # The runs are named fp32-b1, fp16-b2, ...: their names show the precision and the batch the sweep varied.
    assert set(labels) == {run.label for run in runs}
    assert all(f"{run.result.config.precision.name}-b{run.result.config.perf.batch}" == run.label for run in runs)
    inside = axes.get_window_extent()
    assert all(inside.x0 <= box.x0 and box.x1 <= inside.x1 for box in labels.values()), labels


def test_each_search_of_a_repeated_peak_search_is_a_line_of_its_own(
    runs: list[LabelledRun], tmp_path: Path, saved: dict[str, Any]
) -> None:
    # Drawn as one line through every probe sorted by throughput, two searches' probes zig-zagged between them.
    from harness.report import plots

    def probe(repeat: int, rate: float, p99_ms: float) -> Probe:
        return Probe(target_qps=rate, throughput_qps=rate, p50_ms=p99_ms / 3, p99_ms=p99_ms, samples=700,
                     passed=p99_ms <= 5.0, repeat=repeat)  # fmt: skip

    probes = (probe(0, 400, 2.0), probe(0, 800, 9.0), probe(0, 600, 4.0), probe(1, 400, 3.0), probe(1, 800, 12.0))
    perf = dataclasses.replace(runs[0].result.perf, scenario="server", latency_bound_ms=5.0, probes=probes)  # type: ignore[arg-type]
    searched = dataclasses.replace(runs[0], result=dataclasses.replace(runs[0].result, perf=perf))
    plot = plots.latency_vs_throughput([searched], tmp_path / "latency.png")
    assert plot is not None and "each search a line of its own" in plot.caption
    (axes,) = saved["latency.png"].axes
    drawn = [(line.get_linestyle(), list(line.get_xdata()), list(line.get_ydata())) for line in axes.get_lines()]
    assert drawn[:4] == [
        ("-", [400, 600, 800], [2.0 / 3, 4.0 / 3, 3.0]), ("-", [400, 800], [1.0, 4.0]),
        ("--", [400, 600, 800], [2.0, 4.0, 9.0]), ("--", [400, 800], [3.0, 12.0]),
    ]  # fmt: skip
    assert [text.get_text() for text in axes.get_legend().get_texts()][-1] == "p99 bound 5 ms"
    assert len(axes.get_legend().get_texts()) == 3  # p50, p99 and the bound: each percentile named once


def test_a_sweep_of_two_load_settings_draws_a_line_per_value_of_the_one_varied_less(
    runs: list[LabelledRun], tmp_path: Path, saved: dict[str, Any]
) -> None:
    # batch x instances was one line through every point by throughput, from one instance count to another.
    from harness.report import plots

    fp32 = [run for run in runs if run.result.config.precision.name == "fp32"]  # batch 1 and 2

    def with_load(run: LabelledRun, instances: int, processes: int) -> LabelledRun:
        config = run.result.config
        perf = dataclasses.replace(config.perf, instances=instances, processes=processes)
        scaled = dataclasses.replace(run.result.perf, throughput_qps=run.result.perf.throughput_qps * instances)  # type: ignore[union-attr]
        result = dataclasses.replace(run.result, config=dataclasses.replace(config, perf=perf), perf=scaled)
        return dataclasses.replace(run, label=f"{run.label} i{instances}", result=result)

    grid = [with_load(run, instances, 1) for instances in (1, 2) for run in fp32]
    plots.latency_vs_throughput(grid, tmp_path / "grid.png")
    (axes,) = saved["grid.png"].axes
    lines = {line.get_label(): sorted(line.get_xdata()) for line in axes.get_lines() if line.get_linestyle() == "-"}
    assert len(lines) == 2 and all("instances=" in label for label in lines), lines
    for instances in (1, 2):
        (points,) = [points for label, points in lines.items() if f"instances={instances} " in label]
        assert points == sorted(run.result.perf.throughput_qps for run in grid  # type: ignore[union-attr]
                                if run.result.config.perf.instances == instances)  # fmt: skip
    # Processes that follow instances (one process per instance) keep no line apart.
    lockstep = [with_load(fp32[0], instances, instances) for instances in (1, 2, 4)]
    plots.latency_vs_throughput(lockstep, tmp_path / "lockstep.png")
    (axes,) = saved["lockstep.png"].axes
    assert len([line for line in axes.get_lines() if line.get_linestyle() == "-"]) == 1


def test_a_precision_delta_below_the_gates_tolerances_draws_small(
    runs: list[LabelledRun], tmp_path: Path, saved: dict[str, Any]
) -> None:
    # fp16's parity 2.6e-7 below fp32 (-0.0026 x 1e4) filled the whole plot, as large as any real loss would.
    from harness.report import plots

    plot = plots.precision_deltas(runs, tmp_path / "deltas.png")
    assert plot is not None and "at least +-1" in plot.caption
    (axes,) = saved["deltas.png"].axes
    heights = [abs(patch.get_height()) for patch in axes.patches]
    assert heights and max(heights) < 0.5  # the tiny model's deltas, all within the tolerances
    low, high = axes.get_ylim()
    assert low <= -1 and high >= 1


def test_the_latency_cdf_counts_what_its_samples_are(
    runs: list[LabelledRun], tmp_path: Path, saved: dict[str, Any]
) -> None:
    # A server run's samples are requests of one image; the axis said "fraction of batches" for every run.
    from harness.report import plots

    served = tmp_path / "served"
    composed = compose(
        ["debug=tiny", "stages=[perf]", "backend=sleep", "perf.scenario=server", "perf.target_qps=400",
         "perf.min_duration_s=0.2", f"paths.outputs={tmp_path / 'outputs'}", "tracking=off"]
    )  # fmt: skip
    assert run(composed, run_dir=served).status == "ok"
    (server_run,) = folder_runs([served]).runs
    plots.latency_cdf(runs, tmp_path / "closed.png")
    plots.latency_cdf([server_run], tmp_path / "server.png")
    plots.latency_cdf([*runs, server_run], tmp_path / "both.png")
    assert saved["closed.png"].axes[0].get_ylabel() == "fraction of batches"
    assert saved["server.png"].axes[0].get_ylabel() == "fraction of requests"
    assert saved["both.png"].axes[0].get_ylabel() == "fraction of samples (closed loop: batches; else requests)"


def test_withheld_percentiles_are_drawn_as_missing_never_as_zero(runs: list[LabelledRun], tmp_path: Path) -> None:
    report = write_report(runs, tmp_path / "report", title="tiny sweep")
    (percentiles,) = [plot for plot in report.plots if plot.path.name == "latency_percentiles.png"]
    # Every run's p90 and p99 withheld: one phrase each, where every run's label was listed for each.
    assert percentiles.missing == [f"p90 of all {len(runs)} runs", f"p99 of all {len(runs)} runs"]
    assert f"Missing (drawn as n/a or left out, never as zero): p90 of all {len(runs)} runs; p99 of all " in (
        report.index_md.read_text()
    )
    # The latency-vs-throughput plot listed each run's point: "fp32-b1 p99 at 1234 img/s; ..." for all 4 (of a
    # 24-job sweep, 24 of them).
    (loads,) = [plot for plot in report.plots if plot.path.name == "latency_vs_throughput.png"]
    assert loads.missing == [f"p99 of all {len(runs)} runs"]
    two = write_report(runs[:2], tmp_path / "two", title="two runs")
    (percentiles,) = [plot for plot in two.plots if plot.path.name == "latency_percentiles.png"]
    labels = ", ".join(run.label for run in runs[:2])  # each bar named as its tick is
    assert percentiles.missing == [f"p90 of {labels}", f"p99 of {labels}"]
    # A search's probes are each at a rate of their own: those without a p99 are named with their rates.
    short = Probe(target_qps=400, throughput_qps=400, p50_ms=1.0, p99_ms=None, samples=300, passed=False, repeat=0)
    probes = (short, dataclasses.replace(short, target_qps=800, throughput_qps=800), dataclasses.replace(
        short, target_qps=200, throughput_qps=200, p99_ms=3.0, samples=700, passed=True))  # fmt: skip
    perf = dataclasses.replace(runs[0].result.perf, scenario="server", latency_bound_ms=5.0, probes=probes)  # type: ignore[arg-type]
    searched = dataclasses.replace(runs[0], result=dataclasses.replace(runs[0].result, perf=perf))
    (loads,) = [plot for plot in write_report([searched, *runs[1:3]], tmp_path / "searched", title="searched").plots
                if plot.path.name == "latency_vs_throughput.png"]  # fmt: skip
    unsearched, probed = loads.missing  # the runs named in the order their series are drawn
    assert sorted(unsearched.removeprefix("p99 of ").split(", ")) == sorted([runs[1].label, runs[2].label])
    assert probed == f"{runs[0].label} p99 at 400, 800 img/s"


def test_the_percentile_title_explains_n_a_only_when_a_percentile_is_withheld(
    runs: list[LabelledRun], tmp_path: Path, saved: dict[str, Any]
) -> None:
    import dataclasses

    from harness.report import plots

    plots.latency_percentiles(runs, tmp_path / "withheld.png")
    perf = runs[0].result.perf
    assert perf is not None
    e2e = dataclasses.replace(perf.latency_us.e2e, p90=2000.0, p95=2500.0, p99=3000.0)
    complete = dataclasses.replace(perf, latency_us=dataclasses.replace(perf.latency_us, e2e=e2e))
    measured = dataclasses.replace(runs[0], result=dataclasses.replace(runs[0].result, perf=complete))
    plots.latency_percentiles([measured], tmp_path / "complete.png")
    assert "n/a" in saved["withheld.png"].axes[0].get_title()
    assert saved["complete.png"].axes[0].get_title() == "Latency percentiles"


def test_the_pareto_front_keeps_only_runs_nothing_beats_on_both_axes() -> None:
    assert pareto_front([(10.0, 80.0), (20.0, 70.0), (15.0, 60.0), (20.0, 80.0), (5.0, 90.0)]) == {3, 4}


def test_a_report_rewritten_in_its_folder_keeps_no_plot_of_the_earlier_runs(
    runs: list[LabelledRun], tmp_path: Path
) -> None:
    write_report(runs, tmp_path / "report", title="both precisions")
    (tmp_path / "report" / "notes.txt").write_text("the user's own file: not the report's to remove")
    fp32_only = write_report(runs[:2], tmp_path / "report", title="fp32 only")  # no lower precision: no deltas
    drawn = {plot.path.name for plot in fp32_only.plots}
    assert "precision_deltas.png" not in drawn
    assert {path.name for path in (tmp_path / "report").iterdir()} == drawn | {"index.md", "index.html", "notes.txt"}


def test_a_report_over_several_sources_is_named_after_all_of_them(runs: list[LabelledRun], tmp_path: Path) -> None:
    folders = [run.run_dir for run in runs[:2]]
    done = subprocess.run(
        [sys.executable, "-m", "harness", "report", *map(str, folders), "tracking=off"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    name = "+".join(folder.name for folder in folders)  # not the first's name: its own report would be replaced
    assert (tmp_path / "reports" / name / "index.md").read_text().startswith(f"# report {name}\n")


def test_a_run_named_twice_is_reported_once(runs: list[LabelledRun], tmp_path: Path) -> None:
    folder = runs[0].run_dir
    copy = tmp_path / "copy"  # the same run (its run uid) in another folder, as a sweep and its job would be
    shutil.copytree(folder, copy)
    done = subprocess.run(
        [sys.executable, "-m", "harness", "report", str(folder), str(folder / "result.json"), str(copy),
         str(runs[1].run_dir), "tracking=off"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(", 2 runs; index.html is self-contained)"), done.stdout  # it said 4
    # 30 folders given, "1 run" reported: why is said
    assert "note: 1 run found again under another path (the same run_uid: a sweep and its job, " in done.stdout
    name = f"{folder.name}+{copy.name}+{runs[1].run_dir.name}"  # the folder once, by either path
    rows = [line for line in (tmp_path / "reports" / name / "index.md").read_text().splitlines() if line[:2] == "| "]
    assert len(rows) == 1 + 2  # the header and each run once


def test_the_report_command_writes_under_reports_by_default(runs: list[LabelledRun], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "harness", "report", *(str(run.run_dir) for run in runs[:2]), "--out", str(tmp_path / "r"),
         "tracking=off"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("(5 plots, 2 runs; index.html is self-contained)")  # one precision: no deltas
    labels = ", ".join(run.run_dir.name for run in runs[:2])
    assert f"read with care: {labels} ran with RANDOM weights: the mAP shows numerics" in done.stdout
    assert (tmp_path / "r" / "index.md").is_file()
    refused = subprocess.run(
        [sys.executable, "-m", "harness", "report", str(tmp_path), "tracking=off"], cwd=REPO_ROOT, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert refused.returncode == 1 and refused.stderr.strip() == (
        f"error: {tmp_path}: neither a run folder (result.json) nor a sweep folder (sweep.json)"
    )
    day = tmp_path / "outputs" / "run" / "2026-11-28"
    for name in ("10-00-00", "11-00-00"):
        shutil.copytree(runs[0].run_dir, day / name)
    above = subprocess.run(
        [sys.executable, "-m", "harness", "report", str(tmp_path / "outputs"), "tracking=off"], cwd=REPO_ROOT,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert above.returncode == 1 and above.stderr.strip().endswith(
        f"(sweep.json); run folders below it: 2, e.g. {day / '10-00-00'} (pass them, or their sweep folders)"
    )


def test_a_table_shows_the_settings_its_runs_differ_in_and_only_those(runs: list[LabelledRun], tmp_path: Path) -> None:
    from harness.report import markdown_table, row_of, swept_settings

    # fp32 / fp16 x batch 1 / 2: both shown by fixed columns, and fp16's own parity thresholds are no column
    assert swept_settings([run.result for run in runs]) == []
    made = []
    for latency in (300, 600):
        composed = compose(["debug=tiny", "backend=sleep", f"backend.latency_us={latency}", "stages=[perf]",
                            "perf.iterations=4", f"paths.cache={tmp_path / 'cache'}", "tracking=off"])  # fmt: skip
        made.append(run(composed, run_dir=tmp_path / str(latency)))
    inline = compose(["debug=tiny", "backend=sleep", "stages=[perf]", "perf.iterations=4", "vdsp=official_dinov2",
                      f"paths.cache={tmp_path / 'cache'}", "tracking=off"])  # fmt: skip
    made.append(run(inline, run_dir=tmp_path / "vdsp"))
    settings = swept_settings(made)
    assert settings == ["backend.latency_us", "vdsp.params"]  # the vendor's JSON is one setting, not 13
    reran = dataclasses.replace(made[0], config=dataclasses.replace(made[0].config, rerun_of=made[0].run_uid))
    assert swept_settings([made[0], reran]) == []  # where a run came from is no setting it ran with
    table = markdown_table([row_of(result.run_dir, result, settings) for result in made])
    header, _, *rows = table.splitlines()
    assert header.startswith("| job | backend.latency_us | vdsp.params | status |")
    cells = [row.split(" | ")[1:3] for row in rows]
    assert cells[:2] == [["300", ""], ["600", ""]] and cells[2][0] == "1000"  # the default
    assert cells[2][1].startswith('{"OpConfig": {') and len(cells[2][1]) == 40  # shortened, with a hash to tell apart


def test_precision_deltas_compare_only_runs_alike_in_every_other_setting(tmp_path: Path) -> None:
    from harness.report.plots import precision_deltas

    made = []
    for threads in (1, 2):
        for precision in ("fp32", "fp16"):
            composed = compose(["debug=tiny", f"precision={precision}", f"backend.intra_op_threads={threads}",
                                "stages=[build]", f"paths.cache={tmp_path / 'cache'}", "tracking=off"])  # fmt: skip
            run_dir = tmp_path / f"{precision}-t{threads}"
            assert run(composed, run_dir=run_dir).status == "ok"
            made.append(run_dir)
    plot = precision_deltas(folder_runs(made).runs, tmp_path / "deltas.png")
    assert plot is not None  # no accuracy stage: each fp16 row's mAP deltas are missing, naming the row
    rows = "tiny14_reg4 onnxruntime b1 intra_op_threads=1 fp16, tiny14_reg4 onnxruntime b1 intra_op_threads=2 fp16"
    assert f"map_medium of {rows}" in plot.missing
    # once merged by variant, backend and batch alone: one row, fp16 of one thread count against fp32 of another


def test_what_the_plots_cannot_show_is_said_above_them_naming_the_runs(runs: list[LabelledRun], tmp_path: Path) -> None:
    # A throughput bar of a run timed beside another, or on another machine, looks like any other bar, and the mAP
    # of random weights on the synthetic set like a retrieval result: the report said none of it.
    import dataclasses

    def on_a_machine(result: RunResult, other_pct: float) -> RunResult:
        """The run as if measured beside other work taking ``other_pct`` of the CPU (0: a quiet machine; the
        fixture's runs were measured on whatever this machine was doing)."""
        perf = result.perf
        assert perf is not None
        host = HostTelemetry(
            cpu_util_pct=100.0, cpu_util_per_core_pct=(100.0, 100.0), rss_mean_bytes=2**26, rss_peak_bytes=2**26,
            samples=20, interval_s=0.05, other_cpu_pct=other_pct, steal_pct=0.0,
        )  # fmt: skip
        repeats = tuple(dataclasses.replace(repeat, host=host) for repeat in perf.repeats)
        return dataclasses.replace(result, perf=dataclasses.replace(perf, host=host, repeats=repeats))

    runs = [dataclasses.replace(run, result=on_a_machine(run.result, 0.0)) for run in runs]
    labels = [run.label for run in runs]
    plain = write_report(runs, tmp_path / "plain", title="plain")
    assert plain.caveats == (  # every run of a 48-job sweep was 48 names, in each sentence
        "all 4 runs ran with RANDOM weights: the mAP shows numerics, not retrieval quality",
        "all 4 runs scored the synthetic set made from shipped photos: the mAP is not comparable with "
        "Revisited Oxford / Paris results",
    )
    assert write_report(runs[:2], tmp_path / "two", title="two").caveats[0] == (
        f"{labels[0]}, {labels[1]} ran with RANDOM weights: the mAP shows numerics, not retrieval quality"
    )
    contended, invalid, elsewhere, official = (run.result for run in runs)
    assert contended.perf and invalid.perf and official.weights and official.accuracy
    validity = dataclasses.replace(invalid.perf.validity, valid=False, reasons=("measured 0.5 s < 1 s",))
    changed = [
        dataclasses.replace(contended, perf=dataclasses.replace(contended.perf, contended_with=("/elsewhere/1",))),
        dataclasses.replace(invalid, perf=dataclasses.replace(invalid.perf, validity=validity)),
        dataclasses.replace(
            on_a_machine(elsewhere, 26.0),
            environment={**elsewhere.environment, "cpu_model": "Other CPU", "hardware_fingerprint": "0ther"},
        ),
        dataclasses.replace(
            official,
            weights=dataclasses.replace(official.weights, kind="official"),
            accuracy=dataclasses.replace(official.accuracy, dataset="roxford5k", warnings=("2 descriptors all zero",)),
        ),
    ]
    report = write_report(
        [dataclasses.replace(run, result=result) for run, result in zip(runs, changed, strict=True)],
        tmp_path / "changed",
        title="changed",
    )
    here = runs[0].result.environment
    assert report.caveats == (
        f"{labels[0]} measured on one device at the same time as another run: their timings are not comparable "
        "(run perf sweeps one job per device, e.g. the basic launcher)",
        f"{labels[1]}: its perf measurement is invalid (measured 0.5 s < 1 s): its timings are not the build's",
        f"{labels[2]} was measured beside other work (other processes up to 26% of the CPU in a repeat): its "
        "timings are not the build's alone",
        f"timed on 2 machines ({here['cpu_model']} / {here['cpu_usable']} cores [{here['hardware_fingerprint']}]: "
        f"{', '.join(labels[:2] + labels[3:])}; Other CPU / {here['cpu_usable']} cores [0ther]: {labels[2]}): "
        "timings across them compare machines as well",
        f"{', '.join(labels[:3])} ran with RANDOM weights: the mAP shows numerics, not retrieval quality",
        f"{', '.join(labels[:3])} scored the synthetic set made from shipped photos: the mAP is not comparable "
        "with Revisited Oxford / Paris results",
        f"{labels[3]}: 2 descriptors all zero",
    )
    index = report.index_md.read_text()
    section = index[index.index("## Read with care") : index.index("## Throughput vs batch")]
    assert section.splitlines()[2:-1] == [f"- {caveat}" for caveat in report.caveats]
    page = report.index_html.read_text()
    assert page.count("<li>") == len(report.caveats) and "<h2>Read with care</h2>" in page
    # The runs' table (a column per field and setting) scrolls in its own box instead of widening the page.
    assert "<div class='runs'><table>" in page and ".runs{overflow-x:auto}" in page
    # A sweep on a busy VM had a sentence per job: runs beside the same kind of work are one, with the most seen.
    loads = (12.0, 26.0, 0.0, 18.0)
    busy = [
        dataclasses.replace(run, result=on_a_machine(run.result, pct)) for run, pct in zip(runs, loads, strict=True)
    ]
    assert write_report(busy, tmp_path / "busy", title="busy").caveats[0] == (
        f"{labels[0]}, {labels[1]}, {labels[3]} were measured beside other work (other processes up to 26% of the "
        "CPU in a repeat): their timings are not the builds' alone"
    )
    busy = [dataclasses.replace(run, result=on_a_machine(run.result, 30)) for run in runs]
    assert write_report(busy, tmp_path / "all busy", title="all busy").caveats[0] == (
        "all 4 runs were measured beside other work (other processes up to 30% of the CPU in a repeat): their "
        "timings are not the builds' alone"
    )


def test_server_runs_are_left_out_of_throughput_vs_batch(runs: list[LabelledRun], tmp_path: Path) -> None:
    # A server run's throughput is the rate offered it and its batch a cap: as a point against batch it read as
    # a slow build (target 100 qps: a point at 85 img/s below the closed loop's 900).
    import dataclasses

    from harness.report.plots import throughput_vs_batch

    def served(labelled: LabelledRun) -> LabelledRun:
        perf = dataclasses.replace(labelled.result.perf, scenario="server", target_qps=100.0)  # type: ignore[arg-type]
        return dataclasses.replace(labelled, label="server", result=dataclasses.replace(labelled.result, perf=perf))

    assert throughput_vs_batch([served(runs[0])], tmp_path / "none.png") is None
    closed = throughput_vs_batch(runs, tmp_path / "closed.png")
    mixed = throughput_vs_batch([*runs, served(runs[0])], tmp_path / "mixed.png")
    assert closed is not None and mixed is not None
    assert (tmp_path / "mixed.png").read_bytes() == (tmp_path / "closed.png").read_bytes()


def test_runs_of_one_name_keep_apart_in_a_report(runs: list[LabelledRun], tmp_path: Path) -> None:
    # Two sweeps' job 0 folders, or two MLflow runs of one name: plots and tables tell runs apart by label.
    first, second = tmp_path / "a" / "0", tmp_path / "b" / "0"
    shutil.copytree(runs[0].run_dir, first)
    shutil.copytree(runs[1].run_dir, second)
    (tmp_path / "c" / "0").mkdir(parents=True)
    found = folder_runs([first, second])
    assert [run.label for run in found.runs] == ["0 (a/0)", "0 (b/0)"]  # the first was "0": which of the two?
    found.add("0", tmp_path / "c" / "0", distinct="c0ffee12")  # no result there: unreadable, under its own label
    assert list(found.unreadable) == ["0 (c0ffee12)"]
    unreadable_first = RunSet()
    unreadable_first.add("run", tmp_path / "c" / "0", distinct="c0ffee12")
    unreadable_first.add("run", first, distinct="a0a0a0a0")
    unreadable_first.add("other", second, distinct="b0b0b0b0")
    assert list(unreadable_first.unreadable) == ["run (c0ffee12)"]
    assert [run.label for run in unreadable_first.runs] == ["run (a0a0a0a0)", "other"]


def test_jobs_without_a_result_are_rows_saying_how_they_ended(tmp_path: Path) -> None:
    from harness.report import sweep_rows
    from harness.tracking import record_job_ending, start_sweep

    store = "tracking.uri=postgresql://me:s3cret@db/mlflow"  # the summary is uploaded: its password masked
    start_sweep(tmp_path, ["perf.batch=1,2,4", store], [["perf.batch=1", store], ["perf.batch=2"], ["perf.batch=4"]])
    record_job_ending(tmp_path, 0, "CANCELLED (SLURM job 7_0)")
    record_job_ending(tmp_path, 1, "NODE_FAIL (SLURM job 7_1)")
    rows = sweep_rows(tmp_path)
    assert [(row["status"], row["error"]) for row in rows] == [
        ("cancelled", "CANCELLED (SLURM job 7_0): perf.batch=1 tracking.uri=postgresql://me:***@db/mlflow"),
        ("missing", "NODE_FAIL (SLURM job 7_1): perf.batch=2"),
        ("missing", "not run: perf.batch=4"),
    ]


def harness_report_sync(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "harness", *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300
    )


def test_an_unreadable_result_is_named_and_the_other_jobs_are_still_reported_and_synced(
    runs: list[LabelledRun], tmp_path: Path
) -> None:
    from harness.report import sweep_rows
    from harness.tracking import start_sweep

    sweep = tmp_path / "sweep"
    start_sweep(sweep, ["perf.batch=1,2,4"], [["perf.batch=1"], ["perf.batch=2"], ["perf.batch=4"]])
    for number, labelled in enumerate(runs[:3]):
        shutil.copytree(labelled.run_dir, sweep / str(number))
    broken = sweep / "1" / "result.json"
    broken.write_text(broken.read_text()[:300])  # a copy cut short
    rows = sweep_rows(sweep)
    assert [row["status"] for row in rows] == ["ok", "unreadable", "ok"]
    assert rows[1]["error"].startswith(f"{broken}: cannot read result (")

    report = harness_report_sync("report", str(sweep), "--out", str(tmp_path / "r"), "tracking=off")
    assert report.returncode == 1 and "2 runs; index.html is self-contained)" in report.stdout, report.stderr
    assert report.stderr.startswith(f"error: {broken}: cannot read result (")
    index = (tmp_path / "r" / "index.md").read_text()
    assert "2 runs (1 more unreadable), written" in index and "| job 1 | unreadable |" in index  # one sweep: no prefix

    store = f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"
    synced = harness_report_sync("sync", store, str(sweep))
    assert synced.returncode == 1, synced.stderr
    assert f"{sweep / '0'}: logged as " in synced.stdout and f"{sweep / '2'}: logged as " in synced.stdout
    assert not (sweep / "1" / "tracking.json").exists()
    assert f"error: {broken}: cannot read result (" in synced.stderr
    shutil.copy(runs[1].run_dir / "result.json", broken)
    mended = harness_report_sync("sync", store, str(sweep))
    assert mended.returncode == 0, mended.stderr
    assert f"{sweep / '1'}: logged as " in mended.stdout and f"{sweep / '0'}: already logged as " in mended.stdout

    # A report over the sweep goes to its parent run in the store the sweep was logged to, not the default one.
    attached = harness_report_sync("report", str(sweep), "--out", str(tmp_path / "r2"))
    assert attached.returncode == 0, attached.stderr
    parent = json.loads((sweep / "sweep.json").read_text())["parent_run_id"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert f"attached to MLflow parent run {parent} in {uri} (artifacts/report)" in attached.stdout
    reported = {item.path for item in MlflowClient(uri).list_artifacts(parent, "report")}
    assert "report/index.html" in reported
    # A report over the sweep and another run is not the sweep's: it replaced the sweep's own report there.
    wider = harness_report_sync("report", str(sweep), str(runs[3].run_dir), "--out", str(tmp_path / "r3"))
    assert wider.returncode == 0 and "attached" not in wider.stdout, wider.stderr
    kept = Path(MlflowClient(uri).download_artifacts(parent, "report/index.md", str(tmp_path / "kept")))
    assert kept.read_text() == (tmp_path / "r2" / "index.md").read_text()


def test_a_report_on_a_fresh_machine_logs_nothing_of_matplotlib_building_its_font_cache(tmp_path: Path) -> None:
    script = (
        "import logging; logging.basicConfig(level=logging.INFO, format='[%(name)s] %(message)s')\n"
        "from harness.report.figures import new_figure; new_figure()\n"
    )
    environment = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "matplotlib")}  # no font cache yet
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment, check=True)
    assert list((tmp_path / "matplotlib").glob("fontlist-*.json")) and done.stderr == "", done.stderr
