"""``result.json``: the record of one run, as typed, light dataclasses.

Every stage's result type lives in this package (``build``, ``perf``, ``accuracy``), so reading a result back
(``load_result``), the summary, reports, the gate and tracking import neither torch nor onnxruntime. The schema (version 2) is documented in the README.
Every stage has a fixed slot; a stage that did not run is ``null``, never a different shape.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from harness.config.convert import from_mapping
from harness.config.schema import RunConfig
from harness.errors import DataError, HarnessError
from harness.fileio import write_json_atomic
from harness.result.accuracy import AccuracyResult
from harness.result.build import BuildResult, WeightsInfo
from harness.result.perf import PerfResult

SCHEMA_VERSION = 2
RESULT_FILE = "result.json"
# Config keys added since the schema's first results, with the value every run saved before them had.
CONFIG_KEYS_ADDED_LATER: dict[str, object] = {"rerun_of": None}


@dataclass(frozen=True)
class RunError:
    """Why a run failed: the exception type, its one-line message and, for a dead process, what it printed last."""

    type: str
    message: str
    details: str | None = None


@dataclass(frozen=True)
class RunResult:
    """One run. ``status`` is ``ok`` when every requested stage finished, else ``failed`` or ``interrupted``
    (Ctrl-C, SIGTERM) with ``error``.

    ``config`` is the resolved ``RunConfig``; read back from JSON its ``backend`` stays a mapping, so that
    loading a result needs no backend plugin.
    """

    schema_version: int
    status: Literal["ok", "failed", "interrupted"]
    run_uid: str
    run_dir: str
    started_at: str
    finished_at: str
    duration_s: float
    stages: tuple[str, ...]
    config: RunConfig
    environment: dict[str, object]
    weights: WeightsInfo | None = None
    build: BuildResult | None = None
    perf: PerfResult | None = None
    accuracy: AccuracyResult | None = None
    error: RunError | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-shaped (tuples as lists), exactly what ``result.json`` holds."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: object) -> RunResult:
        if isinstance(data, dict) and data.get("schema_version") != SCHEMA_VERSION:
            raise DataError(f"schema_version={data.get('schema_version')!r}: this harness reads {SCHEMA_VERSION}")
        if isinstance(data, dict) and isinstance(data.get("config"), dict):
            data = {**data, "config": {**CONFIG_KEYS_ADDED_LATER, **data["config"]}}
        return from_mapping(cls, data)


def write_result(result: RunResult, run_dir: Path) -> Path:
    """Write ``<run_dir>/result.json`` atomically and return its path."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RESULT_FILE
    write_json_atomic(path, result.to_dict())
    return path


def load_result(path: Path | str) -> RunResult:
    """Read a ``result.json`` (or the one inside a run folder) back into a ``RunResult``."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULT_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not text (UnicodeDecodeError)
        raise DataError(f"{path}: cannot read result ({error})") from None
    try:
        return RunResult.from_dict(data)
    except HarnessError as error:
        raise DataError(f"{path}: not a result.json of schema {SCHEMA_VERSION} ({error})") from None
