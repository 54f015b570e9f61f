"""``harness eval-features``: revisitop metrics for descriptors computed elsewhere.

Inputs: query and database matrices (``.npy``, or one ``.npz`` holding ``query`` and ``database``), or a
folder of per-image ``.npz`` files named after the images (as vamp ``--path_output`` writes; the first
array of each file is the descriptor), matched to the ground truth's ``qimlist`` and ``imlist``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from harness.accuracy.revisited import Normalization, evaluate
from harness.accuracy.stage import check_descriptors, check_real, setup_metrics, zero_descriptor_warnings
from harness.data.groundtruth import GroundTruth, load_groundtruth
from harness.errors import DataError, unwritable_reason
from harness.fileio import write_json_atomic


def _load_matrix(path: Path, key: str | None = None, *, first: bool = False) -> np.ndarray:
    """The array ``key`` of an ``.npz``; without ``key`` the array of an ``.npy`` or of a one-array ``.npz`` (with
    ``first``, the first of several, as vamp's per-image files hold the descriptor first)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DataError(f"{path}: cannot read descriptors ({error})") from None
    if isinstance(loaded, np.ndarray):
        if key is not None:
            raise DataError(
                f"{path}: one array (.npy), not an .npz holding {key!r}: pass .npy matrices as --query and --database"
            )
        return loaded
    with loaded:
        names = list(loaded.files)
        if not names:
            raise DataError(f"{path}: holds no arrays")
        if key is not None and key not in names:
            raise DataError(f"{path}: no array {key!r} (has {names})")
        if key is None and len(names) > 1 and not first:
            raise DataError(f"{path}: holds {names}, not one matrix: an .npz of both matrices goes to --features")
        try:
            return np.asarray(loaded[key or names[0]])
        except (OSError, ValueError, EOFError) as error:
            raise DataError(f"{path}: cannot read descriptors ({error})") from None


def _from_folder(folder: Path, names: tuple[str, ...]) -> np.ndarray:
    missing = [name for name in names if not (folder / f"{name}.npz").is_file()]
    if missing:
        raise DataError(f"{folder}: {len(missing)} per-image .npz files missing, e.g. {missing[:3]}")
    rows: list[np.ndarray] = []
    for name in names:
        path = folder / f"{name}.npz"
        row = check_real(_load_matrix(path, first=True), source=str(path)).ravel()
        if rows and row.size != rows[0].size:
            raise DataError(f"{path}: a descriptor of {row.size} values, {folder / names[0]}.npz has {rows[0].size}")
        rows.append(row.astype(np.float32))
    return np.stack(rows)


def load_descriptors(
    truth: GroundTruth, *, features: Path | None, query: Path | None, database: Path | None, folder: Path | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """(query, database, source description) from whichever input form was given."""
    if folder is not None:
        return _from_folder(folder, truth.qimlist), _from_folder(folder, truth.imlist), str(folder)
    if features is not None:
        return _load_matrix(features, "query"), _load_matrix(features, "database"), str(features)
    if query is not None and database is not None:
        return _load_matrix(query), _load_matrix(database), f"{query} / {database}"
    raise DataError("give --features FILE.npz, or --query Q.npy --database DB.npy, or --folder DIR")


def evaluate_files(
    gnd: Path,
    *,
    features: Path | None = None,
    query: Path | None = None,
    database: Path | None = None,
    folder: Path | None = None,
    normalization: Normalization = "per_image",
) -> dict[str, object]:
    """Metrics JSON for descriptors against ``gnd``; ``warnings`` lists what the numbers should be read with
    (all-zero descriptors)."""
    truth = load_groundtruth(gnd)
    query_matrix, database_matrix, source = load_descriptors(
        truth, features=features, query=query, database=database, folder=folder
    )
    check_descriptors(query_matrix, database_matrix, truth, source=source)
    metrics = setup_metrics(evaluate(query_matrix, database_matrix, truth.gnd, normalization=normalization))
    report: dict[str, object] = {
        "gnd": str(gnd),
        "descriptors": source,
        "normalization": normalization,
        "queries": len(truth.qimlist),
        "images": len(truth.imlist),
        **{setup: vars(value) for setup, value in metrics.items()},
        "warnings": zero_descriptor_warnings(query_matrix, database_matrix, source=source),
    }
    return json.loads(json.dumps(report))


def write_metrics(report: dict[str, object], output: Path) -> None:
    """Write ``evaluate_files``' report to ``output`` (its folders made as needed), or raise a ``DataError``
    saying what is in the way."""
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(output, report)
    except OSError as error:
        raise DataError(f"{output}: cannot write the metrics ({unwritable_reason(output, error)})") from None
