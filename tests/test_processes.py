"""External tools run to completion: output, exit status, their own CPU time and memory, and a hard timeout."""

from __future__ import annotations

import sys
import time

from harness.processes import run_tool


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
