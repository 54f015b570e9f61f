"""`hydra/launcher=slurm` as shipped, on a real one-node SLURM cluster, logging to a real `mlflow server`."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness.result import load_result
from tests.conftest import MlflowServer, harness_in
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
    assert f"error: 1 job(s) failed: {(folder / '1').resolve()}" in done.stderr
    assert os.environ.get("SLURM_CONF") == str(slurm_cluster.conf)
