"""vamp's text report: written in its layout so scripts that read vamp read ours, and parsed tolerantly.

The layout (``docs/vamp.md`` and the real outputs in ``tests/fixtures/vastai/vamp-*.txt``): a header
``- number of instances in each device: N`` (or ``*** ... N ****``), then ``key: value`` lines in any order
and indentation, then ``e2e latency (us):`` and ``model latency (us):`` blocks of ``avg|min|max|pNN
latency: value`` lines. ``samples``, ``forwad time (s)`` (sic), power, temperature and percentile lines
are optional; lines the parser does not know (model dumps, pasted notes, hardware footers) are skipped.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field

from harness.errors import DataError
from harness.perf.stats import PERCENTILES
from harness.result.perf import DeviceTelemetry, LatencyStats, PerfResult

VAMP_FILE = "perf_vamp.txt"
# A vendor profiler's report of one repeat, verbatim (``VAMP_FILE`` is the median repeat's).
VAMP_REPEAT_FILE = "perf_vamp_repeat{}.txt"

HEADER = re.compile(r"^[-*\s]*number of instances in each device:\s*(\d+)")
FIELD = re.compile(r"^\s*([^:]+?)\s*:\s*(.*?)\s*$")
LATENCY_LINE = re.compile(r"^(avg|min|max|p\d+) latency$")
SCALAR_FIELDS = {
    "batch size": "batch_size",
    "samples": "samples",
    "forwad time (s)": "forward_time_s",
    "forward time (s)": "forward_time_s",
    "throughput (qps)": "throughput_qps",
    "ai utilize (%)": "ai_utilize_pct",
    "card power (W)": "card_power_w",
    "temperature (°C)": "temperature_c",
    "die memory used (MB)": "die_memory_mb",
}


@dataclass
class VampReport:
    """What a vamp-format text says; absent optional fields are ``None``, latencies in microseconds."""

    instances: int
    devices: str | None = None
    batch_size: int | None = None
    samples: int | None = None
    forward_time_s: float | None = None
    throughput_qps: float | None = None
    ai_utilize_pct: float | None = None
    card_power_w: float | None = None
    temperature_c: float | None = None
    die_memory_mb: float | None = None
    e2e_latency_us: dict[str, float] = field(default_factory=dict)
    model_latency_us: dict[str, float] = field(default_factory=dict)


def perf_fields(report: VampReport) -> dict[str, object]:
    """The report under the names a harness ``perf`` block uses (``latency_us.e2e.p50``, ``telemetry.*``), so a
    parsed vamp log and a harness run line up in the tracker and in reports."""
    return {
        "instances": report.instances,
        "batch": report.batch_size,
        "samples": report.samples,
        "forward_time_s": report.forward_time_s,
        "throughput_qps": report.throughput_qps,
        "latency_us": {"e2e": report.e2e_latency_us, "model": report.model_latency_us},
        "telemetry": asdict(telemetry_from_report(report)),
        "samples_source": "vamp",
    }


def telemetry_from_report(report: VampReport) -> DeviceTelemetry:
    """The device fields of the report, under a perf block's ``telemetry`` names."""
    power = report.card_power_w
    return DeviceTelemetry(
        ai_utilize_pct=report.ai_utilize_pct, die_memory_used_mb=report.die_memory_mb, card_power_w=power,
        temperature_c=report.temperature_c,
        images_per_joule=report.throughput_qps / power if power and report.throughput_qps else None, source="vamp",
    )  # fmt: skip


def _number(text: str, *, whole: bool = False) -> float:
    """The value's leading number; ``ValueError`` unless it is finite, not negative, and whole where a count is
    read (a NaN throughput would reach the tracker and the JSON as ``NaN``, which no JSON reader accepts)."""
    number = float(text.split()[0])
    if not math.isfinite(number) or number < 0 or (whole and not number.is_integer()):
        raise ValueError(text)
    return number


def parse_vamp(text: str, *, source: str = "vamp output") -> VampReport:
    """Parse the first report in ``text``.

    Raises:
        DataError: no ``number of instances`` header, or a known field whose value is not a number (finite, not
            negative; whole for ``batch size`` and ``samples``).
    """
    report: VampReport | None = None
    block: dict[str, float] | None = None
    for line in text.splitlines():
        if report is None:
            if header := HEADER.match(line):
                report = VampReport(instances=int(header.group(1)))
            continue
        match = FIELD.match(line)
        if not match:
            block = None
            continue
        key, value = match.groups()
        try:
            if key in ("e2e latency (us)", "model latency (us)") and not value:
                block = report.e2e_latency_us if key.startswith("e2e") else report.model_latency_us
            elif block is not None and LATENCY_LINE.match(key):
                block[key.removesuffix(" latency")] = _number(value)
            elif key == "devices":
                report.devices, block = value, None
            elif key in SCALAR_FIELDS:
                name = SCALAR_FIELDS[key]
                counts = name in ("batch_size", "samples")
                number = _number(value, whole=counts)
                setattr(report, name, int(number) if counts else number)
                block = None
            else:
                block = None
        except (ValueError, IndexError):
            raise DataError(f"{source}: cannot read {key!r} value {value!r}") from None
    if report is None:
        raise DataError(f"{source}: no 'number of instances in each device' line: not a vamp report")
    return report


def format_vamp(
    *, instances: int, devices: str, batch: int, samples: int, forward_time_s: float, throughput_qps: float,
    e2e: LatencyStats, model: LatencyStats,
) -> str:  # fmt: skip
    """vamp's layout, with the percentiles that have enough samples."""
    lines = [
        f"- number of instances in each device: {instances}",
        f"  devices: {devices}",
        f"  batch size: {batch}",
        f"  samples: {samples}",
        f"  forwad time (s): {forward_time_s:.6g}",
        f"  throughput (qps): {throughput_qps:.6g}",
    ]
    for title, latency in (("e2e latency (us):", e2e), ("model latency (us):", model)):
        lines.append(f"  {title}")
        names = ("avg", "min", "max", *(f"p{p}" for p in PERCENTILES))
        lines += [
            f"    {name} latency: {getattr(latency, name):.0f}" for name in names if getattr(latency, name) is not None
        ]
    return "\n".join(lines) + "\n"


def vamp_report(perf: PerfResult) -> str:
    """The vamp-format block for a perf result (devices named by the backend's resolved device)."""
    device = perf.backend_resolved.get("device", "cpu")
    return format_vamp(
        instances=perf.instances, devices=f"[{device}]", batch=perf.batch, samples=perf.samples,
        forward_time_s=perf.forward_time_s, throughput_qps=perf.throughput_qps,
        e2e=perf.latency_us.e2e, model=perf.latency_us.model,
    )  # fmt: skip
