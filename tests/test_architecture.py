"""The architecture's promises: light results, one home per default, typed config errors before any stage."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import typing

import pytest

from harness.backends import backend_names, get_backend
from harness.config.commands import GateConfig, GateRule
from harness.config.convert import from_mapping
from harness.config.schema import RunConfig
from tests.conftest import COMPANIONS, REPO_ROOT


def test_reading_results_imports_no_runtime() -> None:
    probe = "import sys, harness.result, harness.summary, harness.report; print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", probe], capture_output=True, text=True, check=True)
    imported = set(eval(done.stdout))  # the printed list of module names
    assert not {"torch", "onnxruntime", "onnx"} & imported
    assert "torch" not in {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()[1:]}


def _schema_classes(cls: type) -> typing.Iterator[type]:
    yield cls
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        for hint in (hints[item.name], *typing.get_args(hints[item.name])):
            if dataclasses.is_dataclass(hint) and not item.metadata.get("resolved"):
                yield from _schema_classes(typing.cast(type, hint))


@pytest.mark.parametrize(
    "cls",
    [*_schema_classes(RunConfig), GateConfig, GateRule, *(get_backend(name).config_type for name in backend_names())],
    ids=lambda cls: cls.__name__,
)
def test_defaults_live_only_in_the_yaml_files(cls: type) -> None:
    with_default = [
        item.name
        for item in dataclasses.fields(cls)
        if not item.metadata.get("resolved")
        and (item.default is not dataclasses.MISSING or item.default_factory is not dataclasses.MISSING)
    ]
    assert with_default == [], f"{cls.__name__} repeats defaults that belong in conf/: {with_default}"


def test_every_conf_group_option_sets_every_key() -> None:
    from harness.config.store import compose
    from harness.resolve import resolve_config

    for group in ("backend", "dataset", "perf", "precision", "tracking", "vdsp", "paths", "model"):
        for option in sorted((REPO_ROOT / "conf" / group).glob("*.yaml")):
            choice = f"{group}={option.stem}"
            resolve_config(compose([choice, *COMPANIONS.get(choice, [])]))
    for option in sorted((REPO_ROOT / "conf" / "experiment").glob("*.yaml")):
        resolve_config(compose([f"+experiment={option.stem}"]))
    for option in sorted((REPO_ROOT / "conf" / "gate").glob("*.yaml")):
        from_mapping(GateConfig, compose([f"gate={option.stem}"], "gate")["gate"], key="gate")
