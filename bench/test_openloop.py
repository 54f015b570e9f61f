"""Open-loop truth: the harness's server scenario against queueing theory on the very arrivals it used.

The ``sleep`` backend is a single server with a near-deterministic service time D (measured: a short closed
loop sets the rate for the utilisation asked for, and the measured run's own per-call times are the service
times, so ``time.sleep``'s overshoot and jitter are accounted for). For the seeded Poisson arrivals the harness
scheduled, Lindley's recursion gives the waits a perfect single FIFO server would have,
W[n+1] = max(0, W[n] + S[n] - A[n+1]), latency W + S (S[n] = D for M/D/1). The measured mean and p90 must agree with it within 5%,
and the mean with the M/D/1 formula D + rho D / (2 (1 - rho)) within 10%, at utilisation 0.5 and 0.8.
The peak-rate search must land within 5% of the rate at which the same recursion, on the same seeded
arrivals, puts p99 at the bound.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from harness.config.schema import RunConfig
from harness.perf.openloop import poisson_arrivals
from harness.perf.stage import run_perf
from harness.resolve import resolve_config
from tests.conftest import compose

# The load generator's own steps between one call's return and the next call (about 10-15 us here, more the
# longer the call ran: the loop's cache lines are evicted meanwhile on this shared VM) lengthen every queued
# request's service; queueing at utilisation 0.8 amplifies that about fivefold. A 5 ms service time keeps it near
# 0.3% of D, so what is compared with the theory is the harness's accounting rather than this VM's cache misses
# (a 2 ms service time put the p90 4-5% above Lindley, the peak search 5-8% low). The lateness itself is
# measured per call (perf.dispatch_delay_us) and checked exactly below.
SERVICE_US = 5000.0
# The reference server spins the end of each call, so it returns on time with its thread awake: a thread woken
# from sleep runs its next steps slowly on this VM, and those steps are the load generator's, not the server's.
SPIN_US = 500.0
REQUESTS = 5000
BOUND_MS = 25.0  # 5 D, as a serving bound is a few service times


def server_config(tmp_path: Path, *overrides: str) -> RunConfig:
    return resolve_config(
        compose(
            ["debug=tiny", "backend=sleep", f"backend.latency_us={SERVICE_US}", f"backend.spin_us={SPIN_US}",
             "stages=[perf]",
             f"paths.cache={tmp_path / 'cache'}", f"paths.outputs={tmp_path / 'outputs'}", "perf.scenario=server",
             "perf.min_duration_s=0", "perf.iterations=null", "perf.warmup=20", *overrides]
        )
    )  # fmt: skip


def lindley_latency_s(arrivals: np.ndarray, service_s: float | np.ndarray) -> np.ndarray:
    """Latency (wait + service) of each request at a perfect single FIFO server whose service times are
    ``service_s`` (one for all requests, or one per request)."""
    service = np.broadcast_to(np.asarray(service_s, dtype=np.float64), arrivals.shape)
    gaps = np.diff(arrivals)
    waits = np.zeros(len(arrivals))
    for index, gap in enumerate(gaps):
        waits[index + 1] = max(0.0, waits[index] + service[index] - gap)
    return waits + service


def service_time_s(tmp_path: Path) -> float:
    """The sleep backend's real mean call time here (``time.sleep`` overshoots), from a short closed loop."""
    config = server_config(tmp_path, "perf.scenario=closed", "perf.min_samples=300")
    return run_perf(config, artifact_path=None, run_dir=tmp_path / "service").latency_us.model.avg / 1e6


MEASURED: dict[float, tuple[dict[str, tuple[float, float]], float]] = {}


