"""``vamc`` and ``vamp`` test doubles on PATH (``fake_tools.py``), and the config of a vastai run."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

FAKE_TOOLS = Path(__file__).resolve().parent / "fake_tools.py"
REPO_ROOT = FAKE_TOOLS.parent.parent.parent
# The fixture's load (vamp-2.5.2-manual.txt: -i 3 -p 1 -b 8 --iterations 10240 samples), as perf.* keys.
FIXTURE_LOAD = ("perf.instances=3", "perf.processes=1", "perf.batch=8", "perf.iterations=1280", "perf.min_duration_s=0")


@dataclass
class FakeTools:
    bin: Path
    log: Path

    def calls(self, tool: str) -> list[list[str]]:
        if not self.log.exists():
            return []
        records = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [record["argv"] for record in records if record["tool"] == tool and record["argv"] != ["--version"]]


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTools:
    folder = tmp_path / "vendor-bin"
    folder.mkdir()
    for tool in ("vamc", "vamp"):
        script = folder / tool
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_TOOLS}" {tool} "$@"\n')
        script.chmod(0o755)
    log = tmp_path / "vendor-calls.jsonl"
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_VASTAI_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    monkeypatch.delenv("FAKE_VASTAI_FAULT", raising=False)
    monkeypatch.delenv("FAKE_VAMP_FIXTURE", raising=False)
    return FakeTools(bin=folder, log=log)
