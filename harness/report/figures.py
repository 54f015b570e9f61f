"""Drawing primitives of the report's plots: the figure, grouped bars, labels that fit, lines told apart."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.errors import named

FIGURE_SIZE_IN = (8.0, 5.0)
DPI = 100
LABEL_SETTINGS = 3
# Longest setting value, and longest label, shown whole (``stages=["build", "perf"]`` is cut): the table beside
# the plots names every run in full.
LABEL_VALUE_CHARS = 16
LABEL_CHARS = 64
# Tick labels longer than this stand upright: slanted, the first ones ran off the figure's left edge.
SLANTED_LABEL_CHARS = 24
# Bars: the figure widens with the groups (inches per group), up to a width a report page still shows whole.
BAR_GROUP_IN = 0.45
MAX_FIGURE_WIDTH_IN = 20.0
SHORT_NAMES = {"model.variant": "variant", "precision.name": "precision", "backend.name": "backend",
               "dataset.name": "dataset"}  # fmt: skip
# The settings an MLflow run's name shows as a part of its first word, and how (harness.tracking's run names).
NAMED_PARTS = {"variant": "{}", "model": "{}", "precision": "{}", "backend": "{}", "batch": "b{}"}
# Colours in matplotlib's default cycle, and the dashes that tell its rounds apart.
COLOURS = 10
LINE_STYLES = ("-", "--", ":", "-.")
# An axis from zero ends this far past its largest value (a marker drawn there stays whole).
ZERO_BASED_HEADROOM = 1.08


def new_figure():  # type: ignore[no-untyped-def]
    """(figure, axes) of the standard size, drawn off screen (Agg)."""
    # On a fresh machine matplotlib builds its font cache at first use and says so at INFO; at the end of a sweep
    # that line came out under Hydra's "[HYDRA]" prefix, as if Hydra had done it, between the sweep's own lines.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.WARNING)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=FIGURE_SIZE_IN, dpi=DPI)


def legend(axes) -> None:  # type: ignore[no-untyped-def]
    """A legend when something labelled was drawn (every value of a plot may be missing)."""
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize=8)


def from_zero(axes, *, x: Sequence[float] = (), y: Sequence[float] = ()) -> None:  # type: ignore[no-untyped-def]
    """Start the axes given values at zero (distances from it read as ratios), with room past the largest value:
    the autoscaled end left a margin of the values' own narrow range, so the highest point was cut in half."""
    if x:
        axes.set_xlim(0, max(axes.get_xlim()[1], ZERO_BASED_HEADROOM * max(x)))
    if y:
        axes.set_ylim(0, max(axes.get_ylim()[1], ZERO_BASED_HEADROOM * max(y)))


