"""Accuracy stage: extract descriptors for a revisitop dataset through the run's backend and score them.

Queries and database images are preprocessed as the vdsp params say (the torchvision-equivalent default
unless configured), optionally cropped to their ``bbx``, run through the backend, and evaluated with the
exact revisitop metrics. Descriptors are saved in the run folder (``features_query.npy``,
``features_database.npy``). With official weights on a real dataset, the published numbers for the same
backbone are put beside the measured ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.accuracy.features import ImageJob, extract, extract_on_toolchain
from harness.accuracy.published import published_results
from harness.accuracy.revisited import SETUPS, Setup, SetupResult, evaluate, normalize, similarity
from harness.backends import (
    LoadTarget,
    fp32_reference_backend,
    is_toolchain,
    one_program_per_batch,
    open_backend,
    open_toolchain,
)
from harness.config.schema import Precision, RunConfig
from harness.data.datasets import gnd_path, image_path, load_checked, unofficial_size
from harness.data.groundtruth import GroundTruth
from harness.data.synthetic import dataset_location, write_synthetic
from harness.errors import ConfigError, DataError, counted
from harness.result.accuracy import AccuracyResult, Fp32Comparison, SetupMetrics
from harness.vdsp import vdsp_params_file

log = logging.getLogger(__name__)

OVERLAP_K = 10
# The fp32 comparison's descriptors, beside the run's own.
FP32_FOLDER = "fp32"


def setup_metrics(results: Mapping[Setup, SetupResult]) -> dict[Setup, SetupMetrics]:
    return {
        setup: SetupMetrics(
            map=result.map,
            mp1=result.mp_at[1],
            mp5=result.mp_at[5],
            mp10=result.mp_at[10],
            queries_evaluated=result.queries_evaluated,
        )
        for setup, result in results.items()
    }


def check_real(matrix: np.ndarray, *, source: str) -> np.ndarray:
    """``matrix`` if it holds real numbers; else a ``DataError`` naming ``source`` and the dtype (strings have
    no similarity, and a complex one would be ranked by a dot product that drops the conjugate)."""
    if matrix.dtype.kind not in "biuf":
        raise DataError(f"{source}: descriptors of dtype {matrix.dtype}, expected real numbers (float or integer)")
    return matrix


def check_descriptors(query: np.ndarray, database: np.ndarray, truth: GroundTruth, *, source: str) -> None:
    """Real-valued, shapes agree with the ground truth and every value is finite; else a ``DataError`` naming
    ``source`` and the first bad row's image (the metrics rank by similarity, which NaN or inf leaves
    undefined)."""
    lists = (("query", query, truth.qimlist), ("database", database, truth.imlist))
    for label, matrix, images in lists:
        check_real(matrix, source=f"{source}: {label}")
        if matrix.ndim != 2 or matrix.shape[0] != len(images):
            raise DataError(
                f"{source}: {label} descriptors have shape {list(matrix.shape)}, expected [{len(images)}, D]"
            )
        bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
        if bad.size:
            first = int(bad[0])
            raise DataError(
                f"{source}: {label} descriptor {first} ({images[first]}) contains NaN or inf "
                f"({counted(bad.size, 'row')} of {len(images)})"
            )
    if query.shape[1] != database.shape[1]:
        raise DataError(f"{source}: query dimension {query.shape[1]} != database dimension {database.shape[1]}")


def zero_descriptor_warnings(
    query: np.ndarray, database: np.ndarray, *, source: str, skipped: tuple[set[int], set[int]] = (set(), set())
) -> list[str]:
    """A warning per matrix with all-zero rows: such a descriptor has no direction, so it ties with every other
    one and ranks in file order among them. The accuracy stage writes one for a skipped image (the rows in
    ``skipped``, per matrix, which it reports itself); any other is the mark of an extraction that lost an
    image, or of a build whose output is zero."""
    warnings = []
    for (label, matrix), expected in zip((("query", query), ("database", database)), skipped, strict=True):
        zero = np.setdiff1d(np.flatnonzero(~matrix.any(axis=1)), list(expected))
        if zero.size:
            warnings.append(
                f"{source}: {label} descriptor {int(zero[0])} is all zeros ({counted(zero.size, 'row')}): it ties "
                "with every other one, ranked in file order among them (an image lost at extraction, or a runtime "
                "that output nothing)"
            )
    return warnings


def check_dataset_present(config: RunConfig) -> None:
    """A downloaded dataset's ground truth is there, checked before any stage runs (the synthetic set is made)."""
    root, name = dataset_location(config.dataset, config.paths)
    if config.dataset.name != "synthetic" and not gnd_path(root, name).exists():
        raise DataError(f"{gnd_path(root, name)} not found: run `harness data download {name} --root {root}`")


