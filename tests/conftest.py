"""Shared fixtures: a real HTTP file server on 127.0.0.1, isolated cache and output folders."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.config.schema import RunConfig

REPO_ROOT = Path(__file__).resolve().parent.parent


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
                if start >= len(body):
                    self.send_error(416)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            payload = body[start:]
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            cut = server_state.truncate_next.pop(self.path, None)
            self.wfile.write(payload if cut is None else payload[:cut])
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


def compose(overrides: list[str], config_name: str = "run") -> dict[str, object]:
    """The config ``harness <config_name> <overrides>`` would run, composed from the real ``conf/`` tree."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO_ROOT / "conf"), version_base="1.3"):
        composed = hydra_compose(config_name=config_name, overrides=overrides)
    return OmegaConf.to_container(composed, resolve=True)  # type: ignore[return-value]


def run_config(cache_dir: Path, *overrides: str) -> RunConfig:
    """A validated ``RunConfig`` for the tiny debug model with an isolated cache."""
    return RunConfig.from_dict(compose(["debug=tiny", f"paths.cache={cache_dir}", *overrides]))
