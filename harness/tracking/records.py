"""What a run becomes in a tracker: params, metrics and tags drawn from ``result.json``.

- **Params** are the settings: the composed config, flattened to dotted keys.
- **Metrics** are measurements only: the fields listed in ``MEASUREMENTS`` (a whitelist, so a new setting in
  the result never turns into a plotted "metric"), under their dotted name, plus a few headline metrics with
  short top-level names (``HEADLINE``) that sort first in the tracker's UI. A list (throughput per window or
  per repeat) is one metric with a step per item.
- **Tags** are identity and outcome: code, machine, config hash, weights, validity, cache hit.

Values longer than the tracker accepts are cut and end in a hash of the whole value, so two different long
values never look equal.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import math

from harness.config.convert import dotted_value, flatten
from harness.config.schema import BACKEND_SETTINGS_ADDED_LATER, unmeasured_settings
from harness.result.perf import other_work_note, worst_of_loads

MAX_VALUE_LENGTH = 6000
# Dotted paths (fnmatch patterns) of the result fields that are measurements.
MEASUREMENTS = (
    "duration_s",
    "build.time_s",
    "build.manifest.export_time_s",
    "build.parity.min_cosine",
    "build.parity.mean_cosine",
    "build.parity.max_abs_error",
    "perf.samples",
    "perf.batches",
    "perf.forward_time_s",
    "perf.throughput_qps",
    "perf.throughput_qps_repeats",
    "perf.latency_us.*",
    "perf.load_time_s",
    "perf.first_call_us",
    "perf.window_throughput_qps",
    "perf.window_cv",
    "perf.cpu_utilization_pct",
    "perf.peak_host_memory_bytes",
    "perf.peak_device_memory_bytes",
    "perf.peak_qps",
    "perf.efficiency.efficiency",
    "perf.efficiency.achieved_gflops",
    "perf.efficiency.gemm_gflops",
    "perf.efficiency.gemm_time_us",
    "perf.efficiency.model_time_us",
    "perf.probes.target_qps",
    "perf.probes.throughput_qps",
    "perf.probes.p50_ms",
    "perf.probes.p99_ms",
    "perf.probes.repeat",
    "perf.telemetry.*",
    "perf.dispatch_delay_us.*",
    "perf.transfer_us.h2d.*",
    "perf.transfer_us.d2h.*",
    "perf.device_queue",
    "perf.host.cpu_util_pct",
    "perf.host.cpu_util_per_core_pct",
    "perf.host.rss_mean_bytes",
    "perf.host.rss_peak_bytes",
    "perf.host.other_cpu_pct",
    "perf.host.steal_pct",
    "accuracy.easy.*",
    "accuracy.medium.*",
    "accuracy.hard.*",
    "accuracy.extraction_time_s",
    "accuracy.images_per_s",
    "accuracy.fp32.neighbour_overlap_at_10",
    "accuracy.fp32.min_neighbour_overlap_at_10",
    "accuracy.fp32.descriptor_min_cosine",
    "accuracy.fp32.map_delta.*",
)
# Headline metric -> (measurement it copies, scale): the few numbers people compare runs by.
HEADLINE: dict[str, tuple[str, float]] = {
    "throughput_qps": ("perf.throughput_qps", 1.0),
    "e2e_latency_p50_ms": ("perf.latency_us.e2e.p50", 1e-3),
    "e2e_latency_p99_ms": ("perf.latency_us.e2e.p99", 1e-3),
    "model_latency_p50_ms": ("perf.latency_us.model.p50", 1e-3),
    "model_latency_p99_ms": ("perf.latency_us.model.p99", 1e-3),
    "map_easy": ("accuracy.easy.map", 1.0),
    "map_medium": ("accuracy.medium.map", 1.0),
    "map_hard": ("accuracy.hard.map", 1.0),
    "parity_min_cos": ("build.parity.min_cosine", 1.0),
    "peak_qps": ("perf.peak_qps", 1.0),
    "efficiency_pct": ("perf.efficiency.efficiency", 100.0),
    "achieved_gflops": ("perf.efficiency.achieved_gflops", 1.0),
    "fp32_top10_overlap": ("accuracy.fp32.neighbour_overlap_at_10", 1.0),
    "map_medium_delta_fp32": ("accuracy.fp32.map_delta.medium", 1.0),
    "ai_utilize_pct": ("perf.telemetry.ai_utilize_pct", 1.0),
    "card_power_w": ("perf.telemetry.card_power_w", 1.0),
    "images_per_joule": ("perf.telemetry.images_per_joule", 1.0),
}


def shorten(value: str, limit: int = MAX_VALUE_LENGTH) -> str:
    """``value`` if it fits, else its head plus ``...sha256:<12 hex>`` of the whole, ``limit`` chars in all."""
    if len(value) <= limit:
        return value
    suffix = "...sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]
    return value[: limit - len(suffix)] + suffix


def params_of(config: dict[str, object]) -> dict[str, str]:
    """The composed config as tracker params: dotted keys, JSON-ish values, shortened when long."""
    return {key: shorten(value if isinstance(value, str) else json.dumps(value)) for key, value in flatten(config)}


def is_measurement(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in MEASUREMENTS)


def metrics_of(result: dict[str, object]) -> dict[str, list[float]]:
    """Headline metrics first, then every finite measurement: name -> values by step (one unless a series)."""
    measured: dict[str, list[float]] = {}
    tree = {name: value for name, value in result.items() if name != "config"}
    perf = tree.get("perf")
    if isinstance(perf, dict) and perf.get("probes"):
        # A peak search's probes: one stepped metric per field, so the tracker draws each against the probe order.
        probes: list[dict[str, object]] = perf["probes"]
        tree["perf"] = {**perf, "probes": {field: [probe[field] for probe in probes] for field in probes[0]}}
    for key, leaf in flatten(tree):
        if not is_measurement(key):
            continue
        values = leaf if isinstance(leaf, list) else [leaf]
        if values and all(_is_number(value) for value in values):
            measured[key] = [float(value) for value in values]  # type: ignore[arg-type]
    headline = {name: [measured[source][0] * scale] for name, (source, scale) in HEADLINE.items() if source in measured}
    return {**headline, **measured}


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# Tag of the most CPU other work took beside a perf repeat (``worst_other_work``, JSON).
OTHER_WORK_TAG = "harness.other_work_pct"
# Config keys that say where and how a run is kept or judged, not what is measured: left out of the config hash, so a
# baseline matches a candidate run on another machine, folder or tracking store.
NOT_IDENTITY = (
    "task",
    "stages",
    "progress",
    "rerun_of",
    "paths",
    "tracking",
    "dataset.root",
    "vdsp.path",
    "perf.repeats",
    "perf.strict",
)


def _identity(config: dict[str, object]) -> dict[str, object]:
    identity = json.loads(json.dumps(config))
    for dotted in NOT_IDENTITY:
        *parents, key = dotted.split(".")
        node = identity
        for parent in parents:
            node = node.get(parent) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(key, None)
    backend = identity.get("backend")
    if isinstance(backend, dict):
        # A setting added since, at a value that runs as before: hashed as before, so older baselines still match.
        for key, unchanged in BACKEND_SETTINGS_ADDED_LATER.get(str(backend.get("name")), {}).items():
            if key in backend and backend[key] in unchanged:
                del backend[key]
    for dotted, unset in unmeasured_settings(functools.partial(dotted_value, identity)).items():
        *parents, key = dotted.split(".")
        node = dotted_value(identity, ".".join(parents))
        if isinstance(node, dict) and key in node:
            node[key] = unset
    return identity


def config_hash(config: dict[str, object]) -> str:
    """12 hex digits identifying what a run measured (model, precision, build, backend, load, data, preprocessing)."""
    return hashlib.sha256(json.dumps(_identity(config), sort_keys=True).encode()).hexdigest()[:12]


def identity_params(config: dict[str, object]) -> dict[str, str]:
    """The settings ``config_hash`` hashes, as tracker params (dotted keys): what tells two hashes apart."""
    return params_of(_identity(config))


def identity_of_params(params: dict[str, str]) -> dict[str, str]:
    """Of the tracker params a run was logged with (``params_of`` its config), those ``config_hash`` hashes: its
    ``identity_params``."""
    unused = params_of(unmeasured_settings(params.get))  # as params: null is "null"
    params = {**params, **{key: value for key, value in unused.items() if key in params}}
    added_later = BACKEND_SETTINGS_ADDED_LATER.get(params.get("backend.name", ""), {})
    # As params: null is "null", and an empty mapping no param at all.
    unchanged = {
        f"backend.{key}": {params_of({key: value}).get(key) for value in values} for key, values in added_later.items()
    }
    return {
        key: value
        for key, value in params.items()
        if not any(key == dotted or key.startswith(dotted + ".") for dotted in NOT_IDENTITY)
        and value not in unchanged.get(key, ())
    }


def tags_of(result: dict[str, object]) -> dict[str, str]:
    """Identity of the code, machine, config and weights of a run."""
    environment: dict = result.get("environment") or {}  # type: ignore[assignment]
    git: dict = environment.get("git") or {}
    weights: dict = result.get("weights") or {}  # type: ignore[assignment]
    perf: dict = result.get("perf") or {}  # type: ignore[assignment]
    resolved: dict = perf.get("backend_resolved") or {}
    worst = _worst_other_work(perf)
    tags = {
        "harness.run_uid": result["run_uid"],
        "harness.status": result["status"],
        "harness.stages": ",".join(result.get("stages") or []),  # type: ignore[arg-type]
        "harness.config_hash": config_hash(result["config"]),  # type: ignore[arg-type]
        "harness.rerun_of": result["config"].get("rerun_of"),  # type: ignore[attr-defined]
        "harness.weights_kind": weights.get("kind", "unknown"),
        "git.commit": git.get("commit") or "unknown",
        "git.dirty": "unknown" if git.get("dirty") is None else str(git.get("dirty")).lower(),
        "host": environment.get("host", "unknown"),
        "hardware.cpu": environment.get("cpu_model", "unknown"),
        "hardware.cpu_isa": " ".join(environment.get("cpu_isa") or []) or None,
        "hardware.fingerprint": environment.get("hardware_fingerprint", "unknown"),
        "hardware.gpu": str(resolved.get("device_name", "none")),
        "hardware.gpu_driver": _text(resolved.get("driver")),
        "hardware.cuda": _text(resolved.get("cuda") or resolved.get("cuda_driver")),
        "hardware.gpu_max_clocks_mhz": None
        if resolved.get("sm_clock_max_mhz") is None
        else f"sm {resolved['sm_clock_max_mhz']}, memory {resolved.get('memory_clock_max_mhz')}",
        "harness.perf_valid": _flag(perf, "validity", "valid"),
        "harness.contended": _flag(perf, "contended_with"),
        "harness.beside_other_work": other_work_note(worst) or None,
        # The numbers behind it, which `harness gate --promote` judges against gate.max_other_load_pct.
        OTHER_WORK_TAG: json.dumps(worst) if worst else None,
        # An open-loop run of a one-program-per-batch backend: its model time is the full batch's.
        "harness.filled_batches": _flag(perf, "filled_batches"),
        "harness.parity_passed": _flag(result.get("build"), "parity", "passed"),
        "harness.cache_hit": _flag(result.get("build"), "cache_hit"),
        "run_dir": result["run_dir"],
    }
    tags = {key: value for key, value in tags.items() if value is not None}
    tags.update({f"version.{name}": str(version) for name, version in (environment.get("libraries") or {}).items()})
    if result.get("error"):
        tags["harness.error"] = shorten(json.dumps(result["error"]), 5000)
    return {key: shorten(str(value), 5000) for key, value in tags.items()}


def _worst_other_work(perf: dict) -> dict[str, float]:
    """``worst_other_work`` of a result's perf block as written (a result of an older version has fewer fields)."""
    hosts = [repeat.get("host") or {} for repeat in perf.get("repeats") or [perf]] if perf else []
    return worst_of_loads([(host.get("other_cpu_pct"), host.get("steal_pct")) for host in hosts])


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _flag(section: object, *path: str) -> str | None:
    """``true``/``false`` of a boolean inside a result section, ``None`` when the section or value is absent."""
    value = section
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return None if value is None else str(bool(value)).lower()
