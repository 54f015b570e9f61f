"""ONNX Runtime backend: execution providers and session options from config, IO binding on devices.

Session config entries (``SessionOptions.add_session_config_entry``) are accepted by ONNX Runtime whatever their
key, so a mistyped one would change nothing without a word. The keys it reads are string constants compiled into
its Python extension: a key that is not among its strings is refused, with the closest key it holds.

The CUDA and TensorRT providers come with ``onnxruntime-gpu`` (the ``ort-gpu`` extra), which replaces the CPU
``onnxruntime`` package. TensorRT's fp16 switch and engine cache folder come from config and are merged into its
provider options (explicit ``provider_options`` win). ONNX Runtime silently falls back to the next provider
when a device provider fails to load (missing CUDA or cuDNN libraries); the session's providers are checked
after loading, so such a run fails instead of timing the CPU.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from harness.backends import InputSignature, LoadTarget, register_backend
from harness.environment import physical_cores, usable_cores
from harness.errors import BackendUnavailable, ConfigError, counted
from harness.nvml import device_info

GRAPH_OPTIMIZATION = Literal["disable", "basic", "extended", "all"]
# Providers that keep tensors in device memory, where binding inputs once saves a copy per call.
DEVICE_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
GPU_PACKAGE_HINT = "install onnxruntime-gpu in place of onnxruntime: pip install 'dinov2-deploy-harness[ort-gpu]'"
TENSORRT = "TensorrtExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
TRT_FP16_OPTION = "trt_fp16_enable"
PROVIDER_SUFFIX = "ExecutionProvider"
# How ONNX Runtime's session config keys are spelled (onnxruntime_session_options_config_keys.h): an area, dotted
# lower-case words; NUL-terminated as C string constants in its binary. The areas in use are listed to find the
# key a mistyped one meant; a key of another area is accepted when its binary holds it.
SESSION_CONFIG_KEY = re.compile(rb"(?<![\w.])(?:session|optimization|ep|mlas)\.[a-z0-9_.]*[a-z0-9_](?=\x00)")
KNOWN_PROVIDERS = (
    "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider", "OpenVINOExecutionProvider",
    "DnnlExecutionProvider", "ROCMExecutionProvider", "CoreMLExecutionProvider", "QNNExecutionProvider",
)  # fmt: skip


def closest_provider(name: str, known: Sequence[str]) -> str | None:
    """The provider of ``known`` whose name is closest to ``name``, compared without the ``ExecutionProvider`` they
    all end in (which made 'FooExecutionProvider' close to 'QNNExecutionProvider'; a mistyped one too), ignoring
    case ('cuda')."""
    stems = {provider.removesuffix(PROVIDER_SUFFIX).lower(): provider for provider in known}
    close = difflib.get_close_matches(re.sub(r"(?i)exec\w*$", "", name).lower(), list(stems), n=1)
    return stems[close[0]] if close else None


@dataclass(frozen=True)
class OrtConfig:
    """``backend=onnxruntime`` (defaults in ``conf/backend/onnxruntime.yaml``).

    Attributes:
        providers: execution providers in priority order.
        provider_options: one mapping of options per provider (e.g. ``device_id``), or empty. Values may be
            numbers or booleans as a command line writes them (``{device_id:0}``); ONNX Runtime gets them as
            strings.
        intra_op_threads: threads inside one operator; 0 lets ONNX Runtime choose.
        inter_op_threads: threads across operators (parallel execution mode); 0 lets ONNX Runtime choose.
        graph_optimization: ONNX Runtime graph optimisation level.
        io_binding: bind the input once and keep outputs on the device (used with device providers only).
        trt_fp16: let TensorRT build fp16 engines (``trt_fp16_enable``).
        trt_engine_cache: folder TensorRT keeps its built engines in (``trt_engine_cache_path``); ``null`` is
            ``<paths.cache>/tensorrt``.
        session_config: session config entries (``add_session_config_entry``), e.g.
            ``{session.intra_op.allow_spinning: 0}``, or ``null`` for none (not ``{}``: Hydra adds no key to an
            existing mapping without a ``+``); ONNX Runtime gets every value as a string.
    """

    # It runs the build stage's ONNX artifact.
    loads_artifact: ClassVar[bool] = True

    name: Literal["onnxruntime"]
    providers: tuple[str, ...]
    provider_options: tuple[dict[str, str | bool | int | float], ...]
    intra_op_threads: int
    inter_op_threads: int
    graph_optimization: GRAPH_OPTIMIZATION
    io_binding: bool
    trt_fp16: bool
    trt_engine_cache: str | None
    session_config: dict[str, str | int | float] | None

    def __post_init__(self) -> None:
        if not self.providers:
            raise ConfigError("backend.providers=[]: expected at least one execution provider")
        repeated = sorted({name for name in self.providers if self.providers.count(name) > 1})
        if repeated:  # ONNX Runtime drops the repeat with a warning: the same run under another config hash
            raise ConfigError(f"backend.providers={list(self.providers)}: {', '.join(repeated)} listed more than once")
        if self.provider_options and len(self.provider_options) != len(self.providers):
            raise ConfigError(
                f"backend.provider_options: {counted(len(self.provider_options), 'entry', 'entries')} "
                f"for {counted(len(self.providers), 'provider')}"
            )
        for provider, options in zip(self.providers, self.provider_options, strict=False):
            if provider == CPU_PROVIDER and options:
                # Checked on onnxruntime 1.32: the session's get_provider_options() shows none of them taken.
                raise ConfigError(
                    f"backend.provider_options: {CPU_PROVIDER} takes no provider options, and ONNX Runtime ignores "
                    f"{dict(options)} without a word: its settings are backend.intra_op_threads, inter_op_threads, "
                    "graph_optimization and session_config ({} holds its place beside other providers' options)"
                )
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ConfigError("backend.intra_op_threads / inter_op_threads: expected >= 0 (0 = runtime default)")
        tensorrt_only = [key for key in ("trt_fp16", "trt_engine_cache") if getattr(self, key)]
        if tensorrt_only and TENSORRT not in self.providers:
            raise ConfigError(
                f"backend.{' and backend.'.join(tensorrt_only)}: only {TENSORRT} reads it, and "
                f"backend.providers={list(self.providers)} does not list it"
            )

    @property
    def runs(self) -> str:
        """What each call runs, in words: the summary's ``runtime`` line."""
        parts = ["+".join(self.providers)]
        parts += ["IO binding"] if self.io_binding and self.providers[0] in DEVICE_PROVIDERS else []
        parts += ["TensorRT fp16 engines"] if self.trt_fp16 else []
        parts += [f"graph optimization {self.graph_optimization}"] if self.graph_optimization != "all" else []
        entries = ", ".join(f"{key}={value}" for key, value in self.session_entries.items())
        return ", ".join(parts) + (f" ({entries})" if entries else "")

    @property
    def session_entries(self) -> dict[str, str]:
        """``session_config`` as ONNX Runtime takes it: string values."""
        return {key: str(value) for key, value in (self.session_config or {}).items()}

    @property
    def one_program_per_batch(self) -> bool:
        """TensorRT builds its engine for the input shapes the session has seen, and builds it again for a batch
        size outside them (seconds to minutes each)."""
        return self.providers[0] == TENSORRT

    @property
    def fp32_reference(self) -> OrtConfig:
        """The same session with TensorRT's fp16 switch off, also where ``provider_options`` sets it: with it on,
        TensorRT runs the fp32 build in fp16 and the reference would not be fp32."""
        options = tuple(
            {key: value for key, value in options.items() if key != TRT_FP16_OPTION}
            for options in self.provider_options
        )
        return dataclasses.replace(self, trt_fp16=False, provider_options=options)


