"""How close a measured build comes to the device: FLOPs, achieved GFLOP/s, and efficiency against its own GEMMs.

A DINOv2 forward is almost all matrix products. ``model_gemms`` lists them from the architecture (patch
embedding as a GEMM, then per block qkv, attention scores, attention x V, projection, feed-forward; the last
block for the CLS token only);
``onnx_gemm_flops`` counts the same from an exported graph (MatMul, Gemm and Conv nodes after shape inference
at a fixed batch) as a cross-check. **Efficiency** is the time those GEMMs take when run alone, through the
same runtime and thread settings as the backend, divided by the measured model time per batch: the share of
the run that is irreducible matrix work (100% means nothing else costs anything). The GEMM-only time is a
MatMul-only ONNX graph per distinct shape in ONNX Runtime, a weight as a constant of the graph as in the model
(or ``torch.matmul`` for the torch backend, its right operand stored as ``nn.Linear`` stores its weight), run
as many times as the model runs that shape; it includes the runtime's per-call overhead (tens of microseconds
per GEMM), so it errs towards a higher efficiency at batch 1. It is cached per hardware fingerprint in
``<paths.cache>/gemm/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from harness.config.schema import RunConfig
from harness.errors import counted
from harness.fileio import write_json_atomic
from harness.models.variants import VariantSpec

log = logging.getLogger(__name__)

GEMM_TIMING_ROUNDS = 5
# Part of a cached timing's key: a timing taken another way is taken again, not reused.
TIMING_METHOD = (
    f"fastest of {GEMM_TIMING_ROUNDS} rounds; onnxruntime: weights as constants; torch: right operand stored [n, k]"
)
# The dtype a precision's GEMMs are timed in (numpy's and torch's name for it).
GEMM_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
# GEMMs alone cannot take longer than the model that runs them; past this (timing noise allowed) the GEMM-only
# time is taken again, and if it is still past it, that timing is called disturbed.
EFFICIENCY_CEILING = 1.05


@dataclass(frozen=True)
class Gemm:
    """``count`` products of an [m, k] by a [k, n] matrix, each ``batches`` times (attention's heads).
    ``weights``: the [k, n] matrix is one of the model's weights, a constant of the graph (ONNX Runtime
    prepacks those), rather than an activation computed in the forward (attention's keys and values)."""

    m: int
    k: int
    n: int
    batches: int = 1
    weights: bool = True

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n * self.batches


def model_gemms(spec: VariantSpec, batch: int, input_size: tuple[int, int]) -> Counter[Gemm]:
    """The matrix products of one forward pass on ``batch`` images, with how many times each shape runs."""
    height, width = input_size
    patches = (height // spec.patch_size) * (width // spec.patch_size)
    tokens = batch * (1 + spec.num_registers + patches)
    per_image_tokens = 1 + spec.num_registers + patches
    width_d = spec.embed_dim
    head_dim = width_d // spec.num_heads
    hidden_out = 2 * spec.ffn_hidden if spec.feed_forward == "swiglu" else spec.ffn_hidden
    gemms: Counter[Gemm] = Counter({Gemm(batch * patches, 3 * spec.patch_size**2, width_d): 1})
    heads = batch * spec.num_heads
    every_token = [
        Gemm(tokens, width_d, 3 * width_d),
        Gemm(per_image_tokens, head_dim, per_image_tokens, heads, weights=False),
        Gemm(per_image_tokens, per_image_tokens, head_dim, heads, weights=False),
        Gemm(tokens, width_d, width_d),
        Gemm(tokens, width_d, hidden_out),
        Gemm(tokens, spec.ffn_hidden, width_d),
    ]
    # The last block computes the CLS token only: keys and values of every token, the rest for one per image.
    cls_only = [
        Gemm(tokens, width_d, 2 * width_d),
        Gemm(batch, width_d, width_d),
        Gemm(1, head_dim, per_image_tokens, heads, weights=False),
        Gemm(1, per_image_tokens, head_dim, heads, weights=False),
        Gemm(batch, width_d, width_d),
        Gemm(batch, width_d, hidden_out),
        Gemm(batch, spec.ffn_hidden, width_d),
    ]
    for gemm in every_token:
        gemms[gemm] += spec.depth - 1
    for gemm in cls_only:
        gemms[gemm] += 1
    return gemms


def flops_per_image(spec: VariantSpec, input_size: tuple[int, int]) -> int:
    return sum(gemm.flops * count for gemm, count in model_gemms(spec, 1, input_size).items())


def onnx_gemm_flops(path: Path, batch: int) -> int:
    """FLOPs of the MatMul, Gemm and Conv nodes of the graph at ``path`` for ``batch`` images (2 per multiply-add)."""
    import onnx
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    model = onnx.load(str(path), load_external_data=False)
    _weights_as_inputs(model)
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_param")
    dim.dim_value = batch
    # ONNX Runtime's symbolic inference follows the exporters' Shape -> Gather -> Reshape chains to concrete
    # sizes (the attention heads' width), where onnx's own inference leaves them unknown.
    inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    shapes = {
        value.name: [axis.dim_value for axis in value.type.tensor_type.shape.dim]
        for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    }
    shapes.update({init.name: list(init.dims) for init in inferred.graph.initializer})
    total = 0
    for node in inferred.graph.node:
        if node.op_type in ("MatMul", "Gemm"):
            output = shapes[node.output[0]]
            total += 2 * int(np.prod(output)) * shapes[node.input[0]][-1]
        elif node.op_type == "Conv":
            output, weight = shapes[node.output[0]], shapes[node.input[1]]
            total += 2 * int(np.prod(output)) * int(np.prod(weight[1:]))
    return total


def _weights_as_inputs(model: object) -> None:
    """Initializers kept in an external data file become graph inputs of their shape: inference needs only
    their shapes, and reading them would need the data file (found relative to the working directory by
    ONNX Runtime's inference) and the memory of every weight."""
    from onnx import external_data_helper, helper

    graph = model.graph  # type: ignore[attr-defined]
    external = [tensor for tensor in graph.initializer if external_data_helper.uses_external_data(tensor)]
    for tensor in external:
        graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        graph.initializer.remove(tensor)


@dataclass(frozen=True)
class GemmTiming:
    """The GEMM-only time of one forward at a batch, through the backend's runtime with its threads."""

    gemm_time_us: float
    flops: int
    threads: int | None
    dtype: str
    fingerprint: str


def _matmul_graph(gemm: Gemm, dtype: str, right: np.ndarray) -> bytes:
    """One MatMul of input ``a`` by ``b``: a constant holding ``right`` for a weight GEMM, as in the model's graph
    (ONNX Runtime prepacks a constant operand: 1-18% faster per shape here), else a second input."""
    from onnx import TensorProto, helper, numpy_helper

    element = TensorProto.FLOAT16 if dtype == "float16" else TensorProto.FLOAT
    left_shape = [gemm.batches, gemm.m, gemm.k] if gemm.batches > 1 else [gemm.m, gemm.k]
    right_shape = [gemm.batches, gemm.k, gemm.n] if gemm.batches > 1 else [gemm.k, gemm.n]
    output_shape = [gemm.batches, gemm.m, gemm.n] if gemm.batches > 1 else [gemm.m, gemm.n]
    inputs = [helper.make_tensor_value_info("a", element, left_shape)]
    constants = []
    if gemm.weights:
        constants.append(numpy_helper.from_array(right, "b"))
    else:
        inputs.append(helper.make_tensor_value_info("b", element, right_shape))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm", inputs,
        [helper.make_tensor_value_info("c", element, output_shape)], initializer=constants,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


# A runner makes, for one GEMM's operands, a function that runs it N times back to back and returns when done.
Runner = Callable[[Gemm, np.ndarray, np.ndarray], Callable[[int], object]]


@contextlib.contextmanager
def _onnxruntime_runner(threads: int | None, dtype: str, session_config: dict[str, str]) -> Iterator[Runner]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    for key, value in session_config.items():
        options.add_session_config_entry(key, value)

    def runner(gemm: Gemm, left: np.ndarray, right: np.ndarray) -> Callable[[int], object]:
        session = onnxruntime.InferenceSession(
            _matmul_graph(gemm, dtype, right), sess_options=options, providers=["CPUExecutionProvider"]
        )
        feed = {"a": left} if gemm.weights else {"a": left, "b": right}

        def run(times: int) -> object:
            for _ in range(times):
                session.run(None, feed)
            return None

        return run

    yield runner


@contextlib.contextmanager
def _torch_runner(threads: int | None, dtype: str, device: str) -> Iterator[Runner]:
    import torch

    # Touched only when torch times the GEMMs: setting torch's threads (re)starts its OpenMP pool, whose
    # waiting workers can spin on the cores an ONNX Runtime timing needs.
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)

    def runner(gemm: Gemm, left: np.ndarray, right: np.ndarray) -> Callable[[int], object]:
        a, b = (torch.from_numpy(side).to(device=device, dtype=getattr(torch, dtype)) for side in (left, right))
        # The right operand stored [n, k], as nn.Linear stores its weight and attention its keys: torch's CPU
        # fp16 kernel for a row-major [k, n] one is 2-10x slower, which timed tiny14_reg4's GEMMs alone at
        # 156% of its whole fp16 forward.
        b = b.transpose(-1, -2).contiguous().transpose(-1, -2)
        synchronize = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

        def run(times: int) -> object:
            for _ in range(times):
                product = torch.matmul(a, b)
            # Queued back to back as the model queues its kernels; a CUDA matmul returns when queued, so the
            # time is taken when the last is done.
            synchronize()
            return product

        return run

    try:
        yield runner
    finally:
        torch.set_num_threads(previous_threads)


def time_gemms(
    gemms: Counter[Gemm], *, runtime: Literal["onnxruntime", "torch"], dtype: str, threads: int | None,
    cache_dir: Path, fingerprint: str, device: str = "cpu", session_config: dict[str, str] | None = None,
    reuse: bool = True,
) -> GemmTiming:  # fmt: skip
    """The GEMM-only time of ``gemms`` through ``runtime`` (a MatMul-only ONNX graph per shape in ONNX Runtime's
    CPU provider, with the backend's ``session_config`` entries, or ``torch.matmul`` on ``device``) with
    ``threads`` intra-op threads: the fastest of ``GEMM_TIMING_ROUNDS`` rounds per shape, so a busy moment does
    not get cached as the machine's speed; cached per hardware fingerprint and settings (``reuse=False`` times
    them again and replaces the cached one)."""
    import onnxruntime
    import torch

    versions = {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__}
    key_fields = {
        "gemms": sorted((gemm.m, gemm.k, gemm.n, gemm.batches, gemm.weights, count) for gemm, count in gemms.items()),
        "dtype": dtype, "threads": threads, "runtime": runtime, "version": versions[runtime], "device": device,
        "fingerprint": fingerprint, "method": TIMING_METHOD,
    }  # fmt: skip
    if session_config:  # absent when empty: the key of timings cached before the setting existed
        key_fields["session_config"] = session_config
    key = hashlib.sha256(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:16]
    cached = cache_dir / "gemm" / f"{fingerprint}-{key}.json"
    if reuse and cached.exists():
        try:
            return GemmTiming(**json.loads(cached.read_text()))
        except (OSError, ValueError, TypeError) as error:
            # A cache is a shortcut, never a reason to lose the run's measurement: a file cut short outside the
            # harness, or written by a version with other fields, is timed again and replaced.
            log.warning("GEMM timing cache %s unreadable (%s): timing the GEMMs again", cached, error)
    runner = (
        _torch_runner(threads, dtype, device)
        if runtime == "torch"
        else _onnxruntime_runner(threads, dtype, session_config or {})
    )
    with runner as make_run:
        total_us = _time_each(gemms, make_run, dtype)
    timing = GemmTiming(
        gemm_time_us=total_us, flops=sum(gemm.flops * count for gemm, count in gemms.items()), threads=threads,
        dtype=dtype, fingerprint=fingerprint,
    )  # fmt: skip
    cached.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cached, asdict(timing))
    return timing


