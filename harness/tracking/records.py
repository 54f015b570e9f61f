"""What a run becomes in a tracker: params, metrics and tags flattened from ``result.json``.

Params are the composed config, flattened to dotted keys; metrics are every numeric leaf of the result
outside ``config`` and ``environment`` (booleans as 0/1, list items by index); tags identify the code,
machine, config and weights. Values longer than the tracker accepts are cut and end in a hash of the
whole value, so two different long values never look equal.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator

MAX_VALUE_LENGTH = 6000
NOT_METRICS = (
    "config",
    "environment",
    "schema_version",
    "run_uid",
    "run_dir",
    "started_at",
    "finished_at",
    "status",
    "error",
    "stages",
)


def shorten(value: str, limit: int = MAX_VALUE_LENGTH) -> str:
    """``value`` if it fits, else its head plus ``...sha256:<12 hex>`` of the whole, ``limit`` chars in all."""
    if len(value) <= limit:
        return value
    suffix = "...sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]
    return value[: limit - len(suffix)] + suffix


def flatten(tree: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Dotted (key, leaf) pairs of nested dicts and lists."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(tree, list | tuple) and any(isinstance(item, dict | list) for item in tree):
        for index, value in enumerate(tree):
            yield from flatten(value, f"{prefix}.{index}")
    else:
        yield prefix, tree


def params_of(config: dict[str, object]) -> dict[str, str]:
    """The composed config as tracker params: dotted keys, JSON-ish values, shortened when long."""
    return {key: shorten(value if isinstance(value, str) else json.dumps(value)) for key, value in flatten(config)}


def metrics_of(result: dict[str, object]) -> dict[str, float]:
    """Every finite numeric leaf of a result outside config/environment, under its dotted name."""
    metrics: dict[str, float] = {}
    for section, value in result.items():
        if section in NOT_METRICS:
            continue
        for key, leaf in flatten(value, section):
            if isinstance(leaf, list):
                pairs: list[tuple[str, object]] = [(f"{key}.{index}", item) for index, item in enumerate(leaf)]
            else:
                pairs = [(key, leaf)]
            for name, item in pairs:
                if isinstance(item, bool) or (isinstance(item, int | float) and math.isfinite(item)):
                    metrics[name] = float(item)
    return metrics


def config_hash(config: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


def tags_of(result: dict[str, object]) -> dict[str, str]:
    """Identity of the code, machine, config and weights of a run."""
    environment: dict = result.get("environment") or {}  # type: ignore[assignment]
    git: dict = environment.get("git") or {}
    weights: dict = result.get("weights") or {}  # type: ignore[assignment]
    perf: dict = result.get("perf") or {}  # type: ignore[assignment]
    resolved: dict = perf.get("backend_resolved") or {}
    tags = {
        "harness.run_uid": result["run_uid"],
        "harness.status": result["status"],
        "harness.stages": ",".join(result.get("stages") or []),  # type: ignore[arg-type]
        "harness.config_hash": config_hash(result["config"]),  # type: ignore[arg-type]
        "harness.weights_kind": weights.get("kind", "unknown"),
        "git.commit": git.get("commit") or "unknown",
        "git.dirty": str(git.get("dirty")).lower(),
        "host": environment.get("host", "unknown"),
        "hardware.cpu": environment.get("cpu_model", "unknown"),
        "hardware.fingerprint": environment.get("hardware_fingerprint", "unknown"),
        "hardware.gpu": str(resolved.get("device_name", "none")),
        "run_dir": result["run_dir"],
    }
    tags.update({f"version.{name}": str(version) for name, version in (environment.get("libraries") or {}).items()})
    if result.get("error"):
        tags["harness.error"] = shorten(json.dumps(result["error"]), 5000)
    return {key: shorten(str(value), 5000) for key, value in tags.items()}
