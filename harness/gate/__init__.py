"""``harness gate``: does a candidate regress against its baseline? Statistics for perf, tolerances for the rest.

A candidate (a run folder, each job of a sweep folder, or an MLflow run) is paired with the baseline of the
same config hash on the same machine (``hardware.fingerprint``), from a committed baseline file or from
MLflow; every metric with a rule in the ``gate`` group is decided by ``harness.gate.decide``. The verdict:

- exit 0 **pass**, 1 **fail** (a regression), 3 **inconclusive** (perf needs more repeats or the interval
  straddles the threshold; ``--rerun N`` adds repeats first), 4 **unusable** input (no baseline, a metric
  missing on one side, fingerprints that differ without ``--allow-hardware-mismatch``); 2 is a usage error.
  A regression anywhere wins over a missing baseline elsewhere, which wins over inconclusive.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from harness.config.commands import GateConfig, gated_load
from harness.errors import HarnessError, counted, named
from harness.gate.decide import Decision, decide
from harness.gate.evidence import PEAK_METRIC, PERF_METRICS, Evidence, config_difference, evidence_of
from harness.report import FLOAT_FORMATS
from harness.result import load_result

log = logging.getLogger(__name__)

Verdict = Literal["pass", "fail", "inconclusive", "unusable"]
EXIT_CODES: dict[Verdict, int] = {"pass": 0, "fail": 1, "inconclusive": 3, "unusable": 4}
PRECEDENCE: tuple[Verdict, ...] = ("fail", "unusable", "inconclusive", "pass")
BaselineLookup = Callable[[str], list[Evidence]]


@dataclass(frozen=True)
class Pairing:
    """One candidate against its baseline: every metric's decision, or why it could not be compared."""

    candidate: Evidence
    baseline: Evidence | None
    decisions: tuple[Decision, ...]
    problems: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def verdict(self) -> Verdict:
        outcomes = {decision.outcome for decision in self.decisions}
        if "fail" in outcomes:
            return "fail"
        if self.problems:
            return "unusable"
        return "inconclusive" if "inconclusive" in outcomes else "pass"


@dataclass(frozen=True)
class GateResult:
    pairings: tuple[Pairing, ...]

    @property
    def verdict(self) -> Verdict:
        verdicts = {pairing.verdict for pairing in self.pairings}
        return next(verdict for verdict in PRECEDENCE if verdict in verdicts)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


