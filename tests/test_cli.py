"""The `harness` command as users run it: real subprocesses, real run folders."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from harness.result import load_result
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.process


def harness(tmp_path: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "harness", *arguments]
    if arguments and not arguments[0].startswith("-") and arguments[0] in ("run", "build"):
        command += [
            f"paths.cache={tmp_path / 'cache'}",
            f"paths.outputs={tmp_path / 'outputs'}",
            f"paths.data={tmp_path / 'data'}",
        ]
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


def test_help_lists_the_commands(tmp_path: Path) -> None:
    done = harness(tmp_path, "--help")
    assert done.returncode == 0
    assert "run " in done.stdout and "build " in done.stdout
    version = harness(tmp_path, "--version")  # was "error: command='--version': expected one of [...]"
    assert version.returncode == 0 and version.stdout == f"harness {metadata.version('dinov2-deploy-harness')}\n"


def test_a_commands_help_names_the_command_and_lists_bf16(tmp_path: Path) -> None:
    done = harness(tmp_path, "run", "--help")
    assert done.returncode == 0 and done.stdout.startswith("harness run is powered by Hydra.")
    assert "precision: bf16, fp16, fp32, int8, int8_dynamic" in done.stdout
    groups = done.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    listed = [line.split(":")[0] for line in groups.splitlines()[3:] if line]
    # The gate command's group is in conf/ too: a run cannot compose it, so its help does not offer it.
    assert listed == sorted(["backend", "dataset", "debug", "experiment", "model", "paths", "perf", "precision",
                             "tracking", "vdsp"])  # fmt: skip


def test_no_command_is_a_usage_error(tmp_path: Path) -> None:
    done = harness(tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("usage: harness <command>")


def test_a_reader_that_stops_early_ends_the_command_quietly_as_sigpipe_does() -> None:
    # ``harness vamp-parse *.txt | head``: once head exits, writing stdout fails; that was a traceback.
    report = str(REPO_ROOT / "tests/fixtures/vastai/vamp-2.1.0-percentiles.txt")
    command = [sys.executable, "-m", "harness", "vamp-parse", *[report] * 300]  # far more than a pipe buffers
    with subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        assert process.stdout is not None and process.stdout.read(2) == b"[\n"
        process.stdout.close()
        assert process.wait(timeout=120) == 128 + signal.SIGPIPE
        assert process.stderr is not None and process.stderr.read() == b""


def test_unknown_command(tmp_path: Path) -> None:
    done = harness(tmp_path, "bulid")
    assert done.returncode == 2
    assert "command='bulid'" in done.stderr and "did you mean 'build'" in done.stderr


# What is alive when a command returns, after its atexit handlers ran (the last of them reports).
FROZEN_AT_EXIT = """
import atexit, gc, sys
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count()))
import harness.export.build  # what a build loads: torch, onnx, onnxruntime
from harness.cli import entry_point
sys.argv = ["harness", "--help"]
entry_point()
"""


def test_a_command_leaves_what_it_loaded_out_of_the_final_collection() -> None:
    """The interpreter's last cycle collection at exit costs a second or more once torch and MLflow are loaded."""
    done = subprocess.run([sys.executable, "-c", FROZEN_AT_EXIT], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    frozen = int(done.stdout.strip().splitlines()[-1].removeprefix("frozen at exit: "))
    assert frozen > 100_000, frozen  # the modules' objects, not a handful


def test_run_writes_result_json_and_prints_its_path_last(tmp_path: Path) -> None:
    done = harness(tmp_path, "run", "debug=tiny", "tracking=off")  # logging it is tests/tracking's subject
    assert done.returncode == 0, done.stderr
    result_path = Path(done.stdout.strip().splitlines()[-1])
    assert result_path.name == "result.json" and result_path.is_relative_to(tmp_path / "outputs" / "run")
    result = load_result(result_path)
    assert result.status == "ok" and result.stages == ("build", "perf", "accuracy")
    assert result.accuracy is not None and result.accuracy.dataset.startswith("synthetic-")
    assert result.perf is not None and result.perf.samples == 16 and result.perf.backend == "onnxruntime"
    assert (result_path.parent / "perf_vamp.txt").read_text().startswith("- number of instances in each device: 1")
    assert result.weights is not None and result.weights.kind == "random"
    assert result.build is not None and result.build.parity.passed
    assert result.environment["libraries"]["onnxruntime"]  # type: ignore[index]
    assert "RANDOM weights" in done.stdout
    assert (result_path.parent / ".hydra" / "config.yaml").is_file()
    assert load_result(result_path).to_dict() == json.loads(result_path.read_text())


def test_second_build_reports_a_cache_hit(tmp_path: Path) -> None:
    assert harness(tmp_path, "build", "debug=tiny", "tracking=off").returncode == 0
    done = harness(tmp_path, "build", "debug=tiny", "tracking=off")
    assert done.returncode == 0 and "build cache hit" in done.stderr + done.stdout
    result = load_result(done.stdout.strip().splitlines()[-1])
    assert result.config.task == "build" and result.build is not None and result.build.cache_hit


def test_build_refuses_other_stages_instead_of_running_them(tmp_path: Path) -> None:
    # `harness build stages=[build,perf]` measured perf as `harness run` would, in a folder named build.
    for stages in ("stages=[build,perf]", "+stages=[accuracy]"):
        done = harness(tmp_path, "build", "debug=tiny", "tracking=off", stages)
        assert done.returncode == 2 and done.stderr.strip() == (
            f"error: {stages}: harness build runs the build stage only; harness run {stages} runs the stages named"
        )
    assert not (tmp_path / "outputs").exists()
    assert harness(tmp_path, "build", "debug=tiny", "tracking=off", "stages=[build]").returncode == 0  # as it is


def test_a_config_that_does_not_resolve_is_one_line_and_not_a_run(tmp_path: Path) -> None:
    done = harness(tmp_path, "run", "debug=tiny", "model.variant=vitx14")
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: model.variant='vitx14': expected one of " + errors[0].split("expected one of ")[1]]
    assert "Traceback" not in done.stderr and done.stderr.strip() == errors[0]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("perf.batch=abc", "error: perf.batch='abc': expected int"),
        ("perf.batchsize=8", "error: perf.batchsize: unknown key"),
        ("vdsp.path=/nowhere/vdsp.json", "error: vdsp.path: /nowhere/vdsp.json: cannot read vdsp params"),
    ],
)
def test_bad_types_unknown_keys_and_bad_vdsp_fail_before_any_stage(tmp_path: Path, override: str, message: str) -> None:
    done = harness(tmp_path, "run", "debug=tiny", override)
    assert done.returncode == 2 and done.stderr.startswith(message), done.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("modes", [["-m", "--cfg", "job"], ["--cfg=job", "--info"]])
