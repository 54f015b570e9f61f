"""Baseline files are reviewed and sometimes edited by hand: each malformed one is an error naming the file and
the entry, and a well-formed one reads back what was written."""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path

import pytest

from harness.errors import DataError
from harness.gate import sources
from harness.gate.evidence import Evidence
from harness.gate.sources import read_baseline_file

ENTRY = {
    "label": "0",
    "config_hash": "6e90b22bf206",
    "hardware_fingerprint": "0123456789ab",
    "metrics": {"throughput_qps": [474.3, 475.1], "map_medium": [95.42]},
    "config": {"backend.latency_us": 2000.0},
}


def write(path: Path, entries: object, schema_version: int = 1) -> Path:
    path.write_text(json.dumps({"schema_version": schema_version, "entries": entries}))
    return path


def test_an_entry_reads_back_as_written(tmp_path: Path) -> None:
    (evidence,) = read_baseline_file(write(tmp_path / "base.json", [ENTRY]))
    assert evidence.label == f"{tmp_path / 'base.json'}:0" and evidence.config_hash == "6e90b22bf206"
    assert evidence.metrics == {"throughput_qps": (474.3, 475.1), "map_medium": (95.42,)}
    assert evidence.config == {"backend.latency_us": "2000.0"}


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([ENTRY, {key: value for key, value in ENTRY.items() if key != "label"}], r"baseline entry 1 has no 'label'$"),
        ([{**ENTRY, "metrics": {"throughput_qps": ["fast"]}}], r"baseline entry 0 is malformed \(ValueError: could n"),
        ([{**ENTRY, "metrics": [474.3]}], r"baseline entry 0 is malformed \(AttributeError: "),
        ([1], r"baseline entry 0 is malformed \(TypeError: "),
        ({"0": ENTRY}, r"not a baseline file \('entries' is a dict, not a list\)$"),
    ],
)
def test_a_malformed_entry_is_an_error_naming_the_file_and_the_entry(
    tmp_path: Path, entries: object, message: str
) -> None:
    # Was "not a baseline file (KeyError: 'label')", whichever of a dozen entries lacked it.
    with pytest.raises(DataError, match=rf"^{tmp_path / 'base.json'}: {message}"):
        read_baseline_file(write(tmp_path / "base.json", entries))


def test_a_file_of_another_schema_or_no_json_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"base.json: baseline schema_version=2, expected 1$"):
        read_baseline_file(write(tmp_path / "base.json", [ENTRY], schema_version=2))
    (tmp_path / "cut.json").write_text('{"schema_version": 1, "entr')
    with pytest.raises(DataError, match=r"cut.json: not a baseline file \(JSONDecodeError: "):
        read_baseline_file(tmp_path / "cut.json")


def test_two_promotions_at_once_keep_both_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # CI jobs promoting their runs into one file at once: each read it before the other wrote, and the later
    # write dropped the earlier one's entries.
    path = write(tmp_path / "base.json", [ENTRY])
    reading = threading.Barrier(2, timeout=2)
    plain_read = sources.read_baseline_file

    def slow_read(file: Path) -> list[Evidence]:
        entries = plain_read(file)
        with contextlib.suppress(threading.BrokenBarrierError):  # the other promotion waits for the lock instead
            reading.wait()
        return entries

    monkeypatch.setattr(sources, "read_baseline_file", slow_read)
    promoted = [
        Evidence(label=f"run{index}", config_hash=f"hash{index}", hardware_fingerprint="0123456789ab",
                 metrics={"map_medium": (90.0 + index,)})
        for index in (1, 2)
    ]  # fmt: skip
    threads = [
        threading.Thread(target=sources.write_baseline_file, args=(path, [item]), kwargs={"max_other_load_pct": 10})
        for item in promoted
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(item.config_hash for item in read_baseline_file(path)) == ["6e90b22bf206", "hash1", "hash2"]
