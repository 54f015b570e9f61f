"""The gate's decision rule on synthetic repeats: regressions fail, equals pass, overlap is inconclusive."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from harness.config.commands import GateConfig, GatedLoad, GateRule
from harness.config.perf import Scenario
from harness.errors import ConfigError
from harness.gate import markdown, pair, run_gate
from harness.gate.decide import decide
from harness.gate.evidence import Evidence, config_difference

SETTINGS = GateConfig(
    rules={}, min_repeats=5, alpha=0.01, confidence=0.95, bootstrap_resamples=4000, seed=0, max_other_load_pct=10.0
)
THROUGHPUT = GateRule(kind="perf", better="higher", threshold=0.05, scenarios=None)
LATENCY = GateRule(kind="perf", better="lower", threshold=0.05, scenarios=None)


def noisy(center: float, repeats: int = 5, cv: float = 0.01, seed: int = 0) -> tuple[float, ...]:
    return tuple(center * np.random.default_rng(seed).lognormal(0.0, cv, repeats))


def test_a_clear_regression_fails_in_either_direction() -> None:
    slower = decide("throughput_qps", THROUGHPUT, noisy(100.0), noisy(80.0, seed=1), SETTINGS)
    assert slower.outcome == "fail" and slower.p_value is not None and slower.p_value < 0.01
    assert (
        slower.interval is not None and slower.interval[1] < 1 / 1.05 and slower.change == pytest.approx(0.8, abs=0.02)
    )
    later = decide("e2e_latency_p50_ms", LATENCY, noisy(10.0), noisy(12.5, seed=1), SETTINGS)
    assert later.outcome == "fail" and later.interval is not None and later.interval[0] > 1.05


def test_identical_distributions_pass_and_so_does_an_improvement_which_says_so() -> None:
    same = decide("throughput_qps", THROUGHPUT, noisy(100.0), noisy(100.0, seed=1), SETTINGS)
    assert same.outcome == "pass" and same.reason == "interval clear of a 5% regression"
    faster = decide("throughput_qps", THROUGHPUT, noisy(100.0), noisy(130.0, seed=1), SETTINGS)
    assert faster.outcome == "pass" and faster.reason.startswith("improved: interval wholly better than the baseline")
    sooner = decide("e2e_latency_p50_ms", LATENCY, noisy(10.0), noisy(7.0, seed=1), SETTINGS)
    assert sooner.outcome == "pass" and sooner.reason.startswith("improved")


def test_overlapping_noisy_samples_are_inconclusive() -> None:
    decision = decide("throughput_qps", THROUGHPUT, noisy(100.0, cv=0.08), noisy(94.0, cv=0.08, seed=1), SETTINGS)
    assert decision.outcome == "inconclusive" and "straddles" in decision.reason


def test_too_few_repeats_is_inconclusive_whatever_the_numbers() -> None:
    decision = decide("throughput_qps", THROUGHPUT, noisy(100.0, repeats=3), noisy(50.0, repeats=5), SETTINGS)
    assert decision.outcome == "inconclusive" and decision.reason == "needs >= 5 repeats a side to decide, has 3 and 5"
    assert decision.p_value is None and decision.interval is None


@pytest.mark.parametrize(("candidate", "outcome"), [(74.5, "pass"), (74.0, "pass"), (73.99, "fail"), (80.0, "pass")])
def test_accuracy_tolerance_edges(candidate: float, outcome: str) -> None:
    rule = GateRule(kind="accuracy", better="higher", threshold=0.5, scenarios=None)
    decision = decide("map_medium", rule, (74.5,), (candidate,), SETTINGS)
    assert decision.outcome == outcome and decision.change == pytest.approx(candidate - 74.5)


PARITY = GateRule(kind="parity", better="higher", threshold=1e-4, scenarios=None)


def test_parity_may_not_drop_by_more_than_its_tolerance() -> None:
    assert decide("parity_min_cos", PARITY, (0.99999,), (0.99990,), SETTINGS).outcome == "pass"
    assert decide("parity_min_cos", PARITY, (0.99999,), (0.9998,), SETTINGS).outcome == "fail"


def evidence(metrics: dict[str, tuple[float, ...]], *, fingerprint: str = "machine", config: str = "cfg") -> Evidence:
    return Evidence(label="run", config_hash=config, hardware_fingerprint=fingerprint, metrics=metrics)


def test_pairing_needs_a_baseline_on_the_same_hardware_unless_allowed() -> None:
    settings = GateConfig(**{**SETTINGS.__dict__, "rules": {"throughput_qps": THROUGHPUT}})
    candidate = evidence({"throughput_qps": noisy(100.0)})
    other_machine = evidence({"throughput_qps": noisy(100.0, seed=1)}, fingerprint="elsewhere")
    refused = pair(candidate, [other_machine], settings, allow_hardware_mismatch=False)
    assert refused.verdict == "unusable" and "no baseline measured on this hardware" in refused.problems[0]
    allowed = pair(candidate, [other_machine], settings, allow_hardware_mismatch=True)
    assert allowed.verdict == "pass" and "hardware differs" in allowed.notes[0]
    assert pair(candidate, [], settings, allow_hardware_mismatch=False).problems == (
        "no baseline for config hash cfg: there is no baseline at all: promote the reference runs with --promote",
    )
    missing = pair(evidence({}), [candidate], settings, allow_hardware_mismatch=False)
    assert missing.verdict == "unusable" and missing.problems == (
        "metric throughput_qps missing in the candidate: it ran no perf stage (gate it against a baseline that ran "
        "the same stages)",
    )
    # A baseline promoted before the harness checked the torch module's parity has none: not "no build stage" alone.
    parity_rules = GateConfig(**{**SETTINGS.__dict__, "rules": {"parity_min_cos": PARITY}})
    older = pair(evidence({"parity_min_cos": (0.9999,)}), [evidence({})], parity_rules, allow_hardware_mismatch=False)
    assert older.verdict == "unusable" and older.problems == (
        "metric parity_min_cos missing in the baseline: it ran no build stage, or was measured by a harness that "
        "recorded no parity_min_cos for its backend (promote a baseline measured now with the candidate's stages)",
    )
    p99_rule = dataclasses.replace(THROUGHPUT, better="lower")
    with_p99 = GateConfig(**{**settings.__dict__, "rules": {**settings.rules, "e2e_latency_p99_ms": p99_rule}})
    full = evidence({"throughput_qps": noisy(100.0), "e2e_latency_p99_ms": (3.0,) * 5})
    withheld = pair(candidate, [full], with_p99, allow_hardware_mismatch=False)
    assert withheld.problems == (
        "metric e2e_latency_p99_ms missing in the candidate: withheld by that run (a percentile needs more samples "
        "than it measured)",
    )
    # Withheld on both sides, the rule decided nothing and the gate passed without a word.
    both = pair(
        candidate, [evidence({"throughput_qps": noisy(100.0, seed=3)})], with_p99, allow_hardware_mismatch=False
    )
    assert both.verdict == "pass" and both.problems == ()
    assert "e2e_latency_p99_ms not decided: withheld by both runs (a percentile needs more samples)" in both.notes
    assert not pair(evidence({}), [evidence({})], with_p99, allow_hardware_mismatch=False).notes  # no perf stage at all


def test_a_candidate_measured_beside_other_work_is_decided_and_said_to_be() -> None:
    settings = GateConfig(**{**SETTINGS.__dict__, "rules": {"throughput_qps": THROUGHPUT}})
    baseline = evidence({"throughput_qps": noisy(100.0)})
    slower = dataclasses.replace(
        evidence({"throughput_qps": noisy(60.0, seed=1)}),
        other_work={"other processes": 26.0, "hypervisor steal": 2.0},
    )
    pairing = pair(slower, [baseline], settings, allow_hardware_mismatch=False)
    assert pairing.verdict == "fail" and pairing.notes == (
        "measured beside other work (other processes up to 26% of the CPU in a repeat): a "
        "regression may be that work's",
    )
    assert pair(baseline, [baseline], settings, allow_hardware_mismatch=False).notes == ()
    # On a machine where that much is routine, the owner raises the limit: the note is then not made.
    tolerant = dataclasses.replace(settings, max_other_load_pct=30.0)
    assert pair(slower, [baseline], tolerant, allow_hardware_mismatch=False).notes == ()


def default_rules(*overrides: str) -> GateConfig:
    from harness.config.commands import GateCommandConfig
    from harness.config.store import command_config

    return command_config(GateCommandConfig, list(overrides), "gate").gate


def test_the_default_rules_decide_each_load_scenario_on_what_it_answers() -> None:
    settings = default_rules()

    def run(scenario: str | None, e2e_p50: float, e2e_p99: float | None) -> Evidence:
        metrics = {
            "throughput_qps": noisy(100.0),
            "model_latency_p50_ms": noisy(10.0),
            "e2e_latency_p50_ms": noisy(e2e_p50),
        }
        if e2e_p99 is not None:
            metrics["e2e_latency_p99_ms"] = noisy(e2e_p99, seed=1)
        return Evidence(
            "run", "cfg", "machine", metrics, config={} if scenario is None else {"perf.scenario": scenario}
        )

    def decided(scenario: str | None, base: Evidence, cand: Evidence) -> dict[str, str]:
        pairing = pair(cand, [base], settings, allow_hardware_mismatch=False)
        assert pairing.problems == () and pairing.notes == ()
        return {decision.metric: decision.outcome for decision in pairing.decisions}

    # A server is bounded by its p99: a tail that grew 30% at the same median and rate is a regression.
    assert decided("server", run("server", 20.0, 40.0), run("server", 20.0, 52.0)) == {
        "throughput_qps": "pass", "e2e_latency_p50_ms": "pass", "e2e_latency_p99_ms": "fail",
        "model_latency_p50_ms": "pass",
    }  # fmt: skip
    # An offline run's end-to-end latency is how long its queue took to drain: not a regression of the build.
    assert decided("offline", run("offline", 500.0, 990.0), run("offline", 800.0, 1500.0)) == {
        "throughput_qps": "pass", "model_latency_p50_ms": "pass",
    }  # fmt: skip
    # A closed loop withholds its p99 in short runs: no rule asks for it, so nothing is said of it.
    closed = {"throughput_qps": "pass", "e2e_latency_p50_ms": "pass", "model_latency_p50_ms": "pass"}
    assert decided("closed", run("closed", 10.0, None), run("closed", 10.0, None)) == closed
    assert decided(None, run(None, 10.0, None), run(None, 10.0, None)) == closed  # recorded before scenarios
    assert settings.rules["e2e_latency_p99_ms"].scenarios == ("server",)
    # A peak search answers its peak rate; each search's latencies are at a rate of its own, so a candidate whose
    # peak is 25% lower fails on that alone, and a higher p99 at its own best rate is not judged.
    searched = {"perf.scenario": "server", "perf.search": "peak"}
    base, cand = (
        Evidence("run", "cfg", "machine", {**run("server", 4.0, p99).metrics, "peak_qps": noisy(peak)}, config=searched)
        for p99, peak in ((8.0, 400.0), (9.5, 300.0))
    )  # fmt: skip
    assert decided("server", base, cand) == {"peak_qps": "fail"}
    unfound = [dataclasses.replace(side, metrics={"throughput_qps": noisy(100.0)}) for side in (base, cand)]
    assert pair(unfound[1], unfound[:1], settings, allow_hardware_mismatch=False).notes == (
        "peak_qps not decided: neither run's searches kept p99 within perf.latency_bound_ms",
    )
    # Such a run is invalid: with nothing ruled left to decide, it passed the gate.
    invalid = dataclasses.replace(unfound[1], perf_problem="invalid: no probe kept p99 within the bound")
    pairing = pair(invalid, unfound[:1], settings, allow_hardware_mismatch=False)
    assert pairing.verdict == "unusable" and pairing.problems == (
        "peak_qps: the candidate's perf is no evidence (invalid: no probe kept p99 within the bound)",
    )
    assert set(get_args(GatedLoad)) == {*get_args(Scenario), "peak"}
    # A rule added on the command line says which runs it decides (null: every run), as the YAML's do.
    added = default_rules("+gate.rules.model_latency_p99_ms={kind:perf,better:lower,threshold:0.1,scenarios:null}")
    assert added.rules["model_latency_p99_ms"].scenarios is None
    with pytest.raises(ConfigError, match=r"^gate.rules.model_latency_p99_ms.scenarios: missing required value"):
        default_rules("+gate.rules.model_latency_p99_ms={kind:perf,better:lower,threshold:0.1}")
    with pytest.raises(
        ConfigError, match=r"scenarios\[0\]='sever': expected one of \['closed', 'offline', 'peak', 'server'\]; did"
    ):
        default_rules("gate.rules.e2e_latency_p99_ms.scenarios=[sever]")
    with pytest.raises(ConfigError, match=r"scenarios=\[\]: expected the scenarios it decides, or null for every run"):
        default_rules("gate.rules.e2e_latency_p99_ms.scenarios=[]")


def test_a_value_that_is_not_a_number_is_unusable_not_within_tolerance() -> None:
    medium = GateRule(kind="accuracy", better="higher", threshold=0.5, scenarios=None)
    settings = GateConfig(**{**SETTINGS.__dict__, "rules": {"map_medium": medium, "throughput_qps": THROUGHPUT}})
    baseline = evidence({"map_medium": (60.0,), "throughput_qps": noisy(100.0)})
    scored_no_query = evidence({"map_medium": (float("nan"),), "throughput_qps": noisy(100.0, seed=1)})
    judged = pair(scored_no_query, [baseline], settings, allow_hardware_mismatch=False)
    assert judged.verdict == "unusable" and judged.problems == (
        "metric map_medium is not a number in the candidate (nan)",
    )
    assert [decision.metric for decision in judged.decisions] == ["throughput_qps"]
    against_nan = pair(baseline, [scored_no_query], settings, allow_hardware_mismatch=False)
    assert against_nan.problems == ("metric map_medium is not a number in the baseline (nan)",)


def configured(label: str, fingerprint: str = "machine", **settings: str) -> Evidence:
    return Evidence(label, "hash-" + label, fingerprint, {}, config={"model.variant": "vits14", **settings})


def test_a_candidate_without_a_baseline_is_told_how_it_differs_from_the_nearest() -> None:
    candidate = configured("candidate", **{"perf.batch": "8", "backend.intra_op_threads": "1"})
    near = configured("near", **{"perf.batch": "8", "backend.intra_op_threads": "2"})
    far = configured("far", **{"perf.batch": "1", "backend.intra_op_threads": "2"})
    elsewhere = configured("elsewhere", "other machine", **{"perf.batch": "8", "backend.intra_op_threads": "1"})
    assert (
        config_difference(candidate, [far, near]) == "nearest baseline near differs in backend.intra_op_threads: 2 -> 1"
    )
    assert config_difference(candidate, [elsewhere, far]).startswith("nearest baseline far differs in ")  # same machine
    assert config_difference(candidate, [elsewhere]) == ""  # the same settings: nothing to say
    absent = configured("absent", **{"perf.batch": "8"})
    assert config_difference(candidate, [absent]).endswith("backend.intra_op_threads: (absent) -> 1")
    # fp32's null quantization section against int8's settings: one change, not one per setting
    shared = {"perf.batch": "8", "backend.intra_op_threads": "1"}
    section = {"precision.quantization.mode": "static", "precision.quantization.per_channel": "True"}
    quantized = configured("quantized", **shared, **section)
    unquantized = configured("unquantized", **shared, **{"precision.quantization": "None"})
    assert config_difference(quantized, [unquantized]) == (
        "nearest baseline unquantized differs in precision.quantization: None -> {2 settings}"
    )
    many = configured("many", **{f"key{index}": "x" for index in range(6)})
    assert config_difference(candidate, [many]).endswith(", and 4 more")
    old = Evidence("old", "hash-old", "machine", {})
    assert "keep no settings to compare with" in config_difference(candidate, [old])
    assert config_difference(candidate, []) == "there is no baseline at all: promote the reference runs with --promote"
    problems = pair(candidate, [], SETTINGS, allow_hardware_mismatch=False, others=lambda: [near]).problems
    assert problems == ("no baseline for config hash hash-candidate: nearest baseline near differs in "
                        "backend.intra_op_threads: 2 -> 1",)  # fmt: skip


def test_a_run_that_did_not_end_ok_is_no_evidence_and_no_baseline(tmp_path: Path) -> None:
    from harness.errors import DataError
    from harness.gate.sources import write_baseline_file

    failed = dataclasses.replace(
        evidence({"throughput_qps": noisy(100.0)}), label="a", failure="the run ended failed: boom"
    )
    problems = pair(failed, [evidence({"throughput_qps": noisy(100.0)})], SETTINGS, allow_hardware_mismatch=False)
    assert problems.verdict == "unusable" and problems.problems == ("the run ended failed: boom",)
    invalid = dataclasses.replace(
        evidence({"throughput_qps": noisy(100.0)}), label="b", perf_problem="invalid: too short"
    )
    settings = GateConfig(**{**SETTINGS.__dict__, "rules": {"throughput_qps": THROUGHPUT}})
    judged = pair(invalid, [evidence({"throughput_qps": noisy(100.0)})], settings, allow_hardware_mismatch=False)
    assert judged.problems == ("throughput_qps: the candidate's perf is no evidence (invalid: too short)",)
    # A baseline slowed by other work would let a slower candidate pass.
    beside = {"other processes": 26.0, "hypervisor steal": 12.0}
    slowed = dataclasses.replace(evidence({"throughput_qps": noisy(100.0)}), label="c", other_work=beside)
    refused = (
        r"no other work over 10% of the CPU \(gate.max_other_load_pct\), can be a baseline, and 3 are not: a \(the "
        r"run ended failed: boom\); b \(invalid: too short\); c \(measured beside other work \(other processes up to "
        r"26%, hypervisor steal up to 12% of the CPU in a repeat\)\) \(promote the others"
    )
    with pytest.raises(DataError, match=refused):
        write_baseline_file(tmp_path / "baseline.json", [evidence({}), failed, invalid, slowed], max_other_load_pct=10)
    assert not (tmp_path / "baseline.json").exists()
    # A shared VM whose steal is routinely over 10%: the limit raised, the run measured beside 12% is a baseline,
    # and the one beside 26% is still not.
    with pytest.raises(DataError, match=r"over 20% of the CPU .* 1 is not: c \(measured beside other work \(other "):
        write_baseline_file(tmp_path / "baseline.json", [slowed], max_other_load_pct=20)
    write_baseline_file(tmp_path / "baseline.json", [slowed], max_other_load_pct=30)
    assert [entry["label"] for entry in json.loads((tmp_path / "baseline.json").read_text())["entries"]] == ["c"]


def test_an_inconclusive_candidate_is_remeasured_before_the_gate_settles() -> None:
    settings = GateConfig(**{**SETTINGS.__dict__, "rules": {"throughput_qps": THROUGHPUT}})
    baseline = evidence({"throughput_qps": noisy(100.0)})
    calls = []

    def rerun(candidate: Evidence, attempt: int) -> Evidence:
        calls.append(attempt)
        return evidence({"throughput_qps": noisy(100.0, repeats=2, seed=10 + attempt)})

    result = run_gate([evidence({"throughput_qps": noisy(100.0, repeats=3, seed=3)})], lambda _: [baseline], settings,
                      rerun=2, rerunner=rerun)  # fmt: skip
    assert calls == [1] and result.verdict == "pass" and result.exit_code == 0  # 3 + 2 repeats: decidable
    (decision,) = result.pairings[0].decisions
    assert decision.repeats == (5, 5)
    stuck = run_gate([evidence({"throughput_qps": noisy(100.0, repeats=2)})], lambda _: [baseline], settings, rerun=0)
    assert stuck.verdict == "inconclusive" and stuck.exit_code == 3


def test_a_baseline_with_too_few_repeats_is_not_rerun_against_and_says_what_to_do() -> None:
    settings = GateConfig(**{**SETTINGS.__dict__, "rules": {"throughput_qps": THROUGHPUT}})
    calls = []

    def rerun(candidate: Evidence, attempt: int) -> Evidence:
        calls.append(attempt)
        return evidence({"throughput_qps": noisy(100.0, repeats=5, seed=10 + attempt)})

    short_baseline = evidence({"throughput_qps": noisy(100.0, repeats=1)})
    result = run_gate([evidence({"throughput_qps": noisy(100.0, repeats=1, seed=3)})], lambda _: [short_baseline],
                      settings, rerun=3, rerunner=rerun)  # fmt: skip
    assert calls == [] and result.verdict == "inconclusive"  # reruns add to the candidate's side only
    assert result.pairings[0].notes == (
        "its baseline has 1 perf repeat and the gate needs >= 5 a side (gate.min_repeats): promote a baseline "
        "measured with perf.repeats=5 (--rerun re-measures the candidate only)",
    )
    full = run_gate(
        [evidence({"throughput_qps": noisy(100.0, repeats=5)})],
        lambda _: [evidence({"throughput_qps": noisy(100.0)})],
        settings,
    )
    assert full.pairings[0].notes == ()
    # A sweep's jobs against such baselines: the note once, naming them, where each job had a line of its own.
    jobs = [dataclasses.replace(evidence({"throughput_qps": noisy(100.0, repeats=1, seed=job)}), label=f"/sweep/{job}")
            for job in range(4)]  # fmt: skip
    sweep = run_gate(jobs, lambda _: [short_baseline], settings)
    notes = [line for line in markdown(sweep).splitlines() if line.startswith("- ")]
    assert notes == [f"- all 4 candidates: {result.pairings[0].notes[0]}"]
    unusable = dataclasses.replace(jobs[3], metrics={})
    notes = [line for line in markdown(run_gate([*jobs[:2], unusable], lambda _: [short_baseline], settings)).splitlines()
             if line.startswith("- ")]  # fmt: skip
    assert notes == [
        f"- 0, 1: {result.pairings[0].notes[0]}",
        "- 3: unusable: metric throughput_qps missing in the candidate: it ran no perf stage (gate it against a "
        "baseline that ran the same stages)",
    ]


def test_a_negative_bootstrap_seed_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"gate.seed=-1: expected a seed >= 0"):
        dataclasses.replace(SETTINGS, seed=-1)


def test_an_mlflow_run_is_judged_by_its_tagged_numbers_against_the_limit_and_an_older_one_by_its_note() -> None:
    from harness.gate.sources import _why_no_baseline  # what --promote reads of an MLflow run: its tags

    quiet = {"harness.status": "ok", "harness.perf_valid": "true", "harness.contended": "false"}
    numbers = {"harness.other_work_pct": json.dumps({"other processes": 1.0, "hypervisor steal": 18.0})}
    assert _why_no_baseline({**quiet, **numbers}, 10.0) == (
        "its perf was measured beside other work (hypervisor steal up to 18% of the CPU in a repeat)"
    )
    assert _why_no_baseline({**quiet, **numbers}, 25.0) == ""
    # Logged before the numbers were tagged: its note, made at the measurement's 10%, is all there is.
    note = {
        "harness.beside_other_work": "measured beside other work (hypervisor steal up to 18% of the CPU in a repeat)"
    }
    assert _why_no_baseline({**quiet, **note}, 25.0).startswith("its perf was measured beside other work")
    assert _why_no_baseline(quiet, 10.0) == ""
