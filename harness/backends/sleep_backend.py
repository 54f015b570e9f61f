"""A calibrated synthetic backend: each call sleeps a fixed time and returns zeros.

It is the load generator's reference system under test (like MLPerf's dummy SUT): with a known service
time, throughput and latency of any instance/process layout are known in advance, so tests can check the
harness's own aggregation and overhead exactly. It never pretends to be a model: results say
``backend.name: sleep``.

With ``copy_us`` and ``in_flight`` it is a device with a queue: a copy engine moves each call's input
(``copy_us``), then a compute engine runs it (the call's time), each engine one call at a time, and up to
``in_flight`` calls are queued at once. A lone call takes copy + compute; queued calls overlap one's copy
with another's compute, so the throughput of a full queue is known too: one call per max(copy, compute).
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np

from harness.backends import InputSignature, LoadTarget, register_backend
from harness.errors import ConfigError

CRASH_EXIT_CODE = 70


@dataclass(frozen=True)
class SleepConfig:
    """``backend=sleep``: ``latency_us`` per call, plus ``per_sample_us`` for each image in the batch.

    Defaults in ``conf/backend/sleep.yaml``.

    ``exit_after_calls`` > 0 makes the process exit abruptly (code 70) on that call: it rehearses a runtime
    that crashes its worker, so the harness's handling of dead workers can be exercised for real.

    ``spin_us`` > 0 spins the last ``spin_us`` of each call instead of sleeping it, so the call returns on time
    and with its thread awake, as a computing runtime's would: a thread that slept wakes late and runs its
    next steps slowly on a busy host, and those steps are the load generator's. It holds the GIL while it
    spins: for one instance per process.

    ``warming_calls`` > 0 makes an instance's first calls (the cold one included) ``warming_us`` slower: a
    runtime still warming up when its warm-up ends, whose warm-up times say it is slower than it is.
    """

    # It runs no model, so the build stage has nothing to make for it.
    loads_artifact: ClassVar[bool] = False

    name: Literal["sleep"]
    latency_us: float
    per_sample_us: float
    feature_dim: int
    exit_after_calls: int
    spin_us: float
    copy_us: float
    in_flight: int
    warming_calls: int
    warming_us: float

    def __post_init__(self) -> None:
        for name in ("latency_us", "per_sample_us", "spin_us", "copy_us", "warming_us", "warming_calls"):
            if getattr(self, name) < 0:
                raise ConfigError(f"backend.{name}={getattr(self, name)}: expected >= 0")
        if self.in_flight < 1:
            raise ConfigError(f"backend.in_flight={self.in_flight}: expected >= 1 (calls queued at once)")


@register_backend("sleep", config=SleepConfig)
class SleepBackend:
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16")
    device_kinds: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(self, config: SleepConfig) -> None:
        self.config = config
        self.compute_s = 0.0
        self.calls = 0
        self.result = np.zeros((0, config.feature_dim), dtype=np.float32)
        # When each engine is next free (perf_counter seconds); each queued call's completion and compute time.
        self.copy_free_at = self.compute_free_at = 0.0
        self.queued: collections.deque[tuple[float, float]] = collections.deque()

    def check_environment(self) -> dict[str, object]:
        return {"latency_us": self.config.latency_us, "per_sample_us": self.config.per_sample_us}

    def resolve(self, target: LoadTarget) -> dict[str, object]:
        return self.check_environment()

    def input_signature(self, target: LoadTarget) -> InputSignature:
        return InputSignature(shape=(None, 3, *target.model.input_size), dtype="float32")

    def load(self, target: LoadTarget) -> None:
        return None

    def prepare(self, batch: np.ndarray) -> None:
        self.compute_s = (self.config.latency_us + self.config.per_sample_us * batch.shape[0]) / 1e6
        self.result = np.zeros((batch.shape[0], self.config.feature_dim), dtype=np.float32)

    def max_in_flight(self) -> int:
        return self.config.in_flight

    def submit(self) -> None:
        if len(self.queued) >= self.config.in_flight:
            raise RuntimeError(f"sleep backend: {len(self.queued)} calls queued, in_flight={self.config.in_flight}")
        self.calls += 1
        if self.calls == self.config.exit_after_calls:
            # As a crashing runtime does: a last word on stderr, then the process is gone without cleanup.
            os.write(2, f"sleep backend: simulated runtime crash on call {self.calls}\n".encode())
            os._exit(CRASH_EXIT_CODE)
        self.copy_free_at = max(time.perf_counter(), self.copy_free_at) + self.config.copy_us / 1e6
        compute_s = self.compute_s + (self.config.warming_us / 1e6 if self.calls <= self.config.warming_calls else 0)
        self.compute_free_at = max(self.copy_free_at, self.compute_free_at) + compute_s
        self.queued.append((self.compute_free_at, compute_s))

    def collect(self) -> float:
        deadline, compute_s = self.queued.popleft()
        time.sleep(max(0.0, deadline - time.perf_counter() - self.config.spin_us / 1e6))
        while time.perf_counter() < deadline:
            pass
        return compute_s * 1e6

    def infer(self) -> float | None:
        self.submit()
        self.collect()
        # A lone call is timed by the host clock, as any runtime without device timers is.
        return None

    def last_transfer_us(self) -> tuple[float, float] | None:
        return (self.config.copy_us, 0.0) if self.config.copy_us else None

    def outputs(self) -> np.ndarray:
        return self.result

    def close(self) -> None:
        return None
