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
    bins = np.arange(10_000) * 0.001  # 1 ms bins over 10 s
    steady = np.zeros(10_000)
    steady[::10] = 1  # one batch every 10 ms
    rates = window_throughputs(bins, steady, start_s=0.0, end_s=10.0, windows=10, batch=4)
    np.testing.assert_allclose(rates, 400.0)
    assert coefficient_of_variation(rates) == pytest.approx(0.0, abs=1e-12)
    bursty = np.zeros(10_000)
    bursty[:1000] = 1  # everything in the first second
    assert coefficient_of_variation(window_throughputs(bins, bursty, start_s=0, end_s=10, windows=10, batch=1)) > 2.0
