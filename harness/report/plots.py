"""Plots of many runs, drawn with matplotlib (Agg, no display) from their typed results and raw samples.

Every plot function takes the runs and a path, draws only what the runs contain, and returns a ``Plot``
(or ``None`` when there is nothing to draw) saying what was drawn and what was missing. A value a run does
not have (a p99 withheld for too few samples, a stage that did not run) is drawn as missing ("n/a"), never
as zero.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import named
from harness.report import setting_cells, swept_settings
from harness.report.figures import from_zero, grouped_bars, label_of, legend, line_style, new_figure, save
from harness.result import RunResult
from harness.result.perf import searches

PERCENTILE_NAMES = ("p50", "p90", "p99")
LOAD_KEYS = ("batch", "instances", "processes", "queue_depth", "mode", "scenario", "target_qps")
# The precision-deltas axis spans at least this either side of zero: about the gate's tolerances in its units
# (0.5 mAP points, 1e-4 in cosine = 1 x 1e4), so a smaller change does not fill the plot.
DELTAS_LEAST_EXTENT = 1.0


@dataclass(frozen=True)
class LabelledRun:
    """A run and the short name it has in plots and tables (its job number or folder name)."""

    label: str
    result: RunResult
    run_dir: Path


@dataclass
class Plot:
    """One drawn figure: its file, title, what it shows, and the values that were missing."""

    path: Path
    title: str
    caption: str
    missing: list[str] = field(default_factory=list)


def _swept(runs: list[LabelledRun], along: tuple[str, ...] = (), *, per_run: bool = False) -> list[str]:
    """The settings the runs differ in, less those a plot draws ``along`` an axis: what keeps its series apart
    (beyond variant, backend, precision and batch, which name a series already), or with ``per_run`` what tells
    one run's bar, curve or point from another's (those four too)."""
    shown = () if per_run else ("model.variant", "precision.name", "backend.name", "perf.batch")
    return [key for key in swept_settings([run.result for run in runs], shown) if key not in along]


def _with_settings(name: str, run: LabelledRun, settings: list[str]) -> str:
    """``name`` followed by the run's ``settings`` as ``key=value`` (the key's last part: ``target_qps=200``)."""
    return label_of(name, setting_cells(run.result, settings))


def _series_key(name: str, run: LabelledRun, settings: list[str]) -> tuple[str, str]:
    """(label, identity) of the series or group ``name`` that a run belongs to: its members differ only along
    the plot's axis, in every setting, not only in those the label has room for."""
    cells = setting_cells(run.result, settings)
    return label_of(name, cells), json.dumps(cells, sort_keys=True)


def _series_name(run: LabelledRun) -> str:
    config = run.result.config
    return f"{config.model.variant} {config.backend['name']} {config.precision.name}"


def throughput_vs_batch(runs: list[LabelledRun], path: Path) -> Plot | None:
    """Throughput against batch size, one line per variant, backend and precision; the bars span the repeats.
    Server-scenario runs are left out: their throughput is the rate offered them, and their batch a cap on what
    the arrivals make (the latency-vs-throughput plot shows them)."""
    measured = [run for run in runs if run.result.perf is not None and run.result.perf.scenario != "server"]
    if not measured:
        return None
    series: dict[tuple[str, str], list[tuple[int, float, float, float]]] = defaultdict(list)
    settings = _swept(measured)
    for run in measured:
        perf = run.result.perf
        assert perf is not None
        repeats = perf.throughput_qps_repeats or (perf.throughput_qps,)
        series[_series_key(_series_name(run), run, settings)].append(
            (perf.batch, perf.throughput_qps, min(repeats), max(repeats))
        )
    figure, axes = new_figure()
    for index, ((name, _), points) in enumerate(sorted(series.items())):
        points.sort()
        batches, values, lows, highs = (np.asarray(column, dtype=np.float64) for column in zip(*points, strict=True))
        axes.errorbar(batches, values, yerr=[values - lows, highs - values], marker="o", capsize=3, label=name,
                      linestyle=line_style(index))  # fmt: skip
    # heights read as ratios: a cut axis made 12 against 15 img/s look like 1 to 4
    from_zero(axes, y=[high for points in series.values() for *_, high in points])
    axes.set_xscale("log", base=2)
    ticks = sorted({run.result.perf.batch for run in measured})  # type: ignore[union-attr]
    axes.set_xticks(ticks, [str(batch) for batch in ticks])
    axes.minorticks_off()
    axes.set_xlabel("batch (images per call)")
    axes.set_ylabel("throughput (images/s)")
    axes.set_title("Throughput vs batch (median repeat; bars: min-max over repeats)")
    axes.grid(alpha=0.3)
    legend(axes)
    save(figure, path)
    return Plot(
        path,
        "Throughput vs batch",
        "Median-repeat throughput per batch size (from zero); bars span all repeats. Closed-loop and offline runs: "
        "a server run's throughput is the rate offered it.",
    )


