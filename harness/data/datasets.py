"""Revisited Oxford / Paris on disk: the revisitop layout, official downloads, safe extraction.

Layout: ``<root>/<name>/jpg/<image>.jpg`` and ``<root>/<name>/gnd_<name>.pkl``. ``download_dataset`` fetches
the ground truth and the image archives from their official locations (resumable, size and sha256 recorded
and verified, progress bar), checks every archive member before extracting any (no absolute paths, no
``..``, no links or devices), extracts into a staging folder and moves the JPEGs into place, so an archive
that is refused leaves nothing behind.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from harness.data.groundtruth import GroundTruth, check_boxes_inside, load_groundtruth
from harness.download import fetch
from harness.errors import ConfigError, DataError, counted, unknown_name_message
from harness.fileio import locked

log = logging.getLogger(__name__)

GND_BASE_URL = "http://cmp.felk.cvut.cz/revisitop/data/datasets"


@dataclass(frozen=True)
class DatasetSpec:
    """A revisitop dataset: ground-truth URL, the archives holding its images, and the size of its official
    ground truth (database images and queries: Radenović et al., CVPR 2018, Table 1)."""

    name: str
    archives: tuple[str, ...]
    images: int
    queries: int

    @property
    def gnd_url(self) -> str:
        return f"{GND_BASE_URL}/{self.name}/gnd_{self.name}.pkl"


DATASETS: dict[str, DatasetSpec] = {
    "roxford5k": DatasetSpec(
        "roxford5k",
        ("https://www.robots.ox.ac.uk/~vgg/data/oxbuildings/oxbuild_images-v1.tgz",),
        images=4993,
        queries=70,
    ),
    "rparis6k": DatasetSpec(
        "rparis6k",
        (
            "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_1-v1.tgz",
            "https://www.robots.ox.ac.uk/~vgg/data/parisbuildings/paris_2-v1.tgz",
        ),
        images=6322,
        queries=70,
    ),
}


def unofficial_size(name: str, truth: GroundTruth) -> str | None:
    """Why ``truth``, read as revisitop dataset ``name``, is not its official ground truth (another number of
    database images or queries: a file cut down, or another set under its name); ``None`` when its size is the
    official one, or ``name`` is not a revisitop dataset."""
    spec = DATASETS.get(name)
    if spec is None or (len(truth.imlist), len(truth.qimlist)) == (spec.images, spec.queries):
        return None
    listed = f"{counted(len(truth.imlist), 'database image')} and {counted(len(truth.qimlist), 'query', 'queries')}"
    return (
        f"gnd_{name}.pkl lists {listed}, the official {name} {spec.images} and {spec.queries}: its mAP is not "
        f"comparable with published {name} results"
    )


def dataset_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise ConfigError(unknown_name_message("dataset", name, DATASETS)) from None


def gnd_path(root: Path, name: str) -> Path:
    return root / name / f"gnd_{name}.pkl"


def image_path(root: Path, name: str, image: str) -> Path:
    return root / name / "jpg" / f"{image}.jpg"


def load_checked(root: Path, name: str) -> GroundTruth:
    """The validated ground truth of ``<root>/<name>``, its query boxes checked against the query images' sizes."""
    truth = load_groundtruth(gnd_path(root, name))
    check_boxes_inside(truth, _query_sizes(root, name, truth), source=str(gnd_path(root, name)))
    return truth


def _query_sizes(root: Path, name: str, truth: GroundTruth) -> dict[str, tuple[int, int]]:
    """(width, height) of each readable query image, from its header, so boxes can be checked against it."""
    from PIL import Image, UnidentifiedImageError

    sizes = {}
    for query in truth.qimlist:
        try:
            with Image.open(image_path(root, name, query)) as image:
                sizes[query] = image.size
        except (OSError, UnidentifiedImageError):
            continue  # reported by name when the image is read for extraction
    return sizes


def checked_members(archive: tarfile.TarFile, source: str) -> list[tarfile.TarInfo]:
    """Every member, if all are plain files or folders that stay inside the target; else a ``DataError``."""
    members = archive.getmembers()
    for member in members:
        path = PurePosixPath(member.name)
        if not (member.isfile() or member.isdir()):
            kind = "link" if member.issym() or member.islnk() else "special file"
            raise DataError(f"{source}: refused archive: member {member.name!r} is a {kind}")
        if path.is_absolute() or ".." in path.parts:
            raise DataError(f"{source}: refused archive: member {member.name!r} would land outside the target")
    return members


def extract_images(archive_path: Path, images_dir: Path) -> int:
    """Extract every ``.jpg`` of a tar archive, flattened, into ``images_dir``; returns how many."""
    staging = images_dir.parent / f".extract-{archive_path.name}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with tarfile.open(archive_path) as archive:
            members = checked_members(archive, str(archive_path))
            staging.mkdir(parents=True)
            archive.extractall(staging, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"{archive_path}: not a readable tar archive ({error})") from None
    except DataError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    images_dir.mkdir(parents=True, exist_ok=True)
    moved = 0
    for image in staging.rglob("*.jpg"):
        image.replace(images_dir / image.name)
        moved += 1
    shutil.rmtree(staging)
    return moved


def missing_images(root: Path, name: str, truth: GroundTruth) -> list[str]:
    return [image for image in (*truth.imlist, *truth.qimlist) if not image_path(root, name, image).is_file()]


def download_dataset(name: str, root: Path, *, progress: bool = True) -> GroundTruth:
    """Fetch, verify and lay out ``name`` under ``root``; a complete dataset is only re-verified. Two commands
    at once take turns: extraction stages in one folder per archive."""
    with locked(root / name):
        return _download_dataset(name, root, progress=progress)


def _download_dataset(name: str, root: Path, *, progress: bool) -> GroundTruth:
    spec = dataset_spec(name)
    truth_file = gnd_path(root, name)
    fetch(spec.gnd_url, truth_file, progress=progress)
    truth = load_groundtruth(truth_file)
    if not missing_images(root, name, truth):
        log.info("dataset complete name=%s images=%d", name, len(truth.imlist) + len(truth.qimlist))
        return truth
    for url in spec.archives:
        archive = root / name / "downloads" / url.rsplit("/", 1)[-1]
        fetch(url, archive, progress=progress)
        count = extract_images(archive, root / name / "jpg")
        log.info("extracted archive=%s images=%d", archive.name, count)
    missing = missing_images(root, name, truth)
    if missing:
        raise DataError(
            f"{root / name}: {counted(len(missing), 'image')} of the ground truth missing after extraction, "
            f"e.g. {missing[:3]}"
        )
    return truth
