"""Downloads against a real HTTP server on 127.0.0.1: resume, checksum, reuse, offline errors."""

from __future__ import annotations

import hashlib
import json
import shlex
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from harness import download
from harness.errors import DownloadError, WeightsError
from harness.models import variants
from harness.models.dinov2 import DinoVisionTransformer
from harness.models.weights import load_backbone
from tests.conftest import FileServer

PAYLOAD = bytes(range(256)) * 5000  # 1.28 MB: several chunks


def test_fetch_writes_the_file_and_its_record(file_server: FileServer, tmp_path: Path) -> None:
    file_server.files["/blob.bin"] = PAYLOAD
    dest = tmp_path / "sub" / "blob.bin"
    record = download.fetch(file_server.url("/blob.bin"), dest, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert record.sha256 == hashlib.sha256(PAYLOAD).hexdigest() and record.size_bytes == len(PAYLOAD)
    assert json.loads(download.record_path(dest).read_text())["sha256"] == record.sha256
    assert not dest.with_name("blob.bin.part").exists()


def test_truncated_transfer_keeps_the_part_and_resumes(file_server: FileServer, tmp_path: Path) -> None:
    file_server.files["/blob.bin"] = PAYLOAD
    file_server.truncate_next["/blob.bin"] = 300_000
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError, match=r"truncated at 300000 of 1280000 bytes.*run again to resume"):
        download.fetch(file_server.url("/blob.bin"), dest, progress=False)
    assert not dest.exists()
    assert dest.with_name("blob.bin.part").stat().st_size == 300_000
    record = download.fetch(
        file_server.url("/blob.bin"), dest, sha256=hashlib.sha256(PAYLOAD).hexdigest(), progress=False
    )
    assert dest.read_bytes() == PAYLOAD and record.size_bytes == len(PAYLOAD)
    assert file_server.requests[-1] == ("/blob.bin", "bytes=300000-")


def test_a_part_holding_the_whole_file_is_kept_and_one_longer_than_it_is_fetched_again(
    file_server: FileServer, tmp_path: Path
) -> None:
    file_server.files["/blob.bin"] = PAYLOAD
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(PAYLOAD)  # stopped after the last byte, before the rename
    assert download.fetch(file_server.url("/blob.bin"), dest, progress=False).size_bytes == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD and file_server.requests == [("/blob.bin", f"bytes={len(PAYLOAD)}-")]
    # The server's file is shorter than the part (it changed since): the server answers 416 for the part's end,
    # which was taken to mean "complete", and the part was kept as the file, without a digest to catch it.
    file_server.files["/short.bin"] = PAYLOAD[:1000]
    dest = tmp_path / "short.bin"
    dest.with_name("short.bin.part").write_bytes(PAYLOAD[:1500])
    assert download.fetch(file_server.url("/short.bin"), dest, progress=False).size_bytes == 1000
    assert dest.read_bytes() == PAYLOAD[:1000] and file_server.requests[-1] == ("/short.bin", None)


def test_jobs_fetching_the_same_file_at_once_end_with_one_whole_copy(file_server: FileServer, tmp_path: Path) -> None:
    # A sweep's parallel jobs on a fresh machine: both streamed into one part file, the second appending after
    # the first's bytes, and the file kept was neither (no published digest checks a dataset's files).
    file_server.files["/blob.bin"] = PAYLOAD
    file_server.chunk_delay_s = 0.01
    dest = tmp_path / "blob.bin"
    with ThreadPoolExecutor(2) as pool:
        records = list(pool.map(lambda _: download.fetch(file_server.url("/blob.bin"), dest, progress=False), range(2)))
    assert dest.read_bytes() == PAYLOAD
    assert {record.sha256 for record in records} == {hashlib.sha256(PAYLOAD).hexdigest()}
    assert len(file_server.requests) == 1  # the second waited for the first, then reused its verified file


