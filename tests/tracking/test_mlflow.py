"""Runs and sweeps in a real MLflow store: embedded SQLite and a real `mlflow server` process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness.result import load_result
from tests.conftest import MlflowServer, free_port, harness_environment, harness_in, measuring_runs

pytestmark = pytest.mark.process


harness = harness_in


def epoch_ms(timestamp: str) -> int:
    return int(datetime.fromisoformat(timestamp).timestamp() * 1000)


def runs_of(uri: str, experiment: str = "dinov2-deploy") -> list:
    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else list(client.search_runs([found.experiment_id], max_results=1000))


def children_of(runs: list, parent_id: str) -> list:
    return [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent_id]


def check_sweep(uri: str, sweep_dir: Path, expected_jobs: int) -> None:
    runs = runs_of(uri)
    parents = [
        run
        for run in runs
        if run.data.tags.get("harness.kind") == "sweep" and run.data.tags.get("sweep_dir") == str(sweep_dir)
    ]
    assert len(parents) == 1
    (parent,) = parents
    children = children_of(runs, parent.info.run_id)
    assert len(children) == expected_jobs
    for child in children:
        result = load_result(Path(child.data.tags["run_dir"]))
        assert child.data.tags["harness.run_uid"] == result.run_uid
        assert child.data.params["model.variant"] == result.config.model.variant
        assert child.data.params["precision.name"] == result.config.precision.name
        assert child.data.metrics["perf.throughput_qps"] == pytest.approx(result.perf.throughput_qps)  # type: ignore[union-attr]
        assert child.data.metrics["build.parity.min_cosine"] == pytest.approx(result.build.parity.min_cosine)  # type: ignore[union-attr]
        assert child.info.status == "FINISHED"
    client = MlflowClient(tracking_uri=uri)
    assert {item.path for item in client.list_artifacts(parent.info.run_id)} == {"summary.csv", "summary.md", "report"}
    assert "report/index.html" in {item.path for item in client.list_artifacts(parent.info.run_id, "report")}
    child_artifacts = {item.path for item in client.list_artifacts(children[0].info.run_id)}
    assert {"result.json", "build.json", "perf_vamp.txt", "hydra", "run.log"} <= child_artifacts
    assert parent.info.status in ("RUNNING", "FINISHED")


def find_sweep_dir(tmp_path: Path) -> Path:
    (path,) = (tmp_path / "outputs" / "run" / "multirun").rglob("sweep.json")
    return path.parent


SWEEP = ["-m", "debug=tiny", "model=tiny14,tiny14_reg4", "precision=fp32,fp16", "perf.iterations=8"]


def test_single_run_to_embedded_sqlite(tmp_path: Path) -> None:
    done = harness(tmp_path, "run", "debug=tiny")
    assert done.returncode == 0, done.stderr
    result_path = Path(done.stdout.strip().splitlines()[-1])
    result = load_result(result_path)
    uri = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    (run,) = runs_of(uri)
    assert run.data.tags["harness.run_uid"] == result.run_uid and run.data.tags["harness.weights_kind"] == "random"
    assert run.data.params["perf.batch"] == "1" and run.data.params["backend.name"] == "onnxruntime"
    assert run.data.metrics["perf.latency_us.model.avg"] == pytest.approx(result.perf.latency_us.model.avg)  # type: ignore[union-attr]
    assert "perf.latency_us.model.p99" not in run.data.metrics  # withheld percentiles are not invented
    metrics = run.data.metrics
    assert metrics["throughput_qps"] == pytest.approx(result.perf.throughput_qps)  # type: ignore[union-attr]
    assert metrics["map_medium"] == pytest.approx(result.accuracy.medium.map)  # type: ignore[union-attr]
    assert metrics["parity_min_cos"] == pytest.approx(result.build.parity.min_cosine)  # type: ignore[union-attr]
    settings = [key for key in metrics if key.split(".")[-1] in ("batch", "crop_queries", "instances", "passed")]
    assert not settings and not [key for key in metrics if "key_fields" in key or "threshold" in key]
    assert run.data.params["accuracy.batch"] == "8" and run.data.tags["harness.perf_valid"] == "true"
    window = MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, "perf.window_throughput_qps")
    assert [item.step for item in window] == list(range(len(result.perf.window_throughput_qps)))  # type: ignore[union-attr]
    # The run lasts as long as it really ran, not as long as logging it took.
    assert run.info.start_time == epoch_ms(result.started_at) and run.info.end_time == epoch_ms(result.finished_at)
    assert json.loads((result_path.parent / "tracking.json").read_text())["run_id"] == run.info.run_id
    assert (tmp_path / "outputs" / "mlartifacts").is_dir()
    # The UI command it prints opens this store from any folder (a bare `harness ui` opens that folder's own).
    assert f"open the MLflow UI with `harness ui tracking.uri={uri} tracking.experiment=dinov2-deploy`" in done.stdout


def test_a_torch_module_run_is_tracked_with_its_parity_and_no_artifact(tmp_path: Path) -> None:
    done = harness(tmp_path, "run", "debug=tiny", "backend=torch", "precision=bf16", "stages=[build,perf]",
                   "perf.iterations=4")  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = load_result(Path(done.stdout.strip().splitlines()[-1]))
    assert result.build is not None and result.build.manifest is None
    (run,) = runs_of(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    assert run.data.metrics["parity_min_cos"] == pytest.approx(result.build.parity.min_cosine)
    assert run.data.tags["harness.parity_passed"] == "true" and "harness.cache_hit" not in run.data.tags
    artifacts = {item.path for item in MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
                 .list_artifacts(run.info.run_id)}  # fmt: skip
    assert "result.json" in artifacts and "build.json" not in artifacts and "model" not in artifacts


def test_a_failed_run_is_tracked_as_failed_with_its_log_saying_why(tmp_path: Path) -> None:
    done = harness(tmp_path, "run", "debug=tiny", "model.weights=/missing.pth")
    assert done.returncode == 1
    (run,) = runs_of(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    assert run.info.status == "FAILED"
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    log_file = Path(client.download_artifacts(run.info.run_id, "run.log", str(tmp_path)))
    assert "run failed: model.weights=/missing.pth: no such file" in log_file.read_text()


def test_sync_logs_again_what_the_store_no_longer_has(tmp_path: Path) -> None:
    done = harness(tmp_path, "run", "-m", "debug=tiny", "stages=[build,perf]", "perf.iterations=4", "perf.batch=1,2")
    assert done.returncode == 0, done.stderr
    sweep = find_sweep_dir(tmp_path)
    store = tmp_path / "outputs" / "mlflow.db"
    uri = f"sqlite:///{store}"
    first = {job: json.loads((sweep / job / "tracking.json").read_text())["run_id"] for job in ("0", "1")}
    MlflowClient(tracking_uri=uri).delete_run(first["0"])  # as the UI's Delete does
    synced = harness(tmp_path, "sync", str(sweep))
    assert synced.returncode == 0, synced.stderr
    again = json.loads((sweep / "0" / "tracking.json").read_text())["run_id"]
    assert again != first["0"] and f"{sweep / '0'}: logged as {again}" in synced.stdout
    assert f"{sweep / '1'}: already logged as {first['1']}" in synced.stdout
    store.unlink()  # a store started afresh: every run, and the sweep's parent, is logged into it again
    fresh = harness(tmp_path, "sync", str(sweep))
    assert fresh.returncode == 0, fresh.stderr
    check_sweep(uri, sweep, expected_jobs=2)  # the jobs are children of a parent the new store has


def test_a_run_synced_after_its_build_left_the_cache_is_logged_without_it(tmp_path: Path) -> None:
    done = harness(tmp_path, "run", "debug=tiny", "stages=[build,perf]", "perf.iterations=4", "tracking=off")
    assert done.returncode == 0, done.stderr
    run_dir = Path(done.stdout.splitlines()[-1]).parent
    build_folder = Path(load_result(run_dir).build.artifact_path).parent  # type: ignore[union-attr]
    shutil.rmtree(build_folder)  # the cache cleaned, or the run folder synced from another machine
    synced = harness(tmp_path, "sync", str(run_dir), "tracking.log_model=true")
    assert synced.returncode == 0, synced.stdout + synced.stderr
    (run,) = runs_of(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    # It failed half way through, left RUNNING, and so every sync after it.
    assert run.info.status == "FINISHED" and f"{run_dir}: logged as {run.info.run_id}" in synced.stdout
    assert f"{run_dir}: not attached, no longer in the build cache {build_folder}: build.json, " in synced.stderr
    attached = {
        item.path
        for item in MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}").list_artifacts(run.info.run_id)
    }
    assert "result.json" in attached and "build.json" not in attached and "model" not in attached


def test_tracking_off_writes_only_the_result_and_the_printed_path_can_be_reported_and_synced(tmp_path: Path) -> None:
    done = harness(tmp_path, "run", "debug=tiny", "tracking=off")
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "outputs" / "mlflow.db").exists()
    printed = Path(done.stdout.splitlines()[-1])
    assert printed.name == "result.json" and printed.is_file()
    reported = harness(tmp_path, "report", str(printed), "--out", str(tmp_path / "report"))
    assert reported.returncode == 0, reported.stderr
    assert f"| {printed.parent.name} |" in (tmp_path / "report" / "index.md").read_text()
    synced = harness(tmp_path, "sync", str(printed))
    assert synced.returncode == 0, synced.stderr
    (run,) = runs_of(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    assert synced.stdout.strip() == f"{printed.parent}: logged as {run.info.run_id}"


def test_sweep_to_a_server_with_the_basic_launcher(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    done = harness(tmp_path, "run", *SWEEP, f"tracking.uri={mlflow_server.uri}")
    assert done.returncode == 0, done.stderr
    sweep = find_sweep_dir(tmp_path)
    check_sweep(mlflow_server.uri, sweep, expected_jobs=4)
    assert "| tiny14_reg4 | fp16 |" in (sweep / "summary.md").read_text()


def test_a_password_in_the_tracking_uri_is_masked_in_all_the_harness_shows_and_logs(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    # It was printed in hints and errors, and logged as the tracking.uri and sweep.overrides params, in
    # result.json and in Hydra's config files, to every reader of the MLflow UI.
    secret = "s3cret-Pa55"
    uri = mlflow_server.uri.replace("http://", f"http://me:{secret}@")
    done = harness(tmp_path, "run", "-m", "debug=tiny", "backend=sleep", "stages=[perf]", "perf.iterations=4",
                   f"tracking.uri={uri}", "tracking.experiment=masked", "backend.latency_us=100,200")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert secret not in done.stdout + done.stderr and "me:***@127.0.0.1" in done.stdout  # Hydra's job lines
    # The runs table to open, without a user or a password (the browser asks for them), not MLflow's own links.
    assert "in a browser" in done.stdout and f": open {mlflow_server.uri}/#/experiments/" in done.stdout
    assert "View run" not in done.stdout
    sweep = find_sweep_dir(tmp_path)
    assert secret not in (sweep / "0" / "result.json").read_text()
    runs = runs_of(mlflow_server.uri, "masked")
    assert len(runs) == 3  # the sweep's parent and its two jobs
    client = MlflowClient(mlflow_server.uri)
    for run in runs:
        assert secret not in json.dumps([run.data.params, run.data.tags]), run.data.params
        for artifact in ("result.json", "hydra/overrides.yaml", "hydra/config.yaml"):
            if run.data.tags.get("harness.kind") != "sweep":
                shown = Path(client.download_artifacts(run.info.run_id, artifact, str(tmp_path / run.info.run_id)))
                assert secret not in shown.read_text() and "***@127.0.0.1" in shown.read_text(), artifact


def test_sweep_with_parallel_jobs_on_sqlite(tmp_path: Path) -> None:
    done = harness(tmp_path, "run", *SWEEP, "hydra/launcher=parallel")
    assert done.returncode == 0, done.stderr
    assert re.search(r"\[Parallel\(n_jobs=2\)\]: Done +4 out of +4 \| elapsed", done.stderr)  # jobs' progress
    # the new store is named once in the harness's log, not by MLflow's own lines in its own format
    assert "INFO mlflow" not in done.stdout + done.stderr and "new MLflow store sqlite:///" in done.stdout
    check_sweep(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}", find_sweep_dir(tmp_path), expected_jobs=4)
    report = harness(tmp_path, "report", "mlflow", "--out", str(tmp_path / "from-mlflow"))
    assert report.returncode == 0, report.stderr
    assert report.stdout.strip().endswith("(5 plots, 4 runs; index.html is self-contained)")  # no load varies
    assert "Traceback" not in report.stderr and "Warning" not in report.stderr
    assert len(list((tmp_path / "from-mlflow" / "runs").glob("*/perf_samples.npz"))) == 4


def test_parallel_perf_jobs_on_one_device_are_marked_contended(tmp_path: Path) -> None:
    done = harness(
        tmp_path, "run", "-m", "debug=tiny", "backend=sleep", "stages=[perf]", "perf.iterations=null",
        "perf.min_duration_s=4", "backend.latency_us=1000,1500", "hydra/launcher=parallel",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    sweep = find_sweep_dir(tmp_path)
    first, second = load_result(sweep / "0").perf, load_result(sweep / "1").perf
    assert first is not None and second is not None
    assert first.contended_with == (str((sweep / "1").resolve()),) and second.contended_with == (
        str((sweep / "0").resolve()),
    )
    assert any(warning.startswith("contended: 1 other perf run measured on cpu") for warning in first.validity.warnings)
    caveat = "job 0, job 1 measured on one device at the same time as another run: their timings are not comparable"
    assert f"read with care: {caveat}" in done.stdout
    assert f"- {caveat}" in (sweep / "report" / "index.md").read_text()
    runs = [
        run
        for run in runs_of(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
        if "harness.contended" in run.data.tags
    ]
    assert [run.data.tags["harness.contended"] for run in runs] == ["true", "true"]
    # the run names tell the two jobs apart by what the sweep varies, which the base name has no part for
    assert sorted(run.info.run_name for run in runs) == [
        "tiny14_reg4-fp32-sleep-b1 latency_us=1000", "tiny14_reg4-fp32-sleep-b1 latency_us=1500",
    ]  # fmt: skip


def test_sweep_with_submitit_local(tmp_path: Path, mlflow_server: MlflowServer) -> None:
    done = harness(
        tmp_path, "run", "-m", "debug=tiny", "precision=fp32,fp16", "perf.iterations=8", "hydra/launcher=submitit_local",
        f"tracking.uri={mlflow_server.uri}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    check_sweep(mlflow_server.uri, find_sweep_dir(tmp_path), expected_jobs=2)


def test_server_killed_mid_sweep_then_sync_logs_each_run_once(tmp_path: Path) -> None:
    port = free_port()
    server = MlflowServer(uri=f"http://127.0.0.1:{port}", port=port, store=tmp_path / "server")
    server.store.mkdir()
    server.start()
    try:
        outputs = tmp_path / "outputs" / "run" / "multirun"

        def kill_after_first_job() -> None:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and not list(outputs.rglob("0/tracking.json")):
                time.sleep(0.2)
            server.stop()

        killer = threading.Thread(target=kill_after_first_job)
        killer.start()
        done = harness(tmp_path, "run", *SWEEP, "perf.iterations=64", f"tracking.uri={server.uri}")
        killer.join()
        assert done.returncode == 0, done.stderr  # the runs themselves succeeded
        sweep = find_sweep_dir(tmp_path)
        assert len(list(sweep.glob("*/result.json"))) == 4
        assert len(list(sweep.glob("*/tracking.json"))) == 1
        later = f"later: harness sync tracking.uri={server.uri} tracking.experiment=dinov2-deploy {sweep}\n"
        assert (
            f"warning: sweep not fully tracked (tracking store {server.uri}: " in done.stderr and later in done.stderr
        )

        server.start()
        synced = harness(tmp_path, "sync", f"tracking.uri={server.uri}", str(sweep))
        assert synced.returncode == 0, synced.stderr
        assert synced.stdout.count("already logged as") == 1 and synced.stdout.count(": logged as") == 3
        (parent,) = [run for run in runs_of(server.uri) if run.data.tags.get("harness.kind") == "sweep"]
        finished = max(load_result(job).finished_at for job in sweep.glob("*/result.json"))
        assert parent.info.status == "FINISHED" and parent.info.end_time <= epoch_ms(finished) + 5000
        time.sleep(1.1)
        again = harness(tmp_path, "sync", f"tracking.uri={server.uri}", str(sweep))
        assert again.returncode == 0 and again.stdout.count("already logged as") == 4
        check_sweep(server.uri, sweep, expected_jobs=4)
        (unchanged,) = [run for run in runs_of(server.uri) if run.data.tags.get("harness.kind") == "sweep"]
        assert (unchanged.info.start_time, unchanged.info.end_time) == (parent.info.start_time, parent.info.end_time)
        assert len(runs_of(server.uri)) == 5  # one parent, four children: nothing logged twice
    finally:
        server.stop()


def test_a_server_that_refuses_or_never_answers_is_one_line_saying_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.errors import TrackingError
    from harness.tracking.store import Store
    from tests.conftest import run_config

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # Store sets them; restored after the test
    closed = free_port()
    config = run_config(tmp_path / "cache", f"tracking.uri=http://127.0.0.1:{closed}")
    with pytest.raises(TrackingError) as refused:
        Store(config.tracking, config.paths)
    assert (
        str(refused.value)
        == f"tracking store http://127.0.0.1:{closed}: cannot connect ([Errno 111] Connection refused)"
    )
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nothing ever answers
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        config = run_config(tmp_path / "cache", f"tracking.uri={uri}", "tracking.http_timeout_s=1")
        with pytest.raises(TrackingError) as unanswered:
            Store(config.tracking, config.paths)
    assert str(unanswered.value) == f"tracking store {uri}: no answer within 1 s (tracking.http_timeout_s)"


def test_a_search_reads_every_page_and_a_downloaded_result_that_cannot_be_read_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.tracking import download_runs
    from harness.tracking.store import Store
    from tests.conftest import run_config

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # Store sets them; restored after the test
    config = run_config(tmp_path / "cache", f"paths.outputs={tmp_path / 'many'}")
    store = Store(config.tracking, config.paths)
    monkeypatch.setattr("harness.tracking.store.SEARCH_PAGE_SIZE", 4)  # 1000 in use: 1001 runs took 20 s to make
    for index in range(9):  # two full pages and one more run
        store.client.create_run(store.experiment_id, tags={"harness.run_uid": f"run{index}"})
    assert sorted(run.data.tags["harness.run_uid"] for run in store.search("tags.`harness.run_uid` != ''")) == [
        f"run{index}" for index in range(9)
    ]

    config = run_config(tmp_path / "cache", f"paths.outputs={tmp_path / 'one'}")
    store = Store(config.tracking, config.paths)
    cut = tmp_path / "cut" / "result.json"
    cut.parent.mkdir()
    cut.write_text('{"schema_version": 2, "status": "o')
    run_id = store.client.create_run(store.experiment_id, tags={"harness.run_uid": "cut"}, run_name="cut").info.run_id
    store.client.log_artifact(run_id, str(cut))
    found = download_runs(store, tmp_path / "downloaded", progress=False)
    assert found.runs == [] and list(found.unreadable) == ["cut"]
    assert found.unreadable["cut"].startswith(f"{tmp_path / 'downloaded' / run_id / 'result.json'}: cannot read result")


def test_a_result_written_over_the_one_logged_is_logged_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.gate.sources import tracking_record
    from harness.pipeline import run
    from harness.tracking import log_run_dir
    from harness.tracking.store import Store
    from tests.conftest import run_config

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # Store sets them; restored after the test
    sleep_run = ["backend=sleep", "stages=[perf]", "perf.iterations=4", f"paths.outputs={tmp_path / 'outputs'}"]
    config = run_config(tmp_path / "cache", *sleep_run, "perf.batch=1")
    store = Store(config.tracking, config.paths)
    run(config, run_dir=tmp_path / "latest")
    first, logged = log_run_dir(store, tmp_path / "latest")
    assert logged and log_run_dir(store, tmp_path / "latest") == (first, False)
    # Another run's result.json copied over the logged one (the API refuses to write into a run's folder). Its
    # tracking.json named the first run, so the second result read "already logged" and went into no store.
    second = run(run_config(tmp_path / "cache", *sleep_run, "perf.batch=2"), run_dir=tmp_path / "second")
    shutil.copy(tmp_path / "second" / "result.json", tmp_path / "latest" / "result.json")
    assert tracking_record(tmp_path / "latest") is None  # until synced: a gate verdict must not tag the first run
    record, logged = log_run_dir(store, tmp_path / "latest")
    assert logged and record.run_id != first.run_id and record.run_uid == second.run_uid
    assert tracking_record(tmp_path / "latest") == (store.uri, record.run_id)
    assert store.client.get_run(record.run_id).data.tags["harness.run_uid"] == second.run_uid
    assert store.client.get_run(first.run_id).data.params["perf.batch"] == "1"  # the first run keeps its own


def test_a_sqlite_store_named_by_uri_keeps_its_artifacts_beside_its_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from harness.tracking.store import Store
    from tests.conftest import run_config

    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # Store sets them; restored after the test
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = run_config(tmp_path / "cache", f"tracking.uri=sqlite:///{tmp_path / 'team' / 'mlflow.db'}")
    (tmp_path / "team").mkdir()
    store = Store(config.tracking, config.paths)
    run_id = store.client.create_run(store.experiment_id).info.run_id
    (tmp_path / "note.txt").write_text("kept")
    store.client.log_artifact(run_id, str(tmp_path / "note.txt"))
    assert list((tmp_path / "team" / "mlartifacts").rglob("note.txt")) and not any(elsewhere.iterdir())


# Ctrl-C arrives while SQLAlchemy commits a write to the store (a real SIGINT, sent from its commit event).
INTERRUPTED_COMMIT = """
import json, os, signal, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine
from harness.tracking.store import Store
from tests.conftest import run_config