def save(figure, path: Path) -> None:  # type: ignore[no-untyped-def]
    """Lay ``figure`` out, write it to ``path`` as PNG and free it."""
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        # Labels too long for the figure (many runs differing in many settings): it is drawn as it is, and the
        # table beside it names every run; a warning on the report command's stderr would tell the user nothing.
        warnings.filterwarnings("ignore", message="Tight layout not applied", category=UserWarning)
        figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def grouped_bars(  # type: ignore[no-untyped-def]
    axes, labels: list[str], series: tuple[str, ...], value_of: Callable[[int, str], float | None], *, rotation: int,
    value_labels: bool = False, least_extent: float = 0.0, groups: str = "runs",
) -> list[str]:  # fmt: skip
    """Bars grouped per label, one colour per series, each series in the legend; a missing value is an "n/a" mark
    in its bar's place, never a zero bar. ``value_labels`` writes each bar's value at its end, so that a zero
    (a bar with no height) reads as measured, and the axis spans at least ``least_extent`` either side of zero.
    Returns the missing values per series, ``"<series> of <label>, <label>"``, or ``"<series> of all N <groups>"``
    where more than two labels all miss it (48 runs' withheld p99s are one phrase, not 48 names)."""
    from matplotlib.patches import Patch

    width = 0.8 / len(series)
    missing: dict[str, list[str]] = {}
    for offset, name in enumerate(series):
        for index, label in enumerate(labels):
            value = value_of(index, name)
            x = index + (offset - (len(series) - 1) / 2) * width
            if value is None:
                missing.setdefault(name, []).append(label)
                # Near the bottom of the axes whatever the values' sign, so a mark never runs into the title.
                axes.text(
                    x, 0.01, "n/a", transform=axes.get_xaxis_transform(), ha="center", va="bottom", rotation=90,
                    fontsize=7, color="grey",
                )  # fmt: skip
                continue
            bars = axes.bar(x, value, width, color=f"C{offset}")
            if value_labels:
                axes.bar_label(bars, labels=[f"{value:.2g}"], fontsize=7, padding=2)
    drawn = [value for name in series for index in range(len(labels)) if (value := value_of(index, name)) is not None]
    if value_labels and drawn:
        # Room for the labels beyond the longest bar and on either side of a zero one (a bar's edge at zero
        # is sticky: matplotlib's margins leave none there).
        low, high = min(0.0, *drawn), max(0.0, *drawn)
        pad = 0.15 * ((high - low) or 1.0)
        axes.set_ylim(min(low - pad, -least_extent), max(high + pad, least_extent))
    # Every series, drawn or not, so that each n/a mark can be read off by its place in the group.
    axes.legend(handles=[Patch(color=f"C{offset}", label=name) for offset, name in enumerate(series)], fontsize=8)
    longest = max(map(len, labels))
    rotation = 90 if longest > SLANTED_LABEL_CHARS else rotation
    axes.set_xticks(
        range(len(labels)), labels, rotation=rotation, ha="center" if rotation == 90 else "right", fontsize=8
    )
    axes.set_xlim(-0.5, len(labels) - 0.5)
    # Many groups with long labels squeezed the bars into a strip above them: room for both.
    longest_in = longest * 0.06 * math.sin(math.radians(rotation))  # 8-point characters
    axes.figure.set_size_inches(
        min(MAX_FIGURE_WIDTH_IN, max(FIGURE_SIZE_IN[0], BAR_GROUP_IN * len(labels) + 2.0)),
        FIGURE_SIZE_IN[1] + longest_in,
    )
    return [f"{name} of {named(found, among=len(labels), noun=groups)}" for name, found in missing.items()]


def short_name(key: str) -> str:
    """A setting's name in a label: ``precision`` for ``precision.name``, ``target_qps`` for ``perf.target_qps``."""
    return SHORT_NAMES.get(key, key.rsplit(".", 1)[-1])


def label_of(name: str, cells: dict[str, str]) -> str:
    """``name`` and the first ``LABEL_SETTINGS`` of ``cells`` it does not show already (an MLflow run's name
    carries its sweep's axes, ``... latency_us=200``, and its variant, precision, backend and batch as the parts
    of ``tiny14_reg4-fp16-onnxruntime-b1``): runs that differ in more are told apart by the table, not by a
    legend."""
    shown = set(name.split())
    parts = {part for token in shown for part in token.split("-")}

    def in_name(key: str, value: str) -> bool:
        in_parts = NAMED_PARTS.get(key)
        return f"{key}={value}" in shown or (in_parts is not None and in_parts.format(value) in parts)

    unshown = [(short_name(key), value or "-") for key, value in cells.items()]
    unshown = [(key, value) for key, value in unshown if not in_name(key, value)]
    named = [f"{key}={clipped(value)}" for key, value in unshown[:LABEL_SETTINGS]]
    more = [f"+{len(unshown) - LABEL_SETTINGS} more"] if len(unshown) > LABEL_SETTINGS else []
    return clipped(" ".join([name, *named, *more]), LABEL_CHARS)


def line_style(index: int) -> str:
    """The dash of line ``index``: matplotlib's 10 colours come round again from the 11th, so each round of them
    is drawn in its own dash, and two lines of one colour stay told apart."""
    return LINE_STYLES[index // COLOURS % len(LINE_STYLES)]


def clipped(value: str, chars: int = LABEL_VALUE_CHARS) -> str:
    return value if len(value) <= chars else value[: chars - 1] + "\u2026"
