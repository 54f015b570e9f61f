"""The accuracy stage end to end on the synthetic set, bad images, vdsp preprocessing, eval-features."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness.accuracy.offline import evaluate_files, write_metrics
from harness.accuracy.published import published_results
from harness.accuracy.revisited import evaluate
from harness.data.datasets import gnd_path, image_path
from harness.data.groundtruth import load_groundtruth
from harness.data.synthetic import synthetic_name, write_synthetic
from harness.errors import ConfigError, DataError
from harness.pipeline import run
from harness.resolve import resolve_config
from harness.result import load_result
from harness.summary import format_summary
from tests.conftest import REPO_ROOT, compose

TINY_SET = synthetic_name(16, 2, 0)  # the set debug=tiny asks for


def tiny_run(tmp_path: Path, *overrides: str, name: str = "run"):
    composed = compose(
        [
            "debug=tiny",
            "stages=[build,accuracy]",
            f"paths.cache={tmp_path / 'cache'}",
            f"paths.data={tmp_path / 'data'}",
            *overrides,
        ]
    )
    return run(composed, run_dir=tmp_path / name)


def test_run_writes_the_accuracy_block_and_its_descriptors(tmp_path: Path) -> None:
    result = tiny_run(tmp_path)
    assert result.status == "ok", result.error
    accuracy = result.accuracy
    assert accuracy is not None and accuracy.dataset == TINY_SET and (accuracy.queries, accuracy.images) == (2, 16)
    for setup in ("easy", "medium", "hard"):
        metrics = getattr(accuracy, setup)
        assert 0.0 <= metrics.map <= 100.0 and 0.0 <= metrics.mp1 <= 100.0
    assert accuracy.normalization == "per_image" and accuracy.preprocessing["resize_type"] == "BILINEAR_PILLOW"
    assert accuracy.published == ()  # random weights, synthetic data: nothing to compare with
    query = np.load(tmp_path / "run" / "features_query.npy")
    database = np.load(tmp_path / "run" / "features_database.npy")
    assert query.shape == (2, 64) and database.shape == (16, 64) and query.dtype == np.float32
    truth = load_groundtruth(gnd_path(tmp_path / "data", TINY_SET))
    assert evaluate(query, database, truth.gnd)["medium"].map == pytest.approx(accuracy.medium.map)


def test_eval_features_reproduces_the_run(tmp_path: Path) -> None:
    result = tiny_run(tmp_path)
    gnd = gnd_path(tmp_path / "data", TINY_SET)
    report = evaluate_files(
        gnd, query=tmp_path / "run" / "features_query.npy", database=tmp_path / "run" / "features_database.npy"
    )
    assert report["medium"]["map"] == pytest.approx(result.accuracy.medium.map)  # type: ignore[index, union-attr]
    query, database = (
        np.load(tmp_path / "run" / "features_query.npy"),
        np.load(tmp_path / "run" / "features_database.npy"),
    )
    np.savez(tmp_path / "both.npz", query=query, database=database)
    assert evaluate_files(gnd, features=tmp_path / "both.npz")["hard"] == report["hard"]
    folder = tmp_path / "per_image"
    folder.mkdir()
    truth = load_groundtruth(gnd)
    for names, matrix in ((truth.qimlist, query), (truth.imlist, database)):
        for name, row in zip(names, matrix, strict=True):
            np.savez(folder / f"{name}.npz", output_0=row[None])
    from_folder = evaluate_files(gnd, folder=folder)
    assert from_folder["easy"] == report["easy"]
    write_metrics(from_folder, tmp_path / "new" / "m.json")  # its folder made as needed
    assert json.loads((tmp_path / "new" / "m.json").read_text()) == from_folder
    np.save(tmp_path / "short.npy", database[:-1])
    with pytest.raises(DataError, match=r"short.npy: database descriptors have shape \[15, 64\], expected \[16, D\]"):
        evaluate_files(gnd, query=tmp_path / "run" / "features_query.npy", database=tmp_path / "short.npy")
    database[3, 5] = np.nan
    np.save(tmp_path / "nan.npy", database)
    with pytest.raises(
        DataError, match=rf"database descriptor 3 \({truth.imlist[3]}\) contains NaN or inf \(1 row of 16\)"
    ):
        evaluate_files(gnd, query=tmp_path / "run" / "features_query.npy", database=tmp_path / "nan.npy")
    assert report["warnings"] == []
    database[3], database[7] = 1.0, 0.0  # an export that wrote zeros for an image it lost
    np.save(tmp_path / "zero.npy", database)
    (warning,) = evaluate_files(gnd, query=tmp_path / "run" / "features_query.npy", database=tmp_path / "zero.npy")[
        "warnings"
    ]
    assert warning.endswith("zero.npy: database descriptor 7 is all zeros (1 row): it ties with every other one, "
                            "ranked in file order among them (an image lost at extraction, or a runtime that output "
                            "nothing)")  # fmt: skip
    with pytest.raises(
        DataError, match=rf"^{tmp_path}: cannot write the metrics \(a folder: give the file to write\)$"
    ):
        write_metrics(report, tmp_path)


def test_descriptors_that_are_not_real_numbers_or_disagree_in_size_are_refused_naming_the_file(
    tmp_path: Path,
) -> None:
    truth = write_synthetic(tmp_path / "data", images=16, queries=2, seed=0)
    gnd = gnd_path(tmp_path / "data", TINY_SET)
    rows = np.random.default_rng(0).normal(size=(18, 8))
    for name, query in (("text", np.full((2, 8), "x")), ("complex", rows[:2] + 1j)):
        np.savez(tmp_path / f"{name}.npz", query=query, database=rows[2:])
        with pytest.raises(DataError, match=rf"{name}.npz: query: descriptors of dtype \S+, expected real numbers"):
            evaluate_files(gnd, features=tmp_path / f"{name}.npz")
    np.savez(tmp_path / "nothing.npz")
    with pytest.raises(DataError, match=r"nothing.npz: holds no arrays$"):
        evaluate_files(gnd, features=tmp_path / "nothing.npz")
    # The wrong form for an option: a TypeError traceback from inside numpy's loader, or the wrong matrix used.
    np.save(tmp_path / "query.npy", rows[:2])
    np.save(tmp_path / "database.npy", rows[2:])
    with pytest.raises(DataError, match=r"query.npy: one array \(.npy\), not an .npz holding 'query': pass .npy "):
        evaluate_files(gnd, features=tmp_path / "query.npy")
    with pytest.raises(DataError, match=r"text.npz: holds \['query', 'database'\], not one matrix: an .npz of both"):
        evaluate_files(gnd, query=tmp_path / "text.npz", database=tmp_path / "database.npy")
    np.savez(tmp_path / "one.npz", rows[:2])
    assert evaluate_files(gnd, query=tmp_path / "one.npz", database=tmp_path / "database.npy")["warnings"] == []
    names = (*truth.qimlist, *truth.imlist)
    folder = tmp_path / "per_image"
    folder.mkdir()
    for name, row in zip(names, rows, strict=True):
        np.savez(folder / f"{name}.npz", output_0=row)
    assert evaluate_files(gnd, folder=folder)["warnings"] == []
    np.savez(folder / f"{truth.imlist[4]}.npz", output_0=rows[0, :4])
    with pytest.raises(
        DataError, match=rf"{truth.imlist[4]}.npz: a descriptor of 4 values, \S+/{truth.imlist[0]}.npz has 8$"
    ):
        evaluate_files(gnd, folder=folder)
    np.savez(folder / f"{truth.imlist[4]}.npz", output_0=np.full(8, "x"))
    with pytest.raises(DataError, match=rf"{truth.imlist[4]}.npz: descriptors of dtype <U1, expected real numbers"):
        evaluate_files(gnd, folder=folder)
    np.savez(folder / f"{truth.imlist[4]}.npz")
    with pytest.raises(DataError, match=rf"{truth.imlist[4]}.npz: holds no arrays$"):
        evaluate_files(gnd, folder=folder)


def test_eval_features_command(tmp_path: Path) -> None:
    tiny_run(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "harness", "eval-features", "--gnd", str(gnd_path(tmp_path / "data", TINY_SET)),
         "--query", str(tmp_path / "run" / "features_query.npy"), "--database", str(tmp_path / "run" / "features_database.npy")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [line.split()[0] for line in done.stdout.strip().splitlines()] == ["easy", "medium", "hard"]
    gnd = str(gnd_path(tmp_path / "data", TINY_SET))
    descriptors = ["--query", str(tmp_path / "run" / "features_query.npy"), "--database",
                   str(tmp_path / "run" / "features_database.npy")]  # fmt: skip
    (tmp_path / "a-file").write_text("in the way of --out")
    for out, code in ((tmp_path / "new" / "m.json", 0), (tmp_path / "a-file" / "m.json", 1)):
        written = subprocess.run(
            [sys.executable, "-m", "harness", "eval-features", "--gnd", gnd, *descriptors, "--out", str(out)],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        # The metrics are printed whether or not the file can be written: none is lost to a bad --out.
        assert written.returncode == code and written.stdout == done.stdout, written.stderr
        assert out.is_file() == (code == 0)
    assert written.stderr.strip() == (
        f"error: {tmp_path / 'a-file' / 'm.json'}: cannot write the metrics ({tmp_path / 'a-file'} is a file, not a folder)"
    )
    for forms in (["--query", "q.npy"], ["--features", "f.npz", "--folder", str(tmp_path)], []):
        refused = subprocess.run(
            [sys.executable, "-m", "harness", "eval-features", "--gnd", gnd, *forms], cwd=REPO_ROOT, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        assert refused.returncode == 2 and refused.stderr.splitlines()[-1] == (
            "harness eval-features: error: give one of --features F.npz, --query Q.npy with --database D.npy, or --folder DIR"
        ), forms


def test_a_corrupt_image_fails_naming_it_or_is_skipped_and_listed(tmp_path: Path) -> None:
    truth = write_synthetic(tmp_path / "data", images=16, queries=2, seed=0)
    bad = image_path(tmp_path / "data", TINY_SET, truth.imlist[5])
    bad.write_bytes(bad.read_bytes()[:200])
    failed = tiny_run(tmp_path, name="fail")
    assert failed.status == "failed" and failed.error is not None
    assert (
        failed.error.type == "DataError"
        and str(bad) in failed.error.message
        and "on_bad_image=skip" in failed.error.message
    )
    skipped = tiny_run(tmp_path, "dataset.on_bad_image=skip", name="skip")
    assert skipped.status == "ok" and skipped.accuracy is not None and skipped.accuracy.skipped_images == (str(bad),)
    assert not np.load(tmp_path / "skip" / "features_database.npy")[5].any()  # zero descriptor, never ranked first
    assert ["skipped", f"1 unreadable image: {bad}"] in [
        line.split(maxsplit=1) for line in format_summary(skipped).splitlines()
    ]
    # A query image skipped: the means are over the other query, and the summary says so (it said "2 queries").
    query = image_path(tmp_path / "data", TINY_SET, truth.qimlist[0])
    query.write_bytes(query.read_bytes()[:200])
    without_query = tiny_run(tmp_path, "dataset.on_bad_image=skip", name="skip-query")
    assert without_query.accuracy is not None and without_query.accuracy.medium.queries_evaluated == 1
    assert ["scored", "E 1, M 1, H 1 of 2 queries (one whose image was skipped, or with no positive in a setup, "
            "is left out of that setup's means)"] in [
        line.split(maxsplit=1) for line in format_summary(without_query).splitlines()
    ]  # fmt: skip
    assert "scored" not in format_summary(skipped)
    assert skipped.accuracy.warnings == without_query.accuracy.warnings == ()  # their zero rows are reported above


def test_descriptors_a_build_left_all_zero_are_scored_with_a_warning(tmp_path: Path) -> None:
    # The sleep backend returns zeros, as a runtime that silently fails does: the mAP of file-order ties was
    # printed beside no sign of it.
    result = tiny_run(tmp_path, "backend=sleep", "stages=[accuracy]")
    assert result.status == "ok" and result.accuracy is not None
    assert result.accuracy.warnings == tuple(
        f"fp32 descriptors: {label} descriptor 0 is all zeros ({rows}): it ties with every other one, ranked in file "
        "order among them (an image lost at extraction, or a runtime that output nothing)"
        for label, rows in (("query", "2 rows"), ("database", "16 rows"))
    )
    assert [line.split(maxsplit=1)[0] for line in format_summary(result).splitlines()].count("warning") == 2
    assert load_result(tmp_path / "run").accuracy == result.accuracy


def test_vendor_vdsp_preprocessing_and_perf_shape_from_vdsp(tmp_path: Path) -> None:
    result = tiny_run(tmp_path, "vdsp=official_dinov2")
    assert result.status == "ok", result.error
    assert result.accuracy.preprocessing["resize_type"] == "BILINEAR_CV"  # type: ignore[union-attr]
    config = resolve_config(
        compose(
            [
                "debug=tiny",
                "model.input_size=[112,112]",
                "vdsp=official_dinov2",
                "vdsp.params.OpConfig.OimageWidth=112",
                "vdsp.params.OpConfig.OimageHeight=112",
            ]
        )
    )
    assert config.input_shape == (3, 112, 112)


def test_a_vdsp_crop_feeds_the_model_its_own_size(tmp_path: Path) -> None:
    resize_then_crop = [
        "vdsp=official_dinov2", "vdsp.params.OpConfig.OimageWidth=256", "vdsp.params.OpConfig.OimageHeight=256",
        "+vdsp.params.OpConfig.CropX=16", "+vdsp.params.OpConfig.CropY=16", "+vdsp.params.OpConfig.CropWidth=224",
        "+vdsp.params.OpConfig.CropHeight=224",
    ]  # fmt: skip
    result = tiny_run(tmp_path, *resize_then_crop, "stages=[build,perf,accuracy]")
    assert result.status == "ok", result.error
    assert result.accuracy.preprocessing["crop"] == [16, 16, 224, 224]  # type: ignore[union-attr]
    assert result.perf.shape == (3, 224, 224)  # type: ignore[union-attr]
    with pytest.raises(ConfigError, match=r"^vdsp crop 200x224 \(H x W\) does not match model.input_size=\[224, 224\]"):
        resolve_config(compose(["debug=tiny", *resize_then_crop, "vdsp.params.OpConfig.CropHeight=200"]))
    # Inline params are a config like any other: a value they cannot use does not resolve (exit 2, no traceback).
    with pytest.raises(ConfigError, match=r"^vdsp.params: OimageWidth='abc': expected an integer$"):
        resolve_config(compose(["debug=tiny", "vdsp=official_dinov2", "vdsp.params.OpConfig.OimageWidth=abc"]))


def test_descriptors_that_are_not_finite_fail_the_run_naming_the_image(tmp_path: Path) -> None:
    # A Std of 1e-38 is no zero, but dividing a 0-255 pixel by it overflows float32: the model is fed inf and
    # its descriptors come out NaN, as an fp16 build's can when an activation overflows 65504. Ranked as they
    # were, they scored mAP 125 and mP@1 350.
    tiny = "[1e-38,1e-38,1e-38]"
    overflowing = [
        "vdsp=official_dinov2",
        f"vdsp.params.OpConfig.Std={tiny}",
        "vdsp.params.OpConfig.NormaType=MINUSMEAN_DIVSTD",
    ]
    result = tiny_run(tmp_path, *overflowing)
    assert result.status == "failed" and result.error is not None
    assert result.error.message == (
        f"fp32 descriptors in {tmp_path / 'run'}: query descriptor 0 (query_000) contains NaN or inf (2 rows of 2)"
    )
    with pytest.raises(ValueError, match="similarity of query 0 and database item 0 is nan"):
        evaluate(np.full((1, 4), np.nan), np.ones((3, 4)), [{"easy": [0], "hard": [], "junk": []}])


def test_published_numbers_are_shown_for_official_backbones_only() -> None:
    oxford = published_results("vitl14_reg4", "roxford5k")
    assert [item.source for item in oxford][:2] == ["DINOv2 model card (Oxford-H)", "vendor CPU reference, torch fp32"]
    assert any(item.protocol.endswith("per_dimension") and item.medium_map == 79.6 for item in oxford)
    assert published_results("vits14", "rparis6k")[0].hard_map == 68.5
    assert published_results("tiny14", "roxford5k") == []


def test_a_revisitop_ground_truth_of_another_size_is_scored_with_a_warning(tmp_path: Path) -> None:
    # A cut-down (or another) set under the name roxford5k was scored as roxford5k, without a word.
    import shutil

    from harness.data.datasets import unofficial_size
    from harness.data.groundtruth import GroundTruth

    synthetic = tmp_path / "data" / TINY_SET
    write_synthetic(tmp_path / "data", images=16, queries=2, seed=0)
    fake = tmp_path / "fake" / "roxford5k"
    shutil.copytree(synthetic / "jpg", fake / "jpg")
    shutil.copy(gnd_path(tmp_path / "data", TINY_SET), gnd_path(tmp_path / "fake", "roxford5k"))
    result = tiny_run(tmp_path, "dataset=roxford5k", f"dataset.root={tmp_path / 'fake'}")
    assert result.status == "ok" and result.accuracy is not None, result.error
    expected = (
        "gnd_roxford5k.pkl lists 16 database images and 2 queries, the official roxford5k 4993 and 70: its mAP is "
        "not comparable with published roxford5k results"
    )
    assert result.accuracy.warnings == (expected,)
    assert f"  warning    {expected}" in format_summary(result)
    official = GroundTruth(imlist=("x",) * 6322, qimlist=("q",) * 70, gnd=())
    assert unofficial_size("rparis6k", official) is None and unofficial_size("roxford5k", official) is not None
    assert unofficial_size(TINY_SET, official) is None  # not a revisitop set: no official size


def test_query_cropping_and_boxes_checked_against_the_images(tmp_path: Path) -> None:
    uncropped = tiny_run(tmp_path, name="plain")
    cropped = tiny_run(tmp_path, "accuracy.crop_queries=true", name="cropped")
    assert cropped.status == "ok" and cropped.accuracy.crop_queries  # type: ignore[union-attr]
    plain_query = np.load(tmp_path / "plain" / "features_query.npy")
    cropped_query = np.load(tmp_path / "cropped" / "features_query.npy")
    assert not np.allclose(plain_query, cropped_query)  # the box changed what the model saw
    np.testing.assert_array_equal(
        np.load(tmp_path / "plain" / "features_database.npy"), np.load(tmp_path / "cropped" / "features_database.npy")
    )
    truth = load_groundtruth(gnd_path(tmp_path / "data", TINY_SET))
    query = image_path(tmp_path / "data", TINY_SET, truth.qimlist[0])
    from PIL import Image

    with Image.open(query) as image:
        image.resize((20, 20)).save(query)  # the box now lies outside the query image
    broken = tiny_run(tmp_path, name="broken")
    assert broken.status == "failed" and "query 0 (query_000): bbx" in broken.error.message  # type: ignore[union-attr]
    assert uncropped.accuracy is not None


def test_the_scored_set_is_the_one_the_config_asks_for_even_with_another_on_disk(tmp_path: Path) -> None:
    first = tiny_run(tmp_path, name="first")
    second = tiny_run(
        tmp_path,
        "dataset.synthetic_images=20",
        "dataset.synthetic_queries=3",
        "dataset.synthetic_seed=1",
        name="second",
    )
    assert (first.accuracy.images, first.accuracy.queries) == (16, 2)  # type: ignore[union-attr]
    assert (second.accuracy.images, second.accuracy.queries) == (20, 3)  # type: ignore[union-attr]
    assert second.accuracy.dataset == synthetic_name(20, 3, 1)  # type: ignore[union-attr]


def test_a_synthetic_size_the_photos_cannot_make_is_refused_when_resolving(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"dataset.synthetic_queries=40: expected 1 to \d+"):
        resolve_config(compose(["debug=tiny", "stages=[build,accuracy]", "dataset.synthetic_queries=40"]))


@pytest.mark.process
def test_progress_bars_are_drawn_on_a_terminal_and_kept_out_of_log_files(tmp_path: Path) -> None:
    import fcntl
    import os
    import pty
    import struct
    import termios

    from tests.conftest import harness_environment, harness_in

    arguments = ["run", "debug=tiny", "stages=[build,accuracy]", "tracking=off"]
    logged = harness_in(tmp_path, *arguments)
    assert logged.returncode == 0, logged.stderr
    assert "features features_database" not in logged.stderr  # stderr is a pipe, as into a CI or SLURM log
    leader, terminal = pty.openpty()
    # A size, as a terminal window has: tqdm fits its bar to the width, and a bare pty's is 0.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        on_terminal = subprocess.Popen(
            [sys.executable, "-m", "harness", *arguments],
            cwd=tmp_path,
            env=harness_environment(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=terminal,
        )
        os.close(terminal)  # read as it is written: the child's end closes when it exits
        drawn = b""
        while chunk := _read_or_empty(leader):
            drawn += chunk
    finally:
        os.close(leader)
    assert on_terminal.wait(timeout=300) == 0, drawn.decode(errors="replace")[-2000:]
    assert b"features features_database" in drawn


def _read_or_empty(descriptor: int) -> bytes:
    import os

    try:
        return os.read(descriptor, 1 << 16)
    except OSError:  # the terminal's other end closed: everything written has been read
        return b""


def test_each_precision_loads_its_model_once_for_queries_and_database(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A model built from the config (and torch.compile's compile of it) is paid once per precision, not once
    # per image list: with ViT-g and compile that is minutes.
    caplog.set_level("INFO", logger="harness.models.weights")
    result = tiny_run(tmp_path, "stages=[accuracy]", "backend=torch", "precision=bf16", "accuracy.compare_fp32=true")
    assert result.status == "ok", result.error
    assert result.accuracy is not None and result.accuracy.fp32 is not None
    loads = [record.getMessage() for record in caplog.records if record.getMessage().startswith("model ready")]
    assert len(loads) == 2, loads  # bf16, then its fp32 reference
    for name in ("features_query.npy", "features_database.npy"):
        assert np.load(tmp_path / "run" / name).any(axis=1).all()


@pytest.mark.slow
def test_a_compiled_module_describes_both_lists_with_one_graph_and_the_eager_features(tmp_path: Path) -> None:
    # 2 queries and 16 images at batch 5 are batches of 2, 5 and 1 besides 5: each size would be a compile.
    import torch
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    settings = ("stages=[accuracy]", "backend=torch", "accuracy.batch=5", "tracking=off")
    compiled = tiny_run(tmp_path, *settings, "backend.compile=true", name="compiled")
    assert compiled.status == "ok", compiled.error
    assert counters["stats"]["unique_graphs"] == 1
    eager = tiny_run(tmp_path, *settings, name="eager")
    assert eager.status == "ok", eager.error
    for name in ("features_query.npy", "features_database.npy"):
        np.testing.assert_allclose(np.load(tmp_path / "compiled" / name), np.load(tmp_path / "eager" / name), atol=1e-5)


def test_a_decoding_worker_that_dies_fails_the_extraction_instead_of_hanging_it(tmp_path: Path) -> None:
    # multiprocessing.Pool never returned the images a killed worker held: the run waited for ever.
    import os
    import threading
    import time

    import psutil

    from harness.accuracy.features import ImageJob, _decoded

    params = resolve_config(compose(["debug=tiny"])).vdsp_params
    never_written = tmp_path / "never-written.jpg"
    os.mkfifo(never_written)  # opening it blocks the worker that decodes it until the worker is killed
    jobs = [ImageJob(str(never_written), None, params)] * 6
    outcome: list[object] = []

    def decode_all() -> None:
        try:
            outcome.append(list(_decoded(jobs, workers=2)))
        except BaseException as error:  # the outcome under test
            outcome.append(error)

    decoding = threading.Thread(target=decode_all, daemon=True)
    decoding.start()
    deadline = time.monotonic() + 60
    workers: list[psutil.Process] = []
    while len(workers) < 2 and time.monotonic() < deadline:
        workers = [child for child in psutil.Process().children() if "spawn_main" in " ".join(child.cmdline())]
        time.sleep(0.05)
    time.sleep(1.0)  # both have started on an image
    for worker in workers:
        worker.kill()
    decoding.join(timeout=60)
    assert not decoding.is_alive(), "the extraction still waits on decoding workers that are gone"
    (error,) = outcome
    assert isinstance(error, DataError)
    assert str(error).startswith(f"{never_written}: an image decoding worker died while decoding it or one of the ")
    assert "accuracy.workers=0 decodes in the harness's own process" in str(error)
