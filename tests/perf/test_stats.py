"""Latency statistics and the MLPerf minimum-sample rule on known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harness.perf.stats import (
    coefficient_of_variation,
    insufficient_percentiles,
    latency_stats,
    min_samples_for_percentile,
    window_throughputs,
)


def test_minimum_samples_follow_mlperf_early_stopping() -> None:
    assert min_samples_for_percentile(90) == 64
    assert min_samples_for_percentile(99) == 662


def test_percentiles_of_a_known_sequence_are_observed_samples() -> None:
    values = np.arange(1, 1001, dtype=np.float64)  # 1..1000 us, shuffled
    np.random.default_rng(0).shuffle(values)
    stats = latency_stats(values)
    # 'higher' rule: the sample at index ceil((n - 1) * p) of the sorted values
    assert (stats.p50, stats.p90, stats.p95, stats.p99) == (501.0, 901.0, 951.0, 991.0)
    assert stats.avg == 500.5 and stats.min == 1 and stats.max == 1000 and stats.count == 1000


def test_percentiles_of_an_exponential_distribution() -> None:
    scale_us = 2000.0
    values = np.random.default_rng(1).exponential(scale_us, size=200_000)
    stats = latency_stats(values)
    for name, p in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        expected = -scale_us * math.log(1 - p)
        assert getattr(stats, name) == pytest.approx(expected, rel=0.03), name


def test_tail_percentiles_are_withheld_below_their_minimum() -> None:
    stats = latency_stats(np.ones(100))
    assert stats.p50 == 1.0 and stats.p90 == 1.0 and stats.p95 is None and stats.p99 is None
    (note,) = insufficient_percentiles(stats)
    assert note.startswith("p95, p99 withheld: 100 samples, need p95 130, p99 662")
    assert insufficient_percentiles(latency_stats(np.ones(662))) == []


def test_window_throughput_and_cv() -> None:
    steady = np.zeros(10_000)  # 1 ms bins over 10 s
    steady[9::10] = 1  # one batch every 10 ms, the first 10 ms after the start
    rates = window_throughputs(steady, bin_s=0.001, start_s=0.0, end_s=10.0, windows=10, batch=4)
    np.testing.assert_allclose(rates, 400.0, rtol=1e-3)  # each completion placed mid-bin: 0.5 ms off at most
    assert coefficient_of_variation(rates) < 1e-3
    bursty = np.zeros(10_000)
    bursty[:1000] = 1  # everything in the first second
    rates = window_throughputs(bursty, bin_s=0.001, start_s=0, end_s=10, windows=10, batch=1)
    assert coefficient_of_variation(rates) > 2.0
    halved = np.zeros(10_000)
    halved[9:5000:10] = 1
    halved[5019::20] = 1  # 100 batches/s for 5 s, then 50
    rates = window_throughputs(halved, bin_s=0.001, start_s=0, end_s=10, windows=10, batch=1)
    np.testing.assert_allclose(rates, [100.0] * 5 + [50.0] * 5, rtol=2e-2)


def test_a_steady_run_of_few_batches_has_little_window_variation() -> None:
    # 16 batches 100 ms apart, each 2% early or late, in 8 slices: 2 batches a slice. Counted whole per slice,
    # a batch ending near an edge falls wholly on one side: 1, 2, ..., 3 batches, a CV of 0.25 that every short
    # run reported as unsteady throughput.
    ends = np.cumsum(0.1 * (1 + 0.02 * np.random.default_rng(0).standard_normal(16)))
    counts = np.zeros(int(ends[-1] / 0.001) + 1)
    np.add.at(counts, (ends / 0.001).astype(int), 1)
    bins = np.arange(counts.size) * 0.001
    rates = window_throughputs(counts, bin_s=0.001, start_s=0.0, end_s=float(ends[-1]), windows=8, batch=1)
    assert rates.sum() * ends[-1] / 8 == pytest.approx(16, abs=0.01)
    assert coefficient_of_variation(rates) < 0.03
    edges = np.linspace(0.0, ends[-1], 9)
    whole, _ = np.histogram(bins, bins=edges, weights=counts)
    assert coefficient_of_variation(whole) == pytest.approx(0.25)  # the whole-batch count on the same run