def _time_each(gemms: Counter[Gemm], make_run: Runner, dtype: str) -> float:
    rng = np.random.default_rng(0)
    total_us = 0.0
    for gemm, count in gemms.items():
        shape = (gemm.batches,) if gemm.batches > 1 else ()
        # numpy has no bfloat16: the operands are made in float32 and each runtime casts them to ``dtype``.
        numpy_dtype = "float32" if dtype == "bfloat16" else dtype
        left = rng.standard_normal((*shape, gemm.m, gemm.k)).astype(numpy_dtype)
        right = rng.standard_normal((*shape, gemm.k, gemm.n)).astype(numpy_dtype)
        run = make_run(gemm, left, right)
        run(1)
        rounds = []
        for _ in range(GEMM_TIMING_ROUNDS):
            started = time.perf_counter()
            run(count)
            rounds.append((time.perf_counter() - started) * 1e6)
        total_us += min(rounds)  # the irreducible time: interference only ever adds to a round
    return total_us


@dataclass(frozen=True)
class GemmRuntime:
    """Where a run's GEMMs are timed alone: the backend's runtime, dtype, threads and device, and ONNX Runtime's
    session config entries."""

    runtime: Literal["onnxruntime", "torch"]
    dtype: str
    threads: int | None
    device: str
    session_config: dict[str, str]
    label: str


