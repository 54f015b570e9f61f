"""PyTorch backend: the harness's DINOv2 module (eager or ``torch.compile``) or its AOTInductor package, on CPU
or CUDA, in fp32 / fp16 / bf16.

On CUDA each instance owns three streams: host-to-device copies, compute, device-to-host copies. The model
time of each call is measured with CUDA events on the compute stream; with ``host_io`` each call also copies
its input from pinned host memory and its features back, on the copy streams, timed with events too
(``last_transfer_us``), so the end-to-end time is what a server sees. An instance keeps up to
``PIPELINE_DEPTH`` calls queued (``Pipelined``: async mode), each in its own lane of buffers and events, so
one call's copies and launches overlap the other's compute; instances in one process overlap the same way. A
module compiled in a mode that captures its own CUDA graphs (``reduce-overhead``, ``max-autotune``) keeps one:
its next call frees the outputs of the last.
``cuda_graphs`` captures one CUDA graph per batch size and lane (after a warm-up on a side stream) into that
lane's input buffer, and replays it: the cure for launch-bound batch-1 latency.

An AOTInductor package is compiled for one batch size (its metadata says which); smaller batches are padded
to it and the padding rows' outputs dropped.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from harness.backends import InputSignature, LoadTarget, register_backend
from harness.backends.torch_config import GRAPHING_MODES, TorchConfig
from harness.errors import BackendUnavailable, ConfigError, counted
from harness.nvml import device_info

# Calls on a side stream before a capture: lazy initialisation (cuBLAS handles, autotuning) must not be captured.
CAPTURE_WARMUP_CALLS = 3
AOTI_PACKAGE_SUFFIX = ".pt2"
# Calls an instance keeps queued on a CUDA device: with two, one call's copies and launches overlap the other's
# compute; one compute stream runs one call at a time, so a deeper queue adds buffers, not overlap.
PIPELINE_DEPTH = 2


def attention_kernel(choice: str) -> contextlib.AbstractContextManager[Any]:
    """The context that restricts scaled-dot-product attention to ``choice`` (no restriction for ``auto``)."""
    if choice == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    kernels = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }
    return sdpa_kernel([kernels[choice]])


def torch_dtype(name: str) -> Any:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def capture_cuda_graph(forward: Callable[[], Any], stream: Any) -> tuple[Any, Any]:
    """(graph, its output tensor): ``forward`` (reading fixed device buffers) captured on ``stream`` after
    ``CAPTURE_WARMUP_CALLS`` calls on a side stream; each ``graph.replay()`` rewrites that output in place."""
    import torch

    side = torch.cuda.Stream(stream.device)
    side.wait_stream(stream)
    with torch.inference_mode():
        with torch.cuda.stream(side):
            for _ in range(CAPTURE_WARMUP_CALLS):
                forward()
        stream.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            output = forward()
    stream.synchronize()
    return graph, output


@dataclass
class _Lane:
    """The buffers of one queued call: the device input, the pinned host output (``host_io``), the CUDA graph
    and its output, the events timing the call (CUDA: host-to-device start and end, model start and end,
    device-to-host start and end), and the call's result."""

    device_input: Any
    host_output: Any = None
    graph: Any = None
    graph_output: Any = None
    events: tuple[Any, ...] | None = None
    result: Any = None


@dataclass
class _Slot:
    """The buffers of one batch size: ``rows`` placed by the caller in buffers of the AOT package's batch (else
    ``rows``), the host input (pinned with ``host_io``) every call copies from, and one lane per queued call."""

    rows: int
    host_input: Any
    lanes: list[_Lane]


