"""result.json round-trips and refuses what is not one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.errors import DataError
from harness.pipeline import run
from harness.result import load_result
from tests.conftest import compose


def test_result_round_trips_and_failed_runs_keep_their_shape(tmp_path: Path) -> None:
    ok = run(
        compose(["debug=tiny", f"paths.cache={tmp_path / 'cache'}", f"paths.data={tmp_path / 'data'}"]),
        run_dir=tmp_path / "ok",
    )
    failed = run(compose(["debug=tiny", "model.weights=/missing.pth"]), run_dir=tmp_path / "failed")
    assert load_result(tmp_path / "ok") == ok
    assert load_result(tmp_path / "failed") == failed
    assert failed.status == "failed" and failed.build is None and failed.error is not None
    assert set(json.loads((tmp_path / "ok" / "result.json").read_text())) == set(
        json.loads((tmp_path / "failed" / "result.json").read_text())
    )
    # A result saved before reruns were recorded has no config.rerun_of: it reads as a run that reran nothing.
    saved = json.loads((tmp_path / "ok" / "result.json").read_text())
    del saved["config"]["rerun_of"]
    (tmp_path / "ok" / "result.json").write_text(json.dumps(saved))
    assert load_result(tmp_path / "ok") == ok and ok.config.rerun_of is None


def test_load_result_names_a_bad_file(tmp_path: Path) -> None:
    path = tmp_path / "result.json"
    path.write_text('{"schema_version": 2}')
    with pytest.raises(DataError, match=r"result.json: not a result.json of schema 2 .*missing required value"):
        load_result(path)
    path.write_text("{")
    with pytest.raises(DataError, match=r"result.json: cannot read result"):
        load_result(path)
    path.write_bytes(b'{"schema_version": \x93')  # not text at all (a disk error, a file written over): was a traceback
    with pytest.raises(DataError, match=r"result.json: cannot read result \('utf-8' codec can't decode byte 0x93"):
        load_result(path)


def test_a_sweep_record_that_is_not_text_is_named(tmp_path: Path) -> None:
    from harness.report import read_sweep_record

    (tmp_path / "sweep.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(DataError, match=r"sweep.json: cannot read the sweep record \('utf-8' codec"):
        read_sweep_record(tmp_path)
