"""The synthetic dataset: revisitop layout, labels from survival, deterministic for a seed."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from harness.accuracy.revisited import evaluate
from harness.data.datasets import gnd_path, image_path
from harness.data.synthetic import synthetic_name, write_synthetic
from harness.errors import ConfigError, DataError
from tests.conftest import REPO_ROOT


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
        with Image.open(image_path(tmp_path / "a", synthetic_name(40, 4, 3), image)) as opened:
            assert opened.format == "JPEG"
    labelled = [index for query in truth.gnd for key in ("easy", "hard", "junk") for index in query[key]]  # type: ignore[attr-defined]
    assert len(labelled) == len(set(labelled)) == 4 * (80 // 12)  # each view belongs to one query, once
    assert all(truth.imlist[index].startswith("view_") for index in labelled)
    assert sum(len(query["easy"]) for query in truth.gnd) > 0 and sum(len(query["hard"]) for query in truth.gnd) > 0  # type: ignore[arg-type]
    write_synthetic(tmp_path / "b", images=40, queries=4, seed=3)
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    write_synthetic(tmp_path / "c", images=40, queries=4, seed=4)
    assert digest(tmp_path / "a") != digest(tmp_path / "c")
    assert gnd_path(tmp_path / "a", synthetic_name(40, 4, 3)).is_file()


def test_views_of_a_landmark_are_retrievable_by_pixels(tmp_path: Path) -> None:
    """Colour-histogram descriptors already rank easy views far above chance: the labels mean something."""
    root = tmp_path / "data"
    truth = write_synthetic(root, images=48, queries=4, seed=0)

    def histogram(name: str) -> np.ndarray:
        with Image.open(image_path(root, synthetic_name(48, 4, 0), name)) as image:
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


def test_bad_sizes_and_seeds_are_refused(tmp_path: Path) -> None:
    # Named by the config keys that set them (the `harness data synthetic` flags set the same keys).
    with pytest.raises(ConfigError, match=r"^dataset\.synthetic_queries=0: expected 1 to "):
        write_synthetic(tmp_path, queries=0)
    with pytest.raises(ConfigError, match=r"^dataset\.synthetic_images=3: expected at least 10"):
        write_synthetic(tmp_path, images=3, queries=5)
    with pytest.raises(ConfigError, match=r"^dataset\.synthetic_seed=-1: expected a seed >= 0"):
        write_synthetic(tmp_path, seed=-1)
    assert not list(tmp_path.iterdir())


def test_each_parameter_set_has_its_own_folder_and_a_set_on_disk_is_never_reused_for_another(tmp_path: Path) -> None:
    small = write_synthetic(tmp_path, images=20, queries=2, seed=0)
    large = write_synthetic(tmp_path, images=30, queries=3, seed=0)
    assert (len(small.imlist), len(small.qimlist)) == (20, 2) and (len(large.imlist), len(large.qimlist)) == (30, 3)
    assert sorted(path.name for path in tmp_path.iterdir()) == [synthetic_name(20, 2, 0), synthetic_name(30, 3, 0)]
    again = write_synthetic(tmp_path, images=20, queries=2, seed=0)  # found on disk, not rewritten
    assert again.imlist == small.imlist


def test_jobs_writing_the_same_set_at_once_end_with_one_complete_copy(tmp_path: Path) -> None:
    import concurrent.futures
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(3, mp_context=context) as pool:
        truths = list(pool.map(_write_small_set, [tmp_path] * 3))
    assert all(truth.imlist == truths[0].imlist for truth in truths)
    assert [path.name for path in tmp_path.iterdir()] == [synthetic_name(20, 2, 5)]  # no staging folder left
    assert len(list((tmp_path / synthetic_name(20, 2, 5) / "jpg").glob("*.jpg"))) == 22


def _write_small_set(root: Path):  # type: ignore[no-untyped-def]
    return write_synthetic(root, images=20, queries=2, seed=5)


def test_an_unwritable_root_is_one_error_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match=f"{blocker / 'root'}: cannot create the dataset root"):
        write_synthetic(blocker / "root", images=20, queries=2)


def writing_a_large_set(root: Path) -> tuple[subprocess.Popen[str], Path]:
    """``harness data synthetic`` started on a set that takes minutes, once it has written its first image; and
    its staging folder."""
    command = [sys.executable, "-m", "harness", "data", "synthetic", "--images", "5000", "--root", str(root)]
    before = set(root.glob(".staging-*"))
    process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            images = list(root.glob(".staging-*/*/jpg/*.jpg"))
        except FileNotFoundError:  # a folder removed while listed: the new writer clearing a killed one's staging
            images = []
        staging = [path.parents[2] for path in images if path.parents[2] not in before]
        if staging:
            return process, staging[0]
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"no image written under {root} in 120 s")


@pytest.mark.process
def test_a_staging_folder_left_by_a_killed_process_is_removed_by_the_next_writer(tmp_path: Path) -> None:
    # SIGKILL (the OOM killer, a scheduler's hard limit) leaves no chance to clean up: every killed build or
    # dataset left its copy in the cache for good.
    killed, left = writing_a_large_set(tmp_path)
    killed.kill()
    killed.communicate(timeout=60)
    assert left.is_dir()
    after, own = writing_a_large_set(tmp_path)
    try:
        assert not left.exists() and own.is_dir()
    finally:
        after.kill()
        after.communicate(timeout=60)


@pytest.mark.process
def test_sigterm_stops_the_command_as_ctrl_c_does_leaving_no_half_written_set(tmp_path: Path) -> None:
    # ``timeout`` or ``kill`` ended the process where it stood: its staging folder stayed behind.
    process, _ = writing_a_large_set(tmp_path)
    try:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert stderr.strip() == "interrupted: harness data stopped before it finished"
    assert list(tmp_path.iterdir()) == []