@register_backend("torch", config=TorchConfig)
class TorchBackend:
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "bf16")
    device_kinds: ClassVar[tuple[str, ...]] = ("cpu", "cuda")

    def __init__(self, config: TorchConfig) -> None:
        self.config = config
        self.on_cuda = config.device.startswith("cuda")
        self.runnable: Any = None
        self.dtype: Any = None
        self.fixed_batch: int | None = None
        self.feature_dim = 0
        self.slots: dict[int, _Slot] = {}
        self.slot: _Slot | None = None
        self.streams: tuple[Any, Any, Any] | None = None  # (host-to-device, compute, device-to-host)
        self.submitted = 0
        self.queued: collections.deque[tuple[_Slot, _Lane]] = collections.deque()
        self.collected: tuple[_Slot, _Lane] | None = None
        self.transfer: tuple[float, float] | None = None
        self.threads_before: int | None = None

    def resolve(self, target: LoadTarget) -> dict[str, object]:
        found = self.check_environment()
        if self.config.artifact == "aoti":
            self._package(target)
        return {**found, "runs": self.config.runs}

    def check_environment(self) -> dict[str, object]:
        import torch

        found: dict[str, object] = {"torch": torch.__version__, "device": self.config.device}
        if not self.on_cuda:
            found["cpu_threads"] = self.config.threads or torch.get_num_threads()
            found["cpu_threads_setting"] = "backend.threads"
            return found
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                f"backend.device={self.config.device!r}: torch {torch.__version__} sees no CUDA device "
                "(a CPU-only torch build, no driver, or CUDA_VISIBLE_DEVICES hides it)"
            )
        device = torch.device(self.config.device)
        index = device.index if device.index is not None else torch.cuda.current_device()
        if index >= torch.cuda.device_count():
            raise BackendUnavailable(
                f"backend.device={self.config.device!r}: only {counted(torch.cuda.device_count(), 'CUDA device')} visible"
            )
        major, minor = torch.cuda.get_device_capability(index)
        found.update(
            device=f"cuda:{index}", device_name=torch.cuda.get_device_name(index), cuda=torch.version.cuda,
            compute_capability=f"{major}.{minor}",
        )  # fmt: skip
        found.update(device_info(index))
        return found

    def input_signature(self, target: LoadTarget) -> InputSignature:
        # Inputs arrive as float32 host arrays; prepare() casts them to the compute dtype once.
        batch = int(self._metadata(target)["batch"]) if self.config.artifact == "aoti" else None
        return InputSignature(shape=(batch, 3, *target.model.input_size), dtype="float32")

    def load(self, target: LoadTarget) -> None:
        import torch

        if self.config.threads:
            self.threads_before = torch.get_num_threads()
            torch.set_num_threads(self.config.threads)
        self.dtype = torch_dtype(target.precision)
        if self.config.artifact == "aoti":
            with torch.cuda.device(self.config.device) if self.on_cuda else contextlib.nullcontext():
                self.runnable = torch._inductor.aoti_load_package(str(self._package(target)))
            metadata = self.runnable.get_metadata()
            self.fixed_batch, self.feature_dim = int(metadata["batch"]), int(metadata["feature_dim"])
        else:
            from harness.models.variants import get_variant
            from harness.models.weights import load_backbone

            model, _ = load_backbone(
                get_variant(target.model.variant), weights=target.model.weights, seed=target.model.seed,
                cache_dir=Path(target.cache_dir), input_size=target.model.input_size, progress=False,
            )  # fmt: skip
            model = model.to(device=self.config.device, dtype=self.dtype).eval()
            self.feature_dim = model.spec.embed_dim
            # dynamic=False: an instance runs one batch size, and a second size must not turn the batch axis
            # symbolic for every later compile (slower kernels).
            self.runnable = (
                torch.compile(model, mode=self.config.compile_mode, dynamic=False) if self.config.compile else model
            )
        if self.on_cuda:
            device = torch.device(self.config.device)
            self.streams = (torch.cuda.Stream(device), torch.cuda.Stream(device), torch.cuda.Stream(device))

    def max_in_flight(self) -> int:
        # torch.compile's own CUDA graphs (CUDAGraph Trees) start a new generation at each call and free the previous
        # call's outputs: a second call queued before the first is collected would overwrite its features, and
        # reading them raises "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run".
        graphs_own_outputs = self.config.compile and self.config.compile_mode in GRAPHING_MODES
        return PIPELINE_DEPTH if self.on_cuda and not graphs_own_outputs else 1

    def prepare(self, batch: np.ndarray) -> None:
        import torch

        if self.queued:
            raise RuntimeError(f"prepare() with {len(self.queued)} calls queued: collect them first")
        rows = batch.shape[0]
        capacity = self.fixed_batch or rows
        if rows > capacity:
            raise ConfigError(f"a batch of {rows} images: the AOTInductor package was compiled for batch {capacity}")
        slot = self.slots.get(rows)
        if slot is None:
            slot = self.slots[rows] = self._new_slot(rows, capacity, batch.shape[1:])
        slot.host_input[:rows].copy_(torch.from_numpy(np.ascontiguousarray(batch)).to(self.dtype))
        if self.on_cuda and not self.config.host_io:
            for lane in slot.lanes:
                lane.device_input.copy_(slot.host_input)
            # A copy from pageable memory may return before its DMA is done, and the compute stream does not wait
            # for the stream it ran on.
            torch.cuda.synchronize(self.config.device)
        self.slot = slot
        if self.config.cuda_graphs and slot.lanes[0].graph is None:
            self._capture(slot)

    def _new_slot(self, rows: int, capacity: int, shape: tuple[int, ...]) -> _Slot:
        import torch

        pinned = self.on_cuda and self.config.host_io
        host_input = torch.zeros((capacity, *shape), dtype=self.dtype, pin_memory=pinned)
        if not self.on_cuda:
            return _Slot(rows=rows, host_input=host_input, lanes=[_Lane(device_input=host_input)])
        lanes = [
            _Lane(
                device_input=torch.zeros_like(host_input, device=self.config.device),
                host_output=torch.zeros((capacity, self.feature_dim), dtype=self.dtype, pin_memory=True)
                if pinned
                else None,
                events=tuple(torch.cuda.Event(enable_timing=True) for _ in range(6)),
            )
            for _ in range(self.max_in_flight())
        ]
        # The buffers are zeroed on the default stream, which the instance's own streams do not wait for.
        torch.cuda.synchronize(self.config.device)
        return _Slot(rows=rows, host_input=host_input, lanes=lanes)

    @property
    def graphs_captured(self) -> int:
        """Batch sizes with their CUDA graphs captured (one per lane)."""
        return sum(slot.lanes[0].graph is not None for slot in self.slots.values())

    def _capture(self, slot: _Slot) -> None:
        assert self.streams is not None
        with attention_kernel(self.config.attention):
            for lane in slot.lanes:
                lane.graph, lane.graph_output = capture_cuda_graph(
                    functools.partial(self.runnable, lane.device_input), self.streams[1]
                )

    def _forward(self, lane: _Lane) -> Any:
        if lane.graph is not None:
            lane.graph.replay()
            return lane.graph_output
        with attention_kernel(self.config.attention):
            return self.runnable(lane.device_input)

    def submit(self) -> None:
        import torch

        slot = self.slot
        assert slot is not None, "prepare() places a batch before a call"
        if len(self.queued) >= self.max_in_flight():
            raise RuntimeError(f"{len(self.queued)} calls queued: collect one before submitting another")
        lane = slot.lanes[self.submitted % len(slot.lanes)]
        self.submitted += 1
        self.queued.append((slot, lane))
        with torch.inference_mode():
            if lane.events is None or self.streams is None:  # the CPU: the call runs here and now
                lane.result = self._forward(lane)
                return
            to_device, compute, to_host = self.streams
            h2d_start, h2d_end, model_start, model_end, d2h_start, d2h_end = lane.events
            host_io = self.config.host_io
            if host_io:
                with torch.cuda.stream(to_device):
                    h2d_start.record()
                    lane.device_input.copy_(slot.host_input, non_blocking=True)
                    h2d_end.record()
                compute.wait_event(h2d_end)
            with torch.cuda.stream(compute):
                model_start.record()
                lane.result = self._forward(lane)
                model_end.record()
            if host_io:
                to_host.wait_event(model_end)
                with torch.cuda.stream(to_host):
                    d2h_start.record()
                    lane.host_output.copy_(lane.result, non_blocking=True)
                    d2h_end.record()

    def _complete(self) -> float | None:
        """Wait for the oldest queued call; its model time from CUDA events (``None`` on the CPU)."""
        self.collected = self.queued.popleft()
        lane = self.collected[1]
        if lane.events is None:
            return None
        h2d_start, h2d_end, model_start, model_end, d2h_start, d2h_end = lane.events
        if self.config.host_io:
            d2h_end.synchronize()
            self.transfer = (h2d_start.elapsed_time(h2d_end) * 1000.0, d2h_start.elapsed_time(d2h_end) * 1000.0)
        else:
            model_end.synchronize()
        return float(model_start.elapsed_time(model_end)) * 1000.0

    def collect(self) -> float:
        model_us = self._complete()
        if model_us is None:
            raise RuntimeError("collect() is for queued CUDA calls; on the CPU each call runs in infer()")
        return model_us

    def infer(self) -> float | None:
        self.submit()
        return self._complete()

    def last_transfer_us(self) -> tuple[float, float] | None:
        return self.transfer

    def outputs(self) -> np.ndarray:
        assert self.collected is not None, "outputs() describe a completed call"
        slot, lane = self.collected
        # A copy: the pinned output buffer and a graph's output tensor are rewritten by the lane's next call.
        if lane.host_output is not None:
            return np.array(lane.host_output[: slot.rows].float().numpy())
        return np.array(lane.result[: slot.rows].float().cpu().numpy())

    def close(self) -> None:
        import torch

        self.runnable = self.slot = self.streams = self.collected = None
        self.slots = {}
        self.queued.clear()
        if self.threads_before is not None:
            # The thread count is the process's: the parity check and the accuracy stage load in the harness's own
            # process, where a sweep's next job with threads=0 would have run and reported this one's.
            torch.set_num_threads(self.threads_before)
            self.threads_before = None
        if self.config.compile:
            # torch.compile keeps at most 8 graphs per function for the whole process and then runs it eager,
            # silently: the build's parity check and the accuracy stage run in the harness's own process, once per
            # job of a sweep, so from a sweep's 9th compiled job on they would have checked the eager module.
            torch._dynamo.reset()

    def _package(self, target: LoadTarget) -> Path:
        if target.artifact_path is None or not target.artifact_path.endswith(AOTI_PACKAGE_SUFFIX):
            raise ConfigError(
                f"backend.artifact=aoti needs the build stage's AOTInductor package (*{AOTI_PACKAGE_SUFFIX}), got "
                f"{target.artifact_path}: include 'build' in stages"
            )
        path = Path(target.artifact_path)
        if not path.is_file():
            raise ConfigError(f"artifact {path} does not exist: run the build stage first")
        return path

    def _metadata(self, target: LoadTarget) -> dict[str, str]:
        """The package's metadata (its batch, feature width, device), read from the archive without loading it."""
        path = self._package(target)
        metadata = package_metadata(path)
        built_for = metadata.get("AOTI_DEVICE_KEY", "?")
        if built_for != self.config.device.partition(":")[0]:
            raise ConfigError(f"{path.name} was compiled for {built_for}, not backend.device={self.config.device}")
        return metadata


def package_metadata(path: Path) -> dict[str, str]:
    """The metadata an AOTInductor package carries (``aot_inductor.metadata`` plus the compiler's own keys)."""
    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if name.endswith("wrapper_metadata.json")]
        if not names:
            raise ConfigError(f"{path}: not an AOTInductor package (no wrapper metadata inside)")
        return dict(json.loads(archive.read(names[0])))
