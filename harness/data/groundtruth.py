"""Revisited Oxford / Paris ground truth (``gnd_<name>.pkl``), loaded without executing anything.

The files are pickles. ``load_groundtruth`` reads them with an unpickler that admits only plain data
(dict, list, tuple, str, int, float, bool, None and numpy arrays of plain dtypes) and refuses any other
global before it is looked up, so a malicious file runs no code. The structure is then validated: every
index inside ``imlist``, boxes well-formed (and inside the query image when sizes are given), with errors
naming the query.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import DataError, counted

# The globals a plain numpy array (or numpy scalar) needs to be rebuilt from a pickle, and nothing else.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    # Protocol 2 (the revisitop files' Python 2 era) rebuilds array bytes with _codecs.encode(str, "latin1"):
    # a pure str -> bytes function.
    ("_codecs", "encode"),
}
INDEX_KEYS = ("easy", "hard", "junk")


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickler whose only reachable globals are those that rebuild numpy arrays."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not plain data")


def safe_unpickle(data: bytes, *, source: str) -> object:
    """Unpickle plain data only; object arrays are refused too (they could hold anything)."""
    try:
        value = PlainDataUnpickler(io.BytesIO(data), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise DataError(f"{source}: refused or unreadable pickle ({error})") from None
    _check_plain(value, source)
    return value


def _check_plain(value: object, source: str) -> None:
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise DataError(f"{source}: refused pickle: numpy array of objects")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_plain(key, source)
            _check_plain(item, source)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_plain(item, source)
    elif not isinstance(value, str | bytes | int | float | bool | np.generic) and value is not None:
        raise DataError(f"{source}: refused pickle: {type(value).__name__} is not plain data")


@dataclass(frozen=True)
class GroundTruth:
    """A revisitop ground truth: database and query image names, and per query easy/hard/junk/bbx."""

    imlist: tuple[str, ...]
    qimlist: tuple[str, ...]
    gnd: tuple[dict[str, object], ...]


def load_groundtruth(path: Path, *, query_sizes: Mapping[str, tuple[int, int]] | None = None) -> GroundTruth:
    """Read and validate ``gnd_<name>.pkl``.

    Args:
        path: the pickle.
        query_sizes: optional (width, height) per query image name, to check boxes lie inside the image.

    Raises:
        DataError: unreadable or unsafe pickle, or a structural problem, naming the query.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ground truth ({error.strerror})") from None
    value = safe_unpickle(data, source=str(path))
    if not isinstance(value, Mapping) or not {"imlist", "qimlist", "gnd"} <= set(value):
        raise DataError(f"{path}: expected a dict with imlist, qimlist and gnd")
    for key in ("imlist", "qimlist", "gnd"):
        if not isinstance(value[key], list | tuple | np.ndarray):
            raise DataError(f"{path}: {key} is {type(value[key]).__name__}, expected a list")
    imlist, qimlist, gnd = (list(value[key]) for key in ("imlist", "qimlist", "gnd"))
    _check_names(path, "imlist", imlist)
    _check_names(path, "qimlist", qimlist)
    if len(gnd) != len(qimlist):
        raise DataError(
            f"{path}: {counted(len(gnd), 'gnd entry', 'gnd entries')} for {counted(len(qimlist), 'query', 'queries')}"
        )
    for query, (name, entry) in enumerate(zip(qimlist, gnd, strict=True)):
        _validate_query(path, query, str(name), entry, len(imlist))
    truth = GroundTruth(
        imlist=tuple(map(str, imlist)), qimlist=tuple(map(str, qimlist)), gnd=tuple(dict(entry) for entry in gnd)
    )
    if query_sizes:
        check_boxes_inside(truth, query_sizes, source=str(path))
    return truth


def check_boxes_inside(truth: GroundTruth, query_sizes: Mapping[str, tuple[int, int]], *, source: str) -> None:
    """Every query box lies inside its image, given (width, height) per query name; else a ``DataError``."""
    for query, (name, entry) in enumerate(zip(truth.qimlist, truth.gnd, strict=True)):
        size = query_sizes.get(name)
        if size is None or "bbx" not in entry:
            continue
        box = np.asarray(entry["bbx"], dtype=np.float64).ravel()
        if box[2] > size[0] or box[3] > size[1]:
            raise DataError(
                f"{source}: query {query} ({name}): bbx {box.tolist()} lies outside the {size[0]}x{size[1]} image"
            )


def _check_names(path: Path, key: str, names: list[object]) -> None:
    """Each name is a file name (images are read from ``jpg/<name>.jpg``: a name with folders would read outside
    the dataset) and names one image once (descriptors and per-image files are kept by name)."""
    first: dict[str, int] = {}
    for index, name in enumerate(names):
        if not isinstance(name, str) or name in ("", ".", "..") or any(char in name for char in "/\\\0"):
            raise DataError(f"{path}: {key} entry {index} {name!r} is not an image name (a file name without folders)")
        if name in first:
            raise DataError(f"{path}: {key} names {name!r} twice (entries {first[name]} and {index})")
        first[name] = index


def _validate_query(path: Path, query: int, name: str, entry: object, size: int) -> None:
    where = f"{path}: query {query} ({name})"
    if not isinstance(entry, Mapping):
        raise DataError(f"{where}: expected a dict with easy/hard/junk/bbx")
    for key in INDEX_KEYS:
        indices = np.asarray(entry.get(key, []))
        if indices.size and (indices.dtype.kind not in "iu" or indices.min() < 0 or indices.max() >= size):
            flat = indices.ravel()
            bad = flat[(flat < 0) | (flat >= size)] if indices.dtype.kind in "iu" else flat
            raise DataError(f"{where}: {key} index {bad[0].item()!r} is not an image index (an integer in [0, {size}))")
    if "bbx" in entry:
        try:
            box = np.asarray(entry["bbx"], dtype=np.float64).ravel()
        except (TypeError, ValueError):
            box = np.array([])
        if box.size != 4 or not (box[0] < box[2] and box[1] < box[3]) or box.min() < 0:
            raise DataError(
                f"{where}: bbx {box.tolist() if box.size else entry['bbx']!r} is not [x1, y1, x2, y2] numbers with "
                "x1 < x2, y1 < y2, >= 0"
            )