def session_provider_options(config: OrtConfig, cache_dir: str) -> list[dict[str, str]]:
    """One options mapping per provider: TensorRT's fp16 switch and engine cache from config, then the
    explicit ``provider_options`` (which win)."""
    explicit = list(config.provider_options) or [{} for _ in config.providers]
    merged = []
    for provider, options in zip(config.providers, explicit, strict=True):
        derived: dict[str, str] = {}
        if provider == TENSORRT:
            derived = {
                TRT_FP16_OPTION: str(config.trt_fp16),
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": config.trt_engine_cache or str(Path(cache_dir) / "tensorrt"),
            }
        merged.append({**derived, **{key: str(value) for key, value in options.items()}})
    return merged


@functools.cache
def _runtime_binary() -> bytes:
    """The installed ONNX Runtime's Python extension, which holds the session config keys it reads."""
    from onnxruntime.capi import onnxruntime_pybind11_state

    return Path(onnxruntime_pybind11_state.__file__).read_bytes()


def session_config_keys() -> tuple[str, ...]:
    """The session config keys of the usual areas that the installed ONNX Runtime holds."""
    return tuple(sorted({key.decode() for key in SESSION_CONFIG_KEY.findall(_runtime_binary())}))


def _holds_whole(binary: bytes, text: bytes) -> bool:
    """``binary`` holds ``text`` as a whole NUL-terminated string, not the tail of a longer word or dotted name
    (``allow_spinning`` is the tail of a key, not a key)."""
    found = binary.find(text + b"\x00")
    while found > 0 and (chr(binary[found - 1]).isalnum() or binary[found - 1] in b"._"):
        found = binary.find(text + b"\x00", found + 1)
    return found >= 0


