"""Backends: two small protocols, plugins registered by name, and one way to open one.

A *runtime* backend (``Backend``) loads the artifact in the harness's own processes, which time it. A
*toolchain* backend (``Toolchain``, registered with ``toolchain=True``) is a vendor's compiler and profiler:
its compiler builds a device model from the verified fp32 ONNX build, and its profiler loads, times and
runs that model in the tool's own processes; the stages read back what the tools print and write.

A plugin is one config dataclass plus one class, bound by ``@register_backend(name, config=...)``. The config's
``loads_artifact`` says whether the backend runs the build stage's artifact; where it does not (the torch module,
built from the model config at load; the sleep backend, which runs no model) the build stage makes nothing (it
checks the torch module's parity). A config may have ``precision_problem(precision)``: why its settings cannot run
a precision the backend runs otherwise (the torch backend's CUDA flash attention and fp32), else ``None``; and
``one_program_per_batch``: true where each batch size is a compile or an engine of its own (callers then fill
smaller batches up to the full one). A config may also have ``fp32_reference``: the config that extracts the fp32
features a lower precision is compared with, when that is not the same backend on the fp32 build (the torch
backend's AOTInductor package is compared with its eager fp32 module, so no fp32 package or ONNX build is made for
it; ONNX Runtime's fp32 pass turns TensorRT's fp16 switch off), and ``shared_process_problem``: why its
instances cannot share a worker process (each instance runs in a thread of its own), else ``None``. The plugin
modules are listed in ``PLUGIN_MODULES`` and imported only when a backend is looked up; they import their
runtimes (onnxruntime, torch, vendor tools) inside their methods, so looking a backend up is cheap.

``open_backend`` is the only place a backend is built for a target: it resolves it (what is installed),
checks the input it accepts against the shape and batch asked for, and hands back a picklable factory
that worker processes call to get their own loaded instance.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np

from harness.config.schema import QUANTIZED, ModelConfig, Precision
from harness.errors import ConfigError, unknown_name_message
from harness.processes import ToolRun

PLUGIN_MODULES: tuple[str, ...] = (
    "harness.backends.onnxruntime_backend",
    "harness.backends.torch_backend",
    "harness.backends.sleep_backend",
    "harness.backends.vastai_backend",
)


@dataclass(frozen=True)
class LoadTarget:
    """What a backend loads, picklable so worker processes can load it themselves.

    Attributes:
        artifact_path: the built artifact (ONNX), or ``None`` for backends that build from the model config.
        model: the model config (variant, weights, seed, input size).
        precision: the numeric format to run in.
        cache_dir: where weights are cached.
    """

    artifact_path: str | None
    model: ModelConfig
    precision: Precision
    cache_dir: str


@dataclass(frozen=True)
class InputSignature:
    """The input a loaded model accepts: [N, C, H, W] with ``None`` for dynamic axes, and numpy dtype name."""

    shape: tuple[int | None, ...]
    dtype: str


class Backend(Protocol):
    """What the load generator and feature extraction need from a runtime.

    ``check_environment`` says whether the runtime, its providers and devices are installed (before any stage
    runs; what it found goes into the result), ``resolve`` adds the checks against the artifact,
    ``load`` builds the runnable model, ``prepare`` places one input batch where the runtime reads it (once,
    before timing), ``infer`` runs that batch to completion (synchronised) and returns the model time in
    microseconds when the runtime measures it itself (CUDA events), else ``None``; ``last_transfer_us`` gives
    the (host-to-device, device-to-host) copy times of that call where the backend copies and times them itself,
    else ``None``; ``close`` frees it.
    """

    precisions: ClassVar[tuple[str, ...]]
    device_kinds: ClassVar[tuple[str, ...]]

    def __init__(self, config: Any) -> None: ...
    def check_environment(self) -> dict[str, object]: ...
    def resolve(self, target: LoadTarget) -> dict[str, object]: ...
    def input_signature(self, target: LoadTarget) -> InputSignature: ...
    def load(self, target: LoadTarget) -> None: ...
    def prepare(self, batch: np.ndarray) -> None: ...
    def infer(self) -> float | None: ...
    def last_transfer_us(self) -> tuple[float, float] | None: ...
    def outputs(self) -> np.ndarray: ...
    def close(self) -> None: ...


@runtime_checkable
class Pipelined(Protocol):
    """A backend that keeps several calls of one instance in flight, as a device queue does (async mode).

    ``submit`` queues a call on the batch ``prepare`` placed and returns without waiting for it; ``collect``
    waits for the oldest call queued and returns its model time in microseconds, which the device measures
    (the host clock cannot tell one queued call's compute from the others'); after it, ``outputs`` and
    ``last_transfer_us`` describe that call. At most ``max_in_flight()`` calls may be queued: 1 means the
    backend gains nothing from it (no device queue here, e.g. the CPU), and ``infer`` is used instead.
    """

    def max_in_flight(self) -> int: ...
    def submit(self) -> None: ...
    def collect(self) -> float: ...


def in_flight_limit(backend: object) -> int:
    """How many calls ``backend`` can keep in flight on one instance (1 for a backend that is not ``Pipelined``)."""
    return backend.max_in_flight() if isinstance(backend, Pipelined) else 1


@dataclass(frozen=True)
class ProfileLoad:
    """The closed-loop load a toolchain's profiler drives, from the run's ``perf`` keys.

    Attributes:
        instances, processes, batch: vamp's ``-i``, ``-p``, ``-b``.
        shape: [C, H, W] of one input (``-s``).
        iterations: batches in total across instances, or ``None`` (only the duration bounds the run).
        min_duration_s: seconds the profiler runs at least (0: iterations alone).
        mode: ``sync`` (one request in flight per instance: meaningful latency) or ``async``.
    """

    instances: int
    processes: int
    batch: int
    shape: tuple[int, int, int]
    iterations: int | None
    min_duration_s: float
    mode: str


@dataclass(frozen=True)
class CompiledModel:
    """What a toolchain's compiler made: the model prefix its profiler loads (the files it promised are checked
    to exist), the build spec it was given, and the tool run."""

    prefix: Path
    spec: dict[str, Any]
    run: ToolRun


class Toolchain(Protocol):
    """A vendor toolchain (``vamc`` / ``vamp``): compiles the verified fp32 ONNX build for its device, then
    times it and runs images through it in its own processes.

    ``precisions`` are the formats it builds (a config switch: toolchains differ per model); ``compile``
    writes the build spec into ``workspace`` and checks the files the compiler promises exist; ``profile``
    drives a closed-loop load and returns the profiler's raw report; ``run_images`` runs decoded images
    (uint8 [3, H, W], as the device's preprocessing reads them) and returns one output per image name.
    With ``progress``, each shows on a terminal what its tool is doing and for how long (config ``progress``).
    Tool failures (non-zero exit, timeout, missing outputs) raise ``ToolError`` with the tool's last lines.
    """

    precisions: tuple[str, ...]
    device: str

    def __init__(self, config: Any) -> None: ...
    def check_environment(self) -> dict[str, object]: ...
    def versions(self) -> dict[str, str]: ...
    def compile(
        self, onnx_path: Path, *, name: str, input_name: str, batch: int, shape: tuple[int, int, int],
        precision: str, workspace: Path, progress: bool,
    ) -> CompiledModel: ...  # fmt: skip
    def profile(
        self, prefix: Path, load: ProfileLoad, *, vdsp_params: Path, output: Path, progress: bool
    ) -> ToolRun: ...
    def run_images(
        self, prefix: Path, images: Iterable[tuple[str, np.ndarray]], *, vdsp_params: Path, workdir: Path, batch: int,
        progress: bool,
    ) -> dict[str, np.ndarray]: ...  # fmt: skip


@dataclass(frozen=True)
class BackendEntry:
    name: str
    config_type: type
    backend_type: Any  # a class implementing ``Backend``, or ``Toolchain`` when ``toolchain``
    toolchain: bool = False


_REGISTRY: dict[str, BackendEntry] = {}
_loaded = False
B = TypeVar("B")


def register_backend(name: str, *, config: type, toolchain: bool = False) -> Callable[[type[B]], type[B]]:
    """Class decorator binding ``name`` to a backend class (a ``Toolchain`` when ``toolchain``) and its config."""

    def bind(backend_type: type[B]) -> type[B]:
        if name in _REGISTRY:
            raise ConfigError(
                f"backend {name!r} is registered twice ({_REGISTRY[name].backend_type} and {backend_type})"
            )
        _REGISTRY[name] = BackendEntry(name=name, config_type=config, backend_type=backend_type, toolchain=toolchain)
        return backend_type

    return bind


def backend_names() -> list[str]:
    _load_plugins()
    return sorted(_REGISTRY)


def get_backend(name: str) -> BackendEntry:
    """The registered backend ``name``; unknown names list the known ones."""
    _load_plugins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(unknown_name_message("backend.name", name, _REGISTRY)) from None


def _load_plugins() -> None:
    global _loaded
    if not _loaded:
        for module in PLUGIN_MODULES:
            importlib.import_module(module)
        _loaded = True


@dataclass(frozen=True)
class BackendFactory:
    """Picklable recipe for a loaded backend: each call builds a fresh instance and loads the target."""

    config: Any
    target: LoadTarget

    def __call__(self) -> Backend:
        backend: Backend = get_backend(self.config.name).backend_type(self.config)
        backend.load(self.target)
        return backend


@dataclass(frozen=True)
class OpenedBackend:
    """A backend checked against its target: what it resolved to, the input dtype it takes, the most images a
    call takes (``None``: any), and its factory."""

    factory: BackendFactory
    resolved: dict[str, object]
    input_dtype: str
    max_batch: int | None = None


def check_precision(entry: BackendEntry, config: Any, precision: str) -> None:
    """A ``ConfigError`` with the reason unless the backend ``config`` names runs ``precision``."""
    precisions = entry.backend_type(config).precisions
    if precision not in precisions:
        if "precisions" in {item.name for item in dataclasses.fields(config)}:
            why = " (backend.precisions: what this toolchain builds for the model)"
        elif precision in QUANTIZED:
            why = f" ({precision} is an ONNX Runtime quantization of the ONNX build)"
        else:
            # Class-level lists only: a toolchain's list is a config switch, unknown until it is configured.
            running = [
                name
                for name, other in sorted(_REGISTRY.items())
                if precision in vars(other.backend_type).get("precisions", ())
            ]
            why = f" (backend={' or backend='.join(running)} runs it)" if running else ""
        raise ConfigError(f"precision={precision}: backend {entry.name!r} runs {list(precisions)}{why}")
    problem = getattr(config, "precision_problem", lambda _: None)(precision)
    if problem:
        raise ConfigError(problem)


def is_toolchain(config: Any) -> bool:
    """The backend ``config`` names is a vendor toolchain (its tools build, time and run the model)."""
    return get_backend(config.name).toolchain


def reference_backend() -> Any:
    """ONNX Runtime on its CPU provider with default settings: what runs an ONNX build where the run's own
    backend cannot (the fp32 reference of a toolchain run)."""
    return get_backend("onnxruntime").config_type(
        name="onnxruntime", providers=("CPUExecutionProvider",), provider_options=(), intra_op_threads=0,
        inter_op_threads=0, graph_optimization="all", io_binding=False, trt_fp16=False, trt_engine_cache=None,
        session_config=None,
    )  # fmt: skip


def one_program_per_batch(config: Any) -> bool:
    """The backend ``config`` runs one program per batch size (its config's ``one_program_per_batch``: torch.compile,
    CUDA graphs, an AOTInductor package, TensorRT's engine). A caller whose batches vary (the parity photos' last,
    accuracy's lists', the open loop's calls) fills each up to the full batch: the one program perf times, instead
    of a compile or an engine build per size."""
    return bool(getattr(config, "one_program_per_batch", False))


def shared_process_problem(config: Any) -> str | None:
    """Why instances of the backend ``config`` cannot share a worker process (its config's
    ``shared_process_problem``: torch.compile's own CUDA graphs keep their state per thread), else ``None``."""
    return getattr(config, "shared_process_problem", None)


def fp32_reference_backend(config: Any) -> Any:
    """The backend config that extracts a run's fp32 reference features (``accuracy.compare_fp32``): ONNX
    Runtime's CPU provider for a toolchain, the config's own ``fp32_reference`` where it has one (torch: its eager
    module; ONNX Runtime: TensorRT's fp16 switch off), else the run's backend."""
    if is_toolchain(config):
        return reference_backend()
    return getattr(config, "fp32_reference", config)


def open_toolchain(config: Any) -> Toolchain:
    """The toolchain backend ``config`` names, its tools checked (``BackendUnavailable`` names what to install)."""
    entry = get_backend(config.name)
    if not entry.toolchain:
        raise ConfigError(f"backend={entry.name}: a runtime backend, not a vendor toolchain")
    toolchain: Toolchain = entry.backend_type(config)
    toolchain.check_environment()
    return toolchain


def check_backend(config: Any, precision: str) -> dict[str, object]:
    """The backend ``config`` names can run ``precision`` here, checked before any stage; what it found.

    Raises:
        BackendUnavailable: the runtime, provider or device is not installed here.
        ConfigError: the backend does not run ``precision``.
    """
    entry = get_backend(config.name)
    check_precision(entry, config, precision)
    backend: Backend | Toolchain = entry.backend_type(config)
    return backend.check_environment()


def open_backend(config: Any, target: LoadTarget, *, shape: tuple[int, int, int], batch: int) -> OpenedBackend:
    """Build, resolve and check the backend ``config`` names for ``target``, before anything is timed or run.

    Raises:
        BackendUnavailable: the runtime, provider or device is not installed here.
        ConfigError: ``shape`` ([C, H, W]) or ``batch`` is not what the artifact accepts.
    """
    if is_toolchain(config):
        raise ConfigError(
            f"backend={config.name}: a vendor toolchain runs the model in its own tools, not in the harness"
        )
    check_backend(config, target.precision)
    backend: Backend = get_backend(config.name).backend_type(config)
    resolved = backend.resolve(target)
    signature = backend.input_signature(target)
    if len(signature.shape) != 4 or tuple(signature.shape[1:]) != tuple(shape):
        raise ConfigError(f"perf.shape={list(shape)}: the artifact takes [C, H, W] = {list(signature.shape[1:])}")
    max_batch = signature.shape[0]
    if max_batch is not None and batch > max_batch:
        raise ConfigError(f"perf.batch={batch}: the artifact accepts batch {max_batch} at most")
    return OpenedBackend(
        factory=BackendFactory(config, target), resolved=resolved, input_dtype=signature.dtype, max_batch=max_batch
    )
