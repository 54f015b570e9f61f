"""Image -> model input tensor, through one path: the vdsp description of the preprocessing.

The default is the DINOv2 retrieval seed's torchvision pipeline, ``Resize([H, W]) -> ToTensor ->
Normalize(ImageNet)``, which is PIL's bilinear resize (antialiased when shrinking) of the RGB image, /255,
then per-channel normalisation: exactly ``DIV255_MINUSMEAN_DIVSTD`` with ``BILINEAR_PILLOW``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from harness.config.schema import VdspParams
from harness.vdsp import preprocess

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def default_params(size: tuple[int, int]) -> VdspParams:
    """The torchvision-equivalent pipeline for an input of ``size`` (H, W)."""
    return VdspParams(
        op_type="TORCHVISION_RESIZE_TOTENSOR_NORMALIZE",
        input_format="RGB_PLANAR",
        output_size=size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        norma_type="DIV255_MINUSMEAN_DIVSTD",
        resize_type="BILINEAR_PILLOW",
        color_cvt_code="NO_CHANGE",
        source_format="default",
    )


def default_transform(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """[3, H, W] float32 input of the default pipeline."""
    return preprocess(image, default_params(size))


def batch_of(images: Sequence[Image.Image], size: tuple[int, int], params: VdspParams | None = None) -> np.ndarray:
    """[N, 3, H, W] float32 batch (the default pipeline unless ``params`` are given)."""
    chosen = params or default_params(size)
    return np.stack([preprocess(image, chosen) for image in images])


def filled_to(inputs: np.ndarray, rows: int) -> np.ndarray:
    """``inputs`` ([N, ...], N <= ``rows``) filled up to ``rows`` with repeats of its own rows: one batch size for a
    program compiled per size; the caller keeps the first N outputs."""
    return np.resize(inputs, (rows, *inputs.shape[1:]))
