"""`hydra/launcher=slurm` as shipped, on a real one-node SLURM cluster, logging to a real `mlflow server`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from harness.report import sweep_rows
from harness.result import load_result
from tests.conftest import MlflowServer, harness_environment, harness_in
from tests.slurm.conftest import SlurmCluster

pytestmark = [pytest.mark.process, pytest.mark.slurm]


def harness(tmp_path: Path, cluster: SlurmCluster, *arguments: str) -> subprocess.CompletedProcess[str]:
    return harness_in(tmp_path, *arguments, environment=cluster.environment)


def sweep_dir(tmp_path: Path) -> Path:
    (path,) = (tmp_path / "outputs" / "run" / "multirun").rglob("sweep.json")
    return path.parent


def test_a_sweep_runs_through_sbatch_and_logs_a_parent_and_children(
    tmp_path: Path, slurm_cluster: SlurmCluster, mlflow_server: MlflowServer
) -> None:
    done = harness(
        tmp_path, slurm_cluster, "run", "-m", "hydra/launcher=slurm", "debug=tiny", "stages=[build,perf]",
        "backend=sleep,onnxruntime", f"tracking.uri={mlflow_server.uri}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    folder = sweep_dir(tmp_path)
    results = [load_result(folder / job) for job in ("0", "1")]
    assert [result.status for result in results] == ["ok", "ok"]
    assert {result.perf.backend for result in results} == {"sleep", "onnxruntime"}  # type: ignore[union-attr]
    assert list((folder / ".submitit").rglob("*_log.out"))  # the jobs ran through sbatch
    assert "Bypassing sacct error" not in done.stderr and done.stderr.count("SLURM accounting (sacct) is off") <= 1
    # The wait is said as it goes: the count of ended jobs, and the states of the others.
    said = re.findall(r"SLURM sweep: (\d) of 2 jobs ended(.*)", done.stdout + done.stderr)
    assert said[-1] == ("2", "") and all(ended in "012" for ended, _ in said)
    assert len(said) == len(set(said))  # said when it changes, not at every poll
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("dinov2-deploy")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    (parent,) = [run for run in runs if run.data.tags.get("sweep_dir") == str(folder.resolve())]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(run.data.tags["harness.run_uid"] for run in children) == sorted(result.run_uid for result in results)
    assert parent.info.status == "FINISHED" and all(run.info.status == "FINISHED" for run in children)


def test_a_job_that_fails_on_the_cluster_fails_the_sweep(tmp_path: Path, slurm_cluster: SlurmCluster) -> None:
    done = harness(
        tmp_path, slurm_cluster, "run", "-m", "hydra/launcher=slurm", "debug=tiny", "stages=[build]",
        "model.weights=random,/nowhere/weights.pth", "tracking=off",
    )  # fmt: skip
    assert done.returncode == 1
    folder = sweep_dir(tmp_path)
    failed = load_result(folder / "1")
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.message == "model.weights=/nowhere/weights.pth: no such file"
    assert f"error: 1 job did not succeed: {(folder / '1').resolve()} (failed)" in done.stderr
    assert os.environ.get("SLURM_CONF") == str(slurm_cluster.conf)


def _wait_for(condition: Callable[[], object], what: str, process: subprocess.Popen[str], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if process.poll() is not None:
            pytest.fail(f"the sweep ended while waiting for {what}: {process.communicate()[1][-3000:]}")
        time.sleep(0.5)
    process.kill()
    pytest.fail(f"timed out waiting for {what}: {process.communicate()[1][-3000:]}")


def test_scancel_ends_a_running_job_interrupted_and_a_pending_one_cancelled(
    tmp_path: Path, slurm_cluster: SlurmCluster, mlflow_server: MlflowServer
) -> None:
    folder = tmp_path / "sweep"
    # One array task at a time: job 0 runs (a long perf measurement), job 1 waits in the queue.
    process = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", "-m", "hydra/launcher=slurm", "hydra.launcher.array_parallelism=1",
         f"hydra.sweep.dir={folder}", "debug=tiny", "stages=[perf]", "backend=sleep", "perf.min_duration_s=300",
         "perf.batch=1,2", f"tracking.uri={mlflow_server.uri}"],
        cwd=tmp_path, env=harness_environment(tmp_path, slurm_cluster.environment),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        states = _wait_for(
            lambda: (lambda queue: queue if sorted(state for _, state in queue) == ["PD", "R"] else None)(
                slurm_cluster.squeue()
            ),
            "one job running and one pending",
            process,
        )
        running = next(job for job, state in states if state == "R")
        pending = next(job for job, state in states if state == "PD")
        subprocess.run(["scancel", pending], env=slurm_cluster.environment, check=True)
        # The run has started (its SIGTERM handler is in place) once the pipeline logs its first stage.
        _wait_for(
            lambda: "stage=perf" in "".join(p.read_text() for p in (folder / "0").glob("*.log")),
            "job 0's perf stage",
            process,
        )
        subprocess.run(["scancel", running], env=slurm_cluster.environment, check=True)
        _, stderr = process.communicate(timeout=180)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, stderr[-3000:]
    assert load_result(folder / "0").status == "interrupted"
    rows = {row["job"]: row for row in sweep_rows(folder)}
    assert rows["0"]["status"] == "interrupted"
    assert rows["1"]["status"] == "cancelled" and rows["1"]["error"].startswith(f"CANCELLED (SLURM job {pending})")
    assert "| cancelled |" in (folder / "summary.md").read_text()
    assert f"{(folder / '0').resolve()} (interrupted)" in stderr and f"{(folder / '1').resolve()} (cancelled)" in stderr

    client = MlflowClient(mlflow_server.uri)

    def logged() -> list[tuple[str, str, str, int | None]]:
        """(job, run id, status, end time) of the sweep's parent ("parent") and its children."""
        experiment = client.get_experiment_by_name("dinov2-deploy")
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id], max_results=1000)
        (parent,) = [run for run in runs if run.data.tags.get("sweep_dir") == str(folder.resolve())]
        children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        return sorted(
            (Path(run.data.tags.get("run_dir", "parent")).name, run.info.run_id, run.info.status, run.info.end_time)
            for run in [parent, *children]
        )

    before = logged()
    assert [(job, status) for job, _, status, _ in before] == [("0", "KILLED"), ("parent", "FINISHED")]
    synced = harness(tmp_path, slurm_cluster, "sync", str(folder), f"tracking.uri={mlflow_server.uri}")
    assert synced.returncode == 0, synced.stderr[-3000:]
    assert logged() == before
