"""int8 builds: calibration sets, QDQ and dynamic graphs, cache keys, parity bounds, refusals, fp32 comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from harness.config.schema import CalibrationConfig
from harness.data.photos import sample_photos
from harness.errors import BuildError, ConfigError, DataError
from harness.export.quantize import calibration_set, resolve_reduce_range
from harness.pipeline import run
from harness.preprocess import batch_of, default_params
from harness.summary import format_summary
from tests.conftest import run_config
from tests.export.test_onnx_build import build

PARAMS = default_params((224, 224))


def calibration(**changes: object) -> CalibrationConfig:
    values: dict[str, object] = {
        "method": "minmax", "percentile": 99.999, "images": 6, "seed": 1000, "source": "views", "folder": None,
    }  # fmt: skip
    return CalibrationConfig(**{**values, **changes})  # type: ignore[arg-type]


def test_calibration_set_is_deterministic_per_seed_and_never_the_parity_photos() -> None:
    first, again, other = (calibration_set(calibration(seed=seed), PARAMS) for seed in (1000, 1000, 1001))
    assert first.names == again.names and np.array_equal(first.inputs, again.inputs)
    assert first.inputs_sha256 == again.inputs_sha256 != other.inputs_sha256
    assert first.inputs.shape == (6, 3, 224, 224) and first.inputs.dtype == np.float32
    assert all("#calibration-s1000-" in name for name in first.names)
    parity = batch_of([image for _, image in sample_photos(8)], (224, 224))
    assert not any(np.allclose(row, photo) for row in first.inputs for photo in parity)


def test_folder_calibration_draws_files_by_seed_and_names_a_corrupt_one(tmp_path: Path) -> None:
    for index, (_, image) in enumerate(sample_photos(5)):
        image.save(tmp_path / f"photo{index}.jpg")
    chosen = calibration_set(calibration(source="folder", folder=str(tmp_path), images=3, seed=7), PARAMS)
    assert len(set(chosen.names)) == 3 and set(chosen.names) <= {f"photo{index}.jpg" for index in range(5)}
    assert (
        calibration_set(calibration(source="folder", folder=str(tmp_path), images=3, seed=7), PARAMS).names
        == chosen.names
    )
    for name in chosen.names:
        (tmp_path / name).write_bytes(b"\xff\xd8 not a jpeg")
    with pytest.raises(DataError, match=rf"{tmp_path}/photo\d\.jpg: not a readable image"):
        calibration_set(calibration(source="folder", folder=str(tmp_path), images=3, seed=7), PARAMS)
    too_few = r"holds 5 images \(.jpg, .jpeg, .png\), fewer than calibration.images=9: add images, or lower calibration"
    with pytest.raises(DataError, match=too_few):
        calibration_set(calibration(source="folder", folder=str(tmp_path), images=9), PARAMS)


def test_reduce_range_auto_follows_the_cpu() -> None:
    assert resolve_reduce_range("auto", ["avx2", "fma"]) is True  # u8 x s8 through VPMADDUBSW saturates
    assert resolve_reduce_range("auto", ["avx2", "avx512f", "avx512_vnni"]) is False
    assert resolve_reduce_range("auto", ["asimddp"]) is False
    assert resolve_reduce_range("true", ["avx512_vnni"]) is True and resolve_reduce_range("false", ["avx2"]) is False


def _producers(graph: onnx.GraphProto) -> dict[str, str]:
    return {output: node.op_type for node in graph.node for output in node.output}


def test_static_int8_is_a_qdq_graph_with_matmuls_in_int8_and_the_configured_ops_in_float(cache_dir: Path) -> None:
    result = build(run_config(cache_dir, "precision=int8", "calibration.images=8"))
    graph = onnx.load(result.artifact_path).graph
    producers = _producers(graph)
    matmuls = [node for node in graph.node if node.op_type == "MatMul"]
    assert matmuls and all(producers.get(name) == "DequantizeLinear" for node in matmuls for name in node.input)
    for op_type in ("LayerNormalization", "Softmax"):
        nodes = [node for node in graph.node if node.op_type == op_type]
        assert nodes and all(producers.get(node.input[0]) != "DequantizeLinear" for node in nodes), op_type
    weight_scales = {init.name: init for init in graph.initializer if init.name.endswith("_scale")}
    assert any(len(init.dims) == 1 and init.dims[0] > 1 for init in weight_scales.values())  # per channel
    quantization = result.manifest.quantization
    assert quantization is not None and quantization.mode == "static"
    assert quantization.base_artifact.startswith("tiny14_reg4-224x224-fp32-onnx-")
    assert quantization.calibration is not None and len(quantization.calibration.images) == 8
    assert {"LayerNormalization", "Softmax"} <= set(quantization.float_ops)
    assert quantization.op_counts["QuantizeLinear"] > 0 and quantization.op_counts["DequantizeLinear"] > 0
    assert result.parity.passed and result.parity.threshold_min_cosine == 0.995

    chained = build(
        run_config(cache_dir, "precision=int8", "calibration.images=8", "precision.quantization.quantize_outputs=true")
    )
    chained_graph = onnx.load(chained.artifact_path).graph
    chained_producers = _producers(chained_graph)
    softmaxes = [node for node in chained_graph.node if node.op_type == "Softmax"]
    assert all(chained_producers[node.input[0]] == "DequantizeLinear" for node in softmaxes)  # inside a Q/DQ pair

    kept = matmuls[0].name
    partial = build(
        run_config(cache_dir, "precision=int8", "calibration.images=8", f"precision.quantization.float_nodes=[{kept}]")
    )
    partial_graph = onnx.load(partial.artifact_path).graph
    (node,) = [node for node in partial_graph.node if node.name == kept]
    assert all(_producers(partial_graph).get(name) != "DequantizeLinear" for name in node.input)


def test_dynamic_int8_uses_integer_matmuls_without_calibration(cache_dir: Path) -> None:
    result = build(run_config(cache_dir, "precision=int8_dynamic"))
    ops = {node.op_type for node in onnx.load(result.artifact_path).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "QuantizeLinear" not in ops
    assert result.manifest.quantization is not None and result.manifest.quantization.calibration is None
    # No calibration set: changing it does not change the artifact.
    assert build(run_config(cache_dir, "precision=int8_dynamic", "calibration.seed=5")).cache_hit


def test_cache_key_changes_with_the_calibration_set(cache_dir: Path) -> None:
    first = build(run_config(cache_dir, "precision=int8", "calibration.images=4"))
    assert build(run_config(cache_dir, "precision=int8", "calibration.images=4")).cache_hit
    for override in ("calibration.seed=1001", "calibration.images=5", "calibration.method=percentile"):
        other = build(run_config(cache_dir, "precision=int8", "calibration.images=4", override))
        assert not other.cache_hit and other.artifact_path != first.artifact_path, override
    # The percentile is read by method=percentile alone: with minmax it makes the same artifact.
    assert build(
        run_config(cache_dir, "precision=int8", "calibration.images=4", "calibration.percentile=99.9")
    ).cache_hit
    assert (
        first.manifest.key_fields["calibration"]["inputs_sha256"]
        == first.manifest.quantization.calibration.inputs_sha256
    )  # type: ignore[index,union-attr]


def test_int8_parity_bound_is_enforced_with_both_numbers(cache_dir: Path) -> None:
    config = run_config(cache_dir, "precision=int8_dynamic", "precision.parity_min_cosine=0.9999999")
    with pytest.raises(
        BuildError,
        match=r"parity with torch fp32 failed \(int8_dynamic\): min cosine 0\.\d+, .*required cos >= 0.9999999",
    ):
        build(config)
    published = [path.name for path in (cache_dir / "builds").iterdir()]
    assert len(published) == 1 and "-fp32-onnx-" in published[0]  # the verified fp32 base only


def test_int8_is_refused_before_anything_runs_by_a_backend_that_cannot_run_it(cache_dir: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"precision=int8: backend 'torch' runs \['fp32', 'fp16', 'bf16'\] \(int8 is an ONNX Runtime quantization",
    ):
        run_config(cache_dir, "precision=int8", "backend=torch")
    with pytest.raises(ConfigError, match=r"precision=int8_dynamic: backend 'sleep' runs"):
        run_config(cache_dir, "precision=int8_dynamic", "backend=sleep")


def test_calibration_images_are_never_the_evaluated_images(cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"calibration.seed=0: the synthetic set evaluated is made with the same seed"
    ):
        run_config(cache_dir, "precision=int8", "calibration.seed=0", "dataset.synthetic_seed=0")
    dataset = tmp_path / "data" / "roxford5k" / "jpg"
    with pytest.raises(ConfigError, match=r"calibration.folder=.*roxford5k/jpg: holds the evaluated dataset"):
        run_config(
            cache_dir, "precision=int8", "dataset=roxford5k", f"dataset.root={tmp_path / 'data'}",
            "calibration.source=folder", f"calibration.folder={dataset}",
        )  # fmt: skip
    run_config(cache_dir, "precision=int8", "calibration.seed=0", "dataset.synthetic_seed=0", "stages=[build,perf]")


def test_an_int8_run_reports_its_retrieval_against_fp32_of_the_same_weights(cache_dir: Path, tmp_path: Path) -> None:
    config = run_config(
        cache_dir,
        "precision=int8",
        "calibration.images=8",
        f"paths.data={tmp_path / 'data'}",
        "stages=[build,accuracy]",
    )
    result = run(config, run_dir=tmp_path / "int8")
    assert result.status == "ok" and result.accuracy is not None and result.accuracy.fp32 is not None
    fp32 = result.accuracy.fp32
    assert fp32.reference == Path(result.build.manifest.quantization.base_artifact + ".onnx").name  # type: ignore[union-attr]
    assert 0.0 <= fp32.min_neighbour_overlap_at_10 <= fp32.neighbour_overlap_at_10 <= 1.0
    assert fp32.descriptor_min_cosine > 0.99
    (quantized,) = [line.split(maxsplit=1)[1] for line in format_summary(result).splitlines() if "quantized" in line]
    assert quantized.startswith("static (minmax on 8 images, random views of the shipped photos) from tiny14_reg4-")
    printed = float(format_summary(result).split("descriptor min cos ")[1].split()[0])
    assert printed == pytest.approx(fp32.descriptor_min_cosine, abs=5e-8)  # fp16's 0.9999996 once read 1.0000
    reference = run(
        run_config(cache_dir, f"paths.data={tmp_path / 'data'}", "stages=[build,accuracy]"), run_dir=tmp_path / "fp32"
    )
    assert reference.accuracy is not None and reference.accuracy.fp32 is None
    for setup in ("easy", "medium", "hard"):
        assert fp32.fp32_map[setup] == pytest.approx(getattr(reference.accuracy, setup).map, abs=1e-9)
        assert fp32.map_delta[setup] == pytest.approx(getattr(result.accuracy, setup).map - fp32.fp32_map[setup])
    assert np.allclose(
        np.load(tmp_path / "int8" / "fp32" / "features_database.npy"),
        np.load(tmp_path / "fp32" / "features_database.npy"),
        atol=1e-5,
    )


def test_neighbour_overlap_counts_shared_top_k_neighbours() -> None:
    from harness.accuracy.stage import neighbour_overlap

    reference = np.array([[9, 8, 7, 6, 5, 4.0], [1, 2, 3, 4, 5, 6.0]])
    same_set = np.array([[7, 8, 9, 0, 0, 0.0], [0, 0, 0, 9, 8, 7.0]])
    half = np.array([[9, 0, 0, 0, 8, 7.0], [6, 5, 0, 0, 0, 9.0]])
    assert neighbour_overlap(same_set, reference, k=3).tolist() == [1.0, 1.0]
    assert neighbour_overlap(half, reference, k=3).tolist() == pytest.approx([1 / 3, 1 / 3])
    assert neighbour_overlap(half, reference, k=10).tolist() == [1.0, 1.0]  # k capped at the database size


def test_a_corrupt_calibration_folder_image_fails_the_build_naming_it(cache_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "calibration"
    folder.mkdir()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(folder / "a.jpg")
    (folder / "b.jpg").write_bytes(b"truncated")
    config = run_config(
        cache_dir, "precision=int8", "calibration.source=folder", f"calibration.folder={folder}", "calibration.images=2"
    )
    with pytest.raises(DataError, match=rf"{folder}/b.jpg: not a readable image"):
        build(config)
