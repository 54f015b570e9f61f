"""PyTorch backend: eager or ``torch.compile``, on CPU or CUDA, in fp32 / fp16 / bf16.

It runs the harness's own DINOv2 module built from the model config (the same weights the ONNX artifact
was exported from). On CUDA the model time of each call is measured with CUDA events.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from harness.backends import InputSignature, LoadTarget, register_backend
from harness.errors import BackendUnavailable, ConfigError

TorchDtype = Literal["fp32", "fp16", "bf16"]
CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]


@dataclass(frozen=True)
class TorchConfig:
    """``backend=torch`` (defaults in ``conf/backend/torch.yaml``).

    Attributes:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: compute dtype; ``null`` follows ``precision`` (bf16 is only reachable here).
        compile: wrap the model in ``torch.compile``.
        compile_mode: the ``torch.compile`` mode (``reduce-overhead`` uses CUDA graphs).
        threads: CPU intra-op threads; 0 keeps torch's default.
    """

    name: Literal["torch"]
    device: str
    dtype: TorchDtype | None
    compile: bool
    compile_mode: CompileMode
    threads: int

    def __post_init__(self) -> None:
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"backend.device={self.device!r}: expected 'cpu', 'cuda' or 'cuda:N'")


@register_backend("torch", config=TorchConfig)
class TorchBackend:
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16")
    device_kinds: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    def __init__(self, config: TorchConfig) -> None:
        self.config = config
        self.model: Any = None
        self.batch: Any = None
        self.result: Any = None
        self.events: tuple[Any, Any] | None = None

    def _dtype(self, target: LoadTarget) -> Any:
        import torch

        name = self.config.dtype or target.precision
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]

    def resolve(self, target: LoadTarget) -> dict[str, object]:
        return self.check_environment()

    def check_environment(self) -> dict[str, object]:
        import torch

        if self.config.device.startswith("cuda") and not torch.cuda.is_available():
            raise BackendUnavailable(
                f"backend.device={self.config.device!r}: torch {torch.__version__} sees no CUDA device"
            )
        found: dict[str, object] = {"torch": torch.__version__, "device": self.config.device}
        if self.config.device.startswith("cuda"):
            found["device_name"] = torch.cuda.get_device_name(torch.device(self.config.device))
        return found

    def input_signature(self, target: LoadTarget) -> InputSignature:
        # Inputs arrive as float32 host arrays and are cast to the compute dtype on the device in prepare().
        return InputSignature(shape=(None, 3, *target.model.input_size), dtype="float32")

    def load(self, target: LoadTarget) -> None:
        import torch

        from harness.models.variants import get_variant
        from harness.models.weights import load_backbone

        if self.config.threads:
            torch.set_num_threads(self.config.threads)
        model, _ = load_backbone(
            get_variant(target.model.variant), weights=target.model.weights, seed=target.model.seed,
            cache_dir=Path(target.cache_dir), input_size=target.model.input_size, progress=False,
        )  # fmt: skip
        model = model.to(device=self.config.device, dtype=self._dtype(target)).eval()
        self.model = torch.compile(model, mode=self.config.compile_mode) if self.config.compile else model
        if self.config.device.startswith("cuda"):
            self.events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

    def prepare(self, batch: np.ndarray) -> None:
        import torch

        self.batch = torch.from_numpy(batch).to(device=self.config.device, dtype=next(self.model.parameters()).dtype)

    def infer(self) -> float | None:
        import torch

        with torch.inference_mode():
            if self.events is None:
                self.result = self.model(self.batch)
                return None
            start, end = self.events
            start.record()
            self.result = self.model(self.batch)
            end.record()
            end.synchronize()
            return float(start.elapsed_time(end)) * 1000.0

    def outputs(self) -> np.ndarray:
        return self.result.float().cpu().numpy()

    def close(self) -> None:
        self.model = self.batch = self.result = None
