"""Backends: one small protocol, plugins registered by name, and one way to open one.

A plugin is one config dataclass plus one class, bound by ``@register_backend(name, config=...)``. The
plugin modules are listed in ``PLUGIN_MODULES`` and imported only when a backend is looked up; they import
their runtimes (onnxruntime, torch, vendor tools) inside their methods, so looking a backend up is cheap.

``open_backend`` is the only place a backend is built for a target: it resolves it (what is installed),
checks the input it accepts against the shape and batch asked for, and hands back a picklable factory
that worker processes call to get their own loaded instance.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

import numpy as np

from harness.config.schema import QUANTIZED, ModelConfig, Precision
from harness.errors import ConfigError, unknown_name_message

PLUGIN_MODULES: tuple[str, ...] = (
    "harness.backends.onnxruntime_backend",
    "harness.backends.torch_backend",
    "harness.backends.sleep_backend",
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
    microseconds when the runtime measures it itself (CUDA events), else ``None``; ``close`` frees it.
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
    def outputs(self) -> np.ndarray: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class BackendEntry:
    name: str
    config_type: type
    backend_type: Any  # a class implementing ``Backend``


_REGISTRY: dict[str, BackendEntry] = {}
_loaded = False
B = TypeVar("B")


def register_backend(name: str, *, config: type) -> Callable[[type[B]], type[B]]:
    """Class decorator binding ``name`` to a backend class and its config dataclass."""

    def bind(backend_type: type[B]) -> type[B]:
        if name in _REGISTRY:
            raise ConfigError(
                f"backend {name!r} is registered twice ({_REGISTRY[name].backend_type} and {backend_type})"
            )
        _REGISTRY[name] = BackendEntry(name=name, config_type=config, backend_type=backend_type)
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
    """A backend checked against its target: what it resolved to, the input dtype it takes, and its factory."""

    factory: BackendFactory
    resolved: dict[str, object]
    input_dtype: str


def check_precision(entry: BackendEntry, precision: str) -> None:
    """A ``ConfigError`` with the reason unless the backend runs ``precision``."""
    if precision not in entry.backend_type.precisions:
        why = f" ({precision} is an ONNX Runtime quantization of the ONNX build)" if precision in QUANTIZED else ""
        raise ConfigError(
            f"precision={precision}: backend {entry.name!r} runs {list(entry.backend_type.precisions)}{why}"
        )


def check_backend(config: Any, precision: str) -> dict[str, object]:
    """The backend ``config`` names can run ``precision`` here, checked before any stage; what it found.

    Raises:
        BackendUnavailable: the runtime, provider or device is not installed here.
        ConfigError: the backend does not run ``precision``.
    """
    entry = get_backend(config.name)
    check_precision(entry, precision)
    backend: Backend = entry.backend_type(config)
    return backend.check_environment()


def open_backend(config: Any, target: LoadTarget, *, shape: tuple[int, int, int], batch: int) -> OpenedBackend:
    """Build, resolve and check the backend ``config`` names for ``target``, before anything is timed or run.

    Raises:
        BackendUnavailable: the runtime, provider or device is not installed here.
        ConfigError: ``shape`` ([C, H, W]) or ``batch`` is not what the artifact accepts.
    """
    check_backend(config, target.precision)
    backend: Backend = get_backend(config.name).backend_type(config)
    resolved = backend.resolve(target)
    signature = backend.input_signature(target)
    if len(signature.shape) != 4 or tuple(signature.shape[1:]) != tuple(shape):
        raise ConfigError(f"perf.shape={list(shape)}: the artifact takes [C, H, W] = {list(signature.shape[1:])}")
    max_batch = signature.shape[0]
    if max_batch is not None and batch > max_batch:
        raise ConfigError(f"perf.batch={batch}: the artifact accepts batch {max_batch} at most")
    return OpenedBackend(factory=BackendFactory(config, target), resolved=resolved, input_dtype=signature.dtype)
