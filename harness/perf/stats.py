"""Statistics of raw perf samples, derived in one place.

Percentiles follow the MLPerf early-stopping rule for how many samples a tail needs: a pNN latency is
reported only when, with at most one sample allowed above it, the chance of seeing that few by luck is
at most 1% (64 samples for p90, 662 for p99). Otherwise it is ``None`` and the reason is recorded.
"""

from __future__ import annotations

import math

import numpy as np

from harness.errors import counted
from harness.result.perf import LatencyStats

PERCENTILES: tuple[int, ...] = (50, 90, 95, 99)
EARLY_STOPPING_CONFIDENCE = 0.99
EARLY_STOPPING_OVERLATENCY = 1


def min_samples_for_percentile(
    percentile: float, *, confidence: float = EARLY_STOPPING_CONFIDENCE, tolerance: int = EARLY_STOPPING_OVERLATENCY
) -> int:
    """Smallest n with P(Binomial(n, 1 - p) <= tolerance) <= 1 - confidence (MLPerf early stopping)."""
    above = 1.0 - percentile / 100.0
    n = tolerance + 1
    while sum(math.comb(n, k) * above**k * (1 - above) ** (n - k) for k in range(tolerance + 1)) > 1 - confidence:
        n += 1
    return n


MIN_SAMPLES = {f"p{p}": min_samples_for_percentile(p) for p in PERCENTILES}


def latency_stats(samples_us: np.ndarray) -> LatencyStats:
    """Summarise latencies; percentiles use the 'higher' rule (a sample that was actually observed)."""
    values = np.asarray(samples_us, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no latency samples")
    percentiles = {
        f"p{p}": float(np.percentile(values, p, method="higher")) if values.size >= MIN_SAMPLES[f"p{p}"] else None
        for p in PERCENTILES
    }
    return LatencyStats(
        count=int(values.size),
        avg=float(values.mean()),
        std=float(values.std()),
        min=float(values.min()),
        max=float(values.max()),
        **percentiles,
    )


def insufficient_percentiles(stats: LatencyStats) -> list[str]:
    """One note naming the percentiles withheld for lack of samples (empty when none were)."""
    withheld = [name for name in MIN_SAMPLES if getattr(stats, name) is None]
    if not withheld:
        return []
    needs = ", ".join(f"{name} {MIN_SAMPLES[name]}" for name in withheld)
    return [
        f"{', '.join(withheld)} withheld: {counted(stats.count, 'sample')}, need {needs} (MLPerf early-stopping rule)"
    ]


def window_throughputs(
    counts: np.ndarray, *, bin_s: float, start_s: float, end_s: float, windows: int, batch: int
) -> np.ndarray:
    """Images per second in ``windows`` equal time slices of [start, end], from batch counts per ``bin_s`` time
    bin from ``start``.

    The batches completed are counted as a flow: from 0 at ``start``, the running count rises linearly from one
    completion to the next (each placed mid-bin), and a slice gets the rise across it. A steady rate then gives
    every slice the same share, however few batches it holds. Counting whole batches per slice, a batch that ends
    near a slice's edge falls wholly on one side or the other: 16 batches 100 ms apart, each 2% early or late at
    random, read a CV of 0.25 over 8 slices that way, and 0.014 this way.
    """
    edges = np.linspace(start_s, end_s, windows + 1)
    completed = np.flatnonzero(counts)
    times = np.concatenate(([start_s], start_s + (completed + 0.5) * bin_s))
    running = np.concatenate(([0.0], np.cumsum(counts[completed], dtype=np.float64)))
    return np.diff(np.interp(edges, times, running)) * batch / np.diff(edges)


def coefficient_of_variation(values: np.ndarray) -> float:
    mean = float(np.mean(values))
    return float(np.std(values) / mean) if mean > 0 else math.inf


def latency_bound_notes(bound_ms: float | None, p99_us: float | None, *, unknown: str) -> tuple[list[str], list[str]]:
    """(reasons, warnings) of judging an e2e p99 against ``perf.latency_bound_ms`` (MLPerf's server rule): above
    the bound the measurement is invalid; without a p99 (``unknown`` says why) the bound is not judged."""
    if bound_ms is None:
        return [], []
    if p99_us is None:
        return [], [f"perf.latency_bound_ms={bound_ms} not judged: {unknown}"]
    if p99_us > bound_ms * 1e3:
        return [f"e2e p99 {p99_us / 1e3:.4g} ms > perf.latency_bound_ms={bound_ms}"], []
    return [], []
