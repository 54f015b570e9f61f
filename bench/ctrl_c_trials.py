"""Ctrl-C at chosen moments of a real sweep: does the harness always stop cleanly?

    python -m bench.ctrl_c_trials 0 0.1 0.2 0.3 0.5 1.0

Each trial runs, in a fresh folder, a sweep of three 4 s jobs of the sleep backend tracked to SQLite, waits
for job 0's ``result.json``, waits the given delay (0 to about 0.5 s: while job 0 is being logged to MLflow,
or just after) and sends SIGINT to the sweep's process group, as Ctrl-C in a terminal does. A clean stop
exits 130 and prints the sweep summary; a trial that has not ended 45 s later is killed and counted as hung.
One row per trial: the delay, the exit code, whether the summary was printed, and job 1's status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.conftest import harness_environment

SWEEP = [
    "run", "-m", "debug=tiny", "backend=sleep", "stages=[perf]", "perf.iterations=null", "perf.min_duration_s=4",
    "backend.latency_us=1000,2000,3000",
]  # fmt: skip
HANG_S = 45.0


def trial(delay_s: float) -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(prefix="ctrl-c-trial-"))
    sweep = subprocess.Popen(
        [sys.executable, "-m", "harness", *SWEEP], cwd=folder, env=harness_environment(folder), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    outputs = folder / "outputs" / "run" / "multirun"
    while not list(outputs.rglob("0/result.json")) and sweep.poll() is None:
        time.sleep(0.02)
    time.sleep(delay_s)
    os.killpg(sweep.pid, signal.SIGINT)
    try:
        stdout, _ = sweep.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        os.killpg(sweep.pid, signal.SIGKILL)
        sweep.communicate()
        return {"delay_s": delay_s, "exit": "hung", "summary": False, "job 1": "-", "clean": False}
    job1 = next((line.split("|")[2].strip() for line in stdout.splitlines() if line.startswith("| 1 |")), "-")
    summary = "sweep summary" in stdout
    return {
        "delay_s": delay_s, "exit": sweep.returncode, "summary": summary, "job 1": job1,
        "clean": sweep.returncode == 130 and summary,
    }  # fmt: skip


def main(argv: list[str]) -> int:
    delays = [float(value) for value in argv] or [0.0, 0.1, 0.2, 0.3, 0.5]
    print("| delay s | exit | summary | job 1 | clean |\n|---|---|---|---|---|", flush=True)
    rows = []
    for delay in delays:
        row = trial(delay)
        rows.append(row)
        print(f"| {row['delay_s']} | {row['exit']} | {row['summary']} | {row['job 1']} | {row['clean']} |", flush=True)
    clean = sum(bool(row["clean"]) for row in rows)
    print(f"{clean} of {len(rows)} trials stopped cleanly", flush=True)
    return 0 if clean == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
