"""Which weights a run uses, without building the model: the official checkpoint (downloaded into
``<paths.cache>/weights`` and verified), a local file, or a seeded random init, each with its provenance.

Free of torch on purpose: a run without the build stage records its weights' provenance without paying for
torch's import or the model's construction.
"""

from __future__ import annotations

from pathlib import Path

from harness import download
from harness.errors import DownloadError, WeightsError
from harness.fileio import sha256_of
from harness.models.variants import VariantSpec
from harness.result.build import WeightsInfo


def checkpoint_folder(cache_dir: Path) -> Path:
    """Where the official checkpoints are downloaded under ``paths.cache``."""
    return cache_dir / "weights"


def resolve_weights(
    spec: VariantSpec, *, weights: str, seed: int, cache_dir: Path, progress: bool
) -> tuple[Path | None, WeightsInfo]:
    """The checkpoint file (``None`` for random weights), fetched and verified if official, and its provenance."""
    if weights == "random":
        return None, WeightsInfo(kind="random", source=f"random(seed={seed})", sha256=None, digest=f"random-seed{seed}")
    return _checkpoint_file(spec, weights, cache_dir=cache_dir, progress=progress)


def _checkpoint_file(spec: VariantSpec, weights: str, *, cache_dir: Path, progress: bool) -> tuple[Path, WeightsInfo]:
    if weights == "official":
        url, file_name = spec.official_checkpoint()
        path = checkpoint_folder(cache_dir) / file_name
        try:
            record = download.fetch(url, path, sha256=spec.checkpoint_sha256, progress=progress)
        except DownloadError as error:
            raise WeightsError(f"{error} (or set model.weights=/path/to/{file_name})") from None
        return path, WeightsInfo(kind="official", source=url, sha256=record.sha256, digest=record.sha256)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"model.weights={weights!r}: no such file (expected 'official', 'random' or a .pth / .safetensors path)"
        )
    digest = sha256_of(path)
    return path, WeightsInfo(kind="path", source=str(path.resolve()), sha256=digest, digest=digest)