def check_session_config(keys: Sequence[str], version: str) -> None:
    """Refuse session config keys the installed ONNX Runtime does not hold as a string (it would ignore them)."""
    for key in keys:
        if not ("." in key and _holds_whole(_runtime_binary(), key.encode())):
            close = difflib.get_close_matches(key, session_config_keys(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"backend.session_config: onnxruntime {version} reads no session config key {key!r}{hint} (it would "
                "ignore it without a word)"
            )


def _device_id(config: OrtConfig) -> int:
    return int(dict(config.provider_options[0]).get("device_id", 0)) if config.provider_options else 0


def _numpy_dtype(onnx_type: int) -> str:
    import onnx

    return str(onnx.helper.tensor_dtype_to_np_dtype(onnx_type))


@register_backend("onnxruntime", config=OrtConfig)
class OrtBackend:
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8", "int8_dynamic")
    device_kinds: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    def __init__(self, config: OrtConfig) -> None:
        self.config = config
        self.session: Any = None
        self.binding: Any = None
        self.feed: dict[str, np.ndarray] = {}
        self.last_outputs: list[Any] = []

    def check_environment(self) -> dict[str, object]:
        import onnxruntime

        available = onnxruntime.get_available_providers()
        for provider in self.config.providers:
            if provider not in available:
                close = closest_provider(provider, KNOWN_PROVIDERS if provider not in KNOWN_PROVIDERS else available)
                hint = f"; did you mean {close!r}?" if close and close != provider else ""
                if provider in DEVICE_PROVIDERS:
                    hint = f"; {GPU_PACKAGE_HINT}"
                raise BackendUnavailable(
                    f"backend.providers: {provider!r} is not available in onnxruntime {onnxruntime.__version__} "
                    f"(installed: {available}){hint}"
                )
        check_session_config(list(self.config.session_entries), onnxruntime.__version__)
        found: dict[str, object] = {
            "onnxruntime": onnxruntime.__version__,
            "providers": list(self.config.providers),
            "available": available,
        }
        if self.config.providers[0] in DEVICE_PROVIDERS:
            device_id = _device_id(self.config)
            found["device"] = f"cuda:{device_id}"
            found.update(device_info(device_id))
        else:
            found["cpu_threads"] = self.config.intra_op_threads or physical_cores()
            found["cpu_threads_setting"] = "backend.intra_op_threads"
            allowed, machine = usable_cores(), os.cpu_count() or 1
            if not self.config.intra_op_threads and allowed < machine:
                # Seen on onnxruntime 1.32 under `taskset -c 0` of 2 cores: its pool thread set to core 1, the
                # workers at 198% of the one core they were given.
                found["cpu_caution"] = (
                    "ONNX Runtime's default thread pool (backend.intra_op_threads=0) pins its threads to the "
                    f"machine's physical cores, outside this process's CPU affinity ({allowed} of {machine} cores: "
                    f"taskset, a cpuset): set backend.intra_op_threads={allowed} to keep the run on its cores"
                )
        return found

    def resolve(self, target: LoadTarget) -> dict[str, object]:
        found = self.check_environment()
        self._artifact(target)
        return {**found, "runs": self.config.runs}

    def input_signature(self, target: LoadTarget) -> InputSignature:
        import onnx

        proto = onnx.load(str(self._artifact(target)), load_external_data=False)
        (graph_input,) = proto.graph.input
        tensor = graph_input.type.tensor_type
        shape = tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim)
        return InputSignature(shape=shape, dtype=_numpy_dtype(tensor.elem_type))

    def load(self, target: LoadTarget) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = self.config.intra_op_threads
        options.inter_op_num_threads = self.config.inter_op_threads
        options.graph_optimization_level = {
            "disable": onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[self.config.graph_optimization]
        if self.config.inter_op_threads:
            options.execution_mode = onnxruntime.ExecutionMode.ORT_PARALLEL
        for key, value in self.config.session_entries.items():
            options.add_session_config_entry(key, value)
        self.session = onnxruntime.InferenceSession(
            str(self._artifact(target)), sess_options=options, providers=list(self.config.providers),
            provider_options=session_provider_options(self.config, target.cache_dir),
        )  # fmt: skip
        active = self.session.get_providers()
        if active[0] != self.config.providers[0]:
            raise BackendUnavailable(
                f"backend.providers: ONNX Runtime loaded {active} instead of {self.config.providers[0]!r} (it falls "
                "back when a provider's libraries, e.g. CUDA or cuDNN, fail to load; its log above says which)"
            )

    def prepare(self, batch: np.ndarray) -> None:
        input_name = self.session.get_inputs()[0].name
        if self.config.io_binding and self.config.providers[0] in DEVICE_PROVIDERS:
            import onnxruntime

            device_id = _device_id(self.config)
            value = onnxruntime.OrtValue.ortvalue_from_numpy(batch, "cuda", device_id)
            self.binding = self.session.io_binding()
            self.binding.bind_ortvalue_input(input_name, value)
            for output in self.session.get_outputs():
                self.binding.bind_output(output.name, "cuda", device_id)
        else:
            self.feed = {input_name: batch}

    def infer(self) -> float | None:
        if self.binding is not None:
            self.session.run_with_iobinding(self.binding)
            self.binding.synchronize_outputs()
            self.last_outputs = self.binding.get_outputs()
        else:
            self.last_outputs = self.session.run(None, self.feed)
        return None

    def last_transfer_us(self) -> None:
        return None

    def outputs(self) -> np.ndarray:
        first = self.last_outputs[0]
        return first if isinstance(first, np.ndarray) else first.numpy()

    def close(self) -> None:
        self.session = self.binding = None
        self.feed = {}

    @staticmethod
    def _artifact(target: LoadTarget) -> Path:
        if target.artifact_path is None:
            raise ConfigError("backend=onnxruntime needs a built artifact: include 'build' in stages")
        path = Path(target.artifact_path)
        if not path.is_file():
            raise ConfigError(f"artifact {path} does not exist: run the build stage first")
        return path