def test_two_hydra_modes_at_once_are_one_line_not_a_traceback(tmp_path: Path, modes: list[str]) -> None:
    done = harness(tmp_path, "run", "debug=tiny", "perf.batch=1,2", *modes)
    flags = " and ".join(mode for mode in modes if mode.startswith("-"))
    assert done.returncode == 2 and done.stderr.strip() == (
        f"error: {flags}: Hydra takes one of --run (-r), --multirun (-m), --cfg (-c), --info (-i), "
        "--shell-completion (-sc) at a time"
    )
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("show", [["--cfg", "hydra"], ["-c", "hydra"], ["--cfg=hydra"]])
def test_the_hydra_node_resolved_alone_points_to_the_whole_config(tmp_path: Path, show: list[str]) -> None:
    refused = harness(tmp_path, "run", *show, "--resolve")
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "error: --cfg hydra --resolve: the run folders are under paths.outputs, which Hydra resolves only in the "
        "whole config: use --cfg all --resolve"
    )
    whole = harness(tmp_path, "run", "--cfg", "all", "--resolve")
    assert whole.returncode == 0 and f"dir: {tmp_path / 'outputs'}/run/" in whole.stdout


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["perf.batch=abc"], "error: perf.batch='abc': expected int"),
        # Hydra's own --cfg printed a traceback for this one.
        (["model=null"], "error: model=null: expected one of ['tiny14', 'tiny14_reg4', 'tinyg14_reg4', 'vitb14',"),
    ],
)
def test_a_config_shown_with_cfg_that_does_not_compose_is_one_line(
    tmp_path: Path, overrides: list[str], message: str
) -> None:
    done = harness(tmp_path, "run", *overrides, "--cfg", "job")
    assert done.returncode == 2 and done.stderr.startswith(message) and len(done.stderr.splitlines()) == 1, done.stderr
    # Composing is all --cfg asks: a config that composes but does not resolve is still shown.
    shown = harness(tmp_path, "run", "backend=vastai", "--cfg", "job")
    assert shown.returncode == 0 and "name: vastai" in shown.stdout, shown.stderr


