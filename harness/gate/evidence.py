"""What a gate compares: per metric, the values a run (or a baseline) gives, one per independent repeat.

A perf repeat is one measurement in fresh processes (``perf.repeats``); the samples inside it are
autocorrelated, so they are never used as independent evidence. Accuracy and parity are one value each:
they are deterministic for an artifact and its data. Metric names are MLflow's headline names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from harness.errors import counted
from harness.result import RunResult
from harness.result.perf import Measurement, other_work_note, search_peaks, worst_other_work
from harness.tracking.records import config_hash, identity_params


@dataclass(frozen=True)
class Evidence:
    """One configuration's values on one machine.

    Attributes:
        label: where it came from (a run folder, an MLflow run, a baseline file entry).
        config_hash: what was measured (``harness.tracking.records.config_hash``).
        hardware_fingerprint: where it was measured (CPU, cores, OS, GPUs and driver).
        metrics: metric name -> values (one per repeat for perf metrics).
        run_dirs: the run folders it was drawn from (the candidate's, and any reruns).
        config: the settings the hash covers, as tracker params (``identity_params``): what says how a
            candidate without a baseline differs from the nearest one. Empty in baseline files written before
            it was kept.
        failure: why the run did not end ``ok`` (empty when it did): its numbers are no evidence then.
        perf_problem: why its perf values are no evidence (an invalid measurement, or one taken beside another
            job on the same device); empty when they are.
        tracked: (tracking URI, run id) of the MLflow run it is, or was logged to; ``None`` when untracked.
        other_work: the most CPU other work took beside a perf repeat (``worst_other_work``: other processes, the
            hypervisor's steal): over ``gate.max_other_load_pct`` its numbers are still evidence, but the table's
            notes say so, and it is no baseline.
    """

    label: str
    config_hash: str
    hardware_fingerprint: str
    metrics: dict[str, tuple[float, ...]]
    run_dirs: tuple[str, ...] = field(default=())
    config: dict[str, str] = field(default_factory=dict)
    failure: str = ""
    perf_problem: str = ""
    tracked: tuple[str, str] | None = None
    other_work: dict[str, float] = field(default_factory=dict)

    def beside(self, limit_pct: float) -> str:
        """Whether other work took more than ``limit_pct`` of the CPU beside a perf repeat, in words (empty if not)."""
        return other_work_note(self.other_work, limit_pct)

    def merged(self, other: Evidence) -> Evidence:
        """This evidence with ``other``'s repeats added (a rerun of the same config on the same machine)."""
        names = set(self.metrics) | set(other.metrics)
        metrics = {name: self.metrics.get(name, ()) + other.metrics.get(name, ()) for name in names}
        return Evidence(
            label=self.label, config_hash=self.config_hash, hardware_fingerprint=self.hardware_fingerprint,
            metrics=metrics, run_dirs=self.run_dirs + other.run_dirs, config=self.config,
            failure=self.failure or other.failure,
            perf_problem="; ".join(problem for problem in (self.perf_problem, other.perf_problem) if problem),
            tracked=self.tracked,
            other_work={
                what: max(self.other_work.get(what, 0.0), other.other_work.get(what, 0.0))
                for what in {**self.other_work, **other.other_work}
            },
        )  # fmt: skip


def _ms(microseconds: float | None) -> float | None:
    return None if microseconds is None else microseconds / 1000.0


PER_REPEAT: dict[str, Callable[[Measurement], float | None]] = {
    "throughput_qps": lambda measurement: measurement.throughput_qps,
    "e2e_latency_p50_ms": lambda measurement: _ms(measurement.latency_us.e2e.p50),
    "e2e_latency_p99_ms": lambda measurement: _ms(measurement.latency_us.e2e.p99),
    "model_latency_p50_ms": lambda measurement: _ms(measurement.latency_us.model.p50),
    "model_latency_p99_ms": lambda measurement: _ms(measurement.latency_us.model.p99),
}


# A peak search's metric: each search's peak rate (``perf.repeats`` searches).
PEAK_METRIC = "peak_qps"
# Every perf metric the gate reads, each with a value per repeat.
PERF_METRICS = (*PER_REPEAT, PEAK_METRIC)


def evidence_of(result: RunResult, *, label: str) -> Evidence:
    """The gate's view of one run: each repeat's perf values, and its accuracy and parity."""
    metrics: dict[str, tuple[float, ...]] = {}
    perf_problems: list[str] = []
    if result.perf is not None:
        repeats: tuple[Measurement, ...] = result.perf.repeats or (result.perf,)
        for name, extract in PER_REPEAT.items():
            values = tuple(value for value in map(extract, repeats) if value is not None)
            if values:
                metrics[name] = values
        peaks = [peak for peak in search_peaks(result.perf.probes) if peak is not None]
        if peaks:  # a peak search's: the highest rate each search kept within the bound
            metrics[PEAK_METRIC] = tuple(peaks)
        perf_problems += [f"invalid: {reason}" for repeat in repeats for reason in repeat.validity.reasons]
        if result.perf.contended_with:
            perf_problems.append(f"measured beside {', '.join(result.perf.contended_with)} on one device")
    if result.accuracy is not None:
        for setup in ("easy", "medium", "hard"):
            metrics[f"map_{setup}"] = (getattr(result.accuracy, setup).map,)
    if result.build is not None:
        metrics["parity_min_cos"] = (result.build.parity.min_cosine,)
    config: dict[str, object] = result.to_dict()["config"]  # type: ignore[assignment]
    return Evidence(
        label=label,
        config_hash=config_hash(config),
        hardware_fingerprint=str(result.environment.get("hardware_fingerprint", "unknown")),
        metrics=metrics,
        run_dirs=(result.run_dir,),
        config=identity_params(config),
        failure=""
        if result.status == "ok"
        else f"the run ended {result.status}" + (f": {result.error.message}" if result.error else ""),
        perf_problem="; ".join(dict.fromkeys(perf_problems)),
        other_work=worst_other_work(result.perf) if result.perf is not None else {},
    )


def config_difference(candidate: Evidence, others: list[Evidence], *, shown: int = 4) -> str:
    """How ``candidate``'s settings differ from the nearest of ``others`` (fewest differing settings, the same
    machine first): ``nearest baseline 0 differs in backend.intra_op_threads: 2 -> 1``; empty when there are
    none, or that there is no baseline at all."""
    comparable = [item for item in others if item.config]
    if not others:
        return "there is no baseline at all: promote the reference runs with --promote"
    if not candidate.config:
        return ""
    if not comparable:
        return "the baselines there are keep no settings to compare with (promoted by an older harness: promote again)"

    def differing(item: Evidence) -> list[str]:
        keys = sorted(set(candidate.config) | set(item.config))
        return [key for key in keys if candidate.config.get(key) != item.config.get(key)]

    nearest = min(
        comparable, key=lambda item: (item.hardware_fingerprint != candidate.hardware_fingerprint, len(differing(item)))
    )
    # A section set on one side and null on the other (fp32's `precision.quantization` against int8's) is one
    # change, not the null against each of its settings.
    changed = differing(nearest)
    keys = [key for key in changed if not any(key.startswith(parent + ".") for parent in changed)]
    if not keys:
        return ""

    def value_in(config: dict[str, str], key: str) -> str:
        if key in config:
            return config[key]
        settings = sum(other.startswith(key + ".") for other in config)
        return f"{{{counted(settings, 'setting')}}}" if settings else "(absent)"

    changes = [f"{key}: {value_in(nearest.config, key)} -> {value_in(candidate.config, key)}" for key in keys]
    more = f", and {len(keys) - shown} more" if len(keys) > shown else ""
    return f"nearest baseline {nearest.label} differs in {', '.join(changes[:shown])}{more}"
