"""ONNX Runtime backend: execution providers and session options from config, IO binding on devices."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from harness.backends import InputSignature, LoadTarget, register_backend
from harness.errors import BackendUnavailable, ConfigError

GRAPH_OPTIMIZATION = Literal["disable", "basic", "extended", "all"]
# Providers that keep tensors in device memory, where binding inputs once saves a copy per call.
DEVICE_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")
KNOWN_PROVIDERS = (
    "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider", "OpenVINOExecutionProvider",
    "DnnlExecutionProvider", "ROCMExecutionProvider", "CoreMLExecutionProvider", "QNNExecutionProvider",
)  # fmt: skip


@dataclass(frozen=True)
class OrtConfig:
    """``backend=onnxruntime`` (defaults in ``conf/backend/onnxruntime.yaml``).

    Attributes:
        providers: execution providers in priority order.
        provider_options: one mapping of options per provider (e.g. ``device_id``), or empty.
        intra_op_threads: threads inside one operator; 0 lets ONNX Runtime choose.
        inter_op_threads: threads across operators (parallel execution mode); 0 lets ONNX Runtime choose.
        graph_optimization: ONNX Runtime graph optimisation level.
        io_binding: bind the input once and keep outputs on the device (used with device providers only).
    """

    name: Literal["onnxruntime"]
    providers: tuple[str, ...]
    provider_options: tuple[dict[str, str], ...]
    intra_op_threads: int
    inter_op_threads: int
    graph_optimization: GRAPH_OPTIMIZATION
    io_binding: bool

    def __post_init__(self) -> None:
        if not self.providers:
            raise ConfigError("backend.providers=[]: expected at least one execution provider")
        if self.provider_options and len(self.provider_options) != len(self.providers):
            raise ConfigError(
                f"backend.provider_options: {len(self.provider_options)} entries for {len(self.providers)} providers"
            )
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise ConfigError("backend.intra_op_threads / inter_op_threads: expected >= 0 (0 = runtime default)")


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
                known = KNOWN_PROVIDERS if provider not in KNOWN_PROVIDERS else available
                close = difflib.get_close_matches(provider, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close and close[0] != provider else ""
                raise BackendUnavailable(
                    f"backend.providers: {provider!r} is not available in onnxruntime {onnxruntime.__version__} "
                    f"(installed: {available}){hint}"
                )
        return {
            "onnxruntime": onnxruntime.__version__,
            "providers": list(self.config.providers),
            "available": available,
        }

    def resolve(self, target: LoadTarget) -> dict[str, object]:
        found = self.check_environment()
        self._artifact(target)
        return found

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
        provider_options = list(self.config.provider_options) or None
        self.session = onnxruntime.InferenceSession(
            str(self._artifact(target)), sess_options=options, providers=list(self.config.providers),
            provider_options=provider_options,
        )  # fmt: skip

    def prepare(self, batch: np.ndarray) -> None:
        input_name = self.session.get_inputs()[0].name
        if self.config.io_binding and self.config.providers[0] in DEVICE_PROVIDERS:
            import onnxruntime

            device_id = (
                int(dict(self.config.provider_options[0]).get("device_id", 0)) if self.config.provider_options else 0
            )
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
