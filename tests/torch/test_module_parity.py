"""The torch module's build (backend.artifact=module): nothing exported or cached, but the module each worker
builds is checked against torch fp32 on every run, at the run's batch when it is compiled."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

from harness.backends.torch_config import checks_module
from harness.export.torch_module import check_module
from harness.models.variants import get_variant
from harness.models.weights import backbone_from
from harness.pipeline import run
from harness.result import load_result
from harness.summary import format_summary
from harness.tracking.records import tags_of
from tests.conftest import run_config
from tests.torch.test_torch_backend import CPU


@pytest.mark.parametrize(
    ("changes", "checked"),
    [({}, True), ({"compile": True}, True), ({"device": "cuda"}, True), ({"artifact": "aoti"}, False)],
)
def test_every_module_is_checked_and_a_package_where_it_is_built(changes: dict, checked: bool) -> None:
    assert checks_module(dataclasses.replace(CPU, **changes)) is checked


def test_the_eager_fp32_module_matches_the_reference_as_the_workers_load_it(cache_dir: Path, tmp_path: Path) -> None:
    result = run(run_config(cache_dir, "backend=torch", "stages=[build]", "tracking=off"), run_dir=tmp_path / "run")
    assert result.status == "ok", result.error
    assert result.build is not None and result.build.parity.min_cosine > 0.9999999


def test_a_bf16_module_is_checked_against_fp32_and_nothing_is_cached(cache_dir: Path, tmp_path: Path) -> None:
    config = run_config(
        cache_dir, "backend=torch", "precision=bf16", "stages=[build,perf]", "perf.iterations=3", "tracking=off"
    )
    result = run(config, run_dir=tmp_path / "run")
    assert result.status == "ok", result.error
    build = result.build
    assert build is not None and build.artifact_path is None and build.manifest is None and build.cache_hit is None
    assert build.artifact_folder is None
    # bf16 keeps 8 bits of mantissa: close to fp32, measurably not equal to it.
    assert build.parity.passed and 0.999 <= build.parity.min_cosine < 0.999999
    assert build.parity.runtime == f"torch {torch.__version__} eager module on cpu"
    assert len(build.parity.images) == config.build.parity_images
    assert not (cache_dir / "builds").exists()
    rows = dict(line.split(maxsplit=1) for line in format_summary(result).splitlines())
    assert rows["artifact"] == "none: each worker builds the module in memory from the model config"
    assert rows["parity"].startswith(f"min cos {build.parity.min_cosine:.7f} (>= 0.999), max abs err ")
    assert rows["parity"].endswith(" on 2 photos, the module as the workers build it")
    assert load_result(tmp_path / "run") == result


def test_a_module_that_drifts_from_fp32_fails_the_run_before_it_is_timed(cache_dir: Path, tmp_path: Path) -> None:
    config = run_config(
        cache_dir, "backend=torch", "precision=fp16", "precision.parity_min_cosine=1.0", "stages=[build,perf]",
        "perf.iterations=3", "tracking=off",
    )  # fmt: skip
    result = run(config, run_dir=tmp_path / "run")
    assert result.status == "failed" and result.error is not None and result.perf is None
    assert result.error.type == "BuildError"
    assert result.error.message.startswith(
        "tiny14_reg4 eager module on cpu: parity with torch fp32 failed (fp16): min cosine 0.9999"
    )


@pytest.mark.slow
def test_a_compiled_module_is_checked_with_the_one_graph_the_workers_time(cache_dir: Path, tmp_path: Path) -> None:
    # 4 photos at batch 3: the last batch is filled up to 3, so one graph is compiled, not one for 3 and one for 1.
    config = run_config(
        cache_dir, "backend=torch", "backend.compile=true", "stages=[build]", "perf.batch=3", "build.parity_images=4",
        "tracking=off",
    )  # fmt: skip
    torch._dynamo.reset()
    counters.clear()
    result = run(config, run_dir=tmp_path / "run")
    assert result.status == "ok", result.error
    assert result.build is not None and result.build.parity.passed and len(result.build.parity.images) == 4
    assert result.build.parity.runtime.endswith("module, torch.compile mode=default on cpu")
    assert counters["stats"]["unique_graphs"] == 1


def test_a_compiled_module_serves_open_loop_calls_at_the_batch_it_was_compiled_for(
    cache_dir: Path, tmp_path: Path
) -> None:
    config = run_config(
        cache_dir, "backend=torch", "backend.compile=true", "stages=[build,perf]", "perf.batch=3",
        "perf.scenario=server", "perf.target_qps=200", "perf.max_queue_delay_ms=2", "perf.iterations=30",
        "tracking=off",
    )  # fmt: skip
    result = run(config, run_dir=tmp_path / "run")
    assert result.status == "ok", result.error
    assert result.perf is not None and result.perf.filled_batches
    assert load_result(tmp_path / "run").perf.filled_batches  # type: ignore[union-attr]
    assert tags_of(result.to_dict())["harness.filled_batches"] == "true"
    perf_line = next(line for line in format_summary(result).splitlines() if line.startswith("  perf "))
    assert "server 200 qps offered (latency from scheduled arrival; every call runs the full batch of 3, one " in (
        perf_line
    )
    eager = run(dataclasses.replace(config, backend=CPU), run_dir=tmp_path / "eager")
    assert eager.status == "ok" and eager.perf is not None and not eager.perf.filled_batches


@pytest.mark.slow
def test_each_check_in_one_process_compiles_its_own_graph_past_torch_compiles_limit(cache_dir: Path) -> None:
    # A sweep's jobs run in one process: past dynamo's recompile limit (8, here 2) the module would run eager.
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(recompile_limit=2):
        for batch in (1, 2, 3):
            config = run_config(
                cache_dir, "backend=torch", "backend.compile=true", f"perf.batch={batch}", "tracking=off"
            )
            model = backbone_from(get_variant(config.model.variant), checkpoint=None, seed=0, input_size=(224, 224))
            assert check_module(config, model).parity.passed
    assert counters["stats"]["unique_graphs"] == 3


def test_a_jobs_thread_setting_does_not_outlive_it_in_the_harness_process(cache_dir: Path, tmp_path: Path) -> None:
    # A sweep's jobs run one after another in one process; the second keeps torch's own thread count.
    default = torch.get_num_threads()
    pinned = 1 if default > 1 else 2
    runs = []
    for threads in (pinned, 0):
        config = run_config(
            cache_dir, "backend=torch", f"backend.threads={threads}", "stages=[build,perf]", "perf.iterations=3",
            "tracking=off",
        )  # fmt: skip
        runs.append(run(config, run_dir=tmp_path / str(threads)))
    assert [result.status for result in runs] == ["ok", "ok"]
    assert [result.perf.backend_resolved["cpu_threads"] for result in runs if result.perf] == [pinned, default]
    assert torch.get_num_threads() == default