def measured_against_truth(tmp_path: Path, utilisation: float, benchmark=None) -> tuple[dict, float]:
    """Mean and p90 (ms) of the measurement, Lindley on its arrivals and service times, and Lindley with the
    measured dispatch delays added; and the M/D/1 mean. Measured once per utilisation per session."""
    if utilisation in MEASURED:
        return MEASURED[utilisation]
    # The rate comes from the service time measured just before; the truth uses the per-call service times of
    # the measured run itself (its mean is the D of the M/D/1 formula).
    rate = utilisation / service_time_s(tmp_path)
    config = server_config(tmp_path, f"perf.target_qps={rate}", f"perf.min_samples={REQUESTS}")
    if benchmark is not None:
        result = benchmark.pedantic(
            run_perf, args=(config,), kwargs={"artifact_path": None, "run_dir": tmp_path}, rounds=1
        )
    else:
        result = run_perf(config, artifact_path=None, run_dir=tmp_path)
    assert result.samples == REQUESTS
    saved = np.load(tmp_path / "perf_samples.npz")
    measured_ms, model_us = saved["repeat0_e2e_us"] / 1e3, saved["repeat0_model_us"]
    delay_us = saved["repeat0_dispatch_delay_us"]  # batch 1: one call per request
    service_s = float(model_us.mean()) / 1e6
    arrivals = poisson_arrivals(rate, REQUESTS, config.perf.arrival_seed)
    truth_ms = lindley_latency_s(arrivals, model_us / 1e6) * 1e3
    constant_ms = lindley_latency_s(arrivals, service_s) * 1e3
    # The accounting check: the same server had it also paid the load generator's measured lateness.
    with_delay_ms = lindley_latency_s(arrivals, (model_us + delay_us) / 1e6) * 1e3
    rho = rate * service_s
    md1_ms = (service_s + rho * service_s / (2 * (1 - rho))) * 1e3
    table = {
        name: (float(values.mean()), float(np.percentile(values, 90)))
        for name, values in (
            ("measured", measured_ms), ("lindley", truth_ms), ("lindley_constant_d", constant_ms),
            ("lindley_plus_dispatch_delay", with_delay_ms),
        )
    }  # fmt: skip
    if benchmark is not None:
        benchmark.extra_info.update({"rho": rho, "service_ms": service_s * 1e3, "md1_mean_ms": md1_ms, **table})
    print(
        f"\nrho {rho:.3f} (D {service_s * 1e3:.3f} ms): mean / p90 ms measured {table['measured'][0]:.3f} / "
        f"{table['measured'][1]:.3f}, Lindley {table['lindley'][0]:.3f} / {table['lindley'][1]:.3f} (constant D "
        f"{table['lindley_constant_d'][0]:.3f} / {table['lindley_constant_d'][1]:.3f}), M/D/1 mean {md1_ms:.3f}; "
        f"dispatch delay mean {delay_us.mean():.1f} us, p99 {np.percentile(delay_us, 99):.0f} us, Lindley with it "
        f"{table['lindley_plus_dispatch_delay'][0]:.3f} / {table['lindley_plus_dispatch_delay'][1]:.3f}"
    )
    MEASURED[utilisation] = (table, md1_ms)
    return table, md1_ms


@pytest.mark.parametrize("utilisation", [0.5, 0.8])
def test_server_latency_accounting_is_exact_and_near_md1(benchmark, tmp_path: Path, utilisation: float) -> None:
    table, md1_ms = measured_against_truth(tmp_path, utilisation, benchmark)
    assert table["measured"][0] == pytest.approx(table["lindley_plus_dispatch_delay"][0], rel=0.01)
    assert table["measured"][1] == pytest.approx(table["lindley_plus_dispatch_delay"][1], rel=0.01)
    assert table["measured"][0] == pytest.approx(md1_ms, rel=0.10)


@pytest.mark.parametrize("utilisation", [0.5, 0.8])
def test_server_latency_matches_lindley(tmp_path: Path, utilisation: float) -> None:
    table, _ = measured_against_truth(tmp_path, utilisation)
    assert table["measured"][0] == pytest.approx(table["lindley"][0], rel=0.05)
    assert table["measured"][1] == pytest.approx(table["lindley"][1], rel=0.05)


def test_peak_search_lands_where_lindley_puts_p99_at_the_bound(benchmark, tmp_path: Path) -> None:
    requests = 2000
    config = server_config(
        tmp_path, "perf.search=peak", "perf.target_qps=100", f"perf.latency_bound_ms={BOUND_MS}",
        f"perf.min_samples={requests}", "perf.search_tolerance=0.02", "perf.max_probes=12",
    )  # fmt: skip
    result = benchmark.pedantic(run_perf, args=(config,), kwargs={"artifact_path": None, "run_dir": tmp_path}, rounds=1)
    saved = np.load(tmp_path / "perf_samples.npz")
    service_s = float(np.concatenate([saved[name] for name in saved.files if name.endswith("_model_us")]).mean()) / 1e6

    def p99_ms(rate: float) -> float:
        latency = lindley_latency_s(poisson_arrivals(rate, requests, config.perf.arrival_seed), service_s)
        return float(np.percentile(latency * 1e3, 99, method="higher"))

    low, high = 1.0, 1 / service_s  # p99 at the bound lies between no load and saturation
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if p99_ms(middle) <= BOUND_MS else (low, middle)
    print(
        f"\npeak search {result.peak_qps} img/s after {len(result.probes)} probes; Lindley on the same arrivals "
        f"(D {service_s * 1e3:.3f} ms): {low:.1f} img/s"
    )
    benchmark.extra_info.update({"peak_qps": result.peak_qps, "lindley_qps": low, "probes": len(result.probes)})
    assert result.peak_qps is not None
    assert result.peak_qps == pytest.approx(low, rel=0.05)
