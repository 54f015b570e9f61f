"""``backend=torch``'s settings (defaults in ``conf/backend/torch.yaml``), checked for what cannot run together
before anything is loaded; the backend itself is in ``torch_backend`` (this module does not import torch)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from harness.errors import ConfigError

CompileMode = Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"]
AttentionKernel = Literal["auto", "flash", "efficient", "cudnn", "math"]
Artifact = Literal["module", "aoti"]
# torch.compile modes that capture CUDA graphs themselves (a second capture around them is refused).
GRAPHING_MODES = ("reduce-overhead", "max-autotune")
CUDA_ONLY_KERNELS = ("efficient", "cudnn")
# Attention kernels that CUDA runs in fp16 and bf16 only (PyTorch's FlashAttention-2; cuDNN's SDPA).
HALF_ONLY_CUDA_KERNELS = ("flash", "cudnn")


@dataclass(frozen=True)
class TorchConfig:
    """``backend=torch`` (defaults in ``conf/backend/torch.yaml``).

    Attributes:
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        compile: wrap the model in ``torch.compile``.
        compile_mode: the ``torch.compile`` mode (``reduce-overhead`` and ``max-autotune`` capture CUDA graphs).
        threads: CPU intra-op threads; 0 keeps torch's default.
        attention: the scaled-dot-product-attention kernel (``auto`` lets torch choose per call).
        cuda_graphs: capture one CUDA graph per batch size and replay it (CUDA only).
        host_io: each call copies its input from pinned host memory and its features back (CUDA; the copies are
            timed apart from the model time); ``false`` keeps the input on the device, as the timm anchor does.
        artifact: ``module`` (the DINOv2 module built from the model config) or ``aoti`` (the AOTInductor package
            the build stage compiles, loaded without recompiling).
        aot_inductor_configs: Inductor settings for the AOTInductor build (e.g. ``max_autotune: true``).
    """

    name: Literal["torch"]
    device: str
    compile: bool
    compile_mode: CompileMode
    threads: int
    attention: AttentionKernel
    cuda_graphs: bool
    host_io: bool
    artifact: Artifact
    aot_inductor_configs: dict[str, Any]

    @property
    def shared_process_problem(self) -> str | None:
        """Why two instances cannot run in threads of one process: a mode that captures its own CUDA graphs keeps
        their state (CUDAGraph Trees) for the thread that compiled first; another instance's thread fails in
        ``cudagraph_trees`` (measured on an H200, torch 2.11: ``assert torch._C._is_key_in_tls``)."""
        if self.device.startswith("cuda") and self.compile and self.compile_mode in GRAPHING_MODES:
            return (
                f"backend.compile_mode={self.compile_mode} on CUDA keeps its CUDA graphs' state for one thread, and "
                "each instance of a process runs in a thread of its own"
            )
        return None

    @property
    def loads_artifact(self) -> bool:
        """Only the AOTInductor package is built ahead; the module is built from the model config at load."""
        return self.artifact == "aoti"

    @property
    def runs(self) -> str:
        """What each call runs, in words: the summary's ``runtime`` line."""
        parts = ["AOTInductor package" if self.artifact == "aoti" else "module"]
        parts += [f"torch.compile mode={self.compile_mode}"] if self.compile else []
        parts += ["one CUDA graph per batch size"] if self.cuda_graphs else []
        parts += ["pinned host I/O on copy streams"] if self.host_io else []
        parts += [f"{self.attention} attention"] if self.attention != "auto" else []
        eager = self.artifact == "module" and not self.compile
        return ("eager " if eager else "") + ", ".join(parts)

    def precision_problem(self, precision: str) -> str | None:
        """Why this config cannot run ``precision`` (``None`` when it can): an attention kernel restricted to one
        that CUDA runs in half precision only would find no kernel at the first call."""
        if self.device.startswith("cuda") and self.attention in HALF_ONLY_CUDA_KERNELS and precision == "fp32":
            return (
                f"backend.attention={self.attention} on CUDA runs fp16 and bf16 only, not precision=fp32: "
                "choose precision=fp16 or bf16, or backend.attention=auto, efficient or math"
            )
        return None

    @property
    def one_program_per_batch(self) -> bool:
        """``torch.compile`` (``dynamic=False``) compiles, and CUDA graphs capture, one program per batch size (from
        the 9th size torch.compile runs the module eager); an AOTInductor package is compiled for one."""
        return self.compile or self.cuda_graphs or self.artifact == "aoti"

    @property
    def fp32_reference(self) -> TorchConfig:
        """The eager module on the same device, with the same attention kernel where that runs fp32 (flash and
        cuDNN attention on CUDA do not: torch chooses): the fp32 features a lower precision's are compared with."""
        return dataclasses.replace(
            self, artifact="module", compile=False, compile_mode="default", cuda_graphs=False, aot_inductor_configs={},
            attention="auto" if self.precision_problem("fp32") else self.attention,
        )  # fmt: skip

    def __post_init__(self) -> None:
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            raise ConfigError(f"backend.device={self.device!r}: expected 'cpu', 'cuda' or 'cuda:N'")
        on_cuda = self.device.startswith("cuda")
        if self.cuda_graphs and not on_cuda:
            raise ConfigError("backend.cuda_graphs=true needs backend.device=cuda (CUDA graphs are a CUDA feature)")
        if self.host_io and not on_cuda:
            raise ConfigError(
                "backend.host_io=true needs backend.device=cuda (on the CPU the input is in host memory already: "
                "there is no copy to time)"
            )
        if self.cuda_graphs and self.compile and self.compile_mode in GRAPHING_MODES:
            raise ConfigError(
                f"backend.cuda_graphs=true with backend.compile_mode={self.compile_mode}: that mode captures CUDA "
                "graphs itself; use compile_mode=default or max-autotune-no-cudagraphs with cuda_graphs"
            )
        if not on_cuda and self.attention in CUDA_ONLY_KERNELS:
            raise ConfigError(f"backend.attention={self.attention} is a CUDA kernel; on the CPU: auto, flash or math")
        if self.compile_mode != "default" and not self.compile:
            raise ConfigError(
                f"backend.compile_mode={self.compile_mode} has no effect without backend.compile=true "
                "(the module would run eager)"
            )
        if self.aot_inductor_configs and self.artifact != "aoti":
            raise ConfigError("backend.aot_inductor_configs set the AOTInductor build: they need backend.artifact=aoti")
        if self.artifact == "aoti" and self.compile:
            raise ConfigError(
                "backend.artifact=aoti is compiled ahead of time by the build stage: set backend.compile=false"
            )


def checks_module(backend: object) -> bool:
    """The build stage checks the parity of the torch module ``backend`` runs: each worker builds it in memory
    (nothing is exported or cached) from the weights, cast, on its device and compiled as configured, and that
    can drift from torch fp32 as any artifact can (the eager fp32 module on the CPU too: it shows the workers'
    module is the reference's)."""
    return isinstance(backend, TorchConfig) and backend.artifact == "module"
