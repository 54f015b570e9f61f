"""Perf through a vendor profiler (vamp): one profiler call per repeat, its report parsed into the perf block.

vamp prints summaries, not per-batch samples, so the statistics are the ones it printed (percentiles
included), ``samples_source`` says so, and the repeats (``perf.repeats``, one vamp call each, median as the
headline) are the independent evidence the gate uses. Every report is kept verbatim beside ``result.json``:
``perf_vamp_repeat<N>.txt`` and, for the median repeat, ``perf_vamp.txt``. A non-zero exit, a timeout, or
output that is not vamp's fails the run with the tool's last lines.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from harness.backends import ProfileLoad, Toolchain, open_toolchain
from harness.config.perf import PerfConfig
from harness.config.schema import RunConfig
from harness.errors import ConfigError, DataError, ToolError
from harness.perf.contention import CLAIMS_FOLDER, claimed_window
from harness.perf.efficiency import efficiency_undefined
from harness.perf.measurement import headline_index, perf_result
from harness.perf.stats import latency_bound_notes
from harness.perf.vamp import VAMP_FILE, VAMP_REPEAT_FILE, VampReport, parse_vamp, telemetry_from_report
from harness.processes import ToolRun
from harness.result.perf import LatencyBlock, LatencyStats, Measurement, PerfResult, Validity
from harness.vdsp import vdsp_params_file

log = logging.getLogger(__name__)

PERCENTILE_NAMES = ("p50", "p90", "p95", "p99")


def _latency(block: dict[str, float], count: int, label: str, run: ToolRun) -> LatencyStats:
    if "avg" not in block:
        raise ToolError(f"vamp printed no {label} avg latency; its last lines:\n{run.tail()}")
    return LatencyStats(
        count=count, avg=block["avg"], std=None, min=block.get("min"), max=block.get("max"),
        **{name: block.get(name) for name in PERCENTILE_NAMES},
    )  # fmt: skip


def measurement_from_report(report: VampReport, run: ToolRun, perf: PerfConfig) -> Measurement:
    """One repeat's ``Measurement`` from what vamp printed (and what the host saw of the vamp process).

    Raises:
        ToolError: the report lacks the throughput or a latency block's average.
    """
    if report.throughput_qps is None or report.throughput_qps <= 0:
        raise ToolError(f"vamp printed no throughput (qps); its last lines:\n{run.tail()}")
    warnings = []
    samples = report.samples
    if samples is None:
        samples = round(report.throughput_qps * report.forward_time_s) if report.forward_time_s else None
    if samples is None:
        if perf.iterations is None:
            raise ToolError(f"vamp printed neither samples nor forward time; its last lines:\n{run.tail()}")
        samples = perf.iterations * perf.batch
        warnings.append(f"vamp printed no samples line: samples is the {samples} asked for (--iterations)")
    forward_time_s = report.forward_time_s or samples / report.throughput_qps
    if report.forward_time_s is None:
        warnings.append("vamp printed no forward time: it is samples / throughput")
    batches = samples // (report.batch_size or perf.batch)
    latency = LatencyBlock(
        e2e=_latency(report.e2e_latency_us, batches, "e2e", run),
        model=_latency(report.model_latency_us, batches, "model", run),
    )
    reasons = []
    if report.instances != perf.instances:
        reasons.append(f"vamp ran {report.instances} instances per device, perf.instances={perf.instances}")
    if report.batch_size is not None and report.batch_size != perf.batch:
        reasons.append(f"vamp ran batch {report.batch_size}, perf.batch={perf.batch}")
    if batches < perf.batches_floor:
        reasons.append(f"{batches} batches < {perf.batches_floor} (perf.iterations, perf.min_samples)")
    if forward_time_s < perf.min_duration_s:
        reasons.append(f"forward time {forward_time_s:.3f} s < perf.min_duration_s={perf.min_duration_s}")
    missed, unjudged = latency_bound_notes(perf.latency_bound_ms, latency.e2e.p99, unknown="vamp printed no e2e p99")
    reasons += missed
    warnings += unjudged
    return Measurement(
        samples=samples,
        batches=batches,
        forward_time_s=forward_time_s,
        throughput_qps=report.throughput_qps,
        latency_us=latency,
        load_time_s=None,
        first_call_us=None,
        window_throughput_qps=(),
        window_cv=None,
        cpu_utilization_pct=100.0 * run.cpu_s / (run.wall_s * (os.cpu_count() or 1)),
        peak_host_memory_bytes=run.peak_rss_bytes,
        peak_device_memory_bytes=None,
        validity=Validity(valid=not reasons, reasons=tuple(reasons), warnings=tuple(warnings)),
        telemetry=telemetry_from_report(report),
    )


def _profile_once(
    toolchain: Toolchain,
    prefix: Path,
    load: ProfileLoad,
    perf: PerfConfig,
    *,
    vdsp_params: Path,
    run_dir: Path,
    repeat: int,
    progress: bool,
) -> tuple[Measurement, VampReport, Path]:
    """Repeat ``repeat``'s vamp call on the compiled model at ``prefix``: its measurement, its parsed report and
    its output file (in ``run_dir``)."""
    output = run_dir / VAMP_REPEAT_FILE.format(repeat)
    log.info("stage=perf repeat%d vamp instances=%d batch=%d", repeat, perf.instances, perf.batch)
    run = toolchain.profile(prefix, load, vdsp_params=vdsp_params, output=output, progress=progress)
    try:
        report = parse_vamp(run.output, source=f"vamp output {output}")
    except DataError as error:
        raise ToolError(f"{error}; its last lines:\n{run.tail()}") from None
    measurement = measurement_from_report(report, run, perf)
    log.info("perf repeat%d throughput_qps=%.2f", repeat, measurement.throughput_qps)
    return measurement, report, output


def run_toolchain_perf(config: RunConfig, *, model_prefix: str | None, run_dir: Path) -> PerfResult:
    """``perf.repeats`` vamp calls on the compiled model; the median repeat is the headline."""
    if model_prefix is None:
        raise ConfigError(f"backend={config.backend.name}: the perf stage profiles the compiled model: add build")
    perf = config.perf
    toolchain = open_toolchain(config.backend)
    resolved = {**toolchain.check_environment(), **toolchain.versions()}
    load = ProfileLoad(
        instances=perf.instances, processes=perf.processes, batch=perf.batch, shape=config.input_shape,
        iterations=perf.iterations, min_duration_s=perf.min_duration_s, mode=perf.mode,
    )  # fmt: skip
    run_dir.mkdir(parents=True, exist_ok=True)
    vdsp = vdsp_params_file(config.vdsp, config.vdsp_params, run_dir)
    with claimed_window(
        config.paths.path("outputs") / CLAIMS_FOLDER, run_dir=run_dir, device=toolchain.device
    ) as claim:
        measured = [
            _profile_once(
                toolchain,
                Path(model_prefix),
                load,
                perf,
                vdsp_params=vdsp,
                run_dir=run_dir,
                repeat=repeat,
                progress=config.progress,
            )
            for repeat in range(perf.repeats)
        ]
    measurements = [measurement for measurement, _, _ in measured]
    median, report, output = measured[headline_index(measurements, perf.scenario)]
    shutil.copyfile(output, run_dir / VAMP_FILE)
    warnings = median.validity.warnings + perf.unused_notes(profiler=True)
    unprinted = [f"p{value}" for value in config.backend.percentiles if f"p{value}" not in report.e2e_latency_us]
    if unprinted:
        warnings += (f"vamp printed no {', '.join(unprinted)} latency (asked with --percentiles)",)
    if claim.overlapping:
        warnings += (
            f"contended: other perf runs used {toolchain.device} at the same time ({', '.join(claim.overlapping)})",
        )
    return perf_result(
        config,
        measurements,
        median,
        warnings=warnings,
        resolved=resolved,
        device=toolchain.device,
        contended_with=claim.overlapping,
        samples_file=None,
        samples_source="vamp",
        efficiency_undefined=efficiency_undefined(config, None),
    )