def pair(
    candidate: Evidence, baselines: list[Evidence], settings: GateConfig, *, allow_hardware_mismatch: bool,
    others: Callable[[], list[Evidence]] = list,
) -> Pairing:  # fmt: skip
    """Pick the candidate's baseline (same config hash; same machine first) and decide every ruled metric.

    ``others`` gives every baseline there is, read only when none has the candidate's hash, to say how the
    candidate's config differs from the nearest one.
    """
    if candidate.failure:
        return Pairing(candidate, None, (), (candidate.failure,), ())
    same_machine = [item for item in baselines if item.hardware_fingerprint == candidate.hardware_fingerprint]
    notes: list[str] = []
    if same_machine:
        baseline = same_machine[0]
    elif baselines and allow_hardware_mismatch:
        baseline = baselines[0]
        notes.append(
            f"hardware differs (baseline {baseline.hardware_fingerprint}, candidate {candidate.hardware_fingerprint}): "
            "compared because --allow-hardware-mismatch"
        )
    elif baselines:
        problem = (
            f"no baseline measured on this hardware (fingerprint {candidate.hardware_fingerprint}; baselines exist for "
            f"{sorted({item.hardware_fingerprint for item in baselines})}): --allow-hardware-mismatch compares anyway"
        )
        return Pairing(candidate, None, (), (problem,), ())
    else:
        difference = config_difference(candidate, others())
        problem = f"no baseline for config hash {candidate.config_hash}" + (f": {difference}" if difference else "")
        return Pairing(candidate, None, (), (problem,), ())
    if beside := candidate.beside(settings.max_other_load_pct):
        notes.append(f"{beside}: a regression may be that work's")
    decisions, problems = [], []
    load = gated_load(candidate.config)
    for metric, rule in settings.rules.items():
        if not rule.decides(load):
            continue
        base, cand = baseline.metrics.get(metric), candidate.metrics.get(metric)
        if rule.kind == "perf" and candidate.perf_problem:
            problems.append(f"{metric}: the candidate's perf is no evidence ({candidate.perf_problem})")
            continue  # withheld on both sides too: an invalid run passes nothing
        if base is None and cand is None:
            if all(_ran_the_stage_of(side, rule.kind, settings) for side in (baseline, candidate)):
                # Withheld on both sides (a p99 of too few samples): a rule asked for and never decided is said.
                why = (
                    "neither run's searches kept p99 within perf.latency_bound_ms"
                    if metric == PEAK_METRIC
                    else "withheld by both runs (a percentile needs more samples)"
                )
                notes.append(f"{metric} not decided: {why}")
            continue
        if base is None or cand is None:
            side, lacking = ("baseline", baseline) if base is None else ("candidate", candidate)
            why = _why_missing(lacking, metric, rule.kind, settings, baseline=base is None)
            problems.append(f"metric {metric} missing in the {side}: {why}")
            continue
        not_numbers = [(side, values) for side, values in (("baseline", base), ("candidate", cand))
                       if not np.isfinite(values).all()]  # fmt: skip
        if not_numbers:
            # NaN compares false with every tolerance: an accuracy setup that scored no query passed as "within".
            side, values = not_numbers[0]
            problems.append(f"metric {metric} is not a number in the {side} ({', '.join(map(str, values))})")
            continue
        decisions.append(decide(metric, rule, base, cand, settings))
    fewest = min((d.repeats[0] for d in decisions if d.rule.kind == "perf"), default=settings.min_repeats)
    if fewest < settings.min_repeats:
        notes.append(
            f"its baseline has {counted(fewest, 'perf repeat')} and the gate needs >= {settings.min_repeats} "
            f"a side (gate.min_repeats): promote a baseline measured with perf.repeats={settings.min_repeats} "
            "(--rerun re-measures the candidate only)"
        )
    return Pairing(candidate, baseline, tuple(decisions), tuple(problems), tuple(notes))


# The stage whose result a rule's kind of metric comes from.
STAGE_OF_KIND = {"perf": "perf", "accuracy": "accuracy", "parity": "build"}


def _ran_the_stage_of(evidence: Evidence, kind: str, settings: GateConfig) -> bool:
    """Whether ``evidence`` has any ruled metric of ``kind``: it ran the stage such metrics come from."""
    return any(evidence.metrics.get(name) for name, rule in settings.rules.items() if rule.kind == kind)


def _why_missing(evidence: Evidence, metric: str, kind: str, settings: GateConfig, *, baseline: bool) -> str:
    """Why one side lacks a ruled metric: it ran no stage that gives it, or (perf) the statistic was withheld; a
    baseline may also predate the harness recording it for that backend (the torch module's parity)."""
    if not _ran_the_stage_of(evidence, kind, settings):
        stage = STAGE_OF_KIND[kind]
        if baseline:
            return (
                f"it ran no {stage} stage, or was measured by a harness that recorded no {metric} for its backend "
                "(promote a baseline measured now with the candidate's stages)"
            )
        return f"it ran no {stage} stage (gate it against a baseline that ran the same stages)"
    if metric == PEAK_METRIC:
        return "none of its searches kept p99 within perf.latency_bound_ms"
    return "withheld by that run (a percentile needs more samples than it measured)"


