"""A small retrieval dataset in the revisitop layout, made from real photos that installed packages ship.

Each query is one photo ("landmark") with a box around its centre. Database views of a landmark are made by
cropping, scaling, rotating, recolouring and re-encoding it; a view is labelled by how much of the
landmark survives (the crop's share of the photo's area, reduced by rotation): easy >= 0.5, hard
>= 0.2, junk below. Views of the other photos are distractors. Deterministic for a seed.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from harness.config.convert import check_seed
from harness.config.schema import DatasetConfig, PathsConfig
from harness.data.datasets import gnd_path, image_path, load_checked
from harness.data.groundtruth import GroundTruth
from harness.data.photos import as_rgb, photo_loaders
from harness.errors import ConfigError, DataError
from harness.processes import staging_folder

EASY_SURVIVAL = 0.5
HARD_SURVIVAL = 0.2
LONG_SIDE = 320


def random_view(photo: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, float]:
    """A transformed view and the share of the photo that survives in it."""
    side = float(rng.uniform(0.3, 1.0))  # crop side as a fraction of the photo's sides
    width, height = photo.size
    crop_w, crop_h = int(width * side), int(height * side)
    left, top = int(rng.integers(0, width - crop_w + 1)), int(rng.integers(0, height - crop_h + 1))
    view = photo.crop((left, top, left + crop_w, top + crop_h))
    angle = float(rng.uniform(-25, 25))
    view = view.rotate(angle, resample=Image.Resampling.BILINEAR, expand=False)
    scale = float(rng.uniform(0.6, 1.2))
    view = view.resize((max(32, int(view.width * scale)), max(32, int(view.height * scale))), Image.Resampling.BILINEAR)
    view = ImageEnhance.Color(view).enhance(float(rng.uniform(0.6, 1.4)))
    view = ImageEnhance.Brightness(view).enhance(float(rng.uniform(0.7, 1.3)))
    # A rotation by a cuts the corners of the crop: about 1 - |sin 2a| / 2 of it stays inside the frame.
    survival = side * side * (1 - abs(math.sin(math.radians(2 * angle))) / 2)
    return view, survival


def _save_jpeg(image: Image.Image, path: Path, quality: int) -> None:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    path.write_bytes(buffer.getvalue())


def synthetic_name(images: int, queries: int, seed: int) -> str:
    """The folder of one synthetic set: every parameter is in the name, so a set on disk is always the one asked for."""
    return f"synthetic-i{images}-q{queries}-s{seed}"


def dataset_location(dataset: DatasetConfig, paths: PathsConfig) -> tuple[Path, str]:
    """(root, folder name) of a configured dataset: ``dataset.root``, else ``paths.data``; a synthetic set's folder
    names its size and seed."""
    root = Path(dataset.root).expanduser() if dataset.root else paths.path("data")
    if dataset.name == "synthetic":
        return root, synthetic_name(dataset.synthetic_images, dataset.synthetic_queries, dataset.synthetic_seed)
    return root, dataset.name


def check_synthetic_set(images: int, queries: int, seed: int) -> None:
    """A ``ConfigError`` unless the shipped photos can make ``queries`` landmarks and ``images`` database images,
    and ``seed`` can seed numpy."""
    # Named by their config keys, which `harness data synthetic --images/--queries/--seed` set too.
    check_seed("dataset.synthetic_seed", seed)
    photos = len(photo_loaders())
    if not 1 <= queries < photos:
        raise ConfigError(f"dataset.synthetic_queries={queries}: expected 1 to {photos - 1} (photos shipped: {photos})")
    if images < 2 * queries:
        raise ConfigError(f"dataset.synthetic_images={images}: expected at least {2 * queries} for {queries} queries")


def write_synthetic(root: Path, *, images: int = 60, queries: int = 5, seed: int = 0) -> GroundTruth:
    """The synthetic set ``<root>/<synthetic_name>/``, written unless it is already there; its validated ground truth.

    The set is written into a staging folder and renamed into place, so a reader never sees half a set and
    jobs that ask for the same set at once all end up with one complete copy.

    Args:
        root: dataset root (``paths.data``).
        images: database images (views and distractors).
        queries: landmark photos used as queries (the other shipped photos give distractors).
        seed: makes every crop, colour change and JPEG quality reproducible.
    """
    check_synthetic_set(images, queries, seed)
    name = synthetic_name(images, queries, seed)
    if not gnd_path(root, name).exists():
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DataError(f"{root}: cannot create the dataset root ({error.strerror or error})") from None
        try:
            with staging_folder(root, name) as staging:
                _write_set(staging, name, images=images, queries=queries, seed=seed)
                os.rename(staging / name, root / name)
        except OSError as error:
            if not gnd_path(root, name).exists():  # not a lost race with another job writing the same set
                raise DataError(f"{root / name}: cannot write the synthetic set ({error.strerror or error})") from None
    return load_checked(root, name)


def _write_set(root: Path, name: str, *, images: int, queries: int, seed: int) -> None:
    """Write ``<root>/<name>/jpg/*.jpg`` and ``gnd_<name>.pkl``."""
    loaders = list(photo_loaders().items())
    rng = np.random.default_rng(seed)
    photos = []
    for _, load in loaders:
        photo = as_rgb(load())
        factor = LONG_SIDE / max(photo.size)
        photos.append(
            photo.resize((round(photo.width * factor), round(photo.height * factor)), Image.Resampling.BILINEAR)
        )
    folder = root / name / "jpg"
    folder.mkdir(parents=True, exist_ok=True)
    qimlist, gnd = [], []
    for query, photo in enumerate(photos[:queries]):
        qimlist.append(f"query_{query:03d}")
        _save_jpeg(photo, image_path(root, name, qimlist[-1]), quality=95)
        width, height = photo.size
        gnd.append({"easy": [], "hard": [], "junk": [], "bbx": [width * 0.1, height * 0.1, width * 0.9, height * 0.9]})
    entries: list[tuple[str, int | None, float]] = []
    views_per_query = (images * 2) // (3 * queries)
    for query in range(queries):
        entries += [(f"view_{query:03d}_{view:03d}", query, 0.0) for view in range(views_per_query)]
    entries += [(f"distractor_{index:04d}", None, 0.0) for index in range(images - len(entries))]
    order = rng.permutation(len(entries))
    imlist = []
    for position, entry_index in enumerate(order):
        image_name, query, _ = entries[entry_index]
        source = photos[query] if query is not None else photos[queries + position % (len(photos) - queries)]
        view, survival = random_view(source, rng)
        _save_jpeg(view, image_path(root, name, image_name), quality=int(rng.integers(60, 96)))
        imlist.append(image_name)
        if query is not None:
            label = "easy" if survival >= EASY_SURVIVAL else "hard" if survival >= HARD_SURVIVAL else "junk"
            gnd[query][label].append(position)  # type: ignore[attr-defined]
    gnd_path(root, name).write_bytes(pickle.dumps({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, protocol=2))