def latency_percentiles(runs: list[LabelledRun], path: Path) -> Plot | None:
    """End-to-end p50 / p90 / p99 per run; a withheld percentile is marked n/a, not drawn as zero."""
    measured = [run for run in runs if run.result.perf is not None]
    if not measured:
        return None
    figure, axes = new_figure()
    settings = _swept(measured, per_run=True)
    missing = grouped_bars(
        axes, [_with_settings(run.label, run, settings) for run in measured], PERCENTILE_NAMES,
        lambda index, name: _percentile_ms(measured[index], name), rotation=30,
    )  # fmt: skip
    axes.set_ylabel("end-to-end latency (ms)")
    axes.set_title("Latency percentiles" + (" (n/a: too few samples for that percentile)" if missing else ""))
    axes.grid(axis="y", alpha=0.3)
    save(figure, path)
    caption = "End-to-end latency percentiles per run (MLPerf early-stopping rule: p99 needs 662 samples)."
    return Plot(path, "Latency percentiles", caption, missing)


def _percentile_ms(run: LabelledRun, name: str) -> float | None:
    perf = run.result.perf
    value = getattr(perf.latency_us.e2e, name) if perf else None
    return None if value is None else value / 1000.0


def latency_cdf(runs: list[LabelledRun], path: Path) -> Plot | None:
    """The distribution of every end-to-end latency sample of each run's headline repeat."""
    curves = []
    units = set()  # what one sample is: a batch in the closed loop, a request of one image in the open loop
    settings = _swept(runs, per_run=True)
    for run in runs:
        samples = _headline_samples(run)
        if samples is not None and samples.size:
            curves.append((_with_settings(run.label, run, settings), np.sort(samples) / 1000.0))
            units.add("batches" if run.result.perf.scenario == "closed" else "requests")  # type: ignore[union-attr]
    if not curves:
        return None
    figure, axes = new_figure()
    for index, (label, values) in enumerate(curves):
        axes.step(values, np.arange(1, values.size + 1) / values.size, where="post", label=f"{label} (n={values.size})",
                  linestyle=line_style(index))  # fmt: skip
    axes.set_xlabel("end-to-end latency (ms)")
    axes.set_ylabel(
        f"fraction of {units.pop()}" if len(units) == 1 else "fraction of samples (closed loop: batches; else requests)"
    )
    axes.set_title("Latency CDF (raw samples of the median repeat)")
    axes.grid(alpha=0.3)
    legend(axes)
    save(figure, path)
    return Plot(path, "Latency CDF", "Every end-to-end latency sample of each run's median repeat.")


def _headline_samples(run: LabelledRun) -> np.ndarray | None:
    """The e2e samples of the repeat the headline came from (``perf_samples.npz``), or ``None``."""
    perf = run.result.perf
    if perf is None or not perf.samples_file or not (run.run_dir / perf.samples_file).exists():
        return None
    with np.load(run.run_dir / perf.samples_file) as samples:
        key = f"repeat{perf.headline_repeat}_e2e_us"
        return samples[key] if key in samples.files else None


def accuracy_vs_throughput(runs: list[LabelledRun], path: Path) -> Plot | None:
    """Medium mAP against throughput; the Pareto front (no run both faster and more accurate) is marked."""
    settings = _swept(runs, per_run=True)
    points = [
        (
            _with_settings(run.label, run, settings),
            run.result.perf.throughput_qps,
            run.result.accuracy.medium.map,
        )
        for run in runs
        if run.result.perf is not None and run.result.accuracy is not None
    ]
    if not points:
        return None
    front = pareto_front([(speed, quality) for _, speed, quality in points])
    # Neighbours in throughput take turns above and below their points: runs of one mAP sit on one line.
    rank = {index: order for order, index in enumerate(sorted(range(len(points)), key=lambda item: points[item][1]))}
    figure, axes = new_figure()
    for index, (_, speed, quality) in enumerate(points):
        on_front = index in front
        axes.scatter(
            speed, quality, marker="*" if on_front else "o", s=120 if on_front else 40, color="C3" if on_front else "C0"
        )
    from_zero(axes, x=[speed for _, speed, _ in points])  # as far apart as their ratio, not as the range's ends
    middle = sum(axes.get_xlim()) / 2
    for index, (label, speed, quality) in enumerate(points):
        # Right of the points in the left half, left of those in the right half: no label runs off the axes.
        right_half = speed > middle
        axes.annotate(
            label, (speed, quality), textcoords="offset points",
            xytext=(-4 if right_half else 4, 5 if rank[index] % 2 == 0 else -11),
            ha="right" if right_half else "left", fontsize=7,
        )  # fmt: skip
    ordered = sorted((points[index][1], points[index][2]) for index in front)
    axes.plot(*zip(*ordered, strict=True), color="C3", alpha=0.6, label="Pareto front")
    axes.set_xlabel("throughput (images/s)")
    axes.set_ylabel("medium mAP (%)")
    axes.set_title("Accuracy vs throughput (stars: Pareto front)")
    axes.grid(alpha=0.3)
    legend(axes)
    save(figure, path)
    return Plot(path, "Accuracy vs throughput", "Medium mAP against throughput; stars are the Pareto-optimal runs.")


