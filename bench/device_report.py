"""The device check's findings: its table (printed as rows finish), the issue's targets judged on them, and the
JSON it rewrites after every row (``bench.device_check`` measures; this module keeps and shows)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PARITY_TARGET = 0.999


HEADER = (
    f"{'case':<16} {'mode':<14} {'img/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'eff':>5} {'samples':>7} "
    f"{'1st call s':>10} {'row s':>6} {'util %':>6} {'W':>5} {'img/J':>6} {'SM MHz':>6} {'h2d/d2h ms':>11}"
)


def print_row(row: dict) -> None:
    for outcome in ("skipped", "error"):
        if outcome in row:
            print(f"{row['case']:<16} {row['mode']:<14} {outcome}: {row[outcome]}", flush=True)
            return

    def shown(value: float | None, form: str) -> str:
        return "-" if value is None else format(value, form)

    device = row.get("telemetry", {})
    # "?": the GEMM-only timing was disturbed (the row's efficiency_note, printed under the targets)
    efficiency = (
        "?"
        if "efficiency_note" in row
        else shown(None if row["efficiency"] is None else 100 * row["efficiency"], ".0f")
    )
    copies = f"{row['h2d_ms_p50']:.2f}/{row['d2h_ms_p50']:.2f}" if "h2d_ms_p50" in row else "-"
    print(
        f"{row['case']:<16} {row['mode']:<14} {row['img_s']:>9.1f} {shown(row['p50_ms'], '.3f'):>8} "
        f"{shown(row['p99_ms'], '.3f'):>8} {efficiency:>5} "
        f"{row['samples']:>7} {row['first_call_s']:>10.1f} {row['wall_s']:>6.1f} "
        f"{shown(device.get('ai_utilize_pct'), '.0f'):>6} {shown(device.get('card_power_w'), '.0f'):>5} "
        f"{shown(device.get('images_per_joule'), '.2f'):>6} {shown(device.get('sm_clock_mhz'), '.0f'):>6} "
        f"{copies:>11}",
        flush=True,
    )


def verdicts(parities: dict[str, dict[str, float | None]], rows: list[dict]) -> list[dict]:
    """Each target of the GPU issue judged on this call's numbers (``None``: a row it needs was not measured)."""
    measured = {(row["case"], row["mode"]): row for row in rows if "img_s" in row}
    harness_modes = ("compile+graph", "autotune+graph", "aoti+graph", "eager")

    def best(case: str, key: str, pick: Callable[..., Any]) -> tuple[float | None, str | None]:
        found = [(measured[(case, mode)][key], mode) for mode in harness_modes if (case, mode) in measured]
        found = [(value, mode) for value, mode in found if value is not None]
        return pick(found) if found else (None, None)

    def ratio(case: str, key: str, pick: Callable[..., Any], baseline_mode: str) -> tuple[float | None, str | None]:
        value, mode = best(case, key, pick)
        baseline = measured.get((case, baseline_mode), {}).get(key)
        return (None, mode) if value is None or not baseline else (value / baseline, mode)

    found = []
    for label, case, key, pick, baseline, bound, higher in (
        ("ViT-L/14-reg4 b64 img/s vs anchor", "vitl14_reg4 b64", "img_s", max, "anchor", 1.06, True),
        ("ViT-L/14-reg4 b1 p50 vs anchor", "vitl14_reg4 b1", "p50_ms", min, "anchor", 0.9, False),
        ("ViT-S/14-reg4 b256 img/s vs timm eager", "vits14_reg4 b256", "img_s", max, "timm eager", 1.08, True),
    ):
        value, mode = ratio(case, key, pick, baseline)
        met = None if value is None else (value >= bound if higher else value <= bound)
        found.append({"target": label, "ratio": value, "bound": bound, "best_mode": mode, "met": met})
    for variant, cosines in parities.items():
        for dtype, cosine in cosines.items():
            found.append({
                "target": f"{variant} {dtype} parity min cosine", "ratio": cosine, "bound": PARITY_TARGET,
                "best_mode": None, "met": None if cosine is None else cosine >= PARITY_TARGET,
            })  # fmt: skip
    return found


@dataclass
class Report:
    """What the check has found so far; ``add`` prints a row and rewrites ``out``, so a killed check keeps it."""

    environment: dict[str, object]
    out: Path | None
    started: float
    parity: dict[str, dict[str, float | None]] = dataclasses.field(default_factory=dict)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    rows: list[dict] = dataclasses.field(default_factory=list)

    @property
    def device(self) -> str:
        return str(self.environment.get("device_name", "cpu"))

    def longest_s(self, variant: str, mode: str) -> float:
        """The longest wall time of a ``mode`` row of ``variant`` so far (0 before the first): what the next one
        is expected to cost, compiles included (each batch size compiles anew)."""
        return max(
            (
                row["wall_s"]
                for row in self.rows
                if (row["variant"], row["mode"]) == (variant, mode) and "wall_s" in row
            ),
            default=0.0,
        )

    def add(self, row: dict) -> None:
        self.rows.append(row)
        print_row(row)
        self.write()

    def write(self) -> None:
        if self.out is None:
            return
        report = {
            "device": self.device, "torch": torch.__version__, "environment": self.environment,
            "parity": self.parity, "errors": self.errors,
            "rows": self.rows, "targets": verdicts(self.parity, self.rows),
            "total_s": time.perf_counter() - self.started,
        }  # fmt: skip
        partial = self.out.with_name(self.out.name + ".partial")
        partial.write_text(json.dumps(report, indent=2))
        partial.replace(self.out)
