"""Real photographs that installed packages ship (scikit-image, matplotlib), for parity checks and demos.

No network: every file read here is inside an installed package. ``sample_photos(n)`` returns ``n`` RGB
images; past the number of distinct photos it cycles through them with deterministic crops and mirrors, so
every image is still a real photo's content and (up to 1256 of them) no two are the same.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

# Colour photographs first: they exercise all three channels of the normalisation.
SKIMAGE_PHOTOS: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera",
    "coins", "moon", "clock", "brick", "grass", "gravel",
)  # fmt: skip
MATPLOTLIB_PHOTOS: tuple[str, ...] = ("grace_hopper.jpg",)


def _skimage_loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _matplotlib_loader(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from matplotlib import cbook

        with Image.open(cbook.get_sample_data(name, asfileobj=False)) as image:
            return np.asarray(image.convert("RGB"))

    return load


def photo_loaders() -> dict[str, Callable[[], np.ndarray]]:
    """Name -> loader of each shipped photo, colour ones first."""
    loaders = {f"skimage/{name}": _skimage_loader(name) for name in SKIMAGE_PHOTOS[:7]}
    loaders.update({f"matplotlib/{name}": _matplotlib_loader(name) for name in MATPLOTLIB_PHOTOS})
    loaders.update({f"skimage/{name}": _skimage_loader(name) for name in SKIMAGE_PHOTOS[7:]})
    return loaders


def as_rgb(array: np.ndarray) -> Image.Image:
    """Grey, RGBA or RGB uint8 array -> RGB PIL image."""
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    return Image.fromarray(np.ascontiguousarray(array[:, :, :3]).astype(np.uint8), "RGB")


def sample_photos(count: int) -> list[tuple[str, Image.Image]]:
    """``count`` (name, RGB image) pairs from real photos, deterministic.

    The first pass returns each photo whole; pass ``k`` takes a centred crop of ``1 / (1 + k / 10)`` of each
    side, mirrored on odd passes. The crops shrink without a floor, so the first 1256 images are all different
    (a parity check on 1000 images compares 1000 different inputs); past that, the crops of the smallest photo
    (400 x 300) come within a pixel of each other and start to repeat.
    """
    loaders = list(photo_loaders().items())
    photos: list[tuple[str, Image.Image]] = []
    for index in range(count):
        name, load = loaders[index % len(loaders)]
        image = as_rgb(load())
        variant = index // len(loaders)
        if variant:
            keep = 1.0 / (1.0 + 0.1 * variant)
            width, height = image.size
            left, top = int(width * (1 - keep) / 2), int(height * (1 - keep) / 2)
            image = image.crop((left, top, left + int(width * keep), top + int(height * keep)))
            if variant % 2:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            name = f"{name}#view{variant}"
        photos.append((name, image))
    return photos
