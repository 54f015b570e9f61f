"""FLOPs from the architecture and from the graph, and efficiency against the model's own GEMMs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from harness.environment import usable_cores
from harness.models.variants import get_variant
from harness.perf.efficiency import GemmTiming, flops_per_image, model_gemms, onnx_gemm_flops
from harness.tracking.records import metrics_of
from tests.conftest import run_config
from tests.export.test_onnx_build import build
from tests.perf.test_loadgen import measure, sleep_config


def test_flops_per_image_are_the_published_counts_less_the_skipped_last_block_rows() -> None:
    # docs/dinov2.md: 12.5, 47.1, 164.6, 608 GFLOP per 224x224 image for the register models when every block
    # runs on every token; the deployed forward's last block skips, for the 256 + 4 tokens other than CLS, the
    # query, projection and feed-forward rows and their attention rows (scores and x V).
    published = {"vits14_reg4": 12.455, "vitb14_reg4": 47.078, "vitl14_reg4": 164.644, "vitg14_reg4": 608.349}
    for variant, full in published.items():
        spec = get_variant(variant)
        tokens, width = 1 + 4 + 256, spec.embed_dim
        hidden_out = 2 * spec.ffn_hidden if spec.feed_forward == "swiglu" else spec.ffn_hidden
        per_row = width * width + width * width + width * hidden_out + spec.ffn_hidden * width + 2 * tokens * width
        skipped = 2 * (tokens - 1) * per_row / 1e9
        assert flops_per_image(spec, (224, 224)) / 1e9 == pytest.approx(full - skipped, abs=1e-3), variant
    # Fewer tokens (no registers), and a larger image, change the count as the token arithmetic says.
    assert flops_per_image(get_variant("vits14"), (224, 224)) < flops_per_image(get_variant("vits14_reg4"), (224, 224))
    assert flops_per_image(get_variant("vits14"), (448, 448)) > 4 * flops_per_image(get_variant("vits14"), (224, 224))


@pytest.mark.parametrize(
    ("variant", "external_data"),
    [("tiny14", "never"), ("tiny14_reg4", "never"), ("tinyg14_reg4", "never"), ("tiny14_reg4", "always")],
)
def test_the_graph_count_equals_the_architecture_count(cache_dir: Path, variant: str, external_data: str) -> None:
    # With its weights in a data file (as ViT-g's build is), the graph is counted from wherever the run
    # started: not from the artifact's folder, where that file is.
    artifact = Path(
        build(run_config(cache_dir, f"model={variant}", f"build.external_data={external_data}")).artifact_path
    )
    assert (
        Path.cwd() != artifact.parent
        and (external_data == "never") != artifact.with_name(artifact.name + ".data").exists()
    )
    spec = get_variant(variant)
    for batch in (1, 3):
        expected = sum(gemm.flops * count for gemm, count in model_gemms(spec, batch, (224, 224)).items())
        assert onnx_gemm_flops(artifact, batch) == expected


def test_weights_are_constants_of_the_timed_graph_as_they_are_of_the_model() -> None:
    # ONNX Runtime prepacks a constant MatMul operand (1-18% faster per shape here): a weight fed as an input
    # would time the GEMMs slower than the model runs them.
    import onnx

    from harness.perf.efficiency import _matmul_graph

    spec = get_variant("vits14_reg4")
    gemms = model_gemms(spec, 2, (224, 224))
    attention = {gemm for gemm in gemms if not gemm.weights}
    assert attention and all(gemm.batches == 2 * spec.num_heads for gemm in attention)
    assert sum(count for gemm, count in gemms.items() if gemm in attention) == 2 * spec.depth  # scores, x V
    rng = np.random.default_rng(0)
    for gemm in (next(gemm for gemm in gemms if gemm.weights), next(iter(attention))):
        shape = (gemm.batches,) if gemm.batches > 1 else ()
        right = rng.standard_normal((*shape, gemm.k, gemm.n)).astype(np.float32)
        graph = onnx.load_from_string(_matmul_graph(gemm, "float32", right)).graph
        if gemm.weights:
            assert [value.name for value in graph.input] == ["a"]
            np.testing.assert_array_equal(onnx.numpy_helper.to_array(graph.initializer[0]), right)
        else:
            assert [value.name for value in graph.input] == ["a", "b"] and not graph.initializer


def test_a_cpu_onnxruntime_run_reports_its_efficiency_once_timed_per_machine(cache_dir: Path, tmp_path: Path) -> None:
    config = run_config(
        cache_dir, "stages=[build,perf]", "backend.intra_op_threads=1", "perf.iterations=20", "perf.min_samples=20"
    )
    artifact = build(config).artifact_path
    result = measure(config, tmp_path / "first", artifact)
    efficiency = result.efficiency
    assert efficiency is not None and efficiency.flops_per_image == efficiency.flops_per_image_onnx == 66_788_864
    assert efficiency.efficiency == pytest.approx(efficiency.gemm_time_us / efficiency.model_time_us)
    assert efficiency.model_time_us == pytest.approx(result.latency_us.model.avg)
    assert efficiency.achieved_gflops == pytest.approx(66_788_864 * result.throughput_qps / 1e9)
    assert efficiency.efficiency > 0 and "1 intra-op thread," in efficiency.runtime
    (cached,) = (cache_dir / "gemm").iterdir()
    again = measure(config, tmp_path / "again", artifact)
    assert again.efficiency is not None and again.efficiency.gemm_time_us == efficiency.gemm_time_us  # from the cache
    assert list((cache_dir / "gemm").iterdir()) == [cached]
    (tmp_path / "result.json").write_text(json.dumps({"perf": {"efficiency": {"efficiency": efficiency.efficiency}}}))
    assert metrics_of(json.loads((tmp_path / "result.json").read_text()))["efficiency_pct"] == [
        100 * efficiency.efficiency
    ]


def test_overlapping_calls_are_measured_against_the_runs_time_per_batch(cache_dir: Path, tmp_path: Path) -> None:
    # Two instances in two processes on one device: each call lasts as long as the device is shared, so the
    # GEMMs are compared with the run's wall time per batch, and efficiency agrees with achieved / GEMM GFLOP/s.
    config = run_config(
        cache_dir, "stages=[build,perf]", "backend.intra_op_threads=1", "perf.instances=2", "perf.processes=2",
        "perf.iterations=40", "perf.min_samples=40",
    )  # fmt: skip
    result = measure(config, tmp_path, build(config).artifact_path)
    efficiency = result.efficiency
    assert efficiency is not None
    assert efficiency.model_time_us == pytest.approx(result.forward_time_s * 1e6 / result.batches)
    assert efficiency.model_time_us < result.latency_us.model.avg  # the calls overlapped
    assert efficiency.efficiency == pytest.approx(efficiency.achieved_gflops / efficiency.gemm_gflops)
    # Each instance ran on a core of its own, the GEMMs alone were timed on one: the cores the run used run two
    # instances' GEMMs at once (against one core's, the wall time per batch read 126%).
    side_by_side = min(2, usable_cores())
    (cached,) = (cache_dir / "gemm").iterdir()
    one_instance_us = json.loads(cached.read_text())["gemm_time_us"]
    assert efficiency.gemm_time_us == pytest.approx(one_instance_us / side_by_side)
    assert efficiency.efficiency == pytest.approx(efficiency.gemm_time_us / efficiency.model_time_us)
    assert efficiency.runtime.endswith(", 2 instances side by side") == (side_by_side == 2)


def test_an_offline_run_serves_full_batches_and_has_an_efficiency(cache_dir: Path, tmp_path: Path) -> None:
    config = run_config(
        cache_dir, "stages=[build,perf]", "perf.scenario=offline", "perf.batch=2", "perf.iterations=20",
        "perf.min_samples=20",
    )  # fmt: skip
    result = measure(config, tmp_path, build(config).artifact_path)
    efficiency = result.efficiency
    assert result.samples == 40 and result.batches == 20 and efficiency is not None
    assert efficiency.model_time_us == pytest.approx(result.latency_us.model.avg)  # one call at a time
    assert efficiency.efficiency == pytest.approx(efficiency.gemm_time_us / efficiency.model_time_us)


def test_efficiency_is_absent_where_it_is_not_defined(cache_dir: Path, tmp_path: Path) -> None:
    assert measure(sleep_config(cache_dir, "perf.iterations=10"), tmp_path / "sleep").efficiency is None
    config = run_config(cache_dir, "stages=[build,perf]", "perf.iterations=10", "perf.efficiency=false")
    assert measure(config, tmp_path / "off", build(config).artifact_path).efficiency is None


def test_the_torch_backend_is_measured_against_torch_matmul(cache_dir: Path, tmp_path: Path) -> None:
    import torch

    threads_before = torch.get_num_threads()
    config = run_config(
        cache_dir, "backend=torch", "backend.threads=1", "stages=[perf]", "perf.iterations=20", "perf.min_samples=20"
    )
    efficiency = measure(config, tmp_path / "torch").efficiency
    assert efficiency is not None and efficiency.runtime == "torch cpu, 1 thread, float32"
    assert efficiency.flops_per_image == 66_788_864 and efficiency.flops_per_image_onnx is None  # no graph to count
    assert efficiency.efficiency == pytest.approx(efficiency.gemm_time_us / efficiency.model_time_us)
    assert efficiency.gemm_gflops == pytest.approx(66_788_864 / efficiency.gemm_time_us / 1e3)
    assert torch.get_num_threads() == threads_before  # the timing's thread setting does not leak into the harness
    (cached,) = (cache_dir / "gemm").iterdir()
    assert json.loads(cached.read_text())["threads"] == 1


def test_torch_fp16_on_the_cpu_times_its_gemms_in_the_layout_the_model_uses(cache_dir: Path, tmp_path: Path) -> None:
    # torch's CPU fp16 kernel is 2-10x slower for a row-major [k, n] right operand than for nn.Linear's [n, k]
    # weight; timed that way, the GEMMs alone took 156% of this model's whole forward on every run.
    config = run_config(
        cache_dir, "backend=torch", "precision=fp16", "stages=[perf]", "perf.iterations=20", "perf.min_samples=20"
    )
    result = measure(config, tmp_path / "fp16")
    assert result.efficiency is not None and result.efficiency.runtime.endswith("float16")
    assert result.efficiency.efficiency < 1
    assert not any("GEMMs alone timed slower" in warning for warning in result.validity.warnings)


def test_a_cached_timing_slower_than_the_model_is_taken_again(cache_dir: Path, tmp_path: Path) -> None:
    config = run_config(
        cache_dir, "stages=[build,perf]", "backend.intra_op_threads=1", "perf.iterations=20", "perf.min_samples=20"
    )
    artifact = build(config).artifact_path
    measure(config, tmp_path / "first", artifact)
    (cached,) = (cache_dir / "gemm").iterdir()
    timing = json.loads(cached.read_text())
    slow = timing["gemm_time_us"] * 100  # cached when the machine was busy, or slower than it is now
    cached.write_text(json.dumps({**timing, "gemm_time_us": slow}))
    result = measure(config, tmp_path / "again", artifact)
    assert result.efficiency is not None and result.efficiency.gemm_time_us < slow / 10
    assert json.loads(cached.read_text())["gemm_time_us"] == result.efficiency.gemm_time_us  # the cache replaced


@pytest.mark.parametrize("damage", ['{"gemm_time_us": 12', '{"gemm_time_us": 1.0, "renamed_field": 2}'])
def test_a_cached_timing_that_cannot_be_read_is_taken_again_not_the_run_lost(
    cache_dir: Path, tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = run_config(cache_dir, "stages=[build,perf]", "perf.iterations=20", "perf.min_samples=20")
    artifact = build(config).artifact_path
    measure(config, tmp_path / "first", artifact)
    (cached,) = (cache_dir / "gemm").iterdir()
    cached.write_text(damage)  # cut short outside the harness, or written by a version with other fields
    result = measure(config, tmp_path / "again", artifact)
    assert result.efficiency is not None and result.efficiency.gemm_time_us > 0
    assert json.loads(cached.read_text())["gemm_time_us"] == result.efficiency.gemm_time_us  # the cache replaced
    assert f"GEMM timing cache {cached} unreadable (" in caplog.text


def test_a_timing_still_slower_than_the_model_is_called_disturbed(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.perf import stage
    from harness.perf.efficiency import time_gemms

    def disturbed(*arguments: object, **options: Any) -> GemmTiming:
        reuses.append(options.get("reuse", True))
        timing = time_gemms(*arguments, **options)  # type: ignore[arg-type]
        return dataclasses.replace(timing, gemm_time_us=timing.gemm_time_us * 100)  # every timing in a busy moment

    reuses: list[bool] = []
    monkeypatch.setattr(stage, "time_gemms", disturbed)
    config = run_config(
        cache_dir, "stages=[build,perf]", "backend.intra_op_threads=1", "perf.iterations=20", "perf.min_samples=20"
    )
    result = measure(config, tmp_path / "busy", build(config).artifact_path)
    assert reuses == [True, False]  # the cached (here: first) timing, then one taken again
    assert result.efficiency is not None and result.efficiency.efficiency > 1.05
    assert any(
        "the model's GEMMs alone, timed again after the run, were still slower than the whole model" in warning
        for warning in result.validity.warnings
    )
