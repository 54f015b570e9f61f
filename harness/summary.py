"""The short human-readable summary a run prints before the path of its ``result.json``."""

from __future__ import annotations

from harness.errors import counted
from harness.perf.efficiency import EFFICIENCY_OFF
from harness.perf.host import SAMPLE_INTERVAL_S
from harness.result import RunResult
from harness.result.accuracy import AccuracyResult
from harness.result.build import BuildResult
from harness.result.perf import DeviceTelemetry, PerfResult, search_peaks, search_prefix, searches, server_tails

Row = tuple[str, str]


def format_summary(result: RunResult) -> str:
    """A few aligned lines: what was built, how it was checked, where it is."""
    model = result.config.model
    rows: list[Row] = [
        ("status", result.status),
        ("model", f"{model.variant} weights={result.weights.kind if result.weights else model.weights}"),
        ("precision", result.config.precision.name + _engine_precision(result)),
    ]
    if result.weights and result.weights.kind == "random":
        rows.append(("note", "RANDOM weights: numbers show speed and numerics, not retrieval quality"))
    if "build" in result.stages and result.build is None and result.status == "ok":
        rows.append(("artifact", f"none built: backend={result.config.backend['name']} runs no built artifact"))
    if result.build:
        rows += _build_rows(result.build)
    if result.perf:
        rows += _measurement_rows(result.perf) + _circumstance_rows(result.perf) + _verdict_rows(result.perf)
    if result.accuracy:
        rows += _accuracy_rows(result.accuracy)
    if result.error:
        rows.append(("error", f"{result.error.type}: {result.error.message}"))
    rows.append(("time", f"{result.duration_s:.1f} s"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)


def _build_rows(build: BuildResult) -> list[Row]:
    """The artifact, whether it came from the cache, its parity check and how it was quantized."""
    parity = build.parity
    checked = (
        f"min cos {parity.min_cosine:.7f} (>= {parity.threshold_min_cosine}), "
        f"max abs err {parity.max_abs_error:.2e} on {counted(len(parity.images), 'photo')}"
    )
    if build.manifest is None:
        return [
            ("artifact", "none: each worker builds the module in memory from the model config"),
            ("parity", f"{checked}, the module as the workers build it"),
        ]
    rows = [
        ("artifact", str(build.artifact_path)),
        ("cache", "hit" if build.cache_hit else f"built in {build.manifest.export_time_s:.1f} s"),
        ("parity", checked),
    ]
    quantization = build.manifest.quantization
    if quantization:
        calibration = quantization.calibration
        how = (
            f"{calibration.method} on {counted(len(calibration.images), 'image')}, "
            + ("random views of the shipped photos" if calibration.source == "views" else "from calibration.folder")
            if calibration
            else "per call"
        )
        rows.append(
            (
                "quantized",
                f"{quantization.mode} ({how}) from {quantization.base_artifact}; {'/'.join(quantization.quantize_ops)} "
                f"in int8, reduce_range={quantization.reduce_range}, CPU {' '.join(quantization.cpu_isa) or 'unknown'}",
            )
        )
    return rows


def _measurement_rows(perf: PerfResult) -> list[Row]:
    """What ran, how fast, with what latency and start-up cost, and whether the measurement is valid."""
    model_us, e2e_us, source = perf.latency_us.model, perf.latency_us.e2e, perf.samples_source
    rows = [("runtime", _runtime(perf))] if "runs" in perf.backend_resolved else []
    rows += [
        (
            "perf",
            f"{perf.backend} b{perf.batch} i{perf.instances} p{perf.processes} {_load(perf)}: "
            f"{perf.throughput_qps:.2f} img/s over {perf.forward_time_s:.4g} s" + _repeats(perf),
        ),
        (
            "latency",
            # p50 beside p50 and mean beside mean: a heavy tail (oversubscribed threads) sets them far apart.
            f"model p50 {_ms(model_us.p50, source)}, avg {_ms(model_us.avg)}, p99 {_ms(model_us.p99, source)}; "
            f"e2e p50 {_ms(e2e_us.p50, source)}, avg {_ms(e2e_us.avg)}, p99 {_ms(e2e_us.p99, source)}"
            + (" (as vamp printed them)" if source == "vamp" else ""),
        ),
    ]
    if perf.load_time_s is not None and perf.first_call_us is not None:
        rows.append(
            (
                "startup",
                f"runtime and model load {_duration(perf.load_time_s)}, cold first call "
                f"{_duration(perf.first_call_us / 1e6)} per instance{_compiles(perf)}: before the measured window",
            )
        )
    rows.append(("validity", "valid" if perf.validity.valid else "INVALID: " + "; ".join(perf.validity.reasons)))
    return rows


def _circumstance_rows(perf: PerfResult) -> list[Row]:
    """What the measurement ran under: its stability windows, the load generator's lateness, the device, the
    copies and the host."""
    rows = []
    if perf.stability:
        stability = perf.stability
        rows.append(
            (
                "stability",
                f"{'stable' if stability.stable else 'NOT stable'} after {stability.windows} windows of "
                f"{stability.window_s:g} s (last 3 within {stability.pct:g}%): "
                + ", ".join(f"{value:.4g}" for value in stability.window_throughput_qps[-3:])
                + " img/s",
            )
        )
    if perf.dispatch_delay_us:
        delay = perf.dispatch_delay_us
        tail = f"p99 {delay.p99:.0f} us, " if delay.p99 is not None else ""
        rows.append(
            (
                "dispatch",
                f"calls went {delay.avg:.0f} us after they were due on average ({tail}max {delay.max:.0f} us): "
                "the load generator's own lateness, inside the latencies",
            )
        )
    if perf.telemetry:
        rows.append(("device", _telemetry(perf.telemetry)))
    if perf.transfer_us:
        split = perf.transfer_us
        rows.append(
            (
                "copies",
                f"host->device {split.h2d.avg:.0f} us, device->host {split.d2h.avg:.0f} us per call on average "
                f"(model {perf.latency_us.model.avg:.0f} us): CUDA events on the copy streams",
            )
        )
    host = _host(perf)
    return rows + ([("host", host)] if host else [])


def _host(perf: PerfResult) -> str | None:
    """The host's CPU and the workers' memory over the window, or why it was not sampled."""
    if perf.host:
        host = perf.host
        beside = "" if host.other_cpu_pct is None else f"; other processes {host.other_cpu_pct:.0f}%"
        if host.steal_pct is not None and round(host.steal_pct):  # a VM's steal, where there is any to speak of
            beside += f", hypervisor steal {host.steal_pct:.0f}%"
        return (
            f"CPU {host.cpu_util_pct:.0f}% (per core "
            + ", ".join(f"{value:.0f}" for value in host.cpu_util_per_core_pct)
            + f"{beside}), workers' RSS {host.rss_mean_bytes / 2**20:.0f} MiB (peak {host.rss_peak_bytes / 2**20:.0f} "
            f"MiB), {counted(host.samples, 'sample')}"
        )
    if perf.samples_source == "harness":
        return (
            f"not sampled: the {perf.forward_time_s:.3g} s window held no whole "
            f"{SAMPLE_INTERVAL_S * 1000:.0f} ms sampling interval (the first starts before the workers' release)"
        )
    return None


def _verdict_rows(perf: PerfResult) -> list[Row]:
    """How close the build came to the device, the measurement's warnings, and a peak search's outcome."""
    rows = []
    if perf.efficiency:
        efficiency = perf.efficiency
        rows.append(
            (
                "efficiency",
                f"GEMMs alone would take {efficiency.efficiency:.0%} of the measured time: "
                f"{efficiency.achieved_gflops:.1f} GFLOP/s achieved ({efficiency.flops_per_image / 1e9:.3g} GFLOP "
                f"per image), the GEMMs alone {efficiency.gemm_gflops:.1f} GFLOP/s",
            )
        )
    elif perf.efficiency_undefined and perf.efficiency_undefined != EFFICIENCY_OFF:  # the user's choice: no news
        rows.append(("efficiency", f"not measured: {perf.efficiency_undefined}"))
    rows += [("warning", warning) for warning in perf.validity.warnings]
    peaks = search_peaks(perf.probes)
    for repeat, (probes, found) in enumerate(zip(searches(perf.probes), peaks, strict=True)):
        verdicts = ", ".join(f"{probe.target_qps:.4g} {'pass' if probe.passed else 'fail'}" for probe in probes)
        search = search_prefix(repeat, len(peaks))
        peak = f"{found:.4g} img/s" if found is not None else "none"
        rows.append(
            ("peak", f"{search}{peak} with p99 <= {perf.latency_bound_ms} ms ({len(probes)} probes: {verdicts})")
        )
    if len(peaks) > 1:
        median = f"{perf.peak_qps:.4g} img/s" if perf.peak_qps is not None else "none"
        reached = sorted(value for value in peaks if value is not None)
        spread = f" ({reached[0]:.4g} to {reached[-1]:.4g})" if reached else ""
        rows.append(("peak", f"{median}: the median of {len(peaks)} searches{spread}"))
    return rows


def _accuracy_rows(accuracy: AccuracyResult) -> list[Row]:
    """The retrieval scores, what a lower precision changed against fp32, published numbers, skipped images."""
    setups = ("easy", "medium", "hard")
    rows = [
        (
            "accuracy",
            f"{accuracy.dataset} ({counted(accuracy.queries, 'query', 'queries')}, "
            f"{counted(accuracy.images, 'image')}, {accuracy.normalization}): "
            + ", ".join(f"{setup[0].upper()} mAP {getattr(accuracy, setup).map:.2f}" for setup in setups)
            + f", M mP@1/5/10 {accuracy.medium.mp1:.1f}/{accuracy.medium.mp5:.1f}/{accuracy.medium.mp10:.1f}",
        )
    ]
    if accuracy.fp32:
        fp32 = accuracy.fp32
        rows.append(
            (
                "vs fp32",
                f"top-10 neighbour overlap {fp32.neighbour_overlap_at_10:.3f} (worst query "
                f"{fp32.min_neighbour_overlap_at_10:.2f}), mAP delta "
                + ", ".join(f"{setup[0].upper()} {fp32.map_delta[setup]:+.2f}" for setup in setups)
                + f" points, descriptor min cos {fp32.descriptor_min_cosine:.7f}",
            )
        )
    rows += [
        ("published", f"{item.source} ({item.protocol}): M {item.medium_map}, H {item.hard_map}")
        for item in accuracy.published
    ]
    skipped = accuracy.skipped_images
    if skipped:
        more = f", and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        rows.append(("skipped", f"{counted(len(skipped), 'unreadable image')}: {', '.join(skipped[:3])}{more}"))
    scored = {setup: getattr(accuracy, setup).queries_evaluated for setup in setups}
    if any(count < accuracy.queries for count in scored.values()):  # the means above are over fewer queries
        rows.append((
            "scored",
            ", ".join(f"{setup[0].upper()} {count}" for setup, count in scored.items())
            + f" of {counted(accuracy.queries, 'query', 'queries')} (one whose image was skipped, or with no "
            "positive in a setup, is left out of that setup's means)",
        ))  # fmt: skip
    return rows + [("warning", warning) for warning in accuracy.warnings]


def _engine_precision(result: RunResult) -> str:
    """Where the runtime may compute in another precision than the artifact's: TensorRT picks each layer's
    fastest of the precisions it is allowed, and ``trt_fp16`` allows fp16."""
    backend = result.config.backend
    if backend.get("trt_fp16") and result.config.precision.name != "fp16":
        return " artifact; TensorRT may run its layers in fp16 (backend.trt_fp16=true)"
    return ""


def _runtime(perf: PerfResult) -> str:
    """What the backend ran and where: ``onnxruntime 1.32.0: CPUExecutionProvider on cpu, 2 threads (...)``."""
    resolved = perf.backend_resolved
    version = resolved.get(perf.backend)
    threads = resolved.get("cpu_threads")
    where = f" on {perf.device}"
    if isinstance(threads, int) and threads:
        where += f", {counted(threads, 'thread')} ({resolved.get('cpu_threads_setting')})"
    return f"{perf.backend}{f' {version}' if version else ''}: {resolved['runs']}{where}"


def _repeats(perf: PerfResult) -> str:
    """The spread behind a headline that is the median of several repeats by what its scenario answers (of an
    even count, the worse of the middle two: the headline is one real measurement, never an average of two)."""
    repeats = perf.throughput_qps_repeats
    if len(repeats) < 2:
        return ""
    which = "the median" if len(repeats) % 2 else "the slower middle one"
    if perf.probes:  # the peak lines give each search's peak
        search = "the median search" if len(repeats) % 2 else "the lower middle search"
        return f", the best probe of {search} by peak rate of {len(repeats)}"
    if perf.scenario == "server":
        percentile, tails = server_tails(perf.repeats)
        spread = f"{min(tails) / 1e3:.2f} to {max(tails) / 1e3:.2f} ms"
        return f", {which} by e2e {percentile} of {len(repeats)} repeats ({spread})"
    return f", {which} of {len(repeats)} repeats ({min(repeats):.2f} to {max(repeats):.2f} img/s)"


def _load(perf: PerfResult) -> str:
    """How the load was offered: the closed loop's mode, or the open-loop scenario and its rate."""
    if perf.scenario == "server":
        offered = f"{perf.target_qps:.4g} qps offered" if perf.target_qps is not None else "no rate met the bound"
        return f"server {offered} (latency from scheduled arrival{_filled(perf)})"
    if perf.scenario == "offline":
        # The count: each instance sizes its queue from its warm-up, so it says how long the queue was made to last.
        return f"offline (all {counted(perf.samples, 'request')} queued at the start{_filled(perf)})"
    if perf.mode == "sync" or perf.samples_source == "vamp":  # how vamp serves its queue is its own business
        return perf.mode
    on_device = f"{perf.device_queue} at once on the device" if perf.device_queue > 1 else "served one at a time"
    return f"async {perf.queue_depth} in flight ({on_device})"


def _filled(perf: PerfResult) -> str:
    return f"; every call runs the full batch of {perf.batch}, one program" if perf.filled_batches else ""


def _compiles(perf: PerfResult) -> str:
    """Says that the first call compiles, for the backend that compiles lazily (CUDA graphs are captured while
    loading, ONNX Runtime optimises its graph while creating the session)."""
    return " (torch.compile compiles in it)" if "torch.compile" in str(perf.backend_resolved.get("runs", "")) else ""


def _duration(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds >= 1 else f"{seconds * 1000:.3g} ms"


def _ms(microseconds: float | None, source: str = "harness") -> str:
    if microseconds is None:
        return "n/a (not printed)" if source == "vamp" else "n/a (too few samples)"
    return f"{microseconds / 1000:.2f} ms"


def _telemetry(telemetry: DeviceTelemetry) -> str:
    """The device's own report, in vamp's terms; fields it did not report are left out."""
    fields = (
        ("ai utilize", telemetry.ai_utilize_pct, "{:.1f}%"), ("die memory", telemetry.die_memory_used_mb, "{:.0f} MB"),
        ("power", telemetry.card_power_w, "{:.1f} W"), ("temperature", telemetry.temperature_c, "{:.1f} °C"),
        ("", telemetry.images_per_joule, "{:.1f} img/J"), ("SM clock", telemetry.sm_clock_mhz, "{:.0f} MHz"),
    )  # fmt: skip
    shown = [f"{label} {form.format(value)}".strip() for label, value, form in fields if value is not None]
    samples = f", {counted(telemetry.samples, 'sample')}" if telemetry.samples is not None else ""
    return f"{', '.join(shown)} ({telemetry.source}{samples})"
