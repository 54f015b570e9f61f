"""What a gate compares: per metric, the values a run (or a baseline) gives, one per independent repeat.

A perf repeat is one measurement in fresh processes (``perf.repeats``); the samples inside it are
autocorrelated, so they are never used as independent evidence. Accuracy and parity are one value each:
they are deterministic for an artifact and its data. Metric names are MLflow's headline names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from harness.result import Measurement, RunResult
from harness.tracking.records import config_hash


@dataclass(frozen=True)
class Evidence:
    """One configuration's values on one machine.

    Attributes:
        label: where it came from (a run folder, an MLflow run, a baseline file entry).
        config_hash: what was measured (``harness.tracking.records.config_hash``).
        hardware_fingerprint: where it was measured (CPU, cores, OS, GPUs and driver).
        metrics: metric name -> values (one per repeat for perf metrics).
        run_dirs: the run folders it was drawn from (the candidate's, and any reruns).
    """

    label: str
    config_hash: str
    hardware_fingerprint: str
    metrics: dict[str, tuple[float, ...]]
    run_dirs: tuple[str, ...] = field(default=())

    def merged(self, other: Evidence) -> Evidence:
        """This evidence with ``other``'s repeats added (a rerun of the same config on the same machine)."""
        names = set(self.metrics) | set(other.metrics)
        metrics = {name: self.metrics.get(name, ()) + other.metrics.get(name, ()) for name in names}
        return Evidence(
            label=self.label, config_hash=self.config_hash, hardware_fingerprint=self.hardware_fingerprint,
            metrics=metrics, run_dirs=self.run_dirs + other.run_dirs,
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


def evidence_of(result: RunResult, *, label: str) -> Evidence:
    """The gate's view of one run: each repeat's perf values, and its accuracy and parity."""
    metrics: dict[str, tuple[float, ...]] = {}
    if result.perf is not None:
        repeats: tuple[Measurement, ...] = result.perf.repeats or (result.perf,)
        for name, extract in PER_REPEAT.items():
            values = tuple(value for value in map(extract, repeats) if value is not None)
            if values:
                metrics[name] = values
    if result.accuracy is not None:
        for setup in ("easy", "medium", "hard"):
            metrics[f"map_{setup}"] = (getattr(result.accuracy, setup).map,)
    if result.build is not None:
        metrics["parity_min_cos"] = (result.build.parity.min_cosine,)
    return Evidence(
        label=label,
        config_hash=config_hash(result.to_dict()["config"]),  # type: ignore[arg-type]
        hardware_fingerprint=str(result.environment.get("hardware_fingerprint", "unknown")),
        metrics=metrics,
        run_dirs=(result.run_dir,),
    )
