"""Measuring until stable: perf_analyzer's rule on the last 3 windows, in the real load generator."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.perf.workers import StabilityWatch
from tests.perf.test_loadgen import measure, sleep_config


def test_the_rule_needs_the_last_three_windows_within_the_percentage() -> None:
    watch = StabilityWatch(window_s=1.0, pct=5.0, max_windows=10)
    for values, settled in (([100.0, 100.0], False), ([50.0, 98.0, 101.0, 99.0], True), ([100.0, 120.0, 80.0], False),
                            ([0.0, 0.0, 0.0], False), ([100.0, 104.0, 96.0], True), ([100.0, 106.0, 95.0], False)):  # fmt: skip
        watch.window_throughput_qps = list(values)
        assert watch.settled() is settled, values


def test_a_steady_load_stops_once_stable(cache_dir: Path, tmp_path: Path) -> None:
    config = sleep_config(
        cache_dir, "backend.latency_us=2000", "perf.stability=true", "perf.stability_window_s=0.2",
        "perf.stability_pct=20", "perf.max_windows=10", "perf.iterations=100000",
    )  # fmt: skip
    result = measure(config, tmp_path)
    stability = result.stability
    assert stability is not None and stability.stable and 3 <= stability.windows <= 10
    assert len(stability.window_throughput_qps) == stability.windows
    # It stopped on the rule, long before its 100000 iterations, and is valid without them.
    assert result.batches < 100000 and result.validity.valid
    assert result.forward_time_s == pytest.approx(stability.windows * 0.2, abs=0.2)
    # Said, where it was taken silently: the minimums written (here and by debug=tiny) did not decide its length.
    assert (
        "perf.iterations=100000, perf.min_duration_s=0.0, perf.min_samples=1 not used: perf.stability=true measures "
        "until the throughput of its last 3 windows agrees (perf.stability_pct), or perf.max_windows have passed, "
        "whatever the minimums"
    ) in result.validity.warnings


def test_only_minimums_set_away_from_their_defaults_are_warned_unused_under_stability(cache_dir: Path) -> None:
    defaults = ("perf.iterations=1024", "perf.min_duration_s=1.0", "perf.min_samples=64")
    assert sleep_config(cache_dir, "perf.stability=true", *defaults).perf.unused_notes(profiler=False) == ()
    assert sleep_config(cache_dir, *defaults, "perf.min_samples=5000").perf.unused_notes(profiler=False) == ()
    unused = sleep_config(cache_dir, "perf.stability=true", *defaults, "perf.min_duration_s=30")
    (note,) = unused.perf.unused_notes(profiler=False)
    assert note.startswith("perf.min_duration_s=30.0 not used: ")


def test_a_run_that_never_settles_is_invalid_and_says_so(cache_dir: Path, tmp_path: Path) -> None:
    config = sleep_config(
        cache_dir, "backend.latency_us=2000", "perf.stability=true", "perf.stability_window_s=0.1",
        "perf.stability_pct=0.000001", "perf.max_windows=3",
    )  # fmt: skip
    result = measure(config, tmp_path)
    assert result.stability is not None and not result.stability.stable and result.stability.windows == 3
    # It ran out of windows; it said "(stopped at perf.max_duration_s=600.0)", a bound it was nowhere near.
    assert result.validity.reasons == (
        "throughput not stable within perf.stability_pct=1e-06% after 3 windows (perf.max_windows=3)",
    )


def test_stability_watches_the_closed_loop_only(cache_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"perf.stability=true: watches the closed loop"):
        sleep_config(cache_dir, "perf.stability=true", "perf.scenario=server", "perf.target_qps=10")
