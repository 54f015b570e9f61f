"""`harness rerun`: a run's saved config composed again from its result.json, checked, and run."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from harness.config.reproduce import override_value, reproducing_overrides, with_own_overrides
from harness.errors import ConfigError
from harness.resolve import resolve_config
from harness.result import load_result
from harness.tracking.records import config_hash
from tests.conftest import compose, harness_in

CONFIGS = [
    ["debug=tiny", "stages=[build,perf]", "perf.batch=4", "perf.scenario=server", "perf.target_qps=300"],
    ["debug=tiny", "precision=int8", "calibration.images=4", "perf.instances=2", "perf.processes=2"],
    ["model=vitl14_reg4", "precision=fp16", "vdsp=official_dinov2", "accuracy.normalization=per_dimension"],
    ["backend=torch", "backend.threads=1", "precision=bf16", "stages=[build,perf]", "perf.stability=true"],
    ["backend=vastai", "precision=fp16", "backend.compile_options.opt_level=1", "vdsp=official_dinov2"],
    ["backend.providers=[CUDAExecutionProvider,CPUExecutionProvider]",
     "backend.provider_options=[{device_id:0,arena_extend_strategy:kSameAsRequested},{}]", "perf.mode=async",
     "backend.session_config={session.intra_op.allow_spinning:'0'}", "model.weights='/models/o\\'neil\\dinov2.pth'"],
    ["+experiment=ci_perf"],
]  # fmt: skip
LOCAL = ("paths", "tracking", "progress")


def saved_config(overrides: list[str], config_name: str = "run") -> dict[str, Any]:
    """The config a run of ``overrides`` writes into its result.json, read back as JSON."""
    portable = resolve_config(compose(overrides, config_name=config_name)).portable()
    return json.loads(json.dumps(dataclasses.asdict(portable)))


def measured(config: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in config.items() if key not in LOCAL}


@pytest.mark.parametrize("overrides", CONFIGS, ids=lambda overrides: " ".join(overrides)[:60])
def test_the_overrides_compose_the_saved_config_again(overrides: list[str]) -> None:
    saved = saved_config(overrides)
    again = saved_config(reproducing_overrides(saved, "run"))
    assert measured(again) == measured(saved)
    assert config_hash(again) == config_hash(saved)  # the gate pairs a rerun with the run it reran


def test_a_setting_at_its_default_is_no_override() -> None:
    # The torch backend's Inductor settings are null in conf/ and {} once resolved: every torch rerun printed
    # `backend.aot_inductor_configs={}`.
    assert reproducing_overrides(saved_config(["backend=torch"]), "run") == [
        "model=vits14_reg4", "precision=fp32", "backend=torch", "dataset=synthetic",
    ]  # fmt: skip


def test_a_build_runs_config_is_composed_with_the_build_command() -> None:
    saved = saved_config(["debug=tiny", "build.opset=19"], config_name="build")
    assert measured(saved_config(reproducing_overrides(saved, "build"), config_name="build")) == measured(saved)


def test_what_cannot_be_composed_again_is_refused_naming_it() -> None:
    saved = saved_config(["debug=tiny"])
    gone = {**saved, "model": {**saved["model"], "variant": "vitx14"}}
    with pytest.raises(ConfigError, match="model='vitx14': expected one of"):
        reproducing_overrides(gone, "run")
    unknown = {**saved, "perf": {**saved["perf"], "batchsize": 8}}
    with pytest.raises(ConfigError, match=r"perf\.batchsize: unknown key .* did you mean 'batch'"):
        reproducing_overrides(unknown, "run")
    # A mapping Hydra merges into the one the group composes (not replaces) would not come back as saved.
    merged = saved_config(["backend=vastai", "precision=fp16"])
    merged["backend"]["compile_options"] = {"opt_level": 1}  # as `~backend.compile_options.data_type ...` makes it
    with pytest.raises(ConfigError, match=r"composed again .*: backend\.compile_options\.data_type \(not saved, "):
        reproducing_overrides(merged, "run")
    # The vdsp params are composed over the default group's null: replaced, whichever group gave them.
    official = saved_config(["vdsp=official_dinov2"])
    official["vdsp"]["params"] = {"OpType": official["vdsp"]["params"]["OpType"]}
    assert "vdsp.params={OpType:FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR}" in reproducing_overrides(official, "run")


@pytest.mark.parametrize(
    "value",
    ["plain", "two words", "true", "null", "1e3", "it's", "back\\slash\\", "quote\\'d", "", [1, 2.5, "x y"],
     {"key": [None, True]}, math.inf, -1.5e-7, 0],
)  # fmt: skip
def test_a_value_is_written_so_that_hydra_reads_it_back(value: object) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    written = override_value(value)
    assert OverridesParser.create().parse_overrides([f"key={written}"])[0].value() == value, written


def test_the_users_overrides_come_last_and_a_group_chosen_anew_keeps_none_of_the_saved_settings() -> None:
    saved = ["precision=int8", "precision.parity_min_cosine=0.99", "perf.batch=4", "perf.warmup=1"]
    assert with_own_overrides(saved, ["precision=fp16", "perf.batch=8"]) == [
        "perf.warmup=1", "precision=fp16", "perf.batch=8",
    ]  # fmt: skip
    assert with_own_overrides(saved, ["+perf.batch=2"]) == [*saved[:2], saved[3], "+perf.batch=2"]


@pytest.mark.process
def test_a_rerun_runs_the_saved_config_with_the_overrides_given(tmp_path: Path) -> None:
    first = harness_in(tmp_path, "run", "debug=tiny", "backend=sleep", "stages=[perf]", "perf.batch=3",
                       "backend.latency_us=500", "tracking=off")  # fmt: skip
    assert first.returncode == 0, first.stderr
    printed = first.stdout.strip().splitlines()[-1]
    original = load_result(Path(tmp_path / printed))
    shown = harness_in(tmp_path, "rerun", printed, "--print")
    assert shown.returncode == 0 and shown.stdout.startswith(f"rerun of {printed}: harness run model=tiny14_reg4 ")
    assert (
        "backend=sleep" in shown.stdout
        and "perf.batch=3" in shown.stdout
        and "backend.latency_us=500.0" in (shown.stdout)
    )
    assert shown.stdout.rstrip().endswith(f" rerun_of={original.run_uid}") and original.config.rerun_of is None
    assert len(list((tmp_path / "outputs" / "run").glob("*/*"))) == 1  # --print runs nothing

    again = harness_in(tmp_path, "rerun", str(Path(printed).parent), "tracking=off")
    assert again.returncode == 0, again.stderr
    rerun = load_result(tmp_path / again.stdout.strip().splitlines()[-1])
    assert rerun.run_dir != original.run_dir and rerun.status == "ok" and rerun.config.rerun_of == original.run_uid
    as_saved = [json.loads(json.dumps(dataclasses.asdict(result.config))) for result in (original, rerun)]
    assert config_hash(as_saved[0]) == config_hash(as_saved[1])

    changed = harness_in(tmp_path, "rerun", printed, "perf.batch=2", "tracking=off")
    assert changed.returncode == 0, changed.stderr
    batch_two = load_result(tmp_path / changed.stdout.strip().splitlines()[-1])
    assert (
        batch_two.config
        == dataclasses.replace(
            original.config, perf=dataclasses.replace(original.config.perf, batch=2), rerun_of=original.run_uid
        )
        and batch_two.perf is not None
        and batch_two.perf.batch == 2
    )

    missing = harness_in(tmp_path, "rerun", "outputs/nowhere")
    assert missing.returncode == 2 and missing.stderr == "error: outputs/nowhere: no such folder\n"
    assert harness_in(tmp_path, "rerun").returncode == 2
    helped = harness_in(tmp_path, "rerun", "--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: harness rerun RUN [KEY=VALUE ...]")
