"""The build stage end to end: export, parity on real photos, cache hits, invalidation, corruption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from harness.config.schema import RunConfig
from harness.errors import BuildError, ConfigError
from harness.export.cache import MANIFEST_NAME
from harness.export.stage import build_artifact
from harness.models.variants import get_variant
from harness.models.weights import load_backbone
from harness.result.build import BuildManifest
from tests.conftest import run_config


def build(config: RunConfig):
    model, weights = load_backbone(
        get_variant(config.model.variant),
        weights=config.model.weights,
        seed=config.model.seed,
        cache_dir=config.paths.path("cache"),
        input_size=config.model.input_size,
        progress=False,
    )
    return build_artifact(config, model, weights)


@pytest.mark.parametrize(
    ("variant", "precision", "io_dtype", "input_dtype"),
    [
        ("tiny14", "fp32", "fp32", "tensor(float)"),
        ("tiny14_reg4", "fp16", "fp32", "tensor(float)"),
        ("tinyg14_reg4", "fp16", "native", "tensor(float16)"),
    ],
)
def test_build_passes_parity_and_has_the_documented_graph(
    cache_dir: Path, variant: str, precision: str, io_dtype: str, input_dtype: str
) -> None:
    config = run_config(cache_dir, f"model={variant}", f"precision={precision}", f"build.io_dtype={io_dtype}")
    result = build(config)
    assert not result.cache_hit and result.parity.passed
    assert result.parity.min_cosine >= config.precision.parity_min_cosine
    assert len(result.parity.images) == 2 and result.parity.images[0].startswith("skimage/")
    proto = onnx.load(result.artifact_path)
    assert [node.op_type for node in proto.graph.node if node.op_type == "Resize"] == []
    assert proto.opset_import[0].version >= 18
    session = onnxruntime.InferenceSession(result.artifact_path, providers=["CPUExecutionProvider"])
    (graph_input,) = session.get_inputs()
    assert graph_input.name == "input" and graph_input.type == input_dtype
    assert isinstance(graph_input.shape[0], str) and graph_input.shape[1:] == [3, 224, 224]
    assert session.get_outputs()[0].name == "features" and session.get_outputs()[0].shape[1] == 64
    weights_dtype = {onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.FLOAT: "fp32"}
    big_weights = [init for init in proto.graph.initializer if np.prod(init.dims) >= 64 * 64]
    assert {weights_dtype[init.data_type] for init in big_weights} == {precision}
    manifest = json.loads((Path(result.artifact_path).parent / MANIFEST_NAME).read_text())
    assert manifest["artifact_name"].startswith(f"{variant}-224x224-{precision}-onnx-")
    assert manifest["key_fields"]["weights"] == "random-seed0"


def test_second_build_is_a_cache_hit_and_inputs_invalidate(cache_dir: Path) -> None:
    first = build(run_config(cache_dir))
    again = build(run_config(cache_dir))
    assert again.cache_hit and again.artifact_path == first.artifact_path
    assert again.parity.passed  # every build is checked, a hit too
    for override in ("model.seed=1", "precision=fp16", "build.opset=19", "model.input_size=[112,112]"):
        other = build(run_config(cache_dir, override))
        assert not other.cache_hit and other.artifact_path != first.artifact_path, override
    assert build(run_config(cache_dir, "build.force=true")).cache_hit is False


def test_corrupt_cached_artifact_is_rebuilt_not_loaded(cache_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = build(run_config(cache_dir))
    artifact = Path(first.artifact_path)
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    rebuilt = build(run_config(cache_dir))
    assert not rebuilt.cache_hit and "corrupt cached artifact" in caplog.text
    assert Path(rebuilt.artifact_path).read_bytes() != bytes(data)
    (Path(rebuilt.artifact_path).parent / MANIFEST_NAME).write_text("{ not json")
    assert not build(run_config(cache_dir)).cache_hit


def test_external_data_keeps_weights_beside_the_graph(cache_dir: Path) -> None:
    result = build(run_config(cache_dir, "build.external_data=always"))
    folder = Path(result.artifact_path).parent
    assert result.manifest.external_data
    data_file = folder / (Path(result.artifact_path).name + ".data")
    assert data_file.stat().st_size > Path(result.artifact_path).stat().st_size
    assert {record.name for record in result.manifest.files} == {
        Path(result.artifact_path).name,
        data_file.name,
    }


def test_dynamo_exporter_builds_the_same_model(cache_dir: Path) -> None:
    legacy = build(run_config(cache_dir))
    dynamo = build(run_config(cache_dir, "build.exporter=dynamo"))
    assert dynamo.parity.passed and dynamo.artifact_path != legacy.artifact_path


def test_failed_parity_names_the_numbers_and_publishes_nothing(cache_dir: Path) -> None:
    config = run_config(
        cache_dir, "precision=fp16", "precision.parity_min_cosine=1.0", "precision.parity_max_abs_error=1e-9"
    )
    with pytest.raises(
        BuildError,
        match=r"parity with torch fp32 failed \(fp16\): min cosine 0\.\d+, max abs error .*required cos >= 1.0, "
        r"max abs error <= 1e-09 \(precision.parity_min_cosine\)$",  # features that are numbers: nothing said of NaN
    ):
        build(config)
    assert list((cache_dir / "builds").iterdir()) == []


def test_an_fp16_build_whose_values_overflow_says_so(cache_dir: Path, tmp_path: Path) -> None:
    # Failed as "min cosine nan" alone: nothing said the fp16 features were inf or NaN, nor why.
    reference, _ = load_backbone(get_variant("tiny14_reg4"), weights="random", seed=0, cache_dir=cache_dir,
                                 input_size=(224, 224), progress=False)  # fmt: skip
    state = reference.state_dict()
    state["patch_embed.proj.weight"] *= 1e5  # fine in fp32, past 65504 in fp16
    torch.save(state, tmp_path / "large.pth")
    with pytest.raises(BuildError) as failed:
        build(run_config(cache_dir, f"model.weights={tmp_path / 'large.pth'}", "precision=fp16"))
    assert str(failed.value).endswith(
        "min cosine nan, max abs error nan, required cos >= 0.999 (precision.parity_min_cosine); the artifact's "
        "features hold NaN or inf for 2 of 2 photos: fp16 holds no value above 65504 (a weight or activation "
        "overflowed); bf16 has fp32's range"
    )
    assert list((cache_dir / "builds").iterdir()) == []


def test_unwritable_cache_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"paths.cache='.*a-file/cache': build cache is not writable"):
        build(run_config(blocker / "cache"))


def test_manifest_round_trips(cache_dir: Path) -> None:
    from harness.config.convert import from_mapping

    result = build(run_config(cache_dir))
    stored = json.loads((Path(result.artifact_path).parent / MANIFEST_NAME).read_text())
    assert from_mapping(BuildManifest, stored) == result.manifest


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_full_size_vits14_reg4_parity_on_real_photos(cache_dir: Path, precision: str) -> None:
    result = build(run_config(cache_dir, "model=vits14_reg4", f"precision={precision}", "build.parity_images=4"))
    assert result.parity.passed
    assert result.parity.min_cosine >= (0.99999 if precision == "fp32" else 0.999)


def test_a_build_published_first_by_another_job_is_kept(cache_dir: Path, tmp_path: Path) -> None:
    import dataclasses
    import shutil

    from harness.export.cache import publish

    first = build(run_config(cache_dir))
    folder = first.artifact_folder
    ours = dataclasses.replace(first.manifest, created_at="2000-01-01T00:00:00+00:00")
    staging = tmp_path / "staging"
    shutil.copytree(folder, staging)
    # The same content key finished by two jobs: the copy already in place may be in use and is kept.
    assert publish(staging, folder, ours) == first.manifest
    assert json.loads((folder / MANIFEST_NAME).read_text())["created_at"] == first.manifest.created_at
    # A forced rebuild replaces it.
    assert publish(staging, folder, ours, replace=True) == ours
    assert json.loads((folder / MANIFEST_NAME).read_text())["created_at"] == "2000-01-01T00:00:00+00:00"


def test_the_cache_lists_builds_by_last_use_and_removes_those_unused_for_days(cache_dir: Path) -> None:
    # Every build is keyed by the library versions and the model source: an upgrade builds anew beside the old
    # copies, and nothing removed those (a ViT-g build is gigabytes).
    import os
    import time

    from harness.export.cache import cached_builds
    from tests.conftest import harness_in

    fp32 = Path(build(run_config(cache_dir)).artifact_folder)
    fp16 = Path(build(run_config(cache_dir, "precision=fp16")).artifact_folder)
    (cache_dir / "builds" / ".staging-half-written").mkdir()  # a build in progress is none of them
    old = time.time() - 3 * 86400
    os.utime(fp32 / MANIFEST_NAME, (old, old))
    listed = cached_builds(cache_dir / "builds")
    assert [entry.folder for entry in listed] == [fp32, fp16]  # least recently used first
    assert listed[0].size_bytes == sum(path.stat().st_size for path in fp32.iterdir())
    assert listed[0].versions["torch"] == torch.__version__ and listed[0].created_at
    assert build(run_config(cache_dir)).cache_hit  # a hit is a use
    assert [entry.folder for entry in cached_builds(cache_dir / "builds")] == [fp16, fp32]

    os.utime(fp32 / MANIFEST_NAME, (old, old))
    cache = f"paths.cache={cache_dir}"
    shown = harness_in(cache_dir.parent, "cache", cache)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[2].startswith(f"| {fp32.name} | ") and f"| {fp16.name} | " in shown.stdout
    assert shown.stdout.splitlines()[-1].startswith("2 builds, ") and shown.stdout.endswith(
        f" in {cache_dir / 'builds'}\n"
    )
    (cache_dir / "weights").mkdir()
    (cache_dir / "weights" / "dinov2_vits14_reg4_pretrain.pth").write_bytes(bytes(3 * 2**20))  # downloads: kept
    shown = harness_in(cache_dir.parent, "cache", cache)
    assert shown.stdout.endswith(f"1 checkpoint, 3.0 MiB in {cache_dir / 'weights'} (kept)\n"), shown.stdout
    dry = harness_in(cache_dir.parent, "cache", cache, "--remove-unused", "2", "--dry-run")
    assert dry.returncode == 0 and dry.stdout.startswith(f"would remove {fp32} (") and fp32.is_dir()
    removed = harness_in(cache_dir.parent, "cache", "--remove-unused", "2", cache)
    assert removed.returncode == 0 and removed.stdout.startswith(f"removed {fp32} (")
    assert "removed 1 build unused for 2 days" in removed.stdout and "; 1 kept in " in removed.stdout
    assert not fp32.exists() and fp16.is_dir() and (cache_dir / "weights" / "dinov2_vits14_reg4_pretrain.pth").is_file()
    assert not build(run_config(cache_dir)).cache_hit  # built again on demand
    for refused in (["--dry-run"], ["--remove-unused", "-1"], ["perf.batch=2"], ["somewhere"]):
        assert harness_in(cache_dir.parent, "cache", cache, *refused).returncode == 2, refused
