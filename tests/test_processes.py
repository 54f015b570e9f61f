"""External tools run to completion: output, exit status, their own CPU time and memory, and a hard timeout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.processes import exit_description, run_tool, staging_folder
from tests.conftest import REPO_ROOT


def test_output_status_and_cost_of_the_tool_itself() -> None:
    burn = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 0.3: pass\n"
    grow = "block = bytearray(200 * 1024 * 1024); block[::4096] = b'x' * len(block[::4096]); time.sleep(0.5)\n"
    script = (
        burn + grow + "import sys; print('to stdout', flush=True); print('to stderr', file=sys.stderr); sys.exit(3)"
    )
    # The harness is a large process (torch, onnxruntime); a child's kernel-reported peak would include it.
    ballast = bytearray(400 * 1024 * 1024)
    ballast[::4096] = b"x" * len(ballast[::4096])
    run = run_tool([sys.executable, "-c", script], timeout_s=60)
    del ballast
    assert run.returncode == 3 and not run.timed_out
    assert run.output.splitlines() == ["to stdout", "to stderr"] and run.tail(1) == "to stderr"
    assert run.cpu_s >= 0.3 and run.wall_s >= 0.8
    # Its own peak, held for half a second: not the pages of the (larger) harness it was started from.
    assert 200 * 1024 * 1024 < run.peak_rss_bytes < 300 * 1024 * 1024


def test_a_tool_that_hangs_is_killed_with_its_children() -> None:
    script = (
        "import subprocess, sys, time\nprint('started', flush=True)\nsubprocess.Popen(['sleep', '60'])\ntime.sleep(60)"
    )
    started = time.perf_counter()
    run = run_tool([sys.executable, "-c", script], timeout_s=1.0)
    assert run.timed_out and run.returncode == -9 and run.output == "started\n"
    assert time.perf_counter() - started < 10  # the grandchild holding the pipe open was killed too


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_a_tool_ends_with_the_harness_stopped_by_ctrl_c_sigterm_or_sigkill(
    tmp_path: Path, stop: signal.Signals
) -> None:
    # The tool runs in a session of its own: Ctrl-C stopped the harness and the vendor's compile went on; a
    # SIGKILLed harness, which runs no cleanup, left it running too.
    pid_file = tmp_path / "tool.pid"
    harness = (
        "import signal, sys\nfrom harness.processes import run_tool\n"
        "signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))\n"
        f"run_tool(['sh', '-c', 'echo $$ > {pid_file}; exec sleep 60'], timeout_s=120)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", harness], cwd=REPO_ROOT, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        tool = int(pid_file.read_text())
        process.send_signal(stop)
        assert process.wait(timeout=30) != 0
        deadline = time.monotonic() + 10
        while _running(tool) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(tool), "the tool outlived the harness"
    finally:
        process.kill()


STARTS_WORKERS = "from harness.processes import spawn_context\n"
UNGUARDED_CALLS = {
    "top level": STARTS_WORKERS + "spawn_context()\n",
    "a function called from the top level": STARTS_WORKERS + "def main():\n    spawn_context()\n\nmain()\n",
    "a block at the top level": STARTS_WORKERS + "if True:\n    spawn_context()\n",
}
GUARDED_CALLS = {
    "under the guard": STARTS_WORKERS + 'if __name__ == "__main__":\n    spawn_context()\n',
    "under the guard, operands swapped": STARTS_WORKERS + "if '__main__' == __name__:\n    spawn_context()\n",
    "a function called under the guard": STARTS_WORKERS + "def main():\n    spawn_context()\n\n"
    'if __name__ == "__main__":\n    main()\n',
}


@pytest.mark.parametrize("script", UNGUARDED_CALLS.values(), ids=UNGUARDED_CALLS.keys())
def test_starting_workers_from_a_scripts_unguarded_top_level_is_refused(tmp_path: Path, script: str) -> None:
    path = tmp_path / "bench_it.py"
    path.write_text(script)
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    line = len(script.splitlines())  # each script ends with the top-level line that leads to the call
    assert last.startswith(f"harness.errors.ConfigError: {path}:{line} starts the harness at the script's top level")
    assert 'if __name__ == "__main__":' in last


@pytest.mark.parametrize("script", GUARDED_CALLS.values(), ids=GUARDED_CALLS.keys())
def test_starting_workers_under_the_main_guard_is_allowed(tmp_path: Path, script: str) -> None:
    path = tmp_path / "bench_it.py"
    path.write_text(script)
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_a_package_main_and_an_inline_program_are_not_imported_again_so_need_no_guard(tmp_path: Path) -> None:
    package = tmp_path / "bench_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(UNGUARDED_CALLS["top level"])
    for argv in (["-m", "bench_pkg"], ["-c", UNGUARDED_CALLS["top level"]]):
        done = subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr


def _running(pid: int) -> bool:
    """Alive and not a zombie (one the container's init has not reaped yet has ended all the same)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _perf_workers_of(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    return [int(child) for child in children if "spawn_main" in Path(f"/proc/{child}/cmdline").read_text()]


@pytest.mark.process
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_perf_workers_end_with_the_harness_that_started_them(tmp_path: Path) -> None:
    # SIGKILLed (the OOM killer, kill -9), the harness left its workers measuring on for up to
    # perf.max_duration_s, loading the device under the next run, which saw no claim of theirs.
    command = [sys.executable, "-m", "harness", "run", "debug=tiny", "backend=sleep", "stages=[perf]",
               "perf.iterations=null", "perf.min_duration_s=60", f"paths.root={tmp_path}", "tracking=off"]  # fmt: skip
    harness = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (workers := _perf_workers_of(harness.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert workers, "no perf worker started"
        time.sleep(1.0)  # measuring now
        harness.kill()
        harness.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(map(_running, workers)) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = [worker for worker in workers if _running(worker)]
        assert not alive, f"workers {alive} outlived the harness"
    finally:
        harness.kill()


def test_a_staging_folder_of_a_live_process_or_of_another_host_is_kept(tmp_path: Path) -> None:
    host = socket.gethostname()
    live = tmp_path / f".staging-model-{host}-{os.getpid()}-0a1b2c3d"
    elsewhere = tmp_path / f".staging-model-{host}.elsewhere-1-0a1b2c3d"  # pid 1 does not run there, or here
    other_name = tmp_path / f".staging-model2-{host}-999999999-0a1b2c3d"
    longer_host = tmp_path / f".staging-model-{host}-5-999999999-0a1b2c3d"  # host "<host>-5", pid 999999999
    for folder in (live, elsewhere, other_name, longer_host):
        folder.mkdir()
    with staging_folder(tmp_path, "model") as own:
        assert own.is_dir() and own.name.startswith(f".staging-model-{host}-{os.getpid()}-") and own != live
    assert not own.exists() and all(folder.is_dir() for folder in (live, elsewhere, other_name, longer_host))


def test_how_a_process_ended_is_said_in_words() -> None:
    assert exit_description(0) == "exited with status 0" and exit_description(3) == "exited with status 3"
    assert exit_description(-signal.SIGSEGV) == "was killed by SIGSEGV: a crash in native code (a runtime or a driver)"
    assert exit_description(-signal.SIGTERM) == "was killed by SIGTERM"
    assert exit_description(-200) == "was killed by signal 200"
    assert exit_description(None) == "ended without an exit status"
