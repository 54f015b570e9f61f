"""Descriptors for a list of images through any backend, with decoding in worker processes.

JPEG decoding and preprocessing run in a pool of spawned processes, in order and a few images ahead, while the
main process feeds the backend, so the model is not starved and decoded images do not pile up. Features are
written straight into a memory-mapped ``.npy`` in the run folder (float32 [N, D]), so large sets never sit in
memory twice.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from harness.backends import Backend, Toolchain
from harness.config.schema import VdspParams
from harness.errors import DataError, counted
from harness.fileio import progress_bar
from harness.preprocess import filled_to
from harness.processes import die_with_parent, spawn_context
from harness.vdsp import device_input, preprocess

log = logging.getLogger(__name__)

# Images a decoding worker decodes per call (one call per image costs more in messages than some decodes).
DECODE_CHUNK = 4
# Calls queued ahead of the caller per decoding worker: enough to keep each one busy, few enough that decoded
# inputs (0.6 MB each at 224x224, 3.2 MB at 518x518) do not pile up while a slower model catches up.
DECODE_AHEAD = 2

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class ImageJob:
    """One image to describe: its file, the query box to crop to, its preprocessing, and whether it is wanted
    as the device's preprocessing reads it (uint8, ``vdsp.device_input``) instead of as the model's input."""

    path: str
    box: Box | None
    params: VdspParams
    device_input: bool = False


def decode(job: ImageJob) -> tuple[str, np.ndarray | None, str | None]:
    """(path, [3, H, W] input or None, error or None): runs in a worker process."""
    try:
        with Image.open(job.path) as opened:
            opened.load()
            image: Image.Image = opened.crop(job.box) if job.box is not None else opened
            return job.path, (device_input if job.device_input else preprocess)(image, job.params), None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        return job.path, None, f"{type(error).__name__}: {error}"


def _decode_all(jobs: Sequence[ImageJob]) -> list[tuple[str, np.ndarray | None, str | None]]:
    return [decode(job) for job in jobs]


def _decoded(jobs: Sequence[ImageJob], workers: int) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """``decode`` of each job, in order, by ``workers`` processes (0: here), ``DECODE_CHUNK`` images a call and at
    most ``DECODE_AHEAD`` calls a worker ahead of the caller; a worker that dies fails the extraction
    (``DataError``) instead of hanging it."""
    if workers == 0:
        yield from map(decode, jobs)
        return
    # A process pool whose worker dies fails every call it had (multiprocessing.Pool waited for them for ever).
    executor = ProcessPoolExecutor(workers, mp_context=spawn_context(), initializer=die_with_parent)
    chunks = (jobs[start : start + DECODE_CHUNK] for start in range(0, len(jobs), DECODE_CHUNK))
    pending = collections.deque(
        (chunk, executor.submit(_decode_all, chunk)) for chunk in islice(chunks, DECODE_AHEAD * workers)
    )
    try:
        while pending:
            chunk, decoding = pending.popleft()
            # The pool breaks as a worker dies: at this call's result, or at the next submission.
            try:
                decoded = decoding.result()
            except BrokenProcessPool:
                raise _decoder_died([chunk, *(queued for queued, _ in pending)]) from None
            for following in islice(chunks, 1):
                try:
                    pending.append((following, executor.submit(_decode_all, following)))
                except BrokenProcessPool:
                    raise _decoder_died([*(queued for queued, _ in pending), following]) from None
            yield from decoded
    finally:
        # On an error or an interrupt the queued images are dropped, not decoded first.
        executor.shutdown(wait=False, cancel_futures=True)


def _decoder_died(unfinished: list[Sequence[ImageJob]]) -> DataError:
    """The error of a decoding pool that lost a worker while these chunks of images were not decoded yet."""
    jobs = [job for chunk in unfinished for job in chunk]
    return DataError(
        f"{jobs[0].path}: an image decoding worker died while decoding it or one of the "
        f"{counted(len(jobs) - 1, 'image')} after it (killed: by the out-of-memory killer when memory runs out; or a "
        "crash in native decoding code); accuracy.workers=0 decodes in the harness's own process, one image at a time"
    )


def _readable(
    jobs: Sequence[ImageJob], workers: int, on_bad_image: str, skipped: list[str], *, desc: str, progress: bool
) -> Iterator[tuple[int, np.ndarray]]:
    """(index, decoded input) of each readable image, in order; unreadable ones fail or go to ``skipped``."""
    decoded = progress_bar(_decoded(jobs, workers), total=len(jobs), desc=f"features {desc}", enabled=progress)
    for index, (path, tensor, error) in enumerate(decoded):
        if tensor is None:
            if on_bad_image == "fail":
                raise DataError(f"{path}: cannot read image ({error}); set dataset.on_bad_image=skip to skip it")
            log.warning("skipping bad image path=%s error=%s", path, error)
            skipped.append(path)
            continue
        yield index, tensor


def extract_on_toolchain(
    jobs: Sequence[ImageJob],
    *,
    toolchain: Toolchain,
    prefix: Path,
    vdsp_params: Path,
    batch: int,
    workers: int,
    output: Path,
    on_bad_image: str,
    progress: bool = True,
) -> tuple[np.ndarray, list[str]]:
    """``extract`` through a vendor toolchain: every readable image decoded as the device reads it (``jobs``
    made with ``device_input=True``) and written as it comes, then one toolchain run over all of them, its
    per-image outputs gathered in order (in ``<output stem>/`` beside ``output``)."""
    skipped: list[str] = []
    indices: list[int] = []

    def named() -> Iterator[tuple[str, np.ndarray]]:
        for index, image in _readable(jobs, workers, on_bad_image, skipped, desc=output.stem, progress=progress):
            indices.append(index)
            yield Path(jobs[index].path).stem, image

    outputs = toolchain.run_images(
        prefix, named(), vdsp_params=vdsp_params, workdir=output.with_suffix(""), batch=batch, progress=progress
    )  # fmt: skip
    rows = [outputs[Path(jobs[index].path).stem] for index in indices]
    features = np.lib.format.open_memmap(output, mode="w+", dtype=np.float32, shape=(len(jobs), rows[0].size))
    features[indices] = np.stack(rows)
    features.flush()
    return features, skipped


def extract(
    jobs: Sequence[ImageJob],
    *,
    backend: Backend,
    input_dtype: str,
    batch: int,
    workers: int,
    output: Path,
    on_bad_image: str,
    progress: bool = True,
    pad: bool = False,
) -> tuple[np.ndarray, list[str]]:
    """Run every image through ``backend`` (open; the caller closes it, so one instance serves the query and
    the database lists), ``batch`` at a time (a smaller last batch filled up with repeated images when ``pad``,
    for a backend that compiles a program per batch size); returns the memory-mapped features and the skipped
    files.

    Raises:
        DataError: a corrupt or missing image with ``on_bad_image=fail`` (the message names the file).
    """
    features: np.memmap | None = None
    skipped: list[str] = []
    pending: list[tuple[int, np.ndarray]] = []

    def flush() -> None:
        nonlocal features
        inputs = np.stack([tensor for _, tensor in pending]).astype(input_dtype)
        backend.prepare(filled_to(inputs, batch) if pad else inputs)
        backend.infer()
        outputs = np.asarray(backend.outputs(), dtype=np.float32)[: len(pending)]
        if features is None:
            # A new memmap reads as zeros, which is what skipped images keep.
            features = np.lib.format.open_memmap(
                output, mode="w+", dtype=np.float32, shape=(len(jobs), outputs.shape[1])
            )
        features[[index for index, _ in pending]] = outputs
        pending.clear()

    for index, tensor in _readable(jobs, workers, on_bad_image, skipped, desc=output.stem, progress=progress):
        pending.append((index, tensor))
        if len(pending) == batch:
            flush()
    if pending:
        flush()
    if features is None:
        raise DataError(f"no readable image among {len(jobs)} (first: {jobs[0].path if jobs else 'none'})")
    features.flush()
    return features, skipped
