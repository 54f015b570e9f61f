"""Typed configs of the commands other than ``run``: the regression gate's rules (``gate`` group) and what
``sync``, ``report``, ``ui``, ``vamp-parse``, ``data`` and ``gate`` read of the composed tree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.config.convert import check_seed
from harness.config.schema import DatasetConfig, PathsConfig, TrackingConfig
from harness.errors import ConfigError

# What a gate rule is chosen by: the load scenario (``Scenario``'s values), or a peak search (a server run
# searching its peak rate).
GatedLoad = Literal["closed", "server", "offline", "peak"]


@dataclass(frozen=True)
class GateRule:
    """One metric's rule in the regression gate (``gate`` group).

    Attributes:
        kind: ``perf`` (noisy: decided by statistics over repeats), ``accuracy`` or ``parity`` (deterministic for
            an artifact and its data: decided by an absolute tolerance).
        better: ``higher`` or ``lower``.
        threshold: perf: the relative change tolerated in the bad direction (0.05 = 5%); accuracy: points of
            mAP / mP; parity: cosine.
        scenarios: the loads of the runs it decides: a ``perf.scenario``, or ``peak`` (a server run searching its
            peak rate, ``perf.search=peak``); ``None``: every run. A metric means something only under some
            loads: an offline run's end-to-end latency is how long its queue took to drain (it answers throughput
            only), the p99 is what a server is bounded by, and a peak search's latencies are each at a rate of its
            own (it answers its peak).
    """

    kind: Literal["perf", "accuracy", "parity"]
    better: Literal["higher", "lower"]
    threshold: float
    scenarios: tuple[GatedLoad, ...] | None

    def __post_init__(self) -> None:
        if self.threshold < 0:
            raise ConfigError(f"gate rule threshold={self.threshold}: expected >= 0")
        if self.scenarios is not None and not self.scenarios:
            raise ConfigError("gate rule scenarios=[]: expected the scenarios it decides, or null for every run")

    def decides(self, load: str) -> bool:
        """Whether the rule applies to a run of ``load`` (a scenario, or ``peak``: ``gated_load``)."""
        return self.scenarios is None or load in self.scenarios


def gated_load(params: dict[str, str]) -> str:
    """What a run's gate rules are chosen by, from its identity params: ``peak`` for a peak search, else its
    scenario (``closed`` for a run recorded before the open-loop scenarios, which has none)."""
    return "peak" if params.get("perf.search") == "peak" else params.get("perf.scenario", "closed")


@dataclass(frozen=True)
class GateConfig:
    """``gate`` group: how ``harness gate`` decides (see ``docs/gate.md``).

    Attributes:
        rules: metric name (as in MLflow's headline metrics) -> its rule.
        min_repeats: perf repeats needed on each side; fewer is inconclusive.
        alpha: significance level of the two-sided Mann-Whitney U test.
        confidence: level of the bootstrap interval of the ratio of medians.
        bootstrap_resamples: resamples for that interval.
        seed: seed of the bootstrap (a decision is reproducible).
        max_other_load_pct: a run measured beside more other work than this share of the machine's CPU (other
            processes, or the hypervisor's steal) is no baseline, and as a candidate is decided with a note saying so.
    """

    rules: dict[str, GateRule]
    min_repeats: int
    alpha: float
    confidence: float
    bootstrap_resamples: int
    seed: int
    max_other_load_pct: float

    def __post_init__(self) -> None:
        if self.min_repeats < 2 or not 0 < self.alpha < 1 or not 0 < self.confidence < 1:
            raise ConfigError(
                f"gate.min_repeats={self.min_repeats}, gate.alpha={self.alpha}, gate.confidence={self.confidence}: "
                "expected min_repeats >= 2 and alpha, confidence in (0, 1)"
            )
        check_seed("gate.seed", self.seed)
        if not 0 <= self.max_other_load_pct <= 100:
            raise ConfigError(f"gate.max_other_load_pct={self.max_other_load_pct}: expected a percentage in [0, 100]")


@dataclass(frozen=True)
class StoreCommandConfig:
    """What ``harness sync``, ``report``, ``ui`` and ``vamp-parse`` read of the composed config: the store."""

    tracking: TrackingConfig
    paths: PathsConfig


@dataclass(frozen=True)
class CacheCommandConfig:
    """What ``harness cache`` reads: where the build cache is."""

    paths: PathsConfig


@dataclass(frozen=True)
class DataCommandConfig:
    """What ``harness data`` reads: where datasets live, and the synthetic set's size and seed."""

    dataset: DatasetConfig
    paths: PathsConfig


@dataclass(frozen=True)
class GateCommandConfig:
    """What ``harness gate`` reads of ``conf/gate.yaml``: its rules, and the store MLflow baselines come from."""

    gate: GateConfig
    tracking: TrackingConfig
    paths: PathsConfig