def dataset_truth(config: RunConfig) -> tuple[Path, str, GroundTruth]:
    """The dataset's root, folder name and validated ground truth (a synthetic set is written on first use)."""
    root, name = dataset_location(config.dataset, config.paths)
    dataset = config.dataset
    if dataset.name == "synthetic":
        log.info("synthetic dataset %s under %s", name, root)
        truth = write_synthetic(
            root, images=dataset.synthetic_images, queries=dataset.synthetic_queries, seed=dataset.synthetic_seed
        )
        return root, name, truth
    check_dataset_present(config)
    return root, name, load_checked(root, name)


def neighbour_overlap(scores: np.ndarray, reference_scores: np.ndarray, k: int = OVERLAP_K) -> np.ndarray:
    """Per query, the share of its top-``k`` database neighbours under ``scores`` that ``reference_scores``
    also ranks in its top ``k`` (order inside the top ``k`` does not matter)."""
    k = min(k, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    reference_top = np.argpartition(-reference_scores, k - 1, axis=1)[:, :k]
    return np.array([len(set(mine) & set(theirs)) / k for mine, theirs in zip(top, reference_top, strict=True)])


def run_accuracy(
    config: RunConfig,
    *,
    artifact_path: str | None,
    run_dir: Path,
    weights_kind: str,
    fp32_artifact_path: str | None = None,
) -> AccuracyResult:
    """Extract, evaluate, and return the accuracy block (descriptors saved in ``run_dir``).

    With ``accuracy.compare_fp32`` and a precision other than fp32, the same images are extracted again with
    the fp32 build (``fp32_artifact_path``, or the backend's own fp32 model when it builds from the config)
    and compared: ``accuracy.fp32`` in the result.
    """
    root, name, truth = dataset_truth(config)
    params = config.vdsp_params
    query_jobs, database_jobs = _image_jobs(config, root, name, truth)
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    log.info("stage=accuracy dataset=%s queries=%d images=%d", name, len(query_jobs), len(database_jobs))
    extract_all = functools.partial(_extract_all, config, query_jobs=query_jobs, database_jobs=database_jobs)
    query, database, skipped_queries, skipped_images = extract_all(artifact_path, config.precision.name, run_dir)
    check_descriptors(query, database, truth, source=f"{config.precision.name} descriptors in {run_dir}")
    extraction_time_s = time.perf_counter() - started
    skipped_rows = (_rows_of(query_jobs, skipped_queries), _rows_of(database_jobs, skipped_images))
    gnd = [{} if row in skipped_rows[0] else entry for row, entry in enumerate(truth.gnd)]
    metrics = setup_metrics(evaluate(query, database, gnd, normalization=config.accuracy.normalization))
    unofficial = unofficial_size(name, truth)
    warnings = [unofficial] if unofficial else []
    warnings += zero_descriptor_warnings(
        query, database, source=f"{config.precision.name} descriptors", skipped=skipped_rows
    )
    for warning in warnings:
        log.warning("accuracy: %s", warning)
    fp32 = None
    if config.accuracy.compare_fp32 and config.precision.name != "fp32":
        log.info("stage=accuracy extracting again in fp32 for comparison")
        reference = extract_all(fp32_artifact_path, "fp32", run_dir / FP32_FOLDER)
        check_descriptors(*reference[:2], truth, source=f"fp32 descriptors in {run_dir / FP32_FOLDER}")
        fp32 = _compare(config, (query, database), reference[:2], gnd, metrics, fp32_artifact_path)
    published = (
        tuple(published_results(config.model.variant, name))
        if weights_kind == "official" and config.dataset.name != "synthetic" and unofficial is None
        else ()
    )
    result = AccuracyResult(
        dataset=name,
        images=len(truth.imlist),
        queries=len(truth.qimlist),
        crop_queries=config.accuracy.crop_queries,
        normalization=config.accuracy.normalization,
        preprocessing=json.loads(json.dumps(dataclasses.asdict(params))),  # JSON-shaped: round-trips exactly
        skipped_images=tuple([*skipped_queries, *skipped_images]),
        features_files=("features_query.npy", "features_database.npy"),
        extraction_time_s=extraction_time_s,
        images_per_s=(len(query_jobs) + len(database_jobs)) / extraction_time_s,
        published=published,
        fp32=fp32,
        warnings=tuple(warnings),
        **{setup: metrics[setup] for setup in SETUPS},
    )
    log.info("accuracy medium_map=%.2f hard_map=%.2f", result.medium.map, result.hard.map)
    return result


def _image_jobs(config: RunConfig, root: Path, name: str, truth: GroundTruth) -> tuple[list[ImageJob], list[ImageJob]]:
    """The query images (cropped to their boxes with ``accuracy.crop_queries``) and the database images, each
    to be preprocessed with the run's vdsp params."""
    params = config.vdsp_params
    boxes: Sequence[tuple[float, float, float, float] | None] = [
        tuple(np.asarray(entry["bbx"], dtype=np.float64).tolist())
        if config.accuracy.crop_queries and "bbx" in entry
        else None  # type: ignore[misc]
        for entry in truth.gnd
    ]
    query_jobs = [
        ImageJob(str(image_path(root, name, image)), box, params)
        for image, box in zip(truth.qimlist, boxes, strict=True)
    ]
    return query_jobs, [ImageJob(str(image_path(root, name, image)), None, params) for image in truth.imlist]


def _rows_of(jobs: Sequence[ImageJob], paths: list[str]) -> set[int]:
    """The rows of ``jobs`` whose image is one of ``paths``."""
    wanted = set(paths)
    return {row for row, job in enumerate(jobs) if job.path in wanted}


def _extract_all(
    config: RunConfig,
    artifact_path: str | None,
    precision: Precision,
    folder: Path,
    *,
    query_jobs: Sequence[ImageJob],
    database_jobs: Sequence[ImageJob],
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Query and database descriptors of ``artifact_path`` in ``precision`` (saved in ``folder``), and the files
    skipped in each: through the run's backend, or through its vendor toolchain's runner for the device model
    (an fp32 reference for a toolchain run is the fp32 ONNX build on ONNX Runtime's CPU provider)."""
    folder.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {
        "workers": config.accuracy.workers,
        "on_bad_image": config.dataset.on_bad_image,
        "progress": config.progress,
    }
    extract_one: Callable[..., tuple[np.ndarray, list[str]]]
    with contextlib.ExitStack() as stack:
        if is_toolchain(config.backend) and precision == config.precision.name:
            if artifact_path is None:
                raise ConfigError(
                    f"backend={config.backend.name}: the accuracy stage runs the compiled model: add build"
                )
            extract_one = functools.partial(
                extract_on_toolchain, toolchain=open_toolchain(config.backend), prefix=Path(artifact_path),
                vdsp_params=vdsp_params_file(config.vdsp, config.vdsp_params, folder), batch=config.perf.batch,
                **common,
            )  # fmt: skip
            query_jobs, database_jobs = (
                [dataclasses.replace(job, device_input=True) for job in jobs] for jobs in (query_jobs, database_jobs)
            )
        else:
            backend = config.backend if precision == config.precision.name else fp32_reference_backend(config.backend)
            target = LoadTarget(
                artifact_path=artifact_path, model=config.model, precision=precision,
                cache_dir=str(config.paths.path("cache")),
            )  # fmt: skip
            opened = open_backend(backend, target, shape=(3, *config.vdsp_params.tensor_size), batch=1)
            # An artifact compiled for one batch (an AOTInductor package) describes at most that many images a call.
            batch = min(config.accuracy.batch, opened.max_batch or config.accuracy.batch)
            # One instance for both lists: a model loads (and torch.compile compiles) once per precision.
            instance = stack.enter_context(contextlib.closing(opened.factory()))
            extract_one = functools.partial(
                extract, backend=instance, input_dtype=opened.input_dtype, batch=batch,
                pad=one_program_per_batch(backend), **common,
            )  # fmt: skip
        query, skipped_queries = extract_one(query_jobs, output=folder / "features_query.npy")
        database, skipped_images = extract_one(database_jobs, output=folder / "features_database.npy")
    return query, database, skipped_queries, skipped_images


def _compare(
    config: RunConfig,
    descriptors: tuple[np.ndarray, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray],
    gnd: list[dict[str, object]],
    metrics: Mapping[Setup, SetupMetrics],
    fp32_artifact_path: str | None,
) -> Fp32Comparison:
    normalization = config.accuracy.normalization
    overlap = neighbour_overlap(similarity(*descriptors, normalization), similarity(*reference, normalization))
    fp32_metrics = setup_metrics(evaluate(*reference, gnd, normalization=normalization))
    cosines = np.sum(
        normalize(np.concatenate(descriptors), "per_image") * normalize(np.concatenate(reference), "per_image"), axis=1
    )
    result = Fp32Comparison(
        reference=Path(fp32_artifact_path).name if fp32_artifact_path else f"{config.backend.name} fp32",
        neighbour_overlap_at_10=float(overlap.mean()),
        min_neighbour_overlap_at_10=float(overlap.min()),
        descriptor_min_cosine=float(cosines.min()),
        fp32_map={setup: fp32_metrics[setup].map for setup in SETUPS},
        map_delta={setup: metrics[setup].map - fp32_metrics[setup].map for setup in SETUPS},
    )
    log.info(
        "accuracy vs fp32: top-10 overlap %.3f (worst query %.2f), medium mAP delta %+.2f points",
        result.neighbour_overlap_at_10, result.min_neighbour_overlap_at_10, result.map_delta["medium"],
    )  # fmt: skip
    return result
