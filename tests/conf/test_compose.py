"""Every config the tree can compose validates into typed dataclasses; bad values fail loudly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.errors import ConfigError
from harness.resolve import resolve_config
from tests.conftest import COMPANIONS, REPO_ROOT, compose

CONF = REPO_ROOT / "conf"


def group_options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("model", group_options("model"))
@pytest.mark.parametrize("precision", group_options("precision"))
def test_every_model_and_precision_composes(model: str, precision: str) -> None:
    config = resolve_config(
        compose([f"model={model}", f"precision={precision}", *COMPANIONS.get(f"precision={precision}", [])])
    )
    assert config.model.variant == model and config.precision.name == precision


@pytest.mark.parametrize("experiment", group_options("experiment"))
def test_every_experiment_composes(experiment: str) -> None:
    resolve_config(compose([f"+experiment={experiment}"]))


def test_build_command_runs_only_the_build_stage() -> None:
    config = resolve_config(compose([], config_name="build"))
    assert config.task == "build" and config.stages == ("build",)


@pytest.mark.parametrize("group", ["dataset", "vdsp"])
def test_every_dataset_and_vdsp_option_composes(group: str) -> None:
    for option in group_options(group):
        config = resolve_config(compose([f"{group}={option}"]))
        assert config.vdsp_params.output_size == (224, 224)


@pytest.mark.parametrize("backend", group_options("backend"))
def test_every_backend_resolves_to_its_config_dataclass(backend: str) -> None:
    from harness.backends import get_backend

    config = resolve_config(compose([f"backend={backend}", *COMPANIONS.get(f"backend={backend}", [])]))
    assert isinstance(config.backend, get_backend(backend).config_type)


def test_mappings_set_on_the_command_line_replace_the_defaults() -> None:
    # `vdsp.params={...}` failed inside OmegaConf ("'NoneType' object has no attribute 'get'"), and
    # `backend.aot_inductor_configs={max_autotune:true}` (the README's example) was an unknown key of `{}`.
    import yaml

    from harness.config.reproduce import override_value

    official = yaml.safe_load((CONF / "vdsp" / "official_dinov2.yaml").read_text())["params"]
    inline = resolve_config(compose([f"vdsp.params={override_value(official)}"]))
    assert inline.preprocessing == resolve_config(compose(["vdsp=official_dinov2"])).preprocessing
    assert inline.preprocessing != resolve_config(compose([])).preprocessing
    aot = ["backend=torch", "backend.artifact=aoti", "stages=[build,perf]"]
    tuned = resolve_config(compose([*aot, "backend.aot_inductor_configs={max_autotune:true}"]))
    assert tuned.backend.aot_inductor_configs == {"max_autotune": True}  # type: ignore[union-attr]
    assert resolve_config(compose(aot)).backend.aot_inductor_configs == {}  # type: ignore[union-attr]


def test_the_unset_perf_settings_are_the_perf_groups_defaults() -> None:
    # A setting is refused where nothing would run by it only when it differs from its unset value.
    import yaml

    from harness.config.perf import UNSET

    defaults = yaml.safe_load((CONF / "perf" / "default.yaml").read_text())
    assert {name: defaults[name] for name in UNSET} == UNSET


def test_defaults_are_typed() -> None:
    config = resolve_config(compose(["debug=tiny"]))
    assert config.model.input_size == (224, 224)
    assert config.build.parity_images == 2 and config.build.exporter == "legacy"
    assert isinstance(config.paths.path("cache"), Path)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.variant=vitx14", r"model.variant='vitx14': expected one of .*did you mean 'vits14'"),
        (
            "precision.name=int4",
            r"precision.name='int4': expected one of \['bf16', 'fp16', 'fp32', 'int8', 'int8_dynamic'\]",
        ),
        ("build.opset=17", r"build.opset=17: expected >= 18"),
        ("build.exporter=tvm", r"build.exporter='tvm': expected one of \['dynamo', 'legacy'\]"),
        (
            "model.input_size=[225,224]",
            r"model.input_size=\[225, 224\]: expected positive multiples of the patch size 14",
        ),
        ("+model.colour=red", r"model.colour: unknown key \(known: \['input_size', 'seed', 'variant', 'weights'\]\)"),
        ("stages=[report]", r"stages\[0\]='report': expected one of \['accuracy', 'build', 'perf'\]"),
        ("dataset.name=coco", r"dataset.name='coco': expected one of \['roxford5k', 'rparis6k', 'synthetic'\]"),
        ("accuracy.normalization=l1", r"accuracy.normalization='l1': expected one of \['per_dimension', 'per_image'\]"),
        ("backend=onnxruntime backend.name=tensorrt", r"backend.name='tensorrt': expected one of .*'onnxruntime'"),
        (
            "+backend.intra_threads=2",
            r"backend.intra_threads: unknown key \(known: .*\); did you mean 'intra_op_threads'",
        ),
        (  # without the +, Hydra's struct check refuses it first: the YAML's keys are listed the same
            "backend=torch backend.compiel=true",
            r"backend.compiel: unknown key \(known: \['aot_inductor_configs', .*'threads'\]\); did you mean 'compile'",
        ),
        ("backend.provider_options.x=1", r"^backend.provider_options.x=1: invalid literal for int"),  # names no key
        ("debug=tiny perf.shape.x=1", r"^perf.shape.x=1: "),
        (  # harness run --help lists it: conf/ holds the groups of every command
            "gate=default",
            r"^gate=default: 'gate' is not a config group of this command \(its groups: \['backend', 'dataset', 'debug', ",
        ),
        ("build.parity_images=two", r"build.parity_images='two': expected int"),
        # null on a key that has none: OmegaConf quotes the key's name where the value goes; Python's None and
        # True are not what was typed
        ("perf.batch=null", r"^perf.batch=null: expected int$"),
        ("model=null", r"^model=null: expected one of \['tiny14', .*'vits14_reg4'\]$"),  # Hydra: "Got NoneType"
        ("model.weights=null", r"^model.weights=null: expected str$"),
        ("backend=torch backend.device=null", r"^backend.device=null: expected str$"),
        ("perf.mode=null", r"^perf.mode=null: expected one of \['async', 'sync'\]$"),
        ("perf.batch=true", r"^perf.batch=true: expected an int$"),
        ("precision=int8 calibration.source=folder", r"^calibration.folder=null: required exactly when"),
        ("perf.scenario=server", r"^perf.target_qps=null: perf.scenario=server needs an arrival rate > 0$"),
        (  # MLflow 3.17 refuses it only at the first write, after the run
            "tracking.uri=file:///tmp/mlruns",
            r"tracking.uri='file:///tmp/mlruns': MLflow's file store is in maintenance mode and refuses new runs; use",
        ),
        ("tracking.uri=/tmp/mlruns", r"tracking.uri='/tmp/mlruns': MLflow's file store is in maintenance mode"),
        (
            "tracking.uri=htpt://localhost:5000",
            r"tracking.uri='htpt://localhost:5000': scheme='htpt': .*did you mean 'http'",
        ),
        ("stages=[build,perf,perf]", r"stages=\['build', 'perf', 'perf'\]: expected .*, each once"),
        (  # a list written without its brackets: the message shows how, and what goes inside
            "stages=build",
            r"^stages='build': expected a list in brackets \(stages=\[...\]\) of items each one of 'build', 'perf', ",
        ),
        (
            "perf.shape=224",
            r"^perf.shape=224: expected a list in brackets \(perf.shape=\[...\]\) of 3 items: int, int, int$",
        ),
        ("perf.windows=1", r"perf.windows=1, perf.max_window_cv=0.1: expected >= 2 windows"),
        ("perf.max_window_cv=-1", r"perf.windows=8, perf.max_window_cv=-1.0: expected .* a CV >= 0"),
        ("perf.arrival_seed=-1", r"perf.arrival_seed=-1: expected a seed >= 0"),
        # A setting of a feature the config leaves off: it changed nothing measured, yet was recorded and hashed.
        (
            "perf.queue_depth=4",
            r"^perf.queue_depth=4: only perf.mode=async uses it, and this config has perf.mode=sync \(set "
            r"perf.mode=async, or leave it unset\)$",
        ),
        (
            "perf.scenario=offline perf.arrival_seed=3",
            r"^perf.arrival_seed=3: only perf.scenario=server uses it, and this config has perf.scenario=offline",
        ),
        (
            "perf.search_tolerance=0.1 perf.max_probes=3",
            r"^perf.search_tolerance=0.1, perf.max_probes=3: only perf.search=peak uses them, and this config has "
            r"perf.search=none \(set perf.search=peak, or leave them unset\)$",
        ),
        (
            "perf.stability_window_s=0.5 perf.max_windows=20",
            r"^perf.stability_window_s=0.5, perf.max_windows=20: only perf.stability=true uses them, and this config "
            r"has perf.stability=false",
        ),
        (  # every request queued at the start: its e2e p99 is the run's length, so a p99 was always over the bound
            "perf.scenario=offline perf.latency_bound_ms=100",
            r"^perf.latency_bound_ms=100.0: perf.scenario=offline queues every request at the start, so its e2e p99 "
            r"is about the length of the run, not a service latency \(MLPerf's Offline scenario has no bound\): leave "
            r"it unset, or bound perf.scenario=closed or server$",
        ),
        ("calibration.seed=-2", r"calibration.seed=-2: expected a seed >= 0"),
        ("dataset.synthetic_seed=-3", r"dataset.synthetic_seed=-3: expected a seed >= 0"),
        (
            "perf.shape=[3,112,112]",
            r"perf.shape=\[3, 112, 112\]: the build takes \[3, 224, 224\] \(model.input_size\): set model.input_size",
        ),
        (
            "backend=sleep stages=[perf] perf.shape=[1,224,224]",
            r"perf.shape=\[1, 224, 224\]: the build takes \[3, 224,",
        ),
        (
            "vdsp=official_dinov2 model.input_size=[112,112] stages=[build,perf]",
            r"vdsp output 224x224 \(H x W\) does not match model.input_size",
        ),
        (
            "model=tiny14 model.weights=official",
            r"model.weights=official: variant 'tiny14' has no official checkpoint \(variants with one: \['vits14', ",
        ),
        # A mapping for a list, a list for a mapping: "Cannot merge DictConfig with ListConfig", or "=None"
        (
            "backend.provider_options={device_id:0}",
            r"^backend.provider_options=\{device_id:0\}: expected a list in brackets",
        ),
        (
            "backend=torch backend.aot_inductor_configs=[1,2]",
            r"^backend.aot_inductor_configs=\[1, 2\]: expected a mapping",
        ),
        (
            "model.input_size={a:1}",
            r"^model.input_size='\{a:1\}': expected a list in brackets \(model.input_size=\[...\]\)",
        ),
        (  # OmegaConf's "Unexpected type for root: NoneType"
            "precision=fp32 precision.quantization.per_channel=false",
            r"^precision.quantization.per_channel=false: precision.quantization is null in this config, so it has no",
        ),
    ],
)
def test_bad_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_config(compose(override.split()))


@pytest.mark.parametrize(
    ("reads", "config_name", "override", "message"),
    [
        ("GateCommandConfig", "gate", "perf.batch=2", r"perf: unknown key \(known: \['gate', 'paths', 'tracking'\]\)"),
        (
            "GateCommandConfig",
            "gate",
            "gate.alphaa=0.1",
            r"gate.alphaa: unknown key \(known: .*\); did you mean 'alpha'",
        ),
        ("GateCommandConfig", "gate", "gate.alpha=abc", r"gate.alpha='abc': expected float"),
        ("StoreCommandConfig", "run", "perf.batch=2", r"perf: unknown key \(known: \['paths', 'tracking'\]\)"),
        ("StoreCommandConfig", "run", "model=vitl14", r"model: unknown key \(known: \['paths', 'tracking'\]\)"),
        ("StoreCommandConfig", "run", "tracking.urii=x", r"tracking.urii: unknown key .*did you mean 'uri'"),
    ],
)
def test_a_command_refuses_overrides_of_groups_it_does_not_read(
    reads: str, config_name: str, override: str, message: str
) -> None:
    from harness.config import commands
    from harness.config.store import command_config

    with pytest.raises(ConfigError, match=message):
        command_config(getattr(commands, reads), [override], config_name)


def test_a_command_reads_its_groups_typed_with_their_overrides() -> None:
    from harness.config.commands import GateCommandConfig, StoreCommandConfig
    from harness.config.store import command_config

    gate = command_config(GateCommandConfig, ["gate.alpha=0.05", "tracking=off"], "gate")
    assert (
        gate.gate.alpha == 0.05 and gate.tracking.enabled is False and gate.gate.rules["throughput_qps"].kind == "perf"
    )
    store = command_config(StoreCommandConfig, ["tracking.experiment=x", "paths.root=/srv"])
    assert store.tracking.experiment == "x" and store.paths.outputs == "/srv/outputs"


@pytest.fixture
def local_overrides() -> Iterator[Path]:
    """``conf/local/default.yaml`` for one test, when this checkout has none of its own (never touched if so)."""
    path = REPO_ROOT / "conf" / "local" / "default.yaml"
    if path.exists():
        pytest.skip("this checkout has its own conf/local/default.yaml")
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@pytest.mark.parametrize("header", ["", "# @package _global_\n"])
def test_a_machines_local_file_is_plain_overrides_of_the_whole_config(local_overrides: Path, header: str) -> None:
    # Written as the README says (tracking.uri and the like at the top), it was refused: "local: unknown key".
    local_overrides.write_text(f"{header}tracking:\n  experiment: mine\nperf:\n  batch: 3\n")
    config = resolve_config(compose(["debug=tiny"]))
    assert (config.tracking.experiment, config.perf.batch) == ("mine", 3)
    assert resolve_config(compose(["debug=tiny", "perf.batch=5"])).perf.batch == 5  # the command line wins
    from harness.config.commands import GateCommandConfig
    from harness.config.store import command_config

    assert command_config(GateCommandConfig, [], "gate").tracking.experiment == "mine"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"tracking: [\n", ", line 2: not YAML (expected the node content, but found '<stream end>')"),
        (b"tracking:\n  uri: caf\xe9\n", ": not UTF-8 text ('utf-8' codec can't decode byte 0xe9 in position 20"),
    ],
    ids=["not-yaml", "latin-1"],
)
def test_a_local_file_that_cannot_be_read_is_named_not_the_first_override(
    local_overrides: Path, content: bytes, message: str
) -> None:
    # Every composition fails on it, so the first override was blamed: "error: debug=tiny: while parsing a flow node".
    from harness.config.commands import GateCommandConfig
    from harness.config.store import command_config

    local_overrides.write_bytes(content)
    with pytest.raises(ConfigError) as refused:
        compose(["debug=tiny", "perf.batch=2"])
    assert str(refused.value).startswith(f"{local_overrides}{message}")
    with pytest.raises(ConfigError) as refused_too:  # the other commands' configs
        command_config(GateCommandConfig, [], "gate")
    assert str(refused_too.value) == str(refused.value)


def test_a_sweeps_fixed_override_that_only_its_swept_groups_make_valid_is_told_to_sweep_it() -> None:
    # Hydra composes the fixed overrides before the swept groups: every job here is int8, yet the sweep stopped
    # on "Unexpected type for root: NoneType". A key swept with its one value is set in each job.
    from harness.config.store import sweep_plan

    with pytest.raises(ConfigError) as refused:
        sweep_plan(["debug=tiny", "precision=int8,int8_dynamic", "precision.quantization.per_channel=false"])
    assert str(refused.value).endswith(
        "(a sweep's fixed overrides are applied before its swept groups (precision=int8,int8_dynamic): to set it in "
        "each job instead, sweep it with its one value: 'precision.quantization.per_channel=choice(false)')"
    )
    plan = sweep_plan(["debug=tiny", "precision=int8,int8_dynamic", "precision.quantization.per_channel=choice(false)"])
    assert plan is not None
    for job in plan.jobs:
        quantization = resolve_config(compose(list(job))).precision.quantization
        assert quantization is not None and quantization.per_channel is False


def test_a_sweep_over_a_glob_of_group_options_expands_as_hydra_does() -> None:
    # `model=glob(tiny*_reg4)` is Hydra's sweep over a group's options; the harness's check of every job before
    # the sweep said only "error: ConfigLoader is not set" and ran nothing.
    from harness.config.store import sweep_plan

    plan = sweep_plan(["debug=tiny", "model=glob(tiny*_reg4)", "perf.batch=1,2"])
    assert plan is not None and plan.swept == {"model", "perf.batch"}
    assert [job[1:] for job in plan.jobs] == [
        ("model=tiny14_reg4", "perf.batch=1"), ("model=tiny14_reg4", "perf.batch=2"),
        ("model=tinyg14_reg4", "perf.batch=1"), ("model=tinyg14_reg4", "perf.batch=2"),
    ]  # fmt: skip
    assert sweep_plan(["hydra/launcher=glob(slurm*)"]).jobs == (  # type: ignore[union-attr]
        ("hydra/launcher=slurm",),
        ("hydra/launcher=slurm_gpus",),
    )
