"""Calibration of the regression gate's decision rule (``harness.gate.decide``) on this machine.

1. **Noise models.** Throughput repeats (each in fresh processes, as ``perf.repeats`` runs them) of the
   ``sleep`` backend and of the tiny ONNX model are measured here; the repeat-to-repeat spread (the standard
   deviation of log throughput) is the noise model. 10,000 synthetic trials per scenario, 5 repeats a side,
   drawn from that model:
   - A/A (no change): **fail** <= 1%;
   - a 20% slowdown: **fail** >= 95%;
   - a 5% slowdown with a 3% threshold: **pass** <= 1% (a real regression is never waved through).
2. **Real runs.** From measured repeats of the same config (A/A) and of a slowed config (the sleep backend
   with a 25% longer service time: 20% less throughput; the tiny model at 252x252 instead of 224x224, whose
   slowdown is measured and printed), 20 trials each, 5 repeats a side, windows sliding by one repeat so that
   no repeat is used twice within a trial:
   no A/A trial fails, and at least 19 of 20 slowdowns fail. The two configs' repeats are taken in turn, so
   that this VM's drift (+-15% over seconds) does not fall on one side only.

The measured rates and the wall time per decision are printed as a table. ``make bench`` runs it.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from harness.config.commands import GateConfig, GateRule
from harness.config.schema import RunConfig
from harness.gate.decide import decide
from harness.perf.stage import run_perf
from harness.resolve import resolve_config
from tests.conftest import compose

SETTINGS = GateConfig(
    rules={}, min_repeats=5, alpha=0.01, confidence=0.95, bootstrap_resamples=4000, seed=0, max_other_load_pct=10.0
)
SYNTHETIC_TRIALS = 10_000
REAL_TRIALS = 20
A_SIDE = 5
SLEEP = ["backend=sleep", "stages=[perf]"]
ONNX = ["stages=[build,perf]"]
SYSTEMS = {
    "sleep": ([*SLEEP, "backend.latency_us=2000"], [*SLEEP, "backend.latency_us=2500"]),
    "tiny onnx": (ONNX, [*ONNX, "model.input_size=[252,252]"]),
}


def config_and_artifact(cache: Path, run_dir: Path, overrides: list[str]) -> tuple[RunConfig, str | None]:
    """One repeat of ``overrides`` per ``run_perf`` call (fresh worker processes each), its artifact built once."""
    from harness.export.stage import build_artifact
    from harness.models.variants import get_variant
    from harness.models.weights import load_backbone

    config = resolve_config(
        compose(
            ["debug=tiny", f"paths.cache={cache}", f"paths.outputs={run_dir}", "perf.iterations=null",
             "perf.min_duration_s=0.5", "perf.repeats=1", *overrides]
        )
    )  # fmt: skip
    if "build" not in config.stages:
        return config, None
    model, weights = load_backbone(
        get_variant(config.model.variant), weights="random", seed=0, cache_dir=Path(cache),
        input_size=config.model.input_size, progress=False,
    )  # fmt: skip
    return config, build_artifact(config, model, weights).artifact_path


def interleaved_repeats(
    cache: Path, folder: Path, same: list[str], slowed: list[str], counts: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Throughput repeats of a config and of its slowed variant, taken in turn so that the machine's drift
    falls on both sides alike."""
    names = ("same", "slowed")
    sides = [
        config_and_artifact(cache, folder / name, overrides)
        for name, overrides in zip(names, (same, slowed), strict=True)
    ]
    found: tuple[list[float], list[float]] = ([], [])
    for index in range(max(counts)):
        for side, (config, artifact) in enumerate(sides):
            if index < counts[side]:
                perf = run_perf(config, artifact_path=artifact, run_dir=folder / names[side])
                found[side].append(perf.throughput_qps)
    return np.asarray(found[0]), np.asarray(found[1])


def rates(baseline: np.ndarray, candidate: np.ndarray, rule: GateRule) -> dict[str, float]:
    outcomes = [
        decide("throughput_qps", rule, tuple(b), tuple(c), SETTINGS).outcome
        for b, c in zip(baseline, candidate, strict=True)
    ]
    return {outcome: outcomes.count(outcome) / len(outcomes) for outcome in ("pass", "fail", "inconclusive")}


