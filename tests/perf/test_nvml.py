"""NVML telemetry: absent NVML means absent fields (the real library on a machine without a driver), and the
window summary of device readings."""

from __future__ import annotations

import pytest

from harness.nvml import DeviceSample, NvmlSampler, device_info, device_telemetry, nvml_handle


def test_without_a_driver_nvml_gives_nothing_rather_than_zeros() -> None:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pytest.skip("this machine has an NVIDIA driver")
    assert nvml_handle(0) is None and device_info(0) == {}
    assert NvmlSampler.open("cuda:0") is None and NvmlSampler.open("cpu") is None


def reading(
    at: float, utilization: float, power: float | None, memory: float = 1000.0, temp: float = 50.0
) -> DeviceSample:
    return DeviceSample(
        at=at,
        utilization_pct=utilization,
        memory_used_mb=memory,
        power_w=power,
        temperature_c=temp,
        sm_clock_mhz=1980.0,
    )


def test_the_window_summary_uses_only_readings_inside_it() -> None:
    samples = [
        reading(0.95, 0.0, 60.0),  # before the window: idle
        reading(1.0, 90.0, 300.0, memory=2000.0, temp=60.0),
        reading(1.5, 100.0, 500.0, memory=3000.0, temp=70.0),
        reading(2.0, 80.0, 400.0, memory=2500.0, temp=65.0),
        reading(2.05, 0.0, 60.0, memory=9000.0, temp=90.0),  # after it
    ]
    telemetry = device_telemetry(samples, start=1.0, end=2.0, throughput_qps=2000.0)
    assert telemetry is not None and telemetry.source == "nvml" and telemetry.samples == 3
    assert telemetry.ai_utilize_pct == pytest.approx(90.0)
    assert telemetry.card_power_w == pytest.approx(400.0)
    assert telemetry.die_memory_used_mb == 3000.0 and telemetry.temperature_c == 70.0
    assert telemetry.images_per_joule == pytest.approx(2000.0 / 400.0)
    assert telemetry.sm_clock_mhz == pytest.approx(1980.0)


def test_a_board_without_a_power_sensor_reports_no_power_and_no_energy_figure() -> None:
    telemetry = device_telemetry([reading(1.0, 50.0, None)], start=0.5, end=1.5, throughput_qps=100.0)
    assert telemetry is not None and telemetry.card_power_w is None and telemetry.images_per_joule is None
    assert device_telemetry([reading(3.0, 50.0, 10.0)], start=0.5, end=1.5, throughput_qps=100.0) is None


def test_a_cuda_index_goes_through_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pytest.skip("needs an NVIDIA driver")
    count = pynvml.nvmlDeviceGetCount()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", str(count - 1))
    found = nvml_handle(0)
    assert found is not None
    assert pynvml.nvmlDeviceGetIndex(found[1]) == count - 1