EFFICIENCY_OFF = "perf.efficiency=false"


def efficiency_undefined(config: RunConfig, artifact_path: str | None) -> str | None:
    """Why a run has no efficiency: ``None`` where ``gemm_runtime`` defines one, else the reason in words."""
    backend, precision = config.backend, config.precision.name
    if not config.perf.efficiency:
        return EFFICIENCY_OFF
    if config.perf.scenario == "server":
        # Its calls batch whatever arrived within the queue delay: no one batch size to time the GEMMs at.
        return "it is defined for a fixed batch (closed loop, offline), not the server scenario's arrival-made ones"
    if backend.name == "torch":
        if precision in GEMM_DTYPES:
            return None
        return f"the torch backend's GEMMs are timed in {', '.join(GEMM_DTYPES)}, not {precision}"
    if backend.name != "onnxruntime":
        return f"it is defined for the onnxruntime and torch backends, not backend={backend.name}"
    if tuple(backend.providers) != ("CPUExecutionProvider",):
        return f"ONNX Runtime's GEMMs are timed on its CPU provider only, not {'+'.join(backend.providers)}"
    if precision not in ("fp32", "fp16"):
        # The quantized graph's integer MatMuls, their (de)quantize steps and the fp32 rest have no one GEMM dtype.
        return f"ONNX Runtime's GEMMs are timed in fp32 and fp16, not {precision}"
    if not artifact_path:
        return "no artifact was built"
    return None


def gemm_runtime(config: RunConfig, artifact_path: str | None) -> GemmRuntime | None:
    """The runtime the efficiency's GEMMs run through, where it is defined (``efficiency_undefined`` says why
    not): the closed loop's fixed batch, float precisions, ONNX Runtime on its CPU provider or the torch backend."""
    if efficiency_undefined(config, artifact_path) is not None:
        return None
    backend = config.backend
    dtype = GEMM_DTYPES[config.precision.name]
    if backend.name == "torch":
        threads = backend.threads or None
        return GemmRuntime(
            "torch", dtype, threads, backend.device, {}, f"torch {backend.device}, {_threads(threads)}, {dtype}"
        )
    threads = backend.intra_op_threads or None
    entries = backend.session_entries
    label = ", ".join(
        ["onnxruntime CPUExecutionProvider", _threads(threads, "intra-op thread"), dtype]
        + [f"{key}={value}" for key, value in entries.items()]
    )
    return GemmRuntime("onnxruntime", dtype, threads, "cpu", entries, label)


def _threads(threads: int | None, noun: str = "thread") -> str:
    return counted(threads, noun) if threads else f"default {noun}s"
