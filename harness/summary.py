"""The short human-readable summary a run prints before the path of its ``result.json``."""

from __future__ import annotations

from harness.result import RunResult


def format_summary(result: RunResult) -> str:
    """A few aligned lines: what was built, how it was checked, where it is."""
    model: dict[str, object] = result.config.get("model") or {}  # type: ignore[assignment]
    precision: dict[str, object] = result.config.get("precision") or {}  # type: ignore[assignment]
    rows: list[tuple[str, str]] = [
        ("status", result.status),
        ("model", f"{model.get('variant')} weights={result.weights.kind if result.weights else model.get('weights')}"),
        ("precision", str(precision.get("name"))),
    ]
    if result.weights and result.weights.kind == "random":
        rows.append(("note", "RANDOM weights: numbers show speed and numerics, not retrieval quality"))
    if result.build:
        parity = result.build.parity
        rows += [
            ("artifact", result.build.artifact_path),
            ("cache", "hit" if result.build.cache_hit else f"built in {result.build.manifest.export_time_s:.1f} s"),
            (
                "parity",
                f"min cos {parity.min_cosine:.7f} (>= {parity.threshold_min_cosine}), "
                f"max abs err {parity.max_abs_error:.2e} on {len(parity.images)} photos",
            ),
        ]
    if result.error:
        rows.append(("error", f"{result.error.type}: {result.error.message}"))
    rows.append(("time", f"{result.duration_s:.1f} s"))
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"  {label:<{width}}  {value}" for label, value in rows)
