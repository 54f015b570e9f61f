"""A calibrated synthetic backend: each call sleeps a fixed time and returns zeros.

It is the load generator's reference system under test (like MLPerf's dummy SUT): with a known service
time, throughput and latency of any instance/process layout are known in advance, so tests can check the
harness's own aggregation and overhead exactly. It never pretends to be a model: results say
``backend.name: sleep``.
"""

from __future__ import annotations

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
    """

    # It runs no model, so the build stage has nothing to make for it.
    loads_artifact: ClassVar[bool] = False

    name: Literal["sleep"]
    latency_us: float
    per_sample_us: float
    feature_dim: int
    exit_after_calls: int
    spin_us: float

    def __post_init__(self) -> None:
        if self.latency_us < 0 or self.per_sample_us < 0 or self.spin_us < 0:
            raise ConfigError("backend.latency_us / per_sample_us / spin_us: expected >= 0")


@register_backend("sleep", config=SleepConfig)
class SleepBackend:
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16")
    device_kinds: ClassVar[tuple[str, ...]] = ("cpu",)

    def __init__(self, config: SleepConfig) -> None:
        self.config = config
        self.seconds = 0.0
        self.calls = 0
        self.result = np.zeros((0, config.feature_dim), dtype=np.float32)

    def check_environment(self) -> dict[str, object]:
        return {"latency_us": self.config.latency_us, "per_sample_us": self.config.per_sample_us}

    def resolve(self, target: LoadTarget) -> dict[str, object]:
        return self.check_environment()

    def input_signature(self, target: LoadTarget) -> InputSignature:
        return InputSignature(shape=(None, 3, *target.model.input_size), dtype="float32")

    def load(self, target: LoadTarget) -> None:
        return None

    def prepare(self, batch: np.ndarray) -> None:
        self.seconds = (self.config.latency_us + self.config.per_sample_us * batch.shape[0]) / 1e6
        self.result = np.zeros((batch.shape[0], self.config.feature_dim), dtype=np.float32)

    def infer(self) -> float | None:
        self.calls += 1
        if self.calls == self.config.exit_after_calls:
            # As a crashing runtime does: a last word on stderr, then the process is gone without cleanup.
            os.write(2, f"sleep backend: simulated runtime crash on call {self.calls}\n".encode())
            os._exit(CRASH_EXIT_CODE)
        deadline = time.perf_counter() + self.seconds
        time.sleep(max(0.0, self.seconds - self.config.spin_us / 1e6))
        while time.perf_counter() < deadline:
            pass
        return None

    def last_transfer_us(self) -> None:
        return None

    def outputs(self) -> np.ndarray:
        return self.result

    def close(self) -> None:
        return None
