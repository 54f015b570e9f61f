"""Compile a module into an AOTInductor package (torch only: the GPU device check imports this without the
harness's build-stage dependencies)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from harness.backends.torch_backend import attention_kernel


def compile_package(
    module: torch.nn.Module, *, batch: int, input_size: tuple[int, int], dtype: torch.dtype, device: str,
    attention: str, inductor_configs: dict[str, Any], metadata: dict[str, str], path: Path,
) -> Path:  # fmt: skip
    """``module`` exported at [batch, 3, H, W] in ``dtype`` on ``device`` and compiled to the package ``path``,
    which carries ``metadata`` (read back without loading the package)."""
    example = torch.zeros((batch, 3, *input_size), dtype=dtype, device=device)
    with torch.no_grad(), attention_kernel(attention), warnings.catch_warnings():
        # torch 2.13's compile deprecates its own internals on stderr (`isinstance(treespec, LeafSpec)` is
        # deprecated): nothing a user of the package can act on.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        program = torch.export.export(module, (example,))
        torch._inductor.aoti_compile_and_package(
            program, package_path=str(path), inductor_configs={**inductor_configs, "aot_inductor.metadata": metadata}
        )
    return path
