"""Dataset download against a real HTTP server on 127.0.0.1, and safe extraction of hostile archives."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import pytest

from harness.data import datasets
from harness.data.datasets import DatasetSpec, download_dataset, extract_images
from harness.data.photos import sample_photos
from harness.errors import DataError, DownloadError
from tests.conftest import FileServer


def jpeg_bytes(index: int) -> bytes:
    _, image = sample_photos(index + 1)[index]
    buffer = io.BytesIO()
    image.resize((64, 48)).save(buffer, "JPEG")
    return buffer.getvalue()


def tar_bytes(entries: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return buffer.getvalue()


def test_download_lays_out_the_revisitop_folder_and_resumes(
    file_server: FileServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gnd = {"imlist": ["all_souls_000001", "oxford_000002"], "qimlist": ["all_souls_000013"], "gnd": [{"easy": [0], "hard": [], "junk": [1], "bbx": [1, 1, 10, 10]}]}  # fmt: skip
    file_server.files["/gnd/tiny5k/gnd_tiny5k.pkl"] = pickle.dumps(gnd, protocol=2)
    images = {f"oxbuild/{name}.jpg": jpeg_bytes(index) for index, name in enumerate([*gnd["imlist"], *gnd["qimlist"]])}
    file_server.files["/images/tiny.tgz"] = tar_bytes(images)
    file_server.truncate_next["/images/tiny.tgz"] = 500
    monkeypatch.setattr(datasets, "GND_BASE_URL", f"{file_server.base_url}/gnd")
    spec = DatasetSpec("tiny5k", (file_server.url("/images/tiny.tgz"),), images=2, queries=1)
    monkeypatch.setitem(datasets.DATASETS, "tiny5k", spec)
    with pytest.raises(DownloadError, match="truncated at 500"):
        download_dataset("tiny5k", tmp_path, progress=False)
    truth = download_dataset("tiny5k", tmp_path, progress=False)
    assert truth.qimlist == ("all_souls_000013",)
    assert sorted(path.name for path in (tmp_path / "tiny5k" / "jpg").iterdir()) == [
        "all_souls_000001.jpg", "all_souls_000013.jpg", "oxford_000002.jpg",
    ]  # fmt: skip
    assert file_server.requests[-1] == ("/images/tiny.tgz", "bytes=500-")
    requests = len(file_server.requests)
    download_dataset("tiny5k", tmp_path, progress=False)  # complete: only re-verified, nothing fetched
    assert len(file_server.requests) == requests


@pytest.mark.parametrize(
    ("entries", "links", "message"),
    [
        ({"../escape.jpg": b"x"}, None, r"member '../escape.jpg' would land outside the target"),
        ({"/abs/evil.jpg": b"x"}, None, r"member '/abs/evil.jpg' would land outside the target"),
        ({"ok.jpg": b"x"}, {"link.jpg": "/etc/passwd"}, r"member 'link.jpg' is a link"),
    ],
)
def test_hostile_archives_are_refused_and_leave_nothing(
    tmp_path: Path, entries: dict, links: dict | None, message: str
) -> None:
    archive = tmp_path / "evil.tgz"
    archive.write_bytes(tar_bytes(entries, links=links))
    target = tmp_path / "data" / "jpg"
    with pytest.raises(DataError, match=message):
        extract_images(archive, target)
    assert not target.exists() and not (tmp_path / "escape.jpg").exists()
    assert list((tmp_path / "data").iterdir()) == [] if (tmp_path / "data").exists() else True


def test_a_corrupt_archive_is_a_clear_error(tmp_path: Path) -> None:
    archive = tmp_path / "broken.tgz"
    archive.write_bytes(b"not a tar archive at all")
    with pytest.raises(DataError, match=r"broken\.tgz: not a readable tar archive"):
        extract_images(archive, tmp_path / "jpg")
