"""The torch backend on the CPU: its config rules, attention kernels, per-batch-size buffers; CUDA paths on a GPU."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.backends import BackendFactory, LoadTarget, torch_backend
from harness.backends.torch_backend import TorchBackend
from harness.backends.torch_config import CompileMode, TorchConfig
from harness.config.schema import ModelConfig
from harness.errors import BackendUnavailable, ConfigError
from harness.models.variants import get_variant
from harness.models.weights import load_backbone
from harness.perf.loadgen import LoadPlan, WorkerTask, run_instances
from harness.resolve import resolve_config
from tests.conftest import compose

CPU = TorchConfig(
    name="torch", device="cpu", compile=False, compile_mode="default", threads=0, attention="auto",
    cuda_graphs=False, host_io=False, artifact="module", aot_inductor_configs={},
)  # fmt: skip
CUDA = dataclasses.replace(CPU, device="cuda")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def target(cache: Path, precision: str = "fp32") -> LoadTarget:
    model = ModelConfig(variant="tiny14_reg4", weights="random", seed=0, input_size=(224, 224))
    return LoadTarget(artifact_path=None, model=model, precision=precision, cache_dir=str(cache))  # type: ignore[arg-type]


def reference(cache: Path, images: np.ndarray) -> np.ndarray:
    model, _ = load_backbone(
        get_variant("tiny14_reg4"), weights="random", seed=0, cache_dir=cache, input_size=(224, 224), progress=False
    )
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


def images(count: int) -> np.ndarray:
    return np.random.default_rng(count).standard_normal((count, 3, 224, 224), dtype=np.float32)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"cuda_graphs": True}, "cuda_graphs=true needs backend.device=cuda"),
        ({"host_io": True}, "host_io=true needs backend.device=cuda .on the CPU the input is in host memory already"),
        ({"device": "cuda", "cuda_graphs": True, "compile": True, "compile_mode": "reduce-overhead"}, "captures CUDA"),
        ({"attention": "efficient"}, "attention=efficient is a CUDA kernel"),
        ({"artifact": "aoti", "compile": True}, "compiled ahead of time by the build stage"),
        ({"device": "gpu0"}, "expected 'cpu', 'cuda' or 'cuda:N'"),
        ({"compile_mode": "max-autotune"}, "compile_mode=max-autotune has no effect without backend.compile=true"),
        ({"aot_inductor_configs": {"max_autotune": True}}, "they need backend.artifact=aoti"),
    ],
)
def test_configs_that_cannot_run_are_refused_naming_the_key(changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(CPU, **changes)


def test_the_fp32_reference_of_a_compiled_or_aot_build_is_the_eager_module() -> None:
    compiled = dataclasses.replace(CPU, compile=True, compile_mode="max-autotune-no-cudagraphs", attention="math")
    aot = dataclasses.replace(CPU, artifact="aoti", aot_inductor_configs={"max_autotune": True})
    assert compiled.fp32_reference == dataclasses.replace(CPU, attention="math")
    assert aot.fp32_reference == CPU
    assert aot.fp32_reference.runs == "eager module"
    # CUDA runs flash and cuDNN attention in half precision only: the fp32 reference of such a run lets torch choose.
    for kernel in ("flash", "cudnn"):
        half_only = dataclasses.replace(CUDA, attention=kernel)
        assert half_only.precision_problem("bf16") is None and half_only.precision_problem("fp32")
        assert half_only.fp32_reference == CUDA
    assert dataclasses.replace(CPU, attention="flash").fp32_reference.attention == "flash"  # the CPU's runs fp32


@pytest.mark.parametrize("kernel", ["flash", "cudnn"])
def test_a_cuda_attention_kernel_without_fp32_is_refused_with_fp32(kernel: str) -> None:
    overrides = ["backend=torch", "backend.device=cuda", f"backend.attention={kernel}"]
    with pytest.raises(
        ConfigError, match=rf"backend.attention={kernel} on CUDA runs fp16 and bf16 only, not precision=fp32"
    ):
        resolve_config(compose(overrides))
    assert resolve_config(compose([*overrides, "precision=bf16"])).backend.attention == kernel


def test_a_cuda_device_without_cuda_is_unavailable_not_a_crash() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(BackendUnavailable, match="sees no CUDA device"):
        TorchBackend(CUDA).check_environment()


@pytest.mark.parametrize("attention", ["auto", "math", "flash"])
def test_each_cpu_attention_kernel_gives_the_reference_features(tmp_path: Path, attention: str) -> None:
    backend = TorchBackend(dataclasses.replace(CPU, attention=attention))
    backend.load(target(tmp_path))
    batch = images(3)
    backend.prepare(batch)
    assert backend.infer() is None  # the CPU has no device timer: the load generator times the call
    np.testing.assert_allclose(backend.outputs(), reference(tmp_path, batch), rtol=1e-4, atol=1e-5)
    assert backend.last_transfer_us() is None


def test_each_batch_size_keeps_its_own_buffers_and_comes_back_to_them(tmp_path: Path) -> None:
    backend = TorchBackend(CPU)
    backend.load(target(tmp_path))
    three, one = images(3), images(1)
    backend.prepare(three)
    first_slot = backend.slot
    backend.infer()
    np.testing.assert_allclose(backend.outputs(), reference(tmp_path, three), rtol=1e-4, atol=1e-5)
    backend.prepare(one)
    backend.infer()
    assert backend.outputs().shape == (1, 64) and sorted(backend.slots) == [1, 3]
    np.testing.assert_allclose(backend.outputs(), reference(tmp_path, one), rtol=1e-4, atol=1e-5)
    other = images(3)[::-1].copy()
    backend.prepare(other)
    assert backend.slot is first_slot  # the buffers of batch 3 are reused, with the new images in them
    backend.infer()
    np.testing.assert_allclose(backend.outputs(), reference(tmp_path, other), rtol=1e-4, atol=1e-5)
    assert backend.graphs_captured == 0  # CUDA graphs are a CUDA feature
    backend.close()


class ReplayedEagerly:
    """Test double of a captured CUDA graph: a replay runs the captured call again into the captured output
    buffer (what a replay does on the device), so the backend's buffer bookkeeping can be checked on a CPU."""

    def __init__(self, forward: Callable[[], torch.Tensor], output: torch.Tensor) -> None:
        self.forward, self.output = forward, output

    def replay(self) -> None:
        with torch.inference_mode():
            self.output.copy_(self.forward())