def pareto_front(points: list[tuple[float, float]]) -> set[int]:
    """Indices of the points no other point beats on both axes (higher is better on both)."""
    return {
        index
        for index, (x, y) in enumerate(points)
        if not any(ox >= x and oy >= y and (ox > x or oy > y) for ox, oy in points)
    }


def precision_deltas(runs: list[LabelledRun], path: Path) -> Plot | None:
    """Each lower precision minus fp32 of the same variant, backend and batch: mAP (points) and parity."""
    # Runs that differ in any other setting (threads, instances...) are never compared with each other.
    settings = _swept(runs)
    by_key: dict[tuple[str, str], dict[str, RunResult]] = defaultdict(dict)
    for run in runs:
        config = run.result.config
        group = _series_key(f"{config.model.variant} {config.backend['name']} b{config.perf.batch}", run, settings)
        by_key[group][config.precision.name] = run.result
    rows: list[tuple[str, dict[str, float | None]]] = []
    for (key, _), results in sorted(by_key.items()):
        reference = results.get("fp32")
        for precision, result in sorted(results.items()):
            if reference is None or precision == "fp32":
                continue
            rows.append((f"{key} {precision}", _deltas(reference, result)))
    if not rows:
        return None
    names = ("map_easy", "map_medium", "map_hard", "parity_min_cos_x1e4", "top10_neighbours_lost_pct")
    figure, axes = new_figure()
    missing = grouped_bars(
        axes, [label for label, _ in rows], names, lambda index, name: rows[index][1][name], rotation=20,
        value_labels=True, least_extent=DELTAS_LEAST_EXTENT, groups="rows",
    )  # fmt: skip
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_ylabel("minus fp32 (mAP points; parity cosine x 1e4; % top-10)")
    axes.set_title("What a lower precision costs against fp32")
    axes.grid(axis="y", alpha=0.3)
    save(figure, path)
    caption = (
        "mAP (points) and parity minimum cosine (x 1e4) of each lower precision minus fp32, same variant, backend and "
        "batch; and the share of top-10 database neighbours the run lost against the fp32 build on the same images "
        f"(%). The axis spans at least +-{DELTAS_LEAST_EXTENT:g}, so that a change below the gate's tolerances (0.5 mAP "
        "points, 1e-4 in cosine) draws as small as it is."
    )
    return Plot(path, "Precision deltas against fp32", caption, missing)


def _deltas(reference: RunResult, other: RunResult) -> dict[str, float | None]:
    def difference(extract: Callable[[RunResult], float | None], scale: float = 1.0) -> float | None:
        first, second = extract(reference), extract(other)
        return None if first is None or second is None else (second - first) * scale

    def setup_map(setup: str) -> Callable[[RunResult], float | None]:
        return lambda result: getattr(result.accuracy, setup).map if result.accuracy else None

    return {
        "map_easy": difference(setup_map("easy")),
        "map_medium": difference(setup_map("medium")),
        "map_hard": difference(setup_map("hard")),
        "parity_min_cos_x1e4": difference(lambda result: result.build.parity.min_cosine if result.build else None, 1e4),
        # The run's own comparison with fp32 on the same images: the share of top-10 neighbours it lost.
        "top10_neighbours_lost_pct": 100.0 * (other.accuracy.fp32.neighbour_overlap_at_10 - 1.0)
        if other.accuracy and other.accuracy.fp32
        else None,
    }


def _load_points(run: LabelledRun, name: str) -> list[list[tuple[float, float | None]]]:
    """(throughput, e2e latency ms) of a run's load, or of each probe of each of its peak-rate searches (one list
    per search: ``perf.repeats`` searches probe the same rates, each a curve of its own)."""
    perf = run.result.perf
    assert perf is not None
    if perf.probes:
        return [
            [(probe.throughput_qps, getattr(probe, f"{name}_ms")) for probe in search]
            for search in searches(perf.probes)
        ]
    return [[(perf.throughput_qps, _percentile_ms(run, name))]]


