"""NVIDIA device telemetry through NVML (``nvidia-ml-py``, the optional ``gpu`` extra).

A thread of the harness process samples the device every ``SAMPLE_INTERVAL_S`` while the perf workers run, in
the fields vamp prints for its device (``ai utilize (%)``, ``die memory used (MB)``, ``card power (W)``,
``temperature (°C)``) plus the SM clock. Without the library, without a driver or without the device, the
functions here return ``None`` / ``{}``: the fields are then absent from the result, never zero.

NVML numbers devices as the driver does and ignores ``CUDA_VISIBLE_DEVICES``; ``nvml_handle`` maps CUDA's
index through it (indices or ``GPU-`` UUIDs), so the sampled device is the one the backend ran on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.result.perf import DeviceTelemetry

log = logging.getLogger(__name__)

# 20 Hz, as the host sampler; NVML's utilisation counter itself averages over 1/6 s to 1 s depending on the GPU.
SAMPLE_INTERVAL_S = 0.05


def _initialised() -> Any | None:
    """The ``pynvml`` module with NVML initialised, or ``None`` (library, driver or device absent)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as error:
        log.debug("NVML unavailable: %s", error)
        return None
    return pynvml


def nvml_handle(cuda_index: int) -> tuple[Any, Any] | None:
    """(pynvml, device handle) of CUDA device ``cuda_index`` as this process sees it, or ``None``."""
    nvml = _initialised()
    if nvml is None:
        return None
    visible = [part.strip() for part in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    try:
        if not visible:
            return nvml, nvml.nvmlDeviceGetHandleByIndex(cuda_index)
        chosen = visible[cuda_index]
        if chosen.startswith(("GPU-", "MIG-")):
            return nvml, nvml.nvmlDeviceGetHandleByUUID(chosen)
        return nvml, nvml.nvmlDeviceGetHandleByIndex(int(chosen))
    except (IndexError, ValueError, nvml.NVMLError) as error:
        log.warning("NVML: no handle for CUDA device %d (CUDA_VISIBLE_DEVICES=%s): %s", cuda_index, visible, error)
        return None


def device_info(cuda_index: int) -> dict[str, object]:
    """Name, driver, the driver's CUDA version and the maximum clocks of CUDA device ``cuda_index`` ({} without
    NVML): what the run's tags say about the accelerator."""
    found = nvml_handle(cuda_index)
    if found is None:
        return {}
    nvml, handle = found
    cuda = nvml.nvmlSystemGetCudaDriverVersion()
    return {
        "device_name": _text(nvml.nvmlDeviceGetName(handle)),
        "driver": _text(nvml.nvmlSystemGetDriverVersion()),
        "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}",
        "sm_clock_max_mhz": int(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_SM)),
        "memory_clock_max_mhz": int(nvml.nvmlDeviceGetMaxClockInfo(handle, nvml.NVML_CLOCK_MEM)),
    }


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class DeviceSample:
    """One reading of the device at ``at`` (perf_counter seconds)."""

    at: float
    utilization_pct: float
    memory_used_mb: float
    power_w: float | None
    temperature_c: float
    sm_clock_mhz: float


class NvmlSampler:
    """Samples one device (``nvml``: the initialised module, ``handle``: the device's) from ``start`` until
    ``stop`` (the sampler protocol of the host one)."""

    def __init__(self, nvml: Any, handle: Any, interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.nvml, self.handle = nvml, handle
        self.interval_s = interval_s
        self.samples: list[DeviceSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, device: str) -> NvmlSampler | None:
        """A sampler for a backend's ``device`` (``cuda``, ``cuda:N``), or ``None`` (not CUDA, or no NVML)."""
        if not device.startswith("cuda"):
            return None
        found = nvml_handle(int(device.partition(":")[2] or 0))
        return None if found is None else cls(*found)

    def start(self, pids: Sequence[int]) -> None:
        """Start sampling (``pids`` are the workers': NVML reads the whole device, whoever uses it)."""
        self._thread = threading.Thread(target=self._sample, name="nvml-telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _sample(self) -> None:
        nvml, handle = self.nvml, self.handle
        while not self._stop.wait(self.interval_s):
            power_w = None
            with contextlib.suppress(nvml.NVMLError):  # boards without a power sensor
                power_w = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
            self.samples.append(
                DeviceSample(
                    at=time.perf_counter(),
                    utilization_pct=float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                    memory_used_mb=nvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20,
                    power_w=power_w,
                    temperature_c=float(nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)),
                    sm_clock_mhz=float(nvml.nvmlDeviceGetClockInfo(handle, nvml.NVML_CLOCK_SM)),
                )
            )


def device_telemetry(
    samples: Sequence[DeviceSample], *, start: float, end: float, throughput_qps: float
) -> DeviceTelemetry | None:
    """The samples taken in [start, end] summarised as vamp reports its device: mean utilisation and power,
    peak memory and temperature, and images per joule (throughput / mean power). ``None`` without a sample."""
    inside = [sample for sample in samples if start <= sample.at <= end]
    if not inside:
        return None
    powers = [sample.power_w for sample in inside if sample.power_w is not None]
    power_w = float(np.mean(powers)) if powers else None
    return DeviceTelemetry(
        ai_utilize_pct=float(np.mean([sample.utilization_pct for sample in inside])),
        die_memory_used_mb=max(sample.memory_used_mb for sample in inside),
        card_power_w=power_w,
        temperature_c=max(sample.temperature_c for sample in inside),
        images_per_joule=throughput_qps / power_w if power_w else None,
        source="nvml",
        sm_clock_mhz=float(np.mean([sample.sm_clock_mhz for sample in inside])),
        samples=len(inside),
    )
