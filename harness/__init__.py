"""DINOv2 deployment benchmark harness: build, measure and track retrieval backbones on accelerators."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["RunConfig", "RunResult", "__version__", "compose", "load_result", "run"]

if TYPE_CHECKING:
    from harness.config.schema import RunConfig
    from harness.config.store import compose
    from harness.pipeline import run
    from harness.result import RunResult, load_result

_LAZY = {
    "RunConfig": "harness.config.schema",
    "compose": "harness.config.store",
    "run": "harness.pipeline",
    "RunResult": "harness.result",
    "load_result": "harness.result",
}


def __getattr__(name: str) -> Any:
    # Lazy so that `import harness` (and `harness --help`) does not import torch.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
