"""Benchmark fixtures: the real ViT-S/14-reg4 fp32 ONNX artifact, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.config.schema import RunConfig
from harness.export.stage import build_artifact
from harness.models.variants import get_variant
from harness.models.weights import load_backbone
from harness.resolve import resolve_config
from tests.conftest import compose


@pytest.fixture(scope="session")
def vits_artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, str]:
    cache = tmp_path_factory.mktemp("bench-cache")
    config = resolve_config(compose(["model=vits14_reg4", f"paths.cache={cache}", "build.parity_images=2"]))
    model, weights = load_backbone(
        get_variant("vits14_reg4"),
        weights="random",
        seed=0,
        cache_dir=Path(cache),
        input_size=(224, 224),
        progress=False,
    )
    return config, str(build_artifact(config, model, weights).artifact[0])