def test_cuda_graph_bookkeeping_captures_once_per_batch_size_into_the_buffer_later_batches_fill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    captured: list[int] = []

    def capture(forward: Callable[[], torch.Tensor], stream: object) -> tuple[ReplayedEagerly, torch.Tensor]:
        with torch.inference_mode():
            output = forward()
        captured.append(output.shape[0])
        return ReplayedEagerly(forward, output), output

    monkeypatch.setattr(torch_backend, "capture_cuda_graph", capture)
    config = dataclasses.replace(CPU)
    object.__setattr__(config, "cuda_graphs", True)  # the CPU refuses CUDA graphs: the double stands in for them
    backend = TorchBackend(config)
    backend.load(target(tmp_path))
    backend.streams = ("host-to-device stream", "compute stream", "device-to-host stream")
    three, one, other = images(3), images(1), images(3)[::-1].copy()
    for batch in (three, one, other, one):
        backend.prepare(batch)
        backend.infer()
        np.testing.assert_allclose(backend.outputs(), reference(tmp_path, batch), rtol=1e-4, atol=1e-5)
    assert captured == [3, 1] and backend.graphs_captured == 2  # once per batch size, then replayed
    first = backend.outputs()
    backend.infer()
    assert first is not backend.outputs() and not np.shares_memory(first, backend.outputs())


def test_on_the_cpu_a_call_runs_when_submitted_and_nothing_is_queued_beyond_it(tmp_path: Path) -> None:
    backend = TorchBackend(CPU)
    backend.load(target(tmp_path))
    assert backend.max_in_flight() == 1  # no device queue: async mode calls infer() one request at a time
    batch = images(2)
    backend.prepare(batch)
    backend.submit()
    with pytest.raises(RuntimeError, match="1 calls queued: collect one before submitting another"):
        backend.submit()
    with pytest.raises(RuntimeError, match=r"prepare\(\) with 1 calls queued"):
        backend.prepare(batch)
    with pytest.raises(RuntimeError, match="on the CPU each call runs in infer"):
        backend.collect()
    np.testing.assert_allclose(backend.outputs(), reference(tmp_path, batch), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("compile_mode", "depth"),
    [("default", 2), ("max-autotune-no-cudagraphs", 2), ("reduce-overhead", 1), ("max-autotune", 1)],
)
def test_a_module_whose_compile_mode_captures_its_own_cuda_graphs_queues_one_call(
    compile_mode: CompileMode, depth: int
) -> None:
    # CUDAGraph Trees free a call's outputs when the next call starts: with two queued, reading the first call's
    # features raised "accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run".
    backend = TorchBackend(dataclasses.replace(CUDA, compile=True, compile_mode=compile_mode))
    assert backend.max_in_flight() == depth
    assert TorchBackend(dataclasses.replace(CUDA, cuda_graphs=True)).max_in_flight() == 2  # a graph per lane