@pytest.fixture(scope="module")
def measurements(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per system: 30 repeats of the config and 25 of the slowed config (about 3 minutes in all)."""
    cache = tmp_path_factory.mktemp("calibration-cache")
    found = {}
    for name, (same, slowed) in SYSTEMS.items():
        folder = tmp_path_factory.mktemp(name.replace(" ", "-"))
        found[name] = interleaved_repeats(cache, folder, same, slowed, (REAL_TRIALS + 2 * A_SIDE, REAL_TRIALS + A_SIDE))
    return found


def test_the_decision_rule_on_noise_fitted_to_this_machine(
    measurements: dict[str, tuple[np.ndarray, np.ndarray]],
) -> None:
    rng = np.random.default_rng(0)
    missed: list[str] = []
    lines = [
        "| system | repeat CV | A/A fail | 20% slower: fail | 5% slower, 3% threshold: pass | ms per decision |",
        "|---|---|---|---|---|---|",
    ]
    for name, (same, _) in measurements.items():
        sigma = float(np.std(np.log(same), ddof=1))

        def draw(scale: float) -> np.ndarray:
            return scale * rng.lognormal(0.0, sigma, (SYNTHETIC_TRIALS, A_SIDE))  # noqa: B023 - used at once

        started = time.perf_counter()
        aa = rates(draw(1.0), draw(1.0), GateRule(kind="perf", better="higher", threshold=0.05, scenarios=None))
        slower = rates(draw(1.0), draw(0.8), GateRule(kind="perf", better="higher", threshold=0.05, scenarios=None))
        slight = rates(draw(1.0), draw(0.95), GateRule(kind="perf", better="higher", threshold=0.03, scenarios=None))
        per_decision_ms = (time.perf_counter() - started) / (3 * SYNTHETIC_TRIALS) * 1000
        lines.append(
            f"| {name} | {sigma:.4f} | {aa['fail']:.2%} | {slower['fail']:.2%} | {slight['pass']:.2%} | {per_decision_ms:.2f} |"
        )
        if not (aa["fail"] <= 0.01 and slower["fail"] >= 0.95 and slight["pass"] <= 0.01):
            missed.append(name)
            needed = repeats_needed(sigma, rng)
            lines.append(
                f"| {name}: repeats a side that catch a 20% slowdown 95% of the time here | {needed} | | | | |"
            )
    print("\n" + "\n".join(lines))
    assert not missed, f"targets missed for {missed}"


def repeats_needed(sigma: float, rng: np.random.Generator, trials: int = 2000) -> str:
    """The fewest repeats a side (of a few candidates) whose 20%-slowdown fail rate reaches 95% at this noise."""
    rule = GateRule(kind="perf", better="higher", threshold=0.05, scenarios=None)
    for repeats in (10, 20, 30, 50, 80):
        baseline = rng.lognormal(0.0, sigma, (trials, repeats))
        candidate = 0.8 * rng.lognormal(0.0, sigma, (trials, repeats))
        if rates(baseline, candidate, rule)["fail"] >= 0.95:
            return str(repeats)
    return "> 80"


def test_the_gate_on_real_repeats(measurements: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    rule = GateRule(kind="perf", better="higher", threshold=0.05, scenarios=None)
    missed: list[str] = []
    lines = ["| system | measured slowdown | A/A fail (of 20) | slowdown fail (of 20) |", "|---|---|---|---|"]
    for name, (same, slowed) in measurements.items():
        # Trial k: the baseline is repeats k..k+4; the A/A candidate the next five; the slowed candidate repeats
        # k..k+4 of the slowed config. Windows slide by one, so no repeat is used twice within a trial.
        aa = [decide("throughput_qps", rule, tuple(same[k : k + A_SIDE]), tuple(same[k + A_SIDE : k + 2 * A_SIDE]), SETTINGS)
              for k in range(REAL_TRIALS)]  # fmt: skip
        slow = [decide("throughput_qps", rule, tuple(same[k : k + A_SIDE]), tuple(slowed[k : k + A_SIDE]), SETTINGS)
                for k in range(REAL_TRIALS)]  # fmt: skip
        aa_fails = sum(decision.outcome == "fail" for decision in aa)
        caught = sum(decision.outcome == "fail" for decision in slow)
        slowdown = 1 - float(np.median(slowed) / np.median(same))
        lines.append(f"| {name} | {slowdown:.1%} | {aa_fails} | {caught} |")
        if not (aa_fails == 0 and caught >= 19):
            missed.append(name)
    print("\n" + "\n".join(lines))
    assert not missed, f"targets missed for {missed}"