def _loads_apart(runs: list[LabelledRun]) -> list[str]:
    """The load settings that keep the latency curves apart: each that varies, but the one that varies most (a
    curve's points) and those that vary with it (processes with instances). A sweep of batch x instances was
    one line through every point by throughput, from one instance count to another and back."""
    values = {key: [getattr(run.result.config.perf, key) for run in runs] for key in LOAD_KEYS}
    varying = [key for key in LOAD_KEYS if len(set(values[key])) > 1]
    if not varying:
        return []
    along = max(varying, key=lambda key: len(set(values[key])))

    def follows_along(key: str) -> bool:
        pairs = set(zip(values[along], values[key], strict=True))
        return len(pairs) == len({value for value, _ in pairs})

    return [key for key in varying if key != along and not follows_along(key)]


def latency_vs_throughput(runs: list[LabelledRun], path: Path) -> Plot | None:
    """p50 and p99 latency against throughput when the runs vary the load (batch, instances, queue depth,
    offered rate...), or a peak-rate search probed several rates."""
    measured = [run for run in runs if run.result.perf is not None]
    loads = {tuple(getattr(run.result.config.perf, key) for key in LOAD_KEYS) for run in measured}
    if len(loads) < 2 and not any(len(run.result.perf.probes) > 1 for run in measured):  # type: ignore[union-attr]
        return None
    figure, axes = new_figure()
    # A run's one load without a percentile is said per percentile ("p99 of all 24 runs"), a search's probes per
    # search with their rates: a sweep of 24 loads listed 24 "job N p99 at X img/s".
    unmeasured: dict[str, list[str]] = defaultdict(list)
    unprobed: list[str] = []
    drawn: list[tuple[float, float]] = []
    series: dict[tuple[str, str], list[LabelledRun]] = defaultdict(list)
    settings = _swept(measured, along=tuple(f"perf.{key}" for key in LOAD_KEYS))
    apart = _loads_apart(measured)
    for run in measured:
        load = "".join(f" {key}={getattr(run.result.config.perf, key)}" for key in apart)
        series[_series_key(_series_name(run) + load, run, settings)].append(run)
    for colour, ((key, _), members) in enumerate(sorted(series.items())):
        for name, style in (("p50", "o-"), ("p99", "s--")):
            curves: list[list[tuple[float, float]]] = [[]]  # the runs' loads joined, then each search apart
            for run in members:
                searched = bool(run.result.perf.probes)  # type: ignore[union-attr]
                for points in _load_points(run, name):
                    kept = [(throughput, value) for throughput, value in points if value is not None]
                    lacking = [f"{throughput:.4g}" for throughput, value in points if value is None]
                    if searched:
                        curves.append(kept)
                        if lacking:
                            unprobed.append(f"{run.label} {name} at {', '.join(lacking)} img/s")
                    else:
                        curves[0] += kept
                        if lacking:
                            unmeasured[name].append(run.label)
            label: str | None = f"{key} e2e {name}"
            for curve in (sorted(curve) for curve in curves if curve):
                axes.plot(*zip(*curve, strict=True), style, color=f"C{colour}", label=label)
                label, drawn = None, drawn + curve
    # a cut axis made 1.09 against 0.90 ms look like a fall to nothing
    from_zero(axes, x=[x for x, _ in drawn], y=[y for _, y in drawn])
    axes.set_xlabel("throughput (images/s)")
    axes.set_ylabel("end-to-end latency (ms)")
    bounds = {run.result.perf.latency_bound_ms for run in measured if run.result.perf.probes}  # type: ignore[union-attr]
    for bound in sorted(bound for bound in bounds if bound is not None):
        axes.axhline(bound, color="grey", linestyle=":", label=f"p99 bound {bound:g} ms")
    axes.set_title("Latency vs throughput across the load the sweep varies")
    axes.grid(alpha=0.3)
    legend(axes)
    save(figure, path)
    return Plot(
        path,
        "Latency vs throughput",
        "Each point is one run's load, or one probe of a peak-rate search, each search a line of its own (latency "
        "from the scheduled arrival); where the runs vary more than one load setting, a line joins those that "
        "differ in the one varied most; withheld percentiles are left out and listed.",
        [f"{name} of {named(labels, among=len(measured))}" for name, labels in unmeasured.items()] + unprobed,
    )


PLOTS: tuple[tuple[str, Callable[[list[LabelledRun], Path], Plot | None]], ...] = (
    ("throughput_vs_batch.png", throughput_vs_batch),
    ("latency_percentiles.png", latency_percentiles),
    ("latency_cdf.png", latency_cdf),
    ("accuracy_vs_throughput.png", accuracy_vs_throughput),
    ("precision_deltas.png", precision_deltas),
    ("latency_vs_throughput.png", latency_vs_throughput),
)