@pytest.mark.parametrize("compile_mode", ["reduce-overhead", "max-autotune"])
def test_instances_sharing_a_process_are_refused_for_a_compile_mode_that_captures_its_own_graphs(
    compile_mode: CompileMode,
) -> None:
    # On an H200 (torch 2.11) a second such module, called from another instance's thread, stopped in
    # cudagraph_trees (assert torch._C._is_key_in_tls): after the build and the parity check, in the perf workers.
    torch_cuda = ["debug=tiny", "backend=torch", "backend.device=cuda", "backend.compile=true",
                  f"backend.compile_mode={compile_mode}"]  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"^perf.instances=2 with perf.processes=1: backend.compile_mode=.* one thread"
    ):
        resolve_config(compose([*torch_cuda, "perf.instances=2"]))
    assert resolve_config(compose([*torch_cuda, "perf.instances=2", "perf.processes=2"])).perf.instances == 2
    assert resolve_config(compose([*torch_cuda, "perf.instances=2", "stages=[build,accuracy]"])).perf.instances == 2
    default = ["debug=tiny", "backend=torch", "backend.device=cuda", "backend.compile=true", "backend.cuda_graphs=true"]
    assert resolve_config(compose([*default, "perf.instances=2"])).perf.instances == 2  # one graph per instance


def test_bf16_runs_on_the_cpu_close_to_fp32(tmp_path: Path) -> None:
    backend = TorchBackend(CPU)
    backend.load(target(tmp_path, "bf16"))
    batch = images(2)
    backend.prepare(batch)
    backend.infer()
    features, expected = backend.outputs(), reference(tmp_path, batch)
    cosine = np.sum(features * expected, axis=1) / np.linalg.norm(features, axis=1) / np.linalg.norm(expected, axis=1)
    assert features.dtype == np.float32 and cosine.min() > 0.99


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("host_io", [False, True])
def test_cuda_graphs_replay_the_eager_features_and_time_the_copies(tmp_path: Path, host_io: bool) -> None:
    graphed = TorchBackend(dataclasses.replace(CUDA, cuda_graphs=True, host_io=host_io))
    eager = TorchBackend(CUDA)
    for backend in (graphed, eager):
        backend.load(target(tmp_path, "fp16"))
    for batch in (images(4), images(1), images(4)[::-1].copy()):
        results = []
        for backend in (graphed, eager):
            backend.prepare(batch)
            model_us = backend.infer()
            assert model_us is not None and model_us > 0
            results.append(backend.outputs())
        np.testing.assert_allclose(results[0], results[1], rtol=1e-2, atol=1e-2)
        transfer = graphed.last_transfer_us()
        assert (transfer is not None and min(transfer) > 0) if host_io else transfer is None
    assert graphed.graphs_captured == 2  # batch 4 and batch 1, each captured once


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_two_queued_calls_each_give_the_features_of_a_lone_call(tmp_path: Path, cuda_graphs: bool) -> None:
    backend = TorchBackend(dataclasses.replace(CUDA, cuda_graphs=cuda_graphs, host_io=True))
    backend.load(target(tmp_path, "fp16"))
    assert backend.max_in_flight() == 2
    backend.prepare(images(4))
    assert backend.infer() is not None
    alone = backend.outputs()
    backend.submit()
    backend.submit()
    with pytest.raises(RuntimeError, match="collect one before submitting another"):
        backend.submit()
    for _ in range(4):
        assert backend.collect() > 0
        np.testing.assert_array_equal(backend.outputs(), alone)  # the copy back was waited for, not raced
        transfer = backend.last_transfer_us()
        assert transfer is not None and min(transfer) > 0
        backend.submit()  # into the lane just collected, while the other call runs
    backend.collect()
    np.testing.assert_array_equal(backend.outputs(), alone)


@pytest.mark.gpu
@needs_cuda
def test_an_async_run_of_a_module_compiled_with_its_own_cuda_graphs_reads_every_calls_features(tmp_path: Path) -> None:
    config = dataclasses.replace(CUDA, compile=True, compile_mode="reduce-overhead")
    task = WorkerTask(
        worker=0, instances=(0,), iterations=(8,), factory=BackendFactory(config, target(tmp_path, "fp16")),
        inputs=images(2),
        plan=LoadPlan(mode="async", queue_depth=2, warmup=2, min_duration_s=0.0, max_duration_s=None),
    )  # fmt: skip
    (instance,) = run_instances(task).instances
    assert instance.calls == 8 and instance.device_queue == 1
