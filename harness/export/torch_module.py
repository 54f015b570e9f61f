"""The torch module's build (``backend=torch``, ``backend.artifact=module``): each worker builds the module in
memory from the model config (cast to the precision, on its device, compiled as configured), so nothing is
exported or cached, but what it computes is checked against torch fp32 on every run, as an artifact's is.

``torch_parity`` runs the parity photos through the torch backend exactly as a worker loads it; the AOTInductor
build checks its package with it too.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import replace

import numpy as np
import torch

from harness.backends import BackendFactory, LoadTarget, check_backend, one_program_per_batch
from harness.backends.torch_config import TorchConfig
from harness.config.schema import RunConfig
from harness.data.photos import sample_photos
from harness.export.parity import compare_features, reference_features
from harness.fileio import elapsed_ticker
from harness.models import dinov2
from harness.preprocess import batch_of, filled_to
from harness.result.build import BuildResult, ParityResult

log = logging.getLogger(__name__)


def check_module(config: RunConfig, model: dinov2.DinoVisionTransformer) -> BuildResult:
    """The build of a torch module run: no artifact, the module's parity with torch fp32 ``model`` checked;
    raises ``BuildError`` when a bound of the precision fails."""
    started = time.perf_counter()
    backend = config.backend
    assert isinstance(backend, TorchConfig)
    check_backend(backend, config.precision.name)  # a missing CUDA device: one clear line before the model loads
    log.info("build checks the module each worker builds: %s on %s", backend.runs, backend.device)
    target = LoadTarget(
        artifact_path=None, model=config.model, precision=config.precision.name,
        cache_dir=str(config.paths.path("cache")),
    )  # fmt: skip
    name = f"{model.spec.name} {backend.runs} on {backend.device}"
    with elapsed_ticker(f"build check of {name}", config.progress):
        parity = torch_parity(config, model, target, name=name)
    return BuildResult(
        artifact_path=None, cache_hit=None, manifest=None, parity=parity, time_s=time.perf_counter() - started
    )


def torch_parity(
    config: RunConfig, reference: dinov2.DinoVisionTransformer, target: LoadTarget, *, name: str
) -> ParityResult:
    """The parity photos through the torch backend loading ``target`` as a worker does, ``perf.batch`` at a time
    (the last batch filled up with repeated photos where the backend runs one program per batch size, so the
    program checked is the one timed, and Inductor's on-disk cache can serve the workers' compile of it), against
    torch fp32 ``reference`` on the CPU; raises ``BuildError`` naming ``name`` when a bound of the precision fails."""
    backend = config.backend
    assert isinstance(backend, TorchConfig)
    photos = sample_photos(config.build.parity_images)
    inputs = batch_of([image for _, image in photos], config.model.input_size)
    expected = reference_features(reference, inputs)
    # Parity runs each batch as it is: no CUDA graph capture and no host staging for a handful of photos.
    runner = BackendFactory(replace(backend, cuda_graphs=False, host_io=False), target)()
    batch = config.perf.batch
    pad = one_program_per_batch(backend)
    rows = []
    try:
        for start in range(0, len(inputs), batch):
            part = inputs[start : start + batch]
            runner.prepare(filled_to(part, batch) if pad else part)
            runner.infer()
            rows.append(np.asarray(runner.outputs(), dtype=np.float32)[: len(part)])
    finally:
        runner.close()
        if backend.device.startswith("cuda"):
            # This instance ran in the harness's own process, beside which the workers are measured: its cached
            # blocks would stay reserved there and count in the device's memory used (NVML) during perf.
            gc.collect()
            torch.cuda.empty_cache()
    runs = "AOTInductor" if backend.artifact == "aoti" else backend.runs
    return compare_features(
        np.concatenate(rows), expected, images=tuple(name for name, _ in photos), artifact=name,
        precision=config.precision, runtime=f"torch {torch.__version__} {runs} on {backend.device}",
    )  # fmt: skip