def run_gate(
    candidates: list[Evidence], lookup: BaselineLookup, settings: GateConfig, *, allow_hardware_mismatch: bool = False,
    rerun: int = 0, rerunner: Callable[[Evidence, int], Evidence] | None = None,
    every_baseline: Callable[[], list[Evidence]] = list,
) -> GateResult:  # fmt: skip
    """Decide every candidate; an inconclusive perf decision is re-measured up to ``rerun`` times first.
    ``every_baseline`` is read (once) only to explain a candidate that has none (see ``pair``)."""
    others = functools.cache(every_baseline)
    pairings = []
    for candidate in candidates:
        baselines = lookup(candidate.config_hash)  # once: an MLflow lookup downloads each baseline's result
        pairing = pair(candidate, baselines, settings, allow_hardware_mismatch=allow_hardware_mismatch, others=others)
        attempt = 0
        while (
            pairing.verdict == "inconclusive"
            and attempt < rerun
            and rerunner is not None
            and _rerun_helps(pairing, settings)
        ):
            attempt += 1
            log.info("gate: %s inconclusive, rerun %d/%d", candidate.label, attempt, rerun)
            candidate = candidate.merged(rerunner(candidate, attempt))
            pairing = pair(
                candidate, baselines, settings, allow_hardware_mismatch=allow_hardware_mismatch, others=others
            )
        pairings.append(pairing)
    return GateResult(tuple(pairings))


def _rerun_helps(pairing: Pairing, settings: GateConfig) -> bool:
    """Whether re-measuring the candidate can settle an inconclusive decision: not when its baseline has too
    few repeats, since reruns add to the candidate's side only."""
    return any(
        decision.outcome == "inconclusive" and decision.repeats[0] >= settings.min_repeats
        for decision in pairing.decisions
    )


def rerun_perf(candidate: Evidence, attempt: int) -> Evidence:
    """Measure the candidate's saved config again (build from cache, perf) and return only its perf values."""
    from harness.pipeline import run
    from harness.resolve import resolve_config

    run_dir = Path(candidate.run_dirs[0])
    reran = load_result(run_dir)
    saved: dict[str, Any] = reran.to_dict()["config"]  # type: ignore[assignment]
    saved.pop("preprocessing", None)
    saved.update(stages=["build", "perf"], rerun_of=reran.run_uid)
    saved["tracking"]["enabled"] = False
    reruns = run_dir / "gate-reruns"
    # Numbered after those of earlier gates, whose measurements are kept.
    earlier = [int(folder.name) for folder in reruns.glob("*") if folder.name.isdigit()]
    result = run(resolve_config(saved), run_dir=reruns / str(max(earlier, default=0) + 1))
    if result.status != "ok" or result.error is not None:
        raise HarnessError(
            f"{run_dir}: the gate's rerun {attempt} ({result.run_dir}) failed: {result.error and result.error.message}"
        )
    measured = evidence_of(result, label=result.run_dir)
    return dataclasses.replace(
        measured, metrics={name: values for name, values in measured.metrics.items() if name in PERF_METRICS}
    )


def markdown(result: GateResult) -> str:
    """The gate's table: one row per metric of each candidate, then one line per note or problem, naming the
    candidates it is said of."""
    lines = [
        f"gate verdict: **{result.verdict}** (exit {result.exit_code})",
        "",
        "| candidate | metric | baseline | candidate | change | interval | p | repeats | verdict | why |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    # A note said of several candidates is one line naming them: a 24-job sweep against a baseline of one repeat
    # each had the same sentence 24 times.
    candidates_of: dict[str, list[str]] = {}
    for pairing in result.pairings:
        label = Path(pairing.candidate.label).name or pairing.candidate.label
        for decision in pairing.decisions:
            change = f"x{decision.change:.4f}" if decision.rule.kind == "perf" else f"{decision.change:+.6g}"
            interval = f"[{decision.interval[0]:.4f}, {decision.interval[1]:.4f}]" if decision.interval else ""
            p_value = f"{decision.p_value:.4f}" if decision.p_value is not None else ""
            value_format = FLOAT_FORMATS.get(decision.metric, ".6g")
            lines.append(
                f"| {label} | {decision.metric} | {decision.baseline:{value_format}} | "
                f"{decision.candidate:{value_format}} | {change} | "
                f"{interval} | {p_value} | {decision.repeats[0]}/{decision.repeats[1]} | {decision.outcome} | {decision.reason} |"
            )
        for note in (*(f"unusable: {problem}" for problem in pairing.problems), *pairing.notes):
            candidates_of.setdefault(note, []).append(label)
    among = len(result.pairings)
    notes = [f"- {named(labels, among=among, noun='candidates')}: {note}" for note, labels in candidates_of.items()]
    return "\n".join([*lines, *([""] if notes else []), *notes]) + "\n"