def test_a_deprecated_key_is_folded_and_said_once_per_run(tmp_path: Path) -> None:
    done = harness(tmp_path, "run", "-m", "debug=tiny", "backend=sleep", "stages=[perf]", "perf.iterations=4",
                   "perf.duration_s=0.2", "backend.latency_us=100,200", "tracking=off")  # fmt: skip
    assert done.returncode == 0, done.stderr
    said = [line for line in done.stdout.splitlines() if "perf.duration_s is deprecated" in line]
    assert len(said) == 2 and all("[harness.resolve][WARNING]" in line for line in said), said  # in each job's log
    assert "deprecated" not in done.stderr  # and not again, unlogged, by the check of the jobs before the sweep
    for result_file in sorted((tmp_path / "outputs").rglob("result.json")):
        perf = load_result(result_file).perf
        assert perf is not None and perf.min_duration_s == 0.2 and perf.forward_time_s >= 0.2


def test_overrides_before_and_after_a_hydra_flag_are_all_taken(tmp_path: Path) -> None:
    # Hydra's parser takes overrides in one stretch: `-m` between them was "unrecognized arguments: perf.batch=1,2".
    done = harness(tmp_path, "run", "debug=tiny", "stages=[perf]", "backend=sleep", "-m", "perf.batch=1,2",
                   "perf.min_duration_s=0", "tracking=off")  # fmt: skip
    assert done.returncode == 0, done.stderr
    jobs = sorted((tmp_path / "outputs").rglob("result.json"))
    assert [load_result(path).config.perf.batch for path in jobs] == [1, 2]
    shown = harness(tmp_path, "run", "debug=tiny", "--cfg", "job", "perf.batch=3", "--resolve")
    assert shown.returncode == 0 and "  batch: 3\n" in shown.stdout, shown.stderr
    refused = harness(tmp_path, "run", "--info", "perf.batch=2")  # what Hydra's parser refuses, it still says
    assert refused.returncode == 2 and "argument --info/-i: invalid choice: 'perf.batch=2'" in refused.stderr


