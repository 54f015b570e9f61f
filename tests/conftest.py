"""Shared fixtures: a real HTTP file server on 127.0.0.1, isolated cache and output folders."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.config.schema import RunConfig
from harness.config.store import compose
from harness.perf.contention import CLAIMS_FOLDER
from harness.resolve import resolve_config

REPO_ROOT = Path(__file__).resolve().parent.parent
# What a group option needs beside it to resolve alone: the vendor toolchain builds fp16 only, and the default
# precision (fp32) is refused for it on purpose; only the torch backend runs bf16.
COMPANIONS = {"backend=vastai": ["precision=fp16"], "precision=bf16": ["backend=torch"]}

# The Ctrl-C tests interrupt harness processes, which must start with Python's own SIGINT handler as they do from
# a terminal. A shell starts its background jobs with SIGINT ignored, and a child inherits that: pytest started so
# gives its children the default back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@dataclass
class FileServer:
    """Serves ``files`` (URL path -> bytes) with HTTP Range support.

    ``truncate_next[path] = n`` makes the next response for ``path`` announce its full length but stop after
    ``n`` bytes and close the connection, as a dropped transfer does. ``requests`` records (path, Range header).
    """

    base_url: str
    files: dict[str, bytes] = field(default_factory=dict)
    truncate_next: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    # Seconds to wait after each 64 KiB sent: a transfer long enough for another to start beside it.
    chunk_delay_s: float = 0.0

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


def _handler(server_state: FileServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            range_header = self.headers.get("Range")
            server_state.requests.append((self.path, range_header))
            body = server_state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            if range_header:
                start = int(range_header.removeprefix("bytes=").split("-")[0])
                if start >= len(body):  # as RFC 9110 says: the length of the file in Content-Range
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(body)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            cut = server_state.truncate_next.pop(self.path, None)
            payload = payload if cut is None else payload[:cut]
            for start in range(0, len(payload), 1 << 16):
                self.wfile.write(payload[start : start + (1 << 16)])
                time.sleep(server_state.chunk_delay_s)
            if cut is not None:
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def file_server() -> Iterator[FileServer]:
    state = FileServer(base_url="")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def run_config(cache_dir: Path, *overrides: str) -> RunConfig:
    """A validated ``RunConfig`` for the tiny debug model with an isolated cache."""
    return resolve_config(compose(["debug=tiny", f"paths.cache={cache_dir}", *overrides]))


def harness_environment(folder: Path, environment: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a harness process run in ``folder`` as a user would: its own cache there, no ambient
    tracking URI."""
    env = {**(os.environ if environment is None else environment), "HARNESS_CACHE": str(folder / "cache")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def harness_in(
    folder: Path, *arguments: str, environment: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``python -m harness ...`` run in ``folder`` (see ``harness_environment``), waited for."""
    return subprocess.run(
        [sys.executable, "-m", "harness", *arguments],
        cwd=folder,
        env=harness_environment(folder, environment),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def measuring_runs(outputs: Path) -> list[str]:
    """The run folders whose perf stage is measuring now under ``outputs``: their claim on the device is open."""
    claims = (json.loads(path.read_text()) for path in (outputs / CLAIMS_FOLDER).glob("*.json"))
    return [claim["run_dir"] for claim in claims if claim["end"] is None]


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1 with a SQLite store, in its own process group."""

    uri: str
    port: int
    store: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 90.0) -> None:
        import urllib.request

        command = [
            sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.store / 'mlflow.db'}", "--artifacts-destination", str(self.store / "artifacts"),
        ]  # fmt: skip
        environment = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log_file = open(self.store / "server.log", "ab")  # noqa: SIM115 - kept open for the server's lifetime
        self.process = subprocess.Popen(
            command, env=environment, stdout=log_file, stderr=log_file, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.store / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"mlflow server not healthy after {timeout_s} s")

    def stop(self) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    port = free_port()
    server = MlflowServer(uri=f"http://127.0.0.1:{port}", port=port, store=tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    try:
        yield server
    finally:
        server.stop()
