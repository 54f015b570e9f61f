"""The gate's decision for one metric: statistics for noisy perf values, tolerances for exact ones.

Perf (as asv decides): with at least ``min_repeats`` repeats a side, a two-sided Mann-Whitney U test and a
bootstrap interval of the ratio of medians (candidate / baseline). With the threshold factor
``f = 1 + threshold``, a ratio is bad below ``1/f`` for a higher-is-better metric and above ``f`` for a
lower-is-better one:

- **fail**: the whole interval is bad and the test is significant (p < alpha);
- **pass**: no part of the interval is bad;
- **inconclusive**: anything else (the interval straddles the threshold, or it is beyond it without a
  significant test), or too few repeats.

Accuracy and parity are deterministic for a given artifact and data: fail when the candidate is worse than
the baseline by more than the tolerance, else pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from harness.config.commands import GateConfig, GateRule

Outcome = Literal["pass", "fail", "inconclusive"]


@dataclass(frozen=True)
class Decision:
    """One metric's verdict and the numbers behind it.

    Attributes:
        baseline, candidate: medians of each side's values.
        change: candidate / baseline for perf, candidate - baseline otherwise.
        interval: the bootstrap interval of the ratio (perf with enough repeats), else ``None``.
        p_value: the Mann-Whitney U test's (perf with enough repeats), else ``None``.
        repeats: values on each side (baseline, candidate).
        reason: why, in words.
    """

    metric: str
    rule: GateRule
    outcome: Outcome
    baseline: float
    candidate: float
    change: float
    interval: tuple[float, float] | None
    p_value: float | None
    repeats: tuple[int, int]
    reason: str


def decide(
    metric: str, rule: GateRule, baseline: tuple[float, ...], candidate: tuple[float, ...], settings: GateConfig
) -> Decision:
    """The verdict on ``metric`` for these values (perf: one per repeat; accuracy and parity: one each)."""
    base, cand = np.asarray(baseline, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    base_median, cand_median = float(np.median(base)), float(np.median(cand))
    common = {
        "metric": metric,
        "rule": rule,
        "baseline": base_median,
        "candidate": cand_median,
        "repeats": (base.size, cand.size),
    }
    if rule.kind != "perf":
        delta = cand_median - base_median
        worse_by = -delta if rule.better == "higher" else delta
        outcome: Outcome = "fail" if worse_by > rule.threshold else "pass"
        reason = (
            f"worse by {worse_by:.6g} > tolerance {rule.threshold:g}"
            if outcome == "fail"
            else f"within tolerance {rule.threshold:g}"
        )
        return Decision(**common, outcome=outcome, change=delta, interval=None, p_value=None, reason=reason)  # type: ignore[arg-type]
    ratio = cand_median / base_median
    if min(base.size, cand.size) < settings.min_repeats:
        reason = f"needs >= {settings.min_repeats} repeats a side to decide, has {base.size} and {cand.size}"
        return Decision(**common, outcome="inconclusive", change=ratio, interval=None, p_value=None, reason=reason)  # type: ignore[arg-type]
    from scipy.stats import mannwhitneyu

    p_value = float(mannwhitneyu(cand, base, alternative="two-sided").pvalue)
    low, high = ratio_interval(base, cand, settings)
    factor = 1.0 + rule.threshold
    if rule.better == "higher":
        wholly_bad, wholly_good, improved = high < 1.0 / factor, low >= 1.0 / factor, low > 1.0
    else:
        wholly_bad, wholly_good, improved = low > factor, high <= factor, high < 1.0
    if wholly_bad and p_value < settings.alpha:
        outcome, reason = (
            "fail",
            f"interval wholly beyond the {rule.threshold:.0%} threshold and p < {settings.alpha:g}",
        )
    elif wholly_good and improved and p_value < settings.alpha:
        outcome, reason = "pass", f"improved: interval wholly better than the baseline and p < {settings.alpha:g}"
    elif wholly_good:
        outcome, reason = "pass", f"interval clear of a {rule.threshold:.0%} regression"
    elif wholly_bad:
        outcome, reason = "inconclusive", f"interval beyond the threshold but p >= {settings.alpha:g}"
    else:
        outcome, reason = "inconclusive", f"interval straddles the {rule.threshold:.0%} threshold"
    return Decision(**common, outcome=outcome, change=ratio, interval=(low, high), p_value=p_value, reason=reason)  # type: ignore[arg-type]


def ratio_interval(base: np.ndarray, cand: np.ndarray, settings: GateConfig) -> tuple[float, float]:
    """Percentile bootstrap interval of median(candidate) / median(baseline), each side resampled alone."""
    rng = np.random.default_rng(settings.seed)
    resamples = settings.bootstrap_resamples
    base_medians = np.median(base[rng.integers(0, base.size, (resamples, base.size))], axis=1)
    cand_medians = np.median(cand[rng.integers(0, cand.size, (resamples, cand.size))], axis=1)
    tail = (1.0 - settings.confidence) / 2.0
    low, high = np.quantile(cand_medians / base_medians, [tail, 1.0 - tail])
    return float(low), float(high)
