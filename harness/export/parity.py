"""Parity of a built artifact with the torch fp32 reference, on real photos.

The artifact runs in ONNX Runtime (CPU execution provider) twice, once on a batch of 1 and once on the
rest, which also proves the batch axis is dynamic. Per image we compare the feature vectors with cosine
similarity and absolute error.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from harness.config.schema import BuildConfig, PrecisionConfig
from harness.data.photos import sample_photos
from harness.errors import BuildError
from harness.export.onnx_export import INPUT_NAME, io_dtype_for
from harness.preprocess import batch_of
from harness.result.build import ParityResult

log = logging.getLogger(__name__)


def cosine_rows(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two [N, D] matrices, in float64."""
    left64, right64 = left.astype(np.float64), right.astype(np.float64)
    norms = np.linalg.norm(left64, axis=1) * np.linalg.norm(right64, axis=1)
    return np.sum(left64 * right64, axis=1) / np.maximum(norms, np.finfo(np.float64).tiny)


def reference_features(reference: torch.nn.Module, inputs: np.ndarray) -> np.ndarray:
    """torch fp32 features of an [N, 3, H, W] float32 batch."""
    with torch.no_grad():
        return reference(torch.from_numpy(inputs)).numpy()


def compare_features(
    actual: np.ndarray, expected: np.ndarray, *, images: tuple[str, ...], artifact: str, precision: PrecisionConfig,
    runtime: str,
) -> ParityResult:  # fmt: skip
    """Per-image cosine and absolute error of ``actual`` against the fp32 ``expected``; a ``BuildError`` naming
    ``artifact`` with both numbers when a bound of ``precision`` fails."""
    if actual.shape != expected.shape:
        raise BuildError(f"{artifact}: features {actual.shape} differ in shape from the reference {expected.shape}")
    cosines = cosine_rows(actual, expected)
    max_abs_error = float(np.max(np.abs(actual.astype(np.float64) - expected)))
    passed = bool(cosines.min() >= precision.parity_min_cosine) and (
        precision.parity_max_abs_error is None or max_abs_error <= precision.parity_max_abs_error
    )
    result = ParityResult(
        images=images,
        min_cosine=float(cosines.min()),
        mean_cosine=float(cosines.mean()),
        max_abs_error=max_abs_error,
        threshold_min_cosine=precision.parity_min_cosine,
        threshold_max_abs_error=precision.parity_max_abs_error,
        runtime=runtime,
        passed=passed,
    )
    log.info(
        "parity images=%d min_cosine=%.8f max_abs_error=%.3g passed=%s",
        len(images), result.min_cosine, result.max_abs_error, passed,
    )  # fmt: skip
    if not passed:
        bound = f"cos >= {precision.parity_min_cosine}"
        if precision.parity_max_abs_error is not None:
            bound += f", max abs error <= {precision.parity_max_abs_error}"
        raise BuildError(
            f"{artifact}: parity with torch fp32 failed ({precision.name}): min cosine {result.min_cosine:.8f}, "
            f"max abs error {max_abs_error:.4g}, required {bound} (precision.parity_min_cosine)"
            + _not_finite(actual, precision.name)
        )
    return result


def _not_finite(features: np.ndarray, precision: str) -> str:
    """What a failed parity says when the artifact's features hold NaN or inf (the fp32 reference's never do: its
    checkpoint is refused if it holds any): in half precision, an activation past the format's range."""
    rows = int(np.count_nonzero(~np.isfinite(features).all(axis=1)))
    if not rows:
        return ""
    cause = (
        ": fp16 holds no value above 65504 (a weight or activation overflowed); bf16 has fp32's range"
        if precision == "fp16"
        else ""
    )
    return f"; the artifact's features hold NaN or inf for {rows} of {len(features)} photos{cause}"


def check_parity(
    artifact: Path,
    reference: torch.nn.Module,
    *,
    precision: PrecisionConfig,
    build: BuildConfig,
    input_size: tuple[int, int],
) -> ParityResult:
    """Compare ``artifact`` with ``reference`` on ``build.parity_images`` real photos; raises if a bound fails."""
    photos = sample_photos(build.parity_images)
    inputs = batch_of([image for _, image in photos], input_size)
    expected = reference_features(reference, inputs)
    session = onnxruntime.InferenceSession(str(artifact), providers=["CPUExecutionProvider"])
    feed_dtype = io_dtype_for(precision.name, build.io_dtype)
    feed = inputs.astype(np.float16 if feed_dtype == torch.float16 else np.float32)
    actual = np.concatenate([session.run(None, {INPUT_NAME: part})[0] for part in (feed[:1], feed[1:])]).astype(
        np.float32
    )
    return compare_features(
        actual, expected, images=tuple(name for name, _ in photos), artifact=artifact.name, precision=precision,
        runtime=f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider",
    )  # fmt: skip
