"""The images a static int8 build calibrates on when they come from a folder (``calibration.source=folder``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from harness.config.schema import CalibrationConfig
from harness.errors import DataError, counted

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def calibration_files(config: CalibrationConfig) -> list[Path]:
    """The ``calibration.images`` files (JPEG, PNG) of ``calibration.folder`` that ``calibration.seed`` draws, in
    name order; a ``DataError`` naming the key when the folder is missing or holds fewer."""
    folder = Path(str(config.folder)).expanduser()
    if not folder.is_dir():
        raise DataError(f"calibration.folder={folder}: no such folder")
    files = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < config.images:
        raise DataError(
            f"calibration.folder={folder} holds {counted(len(files), 'image')} ({', '.join(IMAGE_SUFFIXES)}), fewer "
            f"than calibration.images={config.images}: add images, or lower calibration.images"
        )
    chosen = np.random.default_rng(config.seed).choice(len(files), size=config.images, replace=False)
    return [files[int(index)] for index in sorted(chosen)]
