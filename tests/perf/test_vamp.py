"""The vamp text layout: the three real vendor outputs parse, and ours round-trips."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from harness.errors import DataError
from harness.perf.stats import latency_stats
from harness.perf.vamp import format_vamp, parse_vamp

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vastai"


def test_vamp_2_5_2_manual() -> None:
    report = parse_vamp((FIXTURES / "vamp-2.5.2-manual.txt").read_text())
    assert report.instances == 3 and report.devices == "[0]" and report.batch_size == 8
    assert report.samples == 10240 and report.forward_time_s == 3.30204 and report.throughput_qps == 3101.12
    assert report.card_power_w == 43.7734 and report.temperature_c == 47.7225 and report.die_memory_mb == 1212.67
    assert report.e2e_latency_us == {"avg": 128843, "min": 9512, "max": 201022}
    assert report.model_latency_us == {"avg": 315, "min": 315}
    assert report.samples / report.forward_time_s == pytest.approx(report.throughput_qps, rel=1e-5)


def test_vamp_2_1_0_percentiles() -> None:
    report = parse_vamp((FIXTURES / "vamp-2.1.0-percentiles.txt").read_text())
    assert report.instances == 1 and report.batch_size == 1 and report.throughput_qps == 102.118
    assert report.samples is None and report.forward_time_s is None
    assert report.e2e_latency_us["p99"] == 29387 and report.model_latency_us["p50"] == 22736
    assert set(report.model_latency_us) == {"avg", "min", "max", "p50", "p90", "p95", "p99"}


def test_vamp_zoo_readme_with_notes_and_hardware_footer() -> None:
    report = parse_vamp((FIXTURES / "vamp-fp16-zoo-readme.txt").read_text())
    assert report.instances == 1 and report.samples == 1024 and report.forward_time_s == 15.5398
    assert report.throughput_qps == 65.8953 and report.ai_utilize_pct == 95.8243
    assert report.model_latency_us == {"avg": 14541, "min": 14541, "max": 14541}


def test_our_block_round_trips() -> None:
    rng = np.random.default_rng(0)
    e2e, model = latency_stats(rng.uniform(900, 1500, 700)), latency_stats(rng.uniform(800, 1000, 700))
    text = format_vamp(
        instances=2,
        devices="[cpu]",
        batch=8,
        samples=5600,
        forward_time_s=3.5,
        throughput_qps=1600.0,
        e2e=e2e,
        model=model,
    )
    report = parse_vamp(text)
    assert (report.instances, report.batch_size, report.samples) == (2, 8, 5600)
    assert (report.forward_time_s, report.throughput_qps) == (3.5, 1600.0)
    for block, stats in ((report.e2e_latency_us, e2e), (report.model_latency_us, model)):
        assert set(block) == {"avg", "min", "max", "p50", "p90", "p95", "p99"}
        for name, value in block.items():
            assert value == pytest.approx(getattr(stats, name), abs=0.5)


def test_text_without_a_header_is_refused() -> None:
    with pytest.raises(DataError, match=r"my\.txt: no 'number of instances"):
        parse_vamp("throughput (qps): 5\n", source="my.txt")
    with pytest.raises(DataError, match=r"cannot read 'throughput \(qps\)' value 'fast'"):
        parse_vamp("- number of instances in each device: 1\nthroughput (qps): fast\n")


@pytest.mark.parametrize(
    ("key", "value"),
    [("throughput (qps)", "nan"), ("throughput (qps)", "-nan"), ("card power (W)", "inf"), ("batch size", "inf"),
     ("batch size", "1.5"), ("samples", "-8"), ("p50 latency", "-5")],
)  # fmt: skip
def test_a_value_no_measurement_can_have_is_refused_naming_it(key: str, value: str) -> None:
    # A NaN reached the JSON as ``NaN`` (which no JSON reader takes) and the tracker; inf batch was a traceback.
    text = "- number of instances in each device: 1\ne2e latency (us):\n"
    with pytest.raises(DataError, match=rf"^v.txt: cannot read '{re.escape(key)}' value '{re.escape(value)}'$"):
        parse_vamp(f"{text}  {key}: {value}\n", source="v.txt")