config = run_config(sys.argv[1] + "/cache", f"paths.outputs={sys.argv[1]}", "tracking.sqlite_retries=0")
store = Store(config.tracking, config.paths)
run_id = store.call(lambda: store.client.create_run(store.experiment_id)).info.run_id
sent = []

@event.listens_for(Engine, "commit")
def ctrl_c(connection):
    if not sent:
        sent.append(True)
        os.kill(os.getpid(), signal.SIGINT)

try:
    store.call(lambda: store.client.set_tag(run_id, "written", "whole"))
    interrupted = False
except KeyboardInterrupt:
    interrupted = True
store.call(lambda: store.client.set_terminated(run_id, status="KILLED"))
run = store.client.get_run(run_id)
print(json.dumps({"interrupted": interrupted, "tags": run.data.tags, "status": run.info.status}))
"""


def test_ctrl_c_during_a_store_write_is_delivered_after_it_and_the_next_write_does_not_wait(tmp_path: Path) -> None:
    """Cut short while it commits, a SQLite write would keep the file locked by this process, and its next write
    (closing the interrupted run) would wait on that lock: 20 s, then fail."""
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_COMMIT, str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["interrupted"] and outcome["tags"]["written"] == "whole" and outcome["status"] == "KILLED"
    assert done.stderr.count("interrupt: finishing the write to the tracking store first") == 1


def test_ctrl_c_mid_sweep_stops_cleanly_and_leaves_every_job_accounted_for(tmp_path: Path) -> None:
    sweep = subprocess.Popen(
        [
            sys.executable, "-m", "harness", "run", "-m", "debug=tiny", "backend=sleep", "stages=[perf]",
            "perf.iterations=null", "perf.min_duration_s=4", "backend.latency_us=1000,2000,3000",
        ],
        cwd=tmp_path, env=harness_environment(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job is
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(run.endswith("/1") for run in measuring_runs(tmp_path / "outputs")):
        time.sleep(0.1)
    time.sleep(1.0)  # job 1 is measuring now (a 4 s window)
    os.killpg(sweep.pid, signal.SIGINT)  # what Ctrl-C sends: the whole group, workers included
    stdout, stderr = sweep.communicate(timeout=60)
    assert "| 1 | 2000 | interrupted |" in stdout  # the summary is printed, as at the end of any sweep
    assert sweep.returncode == 130
    assert "Traceback" not in stderr and stderr.count("interrupted:") == 1
    sweep_dir = find_sweep_dir(tmp_path)
    assert f"interrupted: {sweep_dir.resolve() / '1' / 'result.json'} (status interrupted); sweep" in stderr
    assert load_result(sweep_dir / "0").status == "ok" and load_result(sweep_dir / "1").status == "interrupted"
    assert not (sweep_dir / "2").exists()
    summary = (sweep_dir / "summary.md").read_text()
    assert (
        "| 1 | 2000 | interrupted |" in summary
        and "| 2 | 3000 | missing |" in summary  # planned: from its overrides
        and "not run (sweep interrupted)" in summary
    )
    uri = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    statuses = {
        run.data.tags.get("harness.kind", run.data.tags.get("run_dir", "")[-1:]): run.info.status
        for run in runs_of(uri)
    }
    assert statuses == {"sweep": "KILLED", "0": "FINISHED", "1": "KILLED"}
    synced = harness(tmp_path, "sync", str(sweep_dir))
    assert synced.returncode == 0 and synced.stdout.count("already logged as") == 2
    assert f"{sweep_dir / '2'}: no result.json, nothing to log: not run (sweep interrupted)" in synced.stdout
    assert len(runs_of(uri)) == 3


@pytest.mark.parametrize(
    ("arguments", "code", "expected"),
    [
        (["ui", "--port", "99999"], 2, "harness ui: error: argument --port: '99999': expected a TCP port, 1 to 65535"),
        (["ui", "--help"], 0, "Serve the MLflow UI for the configured tracking store"),
        (["sync", "--help"], 0, "Log run folders (result.json) and sweep folders (sweep.json)"),
    ],
)
def test_ui_and_sync_arguments(tmp_path: Path, arguments: list[str], code: int, expected: str) -> None:
    done = harness(tmp_path, *arguments)
    assert done.returncode == code and expected in " ".join((done.stdout + done.stderr).split())
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["sync", "report"])
def test_a_folder_that_is_not_a_run_is_refused_before_the_store_is_opened(tmp_path: Path, command: str) -> None:
    done = harness(tmp_path, command, str(tmp_path / "no-such-run"))
    assert done.returncode == 1 and done.stderr == f"error: {tmp_path / 'no-such-run'}: no such folder\n"
    (tmp_path / "notes.txt").write_text("not a run")
    done = harness(tmp_path, command, str(tmp_path / "notes.txt"))
    assert done.stderr == f"error: {tmp_path / 'notes.txt'}: a file: pass the run folder that holds it\n"
    assert not (tmp_path / "outputs").exists()  # tracking is on, yet a typo creates no store


def test_a_report_of_an_experiment_without_runs_is_an_error_not_an_empty_page(tmp_path: Path) -> None:
    done = harness(tmp_path, "report", "mlflow", "--out", str(tmp_path / "report"))
    assert (
        done.returncode == 1 and "error: nothing to report: no run in MLflow experiment 'dinov2-deploy'" in done.stderr
    )
    assert not (tmp_path / "report").exists()


def test_ui_serves_the_store_and_stops_its_process_group_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    environment = {**os.environ}
    environment.pop("MLFLOW_TRACKING_URI", None)
    ui = subprocess.Popen(
        [sys.executable, "-m", "harness", "ui", "--port", str(port)], cwd=tmp_path, env=environment,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    process_group = None
    try:
        deadline = time.monotonic() + 90
        healthy = False
        while time.monotonic() < deadline and not healthy:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    healthy = response.status == 200
            except OSError:
                time.sleep(0.5)
        assert healthy
        (server_pid,) = subprocess.run(["pgrep", "-P", str(ui.pid)], capture_output=True, text=True).stdout.split()
        process_group = os.getpgid(int(server_pid))
        assert process_group == int(server_pid) != os.getpgid(ui.pid)  # the server leads its own group
        group = subprocess.run(["pgrep", "-a", "-g", str(process_group)], capture_output=True, text=True).stdout
        assert "huey" not in group and len(group.splitlines()) == 2  # mlflow ui + one uvicorn worker, no job runner
        busy = subprocess.run(
            [sys.executable, "-m", "harness", "ui", "--port", str(port)], cwd=tmp_path, env=environment,
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert busy.returncode == 1
        assert (
            busy.stderr.strip()
            == f"error: port {port} on 127.0.0.1 is not free (Address already in use): choose another with --port N"
        )
        (experiment,) = [
            item
            for item in MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}").search_experiments()
            if item.name == "dinov2-deploy"
        ]
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
        assert "throughput_qps" in experiment.tags["mlflow.note.content"]
        stopping = time.monotonic()
        ui.send_signal(signal.SIGINT)
        assert ui.wait(timeout=30) == 0
        assert time.monotonic() - stopping < 8
        assert ui.stdout is not None
        printed = ui.stdout.read().decode()
        # MLflow's server printed a StarletteDeprecationWarning and the line of code it came from at every start.
        assert "MLflow UI on http://127.0.0.1" in printed and "Warning" not in printed, printed
        time.sleep(0.5)
        with pytest.raises(ProcessLookupError):
            os.killpg(process_group, 0)
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if ui.poll() is None:
            ui.kill()
        if process_group is not None:  # a failed assertion must not leave the server running
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process_group, signal.SIGKILL)
