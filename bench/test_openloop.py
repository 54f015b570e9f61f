"""Open-loop truth: the harness's server scenario against queueing theory on the very arrivals it used.

The ``sleep`` backend is a single server with a near-deterministic service time D (measured in the same run:
the mean model time of its calls, so ``time.sleep``'s overshoot is accounted for). For the seeded Poisson
arrivals the harness scheduled, Lindley's recursion gives the waits a perfect single FIFO server would have,
W[n+1] = max(0, W[n] + D - A[n+1]), latency W + D. The measured mean and p90 must agree with it within 5%,
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

SERVICE_US = 2000.0
REQUESTS = 5000
BOUND_MS = 10.0


def server_config(tmp_path: Path, *overrides: str) -> RunConfig:
    return resolve_config(
        compose(
            ["debug=tiny", "backend=sleep", f"backend.latency_us={SERVICE_US}", "stages=[perf]",
             f"paths.cache={tmp_path / 'cache'}", f"paths.outputs={tmp_path / 'outputs'}", "perf.scenario=server",
             "perf.min_duration_s=0", "perf.iterations=null", "perf.warmup=20", *overrides]
        )
    )  # fmt: skip


def lindley_latency_s(arrivals: np.ndarray, service_s: float) -> np.ndarray:
    """Latency (wait + service) of each request at a perfect single FIFO server with service ``service_s``."""
    gaps = np.diff(arrivals)
    waits = np.zeros(len(arrivals))
    for index, gap in enumerate(gaps):
        waits[index + 1] = max(0.0, waits[index] + service_s - gap)
    return waits + service_s


@pytest.mark.parametrize("utilisation", [0.5, 0.8])
def test_server_latency_matches_lindley_and_md1(benchmark, tmp_path: Path, utilisation: float) -> None:
    # The rate is set from the nominal service time; the truth uses the one measured in the same run.
    rate = utilisation / (SERVICE_US / 1e6)
    config = server_config(tmp_path, f"perf.target_qps={rate}", f"perf.min_samples={REQUESTS}")
    result = benchmark.pedantic(run_perf, args=(config,), kwargs={"artifact_path": None, "run_dir": tmp_path}, rounds=1)
    saved = np.load(tmp_path / "perf_samples.npz")
    measured_ms, model_us = saved["repeat0_e2e_us"] / 1e3, saved["repeat0_model_us"]
    service_s = float(model_us.mean()) / 1e6
    arrivals = poisson_arrivals(rate, REQUESTS, config.perf.arrival_seed)
    truth_ms = lindley_latency_s(arrivals, service_s) * 1e3
    rho = rate * service_s
    md1_ms = (service_s + rho * service_s / (2 * (1 - rho))) * 1e3
    table = {
        "measured": (measured_ms.mean(), np.percentile(measured_ms, 90)),
        "lindley": (truth_ms.mean(), np.percentile(truth_ms, 90)),
    }
    benchmark.extra_info.update({"rho": rho, "service_ms": service_s * 1e3, "md1_mean_ms": md1_ms, **table})
    print(
        f"\nrho {rho:.3f} (D {service_s * 1e3:.3f} ms): mean / p90 ms measured {table['measured'][0]:.3f} / "
        f"{table['measured'][1]:.3f}, Lindley {table['lindley'][0]:.3f} / {table['lindley'][1]:.3f}, M/D/1 mean {md1_ms:.3f}"
    )
    assert result.samples == REQUESTS
    assert table["measured"][0] == pytest.approx(table["lindley"][0], rel=0.05)
    assert table["measured"][1] == pytest.approx(table["lindley"][1], rel=0.05)
    assert table["measured"][0] == pytest.approx(md1_ms, rel=0.10)


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
