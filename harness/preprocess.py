"""Image -> model input tensor.

The default pipeline is the DINOv2 retrieval seed's torchvision one, ``Resize([H, W]) -> ToTensor ->
Normalize(ImageNet)``, reproduced with PIL and numpy: torchvision resizes a PIL image with PIL's own
bilinear filter (antialiased when shrinking), scales to [0, 1] and normalises per channel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def default_transform(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Stretch an RGB image to ``size`` (H, W) with PIL bilinear, scale to [0, 1], normalise: [3, H, W] float32."""
    height, width = size
    resized = image.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(resized, dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def batch_of(images: Sequence[Image.Image], size: tuple[int, int]) -> np.ndarray:
    """[N, 3, H, W] float32 batch of ``default_transform`` outputs."""
    return np.stack([default_transform(image, size) for image in images])