def test_checksum_mismatch_is_refused_and_removed(file_server: FileServer, tmp_path: Path) -> None:
    file_server.files["/blob.bin"] = PAYLOAD
    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError, match=r"sha256 [0-9a-f]{64} does not match the expected 0000"):
        download.fetch(file_server.url("/blob.bin"), dest, sha256="0" * 64, progress=False)
    assert not dest.exists() and not dest.with_name("blob.bin.part").exists()


def test_reuse_verifies_and_a_corrupted_file_is_never_used(file_server: FileServer, tmp_path: Path) -> None:
    file_server.files["/blob.bin"] = PAYLOAD
    dest = tmp_path / "blob.bin"
    download.fetch(file_server.url("/blob.bin"), dest, progress=False)
    download.fetch(file_server.url("/blob.bin"), dest, progress=False)
    assert len(file_server.requests) == 1  # the second call reused the verified file
    corrupted = bytearray(PAYLOAD)
    corrupted[1000] ^= 0xFF
    dest.write_bytes(bytes(corrupted))
    with pytest.raises(DownloadError, match=r"blob.bin: sha256 .* does not match"):
        download.fetch(file_server.url("/blob.bin"), dest, progress=False)
    for record in ('{"sha', '{"sha256": "ab"}', "[]"):  # a traceback, not a refusal
        download.record_path(dest).write_text(record)
        with pytest.raises(
            DownloadError, match=r"blob.bin.sha256.json: unreadable record of blob.bin \(.*\); delete both"
        ):
            download.fetch(file_server.url("/blob.bin"), dest, progress=False)


def test_unreachable_server_says_how_to_fetch_by_hand(tmp_path: Path) -> None:
    dest = tmp_path / "my weights" / "x.pth"  # a folder with a space: the command must still be one to paste
    with pytest.raises(DownloadError, match=r"cannot download http://127.0.0.1:9/x.pth .*; fetch it by hand with `"):
        download.fetch("http://127.0.0.1:9/x.pth", dest, progress=False)
    with pytest.raises(DownloadError) as refused:
        download.fetch("http://127.0.0.1:9/x.pth", dest, progress=False)
    command = str(refused.value).split("`")[1]
    assert shlex.split(command) == ["curl", "-L", "-C", "-", "-o", str(dest), "http://127.0.0.1:9/x.pth"]


def test_http_error_names_the_url(file_server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"/missing.pth: HTTP 404"):
        download.fetch(file_server.url("/missing.pth"), tmp_path / "m.pth", progress=False)


def test_official_weights_are_downloaded_verified_and_reused(
    file_server: FileServer, tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = variants.VARIANTS["vits14_reg4"]
    model = DinoVisionTransformer(spec)
    model.init_random(5)
    checkpoint = tmp_path / "upload.pth"
    torch.save(model.state_dict(), checkpoint)
    file_server.files["/dinov2/dinov2_vits14/dinov2_vits14_reg4_pretrain.pth"] = checkpoint.read_bytes()
    monkeypatch.setattr(variants, "CHECKPOINT_BASE_URL", f"{file_server.base_url}/dinov2")
    loaded, info = load_backbone(
        spec, weights="official", seed=0, cache_dir=cache_dir, input_size=(224, 224), progress=False
    )
    assert info.kind == "official" and info.sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert (cache_dir / "weights" / "dinov2_vits14_reg4_pretrain.pth").is_file()
    assert torch.equal(loaded.pos_embed, model.pos_embed)
    load_backbone(spec, weights="official", seed=0, cache_dir=cache_dir, input_size=(224, 224), progress=False)
    assert len(file_server.requests) == 1


def test_official_weights_offline_is_one_clear_error(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(variants, "CHECKPOINT_BASE_URL", "http://127.0.0.1:9/dinov2")
    with pytest.raises(WeightsError) as caught:
        load_backbone(
            variants.VARIANTS["vitl14_reg4"], weights="official", seed=0, cache_dir=cache_dir, input_size=(224, 224)
        )
    message = str(caught.value)
    assert "\n" not in message
    assert (
        "dinov2_vitl14_reg4_pretrain.pth" in message
        and "model.weights=/path/to/dinov2_vitl14_reg4_pretrain.pth" in message
    )
