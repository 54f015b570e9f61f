"""Typed ``perf`` group: the load a perf run puts on its backend (see ``conf/perf/default.yaml``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from harness.config.convert import check_seed
from harness.errors import ConfigError, as_written

# Samples p99 needs to be reported (at most 1% of them above it, with 99% confidence; harness.perf.stats).
P99_MIN_SAMPLES = 662
# The offline queue is sized from the warm-up's fastest call to last this much longer than ``min_duration_s``: the
# window's calls run about as fast (a mean over the warm-up, early calls included, was 11% slow: too few requests).
OFFLINE_DURATION_MARGIN = 1.1

# The values of the settings below when left unset (conf/perf/default.yaml's; a test keeps them equal).
UNSET: dict[str, object] = {
    "queue_depth": 2, "target_qps": None, "max_queue_delay_ms": 0.0, "arrival_seed": 0, "search_tolerance": 0.05,
    "max_probes": 12, "stability_window_s": 1.0, "stability_pct": 10.0, "max_windows": 10, "inputs": "random",
    "max_duration_s": 600.0, "start_timeout_s": 900.0, "windows": 8, "max_window_cv": 0.1, "iterations": 1024,
    "min_duration_s": 1.0, "min_samples": 64, "warmup": 8,
}  # fmt: skip
# The settings of a feature a run may leave off, by the switch and value that turn it on: set without the feature,
# they are refused.
SETTINGS_OF_FEATURES: dict[tuple[str, object], tuple[str, ...]] = {
    ("mode", "async"): ("queue_depth",),
    ("scenario", "server"): ("target_qps", "max_queue_delay_ms", "arrival_seed"),
    ("search", "peak"): ("search_tolerance", "max_probes"),
    ("stability", True): ("stability_window_s", "stability_pct", "max_windows"),
}
# How long a closed-loop run measures, unless perf.stability's rule decides it.
MINIMUMS = ("iterations", "min_duration_s", "min_samples")
# How the harness's own load generator runs and is judged, beside the load itself: a vendor profiler that drives its
# own loop has no flag for them (it queues, feeds and times itself). Its warm-up too, but perf.warmup is left out
# (warned, not refused: the debug presets set it for every backend).
LOAD_GENERATOR_SETTINGS = ("queue_depth", "inputs", "max_duration_s", "start_timeout_s", "windows", "max_window_cv")

# How load is offered (README "Load scenarios"): closed loop, open-loop Poisson arrivals, all queued at once.
Scenario = Literal["closed", "server", "offline"]


@dataclass(frozen=True)
class PerfConfig:
    """``perf`` group: the load, vamp-style (``-i`` instances, ``-p`` processes, ``-b`` batch, ``-s`` shape).

    Attributes:
        instances: concurrent model instances (each loads its own copy).
        processes: OS processes sharing the instances out round-robin; at most ``instances``.
        batch: images per call.
        shape: [C, H, W] of one image; ``null`` takes it from the vdsp params or ``model.input_size``.
        iterations: at least this many batches in total across instances (``null``: the minimums alone).
        duration_s: deprecated alias of ``min_duration_s`` (folded into it by ``harness.resolve``).
        warmup: untimed calls per instance before measuring (after the first, cold, call).
        mode: ``sync`` (one request at a time per instance) or ``async`` (a queue of ``queue_depth`` per instance).
        queue_depth: requests in flight per instance in async mode.
        inputs: ``random`` (seeded normal) or ``photos`` (real photos, preprocessed).
        repeats: independent runs, each in fresh processes; the median is the headline (with ``search=peak``:
            independent searches, the median peak the headline).
        min_duration_s: the run goes on until it has measured at least this long (as MLPerf LoadGen does)...
        min_samples: ...and completed at least this many batches (and ``iterations``).
        max_duration_s: it stops here even if a minimum is not met, and is then invalid (``null``: no bound).
        strict: an invalid measurement, a withheld percentile or a window CV above the bound fails the run.
        windows: time slices for the throughput coefficient of variation.
        max_window_cv: above this CV a warning is printed and recorded.
        start_timeout_s: longest wait for workers to load their models.
        scenario: ``closed`` (vamp's loop: each instance sends the next request when the last returns),
            ``server`` (open loop: Poisson arrivals at ``target_qps``, latency from each request's scheduled
            arrival) or ``offline`` (every request queued at the start; throughput only).
        target_qps: server: the offered rate (images per second over all instances); with ``search=peak``
            the first probe.
        max_queue_delay_ms: open loop: longest wait for a batch of ``batch`` requests to fill after its first
            request arrived.
        arrival_seed: server: seed of the arrival schedule (the same seed replays the same arrivals).
        search: ``none``, or ``peak``: the highest ``target_qps`` whose p99 latency stays within
            ``latency_bound_ms``, by bracketing then bisection; every probe is kept.
        latency_bound_ms: the p99 end-to-end bound: a peak search's criterion; otherwise a measurement whose
            p99 exceeds it is invalid (MLPerf's server rule), and one whose p99 is withheld is warned unjudged;
            refused offline.
        search_tolerance: peak search stops when the bracket is narrower than this share of its low end.
        max_probes: peak search: most probes (each one a measurement of its own).
        efficiency: closed loop, ONNX Runtime on CPU, fp32/fp16: also time the model's GEMMs alone (cached per
            machine) and report FLOPs, GFLOP/s and efficiency (``perf.efficiency`` in the result).
        stability: closed loop: instead of the minimums, measure in windows of ``stability_window_s`` until the
            throughput of the last 3 windows agrees within ``stability_pct`` percent of their mean (perf_analyzer's
            rule), or ``max_windows`` have passed; the result says whether and after how many windows.
    """

    instances: int
    processes: int
    batch: int
    shape: tuple[int, int, int] | None
    iterations: int | None
    duration_s: float | None
    warmup: int
    mode: Literal["sync", "async"]
    queue_depth: int
    inputs: Literal["random", "photos"]
    repeats: int
    min_duration_s: float
    min_samples: int
    max_duration_s: float | None
    strict: bool
    windows: int
    max_window_cv: float
    start_timeout_s: float
    scenario: Scenario
    target_qps: float | None
    max_queue_delay_ms: float
    arrival_seed: int
    search: Literal["none", "peak"]
    latency_bound_ms: float | None
    search_tolerance: float
    max_probes: int
    efficiency: bool
    stability: bool
    stability_window_s: float
    stability_pct: float
    max_windows: int

    @property
    def batches_floor(self) -> int:
        """Batches a measurement runs at least: ``iterations`` and ``min_samples``, whichever is more."""
        return max(self.iterations or 0, self.min_samples)

    @property
    def offline_queue_s(self) -> float:
        """How long each instance's offline queue is sized to last at its warm-up's fastest call:
        ``min_duration_s`` and a margin, within ``max_duration_s``."""
        lasting = self.min_duration_s * OFFLINE_DURATION_MARGIN
        return lasting if self.max_duration_s is None else min(lasting, self.max_duration_s)

    def open_loop_requests(self, target_qps: float | None) -> int:
        """Open loop: requests (one image each) over all instances. Server: the batch floor, and enough to
        fill ``min_duration_s`` at ``target_qps`` (and p99's 662 when searching); offline: at least floor x batch
        (each instance adds what lasts ``min_duration_s`` at its warm-up's rate)."""
        if self.scenario == "offline":
            return self.batches_floor * self.batch
        assert target_qps is not None
        least = P99_MIN_SAMPLES if self.search == "peak" else 0
        return max(self.batches_floor, least, math.ceil(target_qps * self.min_duration_s))

    def __post_init__(self) -> None:
        self._check_amounts()
        self._check_scenario()
        self._check_watch_and_search()
        self._check_settings_of_features_left_off()

    def _check_amounts(self) -> None:
        for name in ("instances", "processes", "batch", "queue_depth", "repeats", "windows", "min_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"perf.{name}={getattr(self, name)!r}: expected a positive int")
        if self.processes > self.instances:
            raise ConfigError(
                f"perf.processes={self.processes}: expected <= perf.instances={self.instances} "
                "(each process drives at least one instance, as in vamp)"
            )
        if self.min_duration_s < 0:
            raise ConfigError(f"perf.min_duration_s={self.min_duration_s}: expected >= 0")
        if self.max_duration_s is not None and self.max_duration_s <= 0:
            raise ConfigError(f"perf.max_duration_s={self.max_duration_s}: expected > 0 or null")
        if self.iterations is not None and self.iterations < self.instances:
            raise ConfigError(f"perf.iterations={self.iterations}: expected >= perf.instances={self.instances}")
        if self.warmup < 0:
            raise ConfigError(f"perf.warmup={self.warmup}: expected >= 0")
        check_seed("perf.arrival_seed", self.arrival_seed)
        if self.windows < 2 or self.max_window_cv < 0:
            raise ConfigError(
                f"perf.windows={self.windows}, perf.max_window_cv={self.max_window_cv}: expected >= 2 windows (one "
                "window has no variation to measure) and a CV >= 0"
            )

    def _check_scenario(self) -> None:
        if self.scenario == "server" and (self.target_qps is None or self.target_qps <= 0):
            needs = "perf.search=peak needs a rate > 0 to start from" if self.search == "peak" else (
                "perf.scenario=server needs an arrival rate > 0"
            )  # fmt: skip
            raise ConfigError(f"perf.target_qps={as_written(self.target_qps)}: {needs}")
        if self.max_queue_delay_ms < 0:
            raise ConfigError(f"perf.max_queue_delay_ms={self.max_queue_delay_ms}: expected >= 0")
        if self.scenario != "closed" and self.mode != "sync":
            # Taken silently, it went into result.json and MLflow as if the run had been async.
            raise ConfigError(
                f"perf.mode={self.mode}: says how the closed loop keeps requests in flight; perf.scenario="
                f"{self.scenario} issues them itself (perf.batch and perf.max_queue_delay_ms batch them): leave sync"
            )
        if self.latency_bound_ms is not None and self.latency_bound_ms <= 0:
            raise ConfigError(f"perf.latency_bound_ms={self.latency_bound_ms}: expected a p99 bound > 0 (or null)")
        if self.scenario == "offline" and self.latency_bound_ms is not None:
            # Its e2e latency is how long a request waited in the queue queued at the start: p99 is about the whole
            # run, so a measurement long enough for a p99 was invalid by construction.
            raise ConfigError(
                f"perf.latency_bound_ms={self.latency_bound_ms}: perf.scenario=offline queues every request at the "
                "start, so its e2e p99 is about the length of the run, not a service latency (MLPerf's Offline "
                "scenario has no bound): leave it unset, or bound perf.scenario=closed or server"
            )

    def _check_watch_and_search(self) -> None:
        if self.stability:
            if self.scenario != "closed":
                raise ConfigError(f"perf.stability=true: watches the closed loop, got perf.scenario={self.scenario}")
            if self.stability_window_s <= 0 or self.stability_pct <= 0 or self.max_windows < 3:
                raise ConfigError(
                    f"perf.stability_window_s={self.stability_window_s}, perf.stability_pct={self.stability_pct}, "
                    f"perf.max_windows={self.max_windows}: expected a window > 0, a percentage > 0, >= 3 windows"
                )
        if self.search == "peak":
            if self.scenario != "server":
                raise ConfigError(
                    f"perf.search=peak: searches the server scenario's rate, got perf.scenario={self.scenario}"
                )
            if self.latency_bound_ms is None or self.latency_bound_ms <= 0:
                raise ConfigError(
                    f"perf.latency_bound_ms={as_written(self.latency_bound_ms)}: perf.search=peak needs a p99 bound > 0"
                )
            if not 0 < self.search_tolerance < 1 or self.max_probes < 2:
                raise ConfigError(
                    f"perf.search_tolerance={self.search_tolerance}, perf.max_probes={self.max_probes}: "
                    "expected a tolerance in (0, 1) and at least 2 probes"
                )

    def _check_settings_of_features_left_off(self) -> None:
        # Taken silently, such a value changed nothing measured, yet read in result.json and MLflow as if it had,
        # and gave the run a config hash of its own (so a baseline measured without it did not pair).
        for (switch, on), settings in SETTINGS_OF_FEATURES.items():
            changed = self.set_among(settings)
            if getattr(self, switch) != on and changed:
                them = "them" if len(changed) > 1 else "it"
                feature, left_off = (f"perf.{switch}={_as_override(value)}" for value in (on, getattr(self, switch)))
                raise ConfigError(
                    f"{self.written(changed)}: only {feature} uses {them}, and this config has {left_off} "
                    f"(set {feature}, or leave {them} unset)"
                )

    def unused_notes(self, *, profiler: bool) -> tuple[str, ...]:
        """Warnings for settings set away from their defaults that the run does not use: the minimums under
        ``stability`` (the windows' rule decides how long the run measures), the warm-up where a vendor
        ``profiler`` measures (it has no flag for one). Warned, not refused: a preset such as ``debug=tiny`` sets
        them for every run, stability or not, whatever the backend."""
        notes: tuple[str, ...] = ()
        if self.stability and (minimums := self.set_among(MINIMUMS)):
            notes += (
                f"{self.written(minimums)} not used: perf.stability=true measures until the throughput of its last "
                "3 windows agrees (perf.stability_pct), or perf.max_windows have passed, whatever the minimums",
            )
        if profiler and self.set_among(("warmup",)):
            notes += (f"{self.written(['warmup'])} not used: the vendor profiler has no flag for a warm-up",)
        return notes

    def set_among(self, names: tuple[str, ...]) -> list[str]:
        """Those of the settings ``names`` (all in ``UNSET``) whose value is not their unset one."""
        return [name for name in names if getattr(self, name) != UNSET[name]]

    def written(self, names: list[str]) -> str:
        """The settings ``names`` as ``perf.<name>=<value>`` overrides, comma-separated."""
        return ", ".join(f"perf.{name}={as_written(getattr(self, name))}" for name in names)


def _as_override(value: object) -> str:
    """A value as an override spells it: a name without quotes, ``true`` / ``null`` as YAML does."""
    return value if isinstance(value, str) else as_written(value)
