"""The synthetic dataset: revisitop layout, labels from survival, deterministic for a seed."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.accuracy.revisited import evaluate
from harness.data.datasets import gnd_path, image_path
from harness.data.synthetic import write_synthetic
from harness.errors import ConfigError


def digest(folder: Path) -> str:
    content = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            content.update(path.name.encode() + path.read_bytes())
    return content.hexdigest()


def test_layout_labels_and_determinism(tmp_path: Path) -> None:
    truth = write_synthetic(tmp_path / "a", images=40, queries=4, seed=3)
    assert len(truth.imlist) == 40 and len(truth.qimlist) == 4
    for image in (*truth.imlist, *truth.qimlist):
        with Image.open(image_path(tmp_path / "a", "synthetic", image)) as opened:
            assert opened.format == "JPEG"
    labelled = [index for query in truth.gnd for key in ("easy", "hard", "junk") for index in query[key]]  # type: ignore[attr-defined]
    assert len(labelled) == len(set(labelled)) == 4 * (80 // 12)  # each view belongs to one query, once
    assert all(truth.imlist[index].startswith("view_") for index in labelled)
    assert sum(len(query["easy"]) for query in truth.gnd) > 0 and sum(len(query["hard"]) for query in truth.gnd) > 0  # type: ignore[arg-type]
    write_synthetic(tmp_path / "b", images=40, queries=4, seed=3)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    write_synthetic(tmp_path / "c", images=40, queries=4, seed=4)
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    assert gnd_path(tmp_path / "a", "synthetic").is_file()


def test_views_of_a_landmark_are_retrievable_by_pixels(tmp_path: Path) -> None:
    """Colour-histogram descriptors already rank easy views far above chance: the labels mean something."""
    root = tmp_path / "data"
    truth = write_synthetic(root, images=48, queries=4, seed=0)

    def histogram(name: str) -> np.ndarray:
        with Image.open(image_path(root, "synthetic", name)) as image:
            pixels = np.asarray(image.convert("RGB").resize((64, 64)), dtype=np.int64) // 64
        return np.bincount((pixels[..., 0] * 16 + pixels[..., 1] * 4 + pixels[..., 2]).ravel(), minlength=64).astype(
            np.float32
        )

    results = evaluate(
        np.stack([histogram(name) for name in truth.qimlist]),
        np.stack([histogram(name) for name in truth.imlist]),
        truth.gnd,
    )
    chance = 100 * np.mean([len(query["easy"]) / len(truth.imlist) for query in truth.gnd])  # type: ignore[arg-type]
    assert results["easy"].map > 2 * chance


def test_bad_sizes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="queries=0"):
        write_synthetic(tmp_path, queries=0)
    with pytest.raises(ConfigError, match="images=3: expected at least 10"):
        write_synthetic(tmp_path, images=3, queries=5)
