"""The AOTInductor build (backend.artifact=aoti) on the CPU: compiled once, cached, parity-checked on every use,
loaded without recompiling, padded to its batch, and refused where it cannot run."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.backends import LoadTarget
from harness.backends.torch_backend import TorchBackend, package_metadata
from harness.errors import ConfigError
from harness.models.variants import get_variant
from harness.models.weights import load_backbone
from harness.pipeline import run
from tests.conftest import run_config


@pytest.mark.slow
def test_aoti_build_is_cached_checked_and_runs_any_batch_up_to_its_own(cache_dir: Path, tmp_path: Path) -> None:
    config = run_config(
        cache_dir, "backend=torch", "backend.artifact=aoti", "stages=[build,perf,accuracy]", "perf.batch=2",
        "perf.iterations=10", "perf.min_samples=10", "accuracy.batch=16", "tracking=off",
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = run(config, run_dir=tmp_path / "first")
    assert first.status == "ok", first.error
    # torch's compile deprecated its own internals on the terminal (`isinstance(treespec, LeafSpec)` ...).
    assert not [warning for warning in caught if issubclass(warning.category, FutureWarning)]
    assert first.build is not None and first.perf is not None and first.accuracy is not None
    package = Path(first.build.artifact_path)
    manifest = json.loads((first.build.artifact_folder / "build.json").read_text())
    assert package.suffix == ".pt2" and manifest["format"] == "aoti" and not first.build.cache_hit
    assert manifest["key_fields"]["batch"] == 2 and manifest["key_fields"]["device"] == {"cpu_isa": list(
        manifest["key_fields"]["device"]["cpu_isa"])}  # fmt: skip
    assert first.build.parity.passed and first.build.parity.min_cosine > 0.99999
    assert "AOTInductor on cpu" in first.build.parity.runtime
    assert package_metadata(package)["batch"] == "2" and package_metadata(package)["AOTI_DEVICE_KEY"] == "cpu"
    # The perf section has no ONNX graph to count, and no device telemetry on a CPU.
    assert first.perf.efficiency is not None and first.perf.efficiency.flops_per_image_onnx is None
    assert first.perf.telemetry is None and first.perf.transfer_us is None

    second = run(dataclasses.replace(config, stages=("build", "accuracy")), run_dir=tmp_path / "second")
    assert second.status == "ok" and second.build is not None and second.build.cache_hit
    assert second.build.artifact_path == first.build.artifact_path
    assert second.build.parity.min_cosine == pytest.approx(first.build.parity.min_cosine)
    # Accuracy through the package (described 2 images a call) equals the eager module's (16 a call).
    eager = run(run_config(cache_dir, "backend=torch", "stages=[accuracy]", "tracking=off"), run_dir=tmp_path / "eager")
    assert eager.accuracy is not None and second.accuracy is not None
    for setup in ("easy", "medium", "hard"):
        assert getattr(second.accuracy, setup).map == pytest.approx(getattr(eager.accuracy, setup).map, abs=1e-9)

    # The backend pads one image to the package's batch of 2 and drops the padding row.
    model, _ = load_backbone(
        get_variant("tiny14_reg4"), weights="random", seed=0, cache_dir=cache_dir, input_size=(224, 224),
        progress=False,
    )  # fmt: skip
    target = LoadTarget(artifact_path=str(package), model=config.model, precision="fp32", cache_dir=str(cache_dir))
    backend = TorchBackend(config.backend)
    assert backend.input_signature(target).shape == (2, 3, 224, 224)
    backend.load(target)
    image = np.random.default_rng(5).standard_normal((1, 3, 224, 224), dtype=np.float32)
    backend.prepare(image)
    backend.infer()
    with torch.no_grad():
        expected = model(torch.from_numpy(image)).numpy()
    np.testing.assert_allclose(backend.outputs(), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="a batch of 3 images: the AOTInductor package was compiled for batch 2"):
        backend.prepare(np.zeros((3, 3, 224, 224), dtype=np.float32))
    # A package compiled for the CPU is refused for a CUDA device before anything loads.
    with pytest.raises(ConfigError, match=r"was compiled for cpu, not backend\.device=cuda"):
        TorchBackend(dataclasses.replace(config.backend, device="cuda")).input_signature(target)


def test_aoti_without_a_package_says_to_build(cache_dir: Path) -> None:
    config = run_config(cache_dir, "backend=torch", "backend.artifact=aoti")
    backend = TorchBackend(config.backend)
    target = LoadTarget(artifact_path=None, model=config.model, precision="fp32", cache_dir=str(cache_dir))
    with pytest.raises(ConfigError, match=r"needs the build stage's AOTInductor package \(\*\.pt2\).*include 'build'"):
        backend.resolve(target)
    not_a_package = cache_dir / "model.pt2"
    not_a_package.parent.mkdir(parents=True, exist_ok=True)
    not_a_package.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip archive
    target = dataclasses.replace(target, artifact_path=str(not_a_package))
    with pytest.raises(ConfigError, match="not an AOTInductor package"):
        backend.input_signature(target)


@pytest.mark.slow
def test_a_lower_precision_package_is_compared_with_the_fp32_module_and_no_onnx_is_built(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    config = run_config(
        cache, "backend=torch", "backend.artifact=aoti", "precision=bf16", "stages=[build,accuracy]", "tracking=off"
    )
    result = run(config, run_dir=tmp_path / "run")
    assert result.status == "ok", result.error
    assert result.accuracy is not None and result.accuracy.fp32 is not None
    assert result.accuracy.fp32.reference == "torch fp32"
    assert 0.99 < result.accuracy.fp32.descriptor_min_cosine < 1  # bf16 against fp32, not bf16 against itself
    assert [path.name.split("-")[3] for path in (cache / "builds").iterdir()] == ["aoti"]  # no ONNX export made