def test_a_sweep_with_one_bad_job_runs_nothing(tmp_path: Path) -> None:
    done = harness(tmp_path, "run", "-m", "debug=tiny", "perf.batch=1,abc")
    assert done.returncode == 2
    assert done.stderr.strip() == "error: sweep job 1 (perf.batch=abc): perf.batch='abc': expected int"
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["sync", "{run}"],
        ["report", "{run}", "--out", "{tmp}/report"],
        ["ui", "--port", "1"],
        ["gate", "{run}", "--baseline", "{tmp}/baseline.json"],
        ["vamp-parse", "--log", str(REPO_ROOT / "tests/fixtures/vastai/vamp-2.1.0-percentiles.txt")],
    ],
    ids=lambda command: command[0],
)
def test_a_command_refuses_an_override_it_would_ignore_and_touches_nothing(tmp_path: Path, command: list[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    arguments = [item.format(run=run, tmp=tmp_path) for item in command]
    done = harness(tmp_path, *arguments, f"paths.root={tmp_path}", "perf.batch=2")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: perf: unknown key (known: ['")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]  # no store, report or baseline made


@pytest.mark.parametrize(
    ("command", "refusal"),
    [
        (["sync", "{run}"], "harness sync: error: tracking.enabled=false (tracking=off): harness sync does nothing but log to the store"),
        (["vamp-parse", "--log", str(REPO_ROOT / "tests/fixtures/vastai/vamp-2.1.0-percentiles.txt")],
         "harness vamp-parse: error: --log with tracking.enabled=false (tracking=off): one says to log, the other not to"),
    ],
    ids=lambda item: item[0] if isinstance(item, list) else "",
)  # fmt: skip
def test_a_command_that_only_logs_refuses_tracking_off(tmp_path: Path, command: list[str], refusal: str) -> None:
    # Both logged to the default store all the same.
    run = tmp_path / "run"
    run.mkdir()
    done = harness(tmp_path, *[item.format(run=run) for item in command], f"paths.root={tmp_path}", "tracking=off")
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == refusal
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run"]  # no store made


def test_unknown_group_option_fails_before_running(tmp_path: Path) -> None:
    done = harness(tmp_path, "run", "model=vitx14")
    assert done.returncode != 0
    assert "vitx14" in done.stderr and "vits14" in done.stderr
    assert not (tmp_path / "outputs").exists()


def on_a_terminal(tmp_path: Path, *arguments: str, stdout_too: bool = False) -> str:
    """What ``harness`` writes to stderr when stderr is a terminal (a pseudo-terminal 150 columns wide); with
    ``stdout_too``, stdout on the same terminal, as a shell has them."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 150, 0, 0))
    written: list[bytes] = []

    def drain() -> None:  # a full terminal buffer would block the writer
        with contextlib.suppress(OSError):  # EIO once every writer has closed it
            while chunk := os.read(leader, 65536):
                written.append(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    command = [sys.executable, "-m", "harness", *arguments, f"paths.outputs={tmp_path / 'outputs'}"]
    try:
        stdout = follower if stdout_too else subprocess.DEVNULL
        subprocess.run(command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=stdout, stderr=follower, timeout=300,
                       check=True)  # fmt: skip
    finally:
        os.close(follower)
        reader.join(timeout=30)
        os.close(leader)
    return b"".join(written).decode(errors="replace")


def test_jobs_that_run_at_once_draw_no_progress_bars_on_the_terminal_they_share(tmp_path: Path) -> None:
    # With hydra/launcher=parallel two jobs' bars overwrote each other on one line of the terminal.
    load = ["debug=tiny", "stages=[perf]", "backend=sleep", "perf.min_duration_s=1.2", "tracking=off"]
    alone = on_a_terminal(tmp_path / "alone", "run", *load)
    assert "perf repeat0: " in alone and " img/s]" in alone  # one job draws its bar
    side_by_side = on_a_terminal(tmp_path / "parallel", "run", "-m", "hydra/launcher=parallel", *load, "perf.batch=1,2")
    assert "perf repeat0: " not in side_by_side


def test_a_builds_time_is_shown_on_the_terminal_and_its_log_lines_above_it(tmp_path: Path) -> None:
    shown = on_a_terminal(tmp_path, "run", "debug=tiny", "stages=[build]", "tracking=off",
                          f"paths.cache={tmp_path / 'cache'}", stdout_too=True)  # fmt: skip
    assert re.search(r"build tiny14_reg4-224x224-fp32-onnx-\w+: 00:0\d", shown)
    # The parity check's log line, printed while the line is drawn, starts a line of its own.
    assert re.search(r"(^|[\r\n])\[[-\d :,]+\]\[harness\.export\.parity\]\[INFO\] - parity images=2", shown)
    assert not re.search(r"\d\d:\d\d\[\d{4}-", shown)


def test_sweep_with_a_failing_job_goes_on_and_fails_at_the_end(tmp_path: Path) -> None:
    done = harness(tmp_path, "run", "-m", "debug=tiny", "model.weights=random,/missing.pth", "tracking=off")
    assert done.returncode == 1
    results = sorted((tmp_path / "outputs" / "run" / "multirun").rglob("result.json"))
    assert [load_result(path).status for path in results] == ["ok", "failed"]
    assert "1 job did not succeed" in done.stderr and "(failed)" in done.stderr
    # Each job's log says how it ended, as its result.json does: the failure is not only on the console.
    assert "run failed: model.weights=/missing.pth: no such file" in (results[1].parent / "run.log").read_text()
    assert "run failed" not in (results[0].parent / "run.log").read_text()


@pytest.mark.parametrize(
    ("mode", "record"), [(["hydra.run.dir"], "result.json"), (["-m", "hydra.sweep.dir"], "sweep.json")]
)
def test_a_fixed_run_folder_that_holds_a_result_is_refused_and_the_result_kept(
    tmp_path: Path, mode: list[str], record: str
) -> None:
    *sweep, key = mode
    folder = tmp_path / "latest"
    sleep_run = ["run", *sweep, "debug=tiny", "backend=sleep", "stages=[perf]", f"{key}={folder}"]
    first = harness(tmp_path, *sleep_run, "perf.batch=1,2" if sweep else "perf.batch=1")
    assert first.returncode == 0, first.stderr
    kept = {path: path.read_bytes() for path in folder.rglob("*.json")}
    run_id = json.loads((folder / "0" / "tracking.json" if sweep else folder / "tracking.json").read_text())["run_id"]
    # Written over, the folder's tracking.json made the new run pass for logged: "tracked" named this MLflow run,
    # which holds the first run's numbers, and the second run's were in no store.
    again = harness(tmp_path, *sleep_run, "perf.batch=4")
    what = "sweep" if sweep else "run"
    assert again.returncode == 2 and again.stderr == (
        f"error: {key}={folder}: holds an earlier {what} ({record}); a {what} writes a folder of its own, so that "
        f"one's results are kept: choose another {key}, or remove the folder\n"
    )
    assert {path: path.read_bytes() for path in folder.rglob("*.json")} == kept
    store = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    assert store.get_run(run_id).data.params["perf.batch"] == "1"


def test_hydra_folders_the_harness_cannot_keep_its_runs_in_are_refused_before_a_run(tmp_path: Path) -> None:
    # Hydra's idiom for readable job folders: the jobs ran, and then the sweep called every one of them missing.
    named = "hydra.sweep.subdir=${hydra.job.override_dirname}"
    done = harness(tmp_path, "run", "-m", "debug=tiny", "backend=sleep", "stages=[perf]", "perf.batch=1,2", named)
    assert done.returncode == 2 and done.stderr == (
        "error: hydra.sweep.subdir=${hydra.job.override_dirname}: a sweep's job N is read from <sweep dir>/N (its "
        "summary, sync, gate, report): keep hydra.sweep.subdir=${hydra.job.num}\n"
    )
    assert not (tmp_path / "outputs").exists()
    moving = harness(tmp_path, "run", "debug=tiny", "backend=sleep", "stages=[perf]", "hydra.job.chdir=true")
    assert moving.returncode == 2 and moving.stderr.startswith("error: hydra.job.chdir=true: paths resolve against")
    assert not (tmp_path / "outputs").exists()  # a run there made <run dir>/outputs/mlflow.db, a store per run
    unset = harness(tmp_path, "run", "debug=tiny", "hydra.run.dir=${oc.env:HARNESS_TEST_UNSET_VARIABLE}")
    assert unset.returncode == 2 and unset.stderr == (  # Hydra's own report of it was a traceback
        'error: hydra.run.dir: KeyError raised while resolving interpolation: "Environment variable '
        "'HARNESS_TEST_UNSET_VARIABLE' not found\"\n"
    )


@pytest.mark.parametrize(
    ("sweep", "key", "failure"),
    [
        ([], "paths.outputs", "cannot create the run folders there"),
        (["-m", "perf.batch=1,2"], "paths.outputs", "cannot create the run folders there"),
        ([], "hydra.run.dir", "cannot create the run folder"),
        (["-m", "perf.batch=1,2"], "hydra.sweep.dir", "cannot create the sweep folder"),
    ],
)
def test_outputs_that_cannot_be_created_are_one_line_and_no_run(
    tmp_path: Path, sweep: list[str], key: str, failure: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a folder under a file: Hydra's own folder creation failed with a chain of tracebacks")
    outputs = tmp_path / "outputs"
    done = subprocess.run(
        [sys.executable, "-m", "harness", "run", *sweep, "debug=tiny", "tracking=off", f"paths.outputs={outputs}",
         f"{key}={blocker / 'out'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == f"error: {key}={blocker / 'out'}: {failure} ({blocker} is a file, not a folder)"
    assert not outputs.exists() or not any(outputs.rglob("result.json"))


def test_the_run_folder_probed_before_hydra_makes_it_is_not_left_behind(tmp_path: Path) -> None:
    # Its default name holds the time to the microsecond, which Hydra reads again when it creates the folder.
    outputs = tmp_path / "outputs"
    done = harness(tmp_path, "run", "debug=tiny", "backend=sleep", "stages=[perf]", "tracking=off")
    assert done.returncode == 0, done.stderr
    (day,) = (outputs / "run").iterdir()
    (run_dir,) = day.iterdir()
    assert (run_dir / "result.json").is_file()


def test_a_tracking_store_mlflow_cannot_open_is_a_warning_and_the_result_is_kept(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("an SQLite store under a file: MLflow's client raised before the first request")
    done = harness(tmp_path, "run", "debug=tiny", "stages=[build]", f"tracking.uri=sqlite:///{blocker}/mlflow.db")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    result_path = Path(done.stdout.strip().splitlines()[-1])
    assert load_result(result_path).status == "ok"
    assert f"warning: run not tracked (tracking store sqlite:///{blocker}/mlflow.db: " in done.stderr
    # The command it prints logs the run to the store it was meant for, from any folder: the blocker gone, run it.
    hint = done.stderr.split("result.json is kept: ")[1].splitlines()[0]
    assert hint.startswith("harness sync tracking.uri=") and hint.endswith(str(result_path.parent))
    blocker.unlink()
    blocker.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    synced = harness(elsewhere, *shlex.split(hint)[1:])
    assert synced.returncode == 0 and f"{result_path.parent}: logged as " in synced.stdout, synced.stderr
    client = MlflowClient(f"sqlite:///{blocker}/mlflow.db")
    experiment = client.get_experiment_by_name(load_result(result_path).config.tracking.experiment)
    assert experiment is not None and len(client.search_runs([experiment.experiment_id])) == 1
    assert not (elsewhere / "outputs").exists()


def test_report_and_gate_outputs_that_cannot_be_written_are_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    ran = harness(tmp_path, "run", "debug=tiny", "backend=sleep", "stages=[perf]", "perf.iterations=4", "tracking=off")
    run_dir = Path(ran.stdout.strip().splitlines()[-1]).parent
    report = harness(tmp_path, "report", str(run_dir), "--out", str(blocker), "tracking=off")
    assert report.returncode == 1 and "Traceback" not in report.stderr
    assert report.stderr.strip() == f"error: {blocker}: cannot write the report there (a file, not a folder)"
    gate = harness(tmp_path, "gate", str(run_dir), "--baseline", str(blocker), "--report", str(tmp_path))
    assert gate.returncode == 2 and "Traceback" not in gate.stderr  # refused before any comparison or rerun
    assert gate.stderr.splitlines()[-1] == (
        f"harness gate: error: --report {tmp_path}: a folder; give the file to write, e.g. {tmp_path / 'gate.md'}"
    )
    # Options that would be ignored, or a count below zero, are usage errors too (--rerun -1 was taken as 0).
    for options, refusal in (
        (["--rerun", "-1"], "--rerun -1: expected a number of re-measurements, 0 or more"),
        (["--promote", "--rerun", "2", "--report", "g.md"],
         "--promote writes a baseline and decides nothing: --rerun, --report would be ignored"),
    ):  # fmt: skip
        refused = harness(tmp_path, "gate", str(run_dir), "--baseline", str(tmp_path / "b.json"), *options)
        assert refused.returncode == 2 and refused.stderr.splitlines()[-1] == f"harness gate: error: {refusal}"
    assert not (tmp_path / "b.json").exists() and not (run_dir / "gate.md").exists()


def test_data_synthetic_writes_the_revisitop_layout(tmp_path: Path) -> None:
    done = harness(tmp_path, "data", "synthetic", "--root", str(tmp_path / "data"), "--images", "20", "--queries", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("20 database images, 2 queries")
    assert (tmp_path / "data" / "synthetic-i20-q2-s0" / "gnd_synthetic-i20-q2-s0.pkl").is_file()
    assert len(list((tmp_path / "data" / "synthetic-i20-q2-s0" / "jpg").glob("*.jpg"))) == 22


def test_data_writes_where_a_run_of_the_same_overrides_reads(tmp_path: Path) -> None:
    done = harness(tmp_path, "data", "synthetic", "debug=tiny", f"paths.data={tmp_path / 'data'}")
    assert done.returncode == 0, done.stderr
    written = tmp_path / "data" / "synthetic-i16-q2-s0"
    assert done.stdout.strip() == f"{written}: 16 database images, 2 queries"
    stamp = (written / "gnd_synthetic-i16-q2-s0.pkl").stat().st_mtime_ns
    ran = harness(tmp_path, "run", "debug=tiny", "backend=torch", "stages=[accuracy]", "tracking=off")
    assert ran.returncode == 0, ran.stderr
    assert load_result(ran.stdout.strip().splitlines()[-1]).accuracy.dataset == "synthetic-i16-q2-s0"  # type: ignore[union-attr]
    assert (written / "gnd_synthetic-i16-q2-s0.pkl").stat().st_mtime_ns == stamp  # read, not written again
    after_an_option = harness(tmp_path, "data", "synthetic", "--queries", "3", f"paths.data={tmp_path / 'other'}")
    assert after_an_option.returncode == 0, after_an_option.stderr  # argparse alone takes them before options only
    assert after_an_option.stdout.startswith(f"{tmp_path / 'other' / 'synthetic-i60-q3-s0'}: 60 database images")
    refused = harness(tmp_path, "data", "synthetic", "perf.batch=2")
    assert refused.returncode == 2
    assert refused.stderr.strip() == "error: perf: unknown key (known: ['dataset', 'debug', 'experiment', 'paths'])"


def test_a_missing_dataset_name_is_the_only_argument_called_required(tmp_path: Path) -> None:
    # argparse counts a "*" positional without a default as required: it said "required: name, KEY=VALUE".
    done = harness(tmp_path, "data", "download")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "harness data download: error: the following arguments are required: name"
    )


def test_data_download_offline_is_one_clear_error(tmp_path: Path) -> None:
    done = harness(tmp_path, "data", "download", "rparis6k", "--root", str(tmp_path / "data"))
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(
        "error: cannot download http://cmp.felk.cvut.cz/revisitop/data/datasets/rparis6k/gnd_rparis6k.pkl"
    )


def test_a_synthetic_set_the_photos_cannot_make_is_a_bad_argument(tmp_path: Path) -> None:
    done = harness(tmp_path, "data", "synthetic", "--root", str(tmp_path / "data"), "--queries", "20")
    assert done.returncode == 2  # as `harness run` refuses it: a config that does not resolve
    assert done.stderr.strip() == "error: dataset.synthetic_queries=20: expected 1 to 14 (photos shipped: 15)"
    assert not (tmp_path / "data").exists()


def test_data_synthetic_into_a_root_that_cannot_exist_is_one_line(tmp_path: Path) -> None:
    done = harness(tmp_path, "data", "synthetic", "--root", "/proc/nope")
    assert done.returncode == 1
    assert done.stderr.strip() == "error: /proc/nope: cannot create the dataset root (No such file or directory)"


def test_a_sweep_lists_every_invalid_job_and_runs_nothing(tmp_path: Path) -> None:
    done = harness(tmp_path, "run", "-m", "debug=tiny", "perf.batch=abc,1,0")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [
        "error: 2 of 3 sweep jobs are invalid, nothing was run:",
        "  sweep job 0 (perf.batch=abc): perf.batch='abc': expected int",
        "  sweep job 2 (perf.batch=0): perf.batch=0: expected a positive int",
    ]
    assert not (tmp_path / "outputs").exists()


def test_an_interrupt_names_the_run_it_stopped_only_when_that_run_says_so(tmp_path: Path) -> None:
    """Ctrl-C may land after the last run ended (while it is tracked, between two jobs): its ok result is not
    called interrupted."""
    from harness.cli.run import interrupted_where
    from harness.pipeline import run
    from harness.result import write_result
    from tests.conftest import compose

    ok = run(
        compose(["debug=tiny", "backend=sleep", "stages=[perf]", "perf.iterations=3", f"paths.cache={tmp_path}"]),
        run_dir=tmp_path / "ok",
    )
    write_result(dataclasses.replace(ok, status="interrupted"), tmp_path / "stopped")
    (tmp_path / "started").mkdir()
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "result.json").write_text("{")

    assert interrupted_where(None) == "no run had started"
    assert interrupted_where(tmp_path / "ok") == f"after {tmp_path / 'ok' / 'result.json'} (status ok)"
    assert interrupted_where(tmp_path / "stopped") == f"{tmp_path / 'stopped' / 'result.json'} (status interrupted)"
    assert interrupted_where(tmp_path / "started") == f"{tmp_path / 'started'} had not begun (no result.json)"
    assert interrupted_where(tmp_path / "broken").startswith(f"{tmp_path / 'broken' / 'result.json'}: cannot read")


def test_ctrl_c_while_the_store_does_not_answer_is_held_once_then_stops_the_command(tmp_path: Path) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts the connection, never answers the request
    silent.settimeout(120)
    command = [
        sys.executable, "-m", "harness", "report", "mlflow", "--out", str(tmp_path / "report"),
        f"tracking.uri=http://127.0.0.1:{silent.getsockname()[1]}", "tracking.http_timeout_s=300",
    ]  # fmt: skip
    process = subprocess.Popen(command, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr or ()], daemon=True).start()
    try:
        connection, _ = silent.accept()  # the report is asking the store for its experiment now
        process.send_signal(signal.SIGINT)
        while "interrupt: finishing the write to the tracking store first (again to stop now)" not in lines.get(
            timeout=60
        ):
            pass
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
        connection.close()
    finally:
        process.kill()
        silent.close()
    stderr = "".join(lines.queue)
    assert "interrupted: harness report stopped before it finished" in stderr and "Traceback" not in stderr
