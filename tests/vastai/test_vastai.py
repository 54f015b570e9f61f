"""``backend=vastai`` end to end with the ``vamc`` / ``vamp`` test doubles: build spec, exact command lines,
the perf block from real vamp outputs, accuracy and parity from device outputs, and one clear error each for a
missing tool, a failing, hanging or babbling tool, missing compiled files and an unsupported precision."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from harness.accuracy.revisited import SETUPS
from harness.backends import ProfileLoad
from harness.backends.vastai_backend import VastaiToolchain
from harness.errors import BackendUnavailable, ConfigError
from harness.perf.stage import strict_problems
from harness.perf.toolchain import measurement_from_report
from harness.perf.vamp import VAMP_FILE, parse_vamp
from harness.pipeline import run
from harness.processes import ToolRun
from harness.result.perf import Validity
from tests.conftest import run_config
from tests.perf.test_loadgen import Terminal
from tests.vastai.conftest import FIXTURE_LOAD, FakeTools

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "vastai"
VASTAI = ("backend=vastai", "precision=fp16", "tracking=off")


def _structure(tree: object) -> object:
    """The nesting of keys of a YAML tree, leaves replaced by their type."""
    if isinstance(tree, dict):
        return {key: _structure(value) for key, value in tree.items()}
    return type(tree).__name__


def test_a_run_builds_profiles_and_scores_through_the_tools(
    cache_dir: Path, tmp_path: Path, fake_tools: FakeTools
) -> None:
    config = run_config(cache_dir, *VASTAI, "stages=[build,perf,accuracy]", *FIXTURE_LOAD, "perf.repeats=3")
    result = run(config, run_dir=tmp_path / "run")
    assert result.status == "ok", result.error

    # Build: the recipe's YAML around the verified fp32 ONNX build, the files vamc promised, parity through vamp.
    build = result.build
    assert build is not None and build.manifest.toolchain is not None and build.parity.passed
    folder = build.artifact_folder
    spec = yaml.safe_load((folder / build.manifest.toolchain.spec_file).read_text())
    recipe = yaml.safe_load((FIXTURES / "official_dinov2.yaml").read_text())
    assert _structure(spec) == _structure(recipe)
    assert spec["name"] == "tiny14_reg4_fp16" and spec["frontend"]["shape"] == {"input": [8, 3, 224, 224]}
    assert spec["backend"] == recipe["backend"] and spec["frontend"]["dtype"] == "fp32"
    checkpoint = Path(spec["frontend"]["checkpoint"])
    assert checkpoint.parent.name == build.manifest.toolchain.base_artifact and "-fp32-onnx-" in checkpoint.name
    assert build.artifact_path == str(folder / "tiny14_reg4_fp16" / "mod")
    assert {file.name for file in build.manifest.files} >= {
        f"tiny14_reg4_fp16/mod.{s}" for s in ("so", "json", "params")
    }
    assert build.manifest.toolchain.versions == {
        "vamc": "vamc 3.1.0 (harness test double)", "vamp": "vamp 2.5.2 (harness test double)"
    }  # fmt: skip
    (compile_call,) = fake_tools.calls("vamc")
    assert compile_call[0] == "compile" and Path(compile_call[1]).name == "tiny14_reg4_fp16.yaml"
    assert Path(compile_call[1]).parent.name.startswith(f".staging-{folder.name}-")  # published only once verified
    assert build.parity.runtime.startswith("vastai vastai:0") and build.parity.min_cosine > 0.9999

    # Perf: one vamp call per repeat with every option mapped; the numbers are those vamp printed.
    profile_calls = [call for call in fake_tools.calls("vamp") if "--datalist" not in call]
    assert profile_calls == [
        [
            "-m", build.artifact_path, "--vdsp_params", str(tmp_path / "run" / "vdsp_params.json"), "-i", "3", "-p",
            "1", "-b", "8", "-s", "[3,224,224]", "-d", "0", "--iterations", "10240", "--forward_mode", "1",
            "--percentiles", "[50,90,95,99]",
        ]
    ] * 3  # fmt: skip
    perf = result.perf
    assert perf is not None and perf.samples_source == "vamp" and perf.samples_file is None
    assert (perf.samples, perf.batches, perf.forward_time_s, perf.throughput_qps) == (10240, 1280, 3.30204, 3101.12)
    assert perf.throughput_qps_repeats == (3101.12,) * 3 and len(perf.repeats) == 3
    assert (perf.latency_us.e2e.avg, perf.latency_us.e2e.max, perf.latency_us.model.max) == (128843, 201022, None)
    assert perf.telemetry is not None and perf.telemetry.card_power_w == 43.7734
    assert perf.telemetry.images_per_joule == pytest.approx(3101.12 / 43.7734)
    assert perf.validity.valid and perf.device == "vastai:0"
    assert (tmp_path / "run" / VAMP_FILE).read_text() == (FIXTURES / "vamp-2.5.2-manual.txt").read_text()
    vdsp = json.loads((tmp_path / "run" / "vdsp_params.json").read_text())
    assert vdsp["OpType"] == "FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR" and vdsp["OpConfig"]["IimageWidth"] == 224

    # Accuracy: the device's per-image outputs, scored; the fake device runs the fp32 ONNX, so fp32 agrees.
    accuracy = result.accuracy
    assert accuracy is not None and accuracy.fp32 is not None
    assert accuracy.fp32.neighbour_overlap_at_10 == 1.0 and accuracy.fp32.descriptor_min_cosine > 0.999
    assert all(abs(delta) < 1e-9 for delta in accuracy.fp32.map_delta.values())
    datalist_calls = [call for call in fake_tools.calls("vamp") if "--datalist" in call]
    assert len(datalist_calls) == 3  # the parity photos at build, then queries and database (fp32: ONNX Runtime)
    folder_db = tmp_path / "run" / "features_database"
    assert datalist_calls[-1] == [
        "-m", build.artifact_path, "--vdsp_params", str(tmp_path / "run" / "vdsp_params.json"), "-i", "1", "-p", "1",
        "-b", "8", "-s", "[3,224,224]", "-d", "0", "--datalist", str(folder_db / "datalist.txt"),
        "--path_output", str(folder_db / "outputs"),
    ]  # fmt: skip
    listed = (folder_db / "datalist.txt").read_text().splitlines()
    assert len(listed) == accuracy.images and all(line.endswith(".npz") for line in listed)
    outputs = folder_db / "outputs"
    assert len(list(outputs.glob("*.npz"))) == accuracy.images
    assert not (tmp_path / "run" / "features_database" / "inputs").exists()
    features = np.load(tmp_path / "run" / "features_database.npy")
    with np.load(sorted(outputs.glob("*.npz"))[0]) as first:
        assert first["output_0"].dtype == np.float16 and first["output_0"].size == features.shape[1]

    # A second run hits the cache: no compile, parity checked again through vamp.
    again = run(config, run_dir=tmp_path / "again")
    assert again.status == "ok" and again.build is not None and again.build.cache_hit
    assert len(fake_tools.calls("vamc")) == 1 and again.build.parity.passed
    assert again.accuracy is not None
    assert all(getattr(again.accuracy, setup) == getattr(accuracy, setup) for setup in SETUPS)


def test_a_warm_up_vamp_has_no_flag_for_is_said_not_passed_and_not_failed_by_strict(
    cache_dir: Path, tmp_path: Path, fake_tools: FakeTools
) -> None:
    # result.json recorded perf.warmup=3 for a vamp run as if vamp had warmed up 3 calls; the toolchain has no flag.
    config = run_config(cache_dir, *VASTAI, "stages=[build,perf]", *FIXTURE_LOAD, "perf.warmup=3")
    result = run(config, run_dir=tmp_path / "run")
    assert result.status == "ok", result.error
    assert result.perf is not None and result.perf.validity.valid
    note = "perf.warmup=3 not used: the vendor profiler has no flag for a warm-up"
    assert note in result.perf.validity.warnings
    assert not [flag for call in fake_tools.calls("vamp") for flag in call if "warm" in flag and flag.startswith("-")]
    # perf.strict fails on the measurement's own shortfalls (this vamp printed no percentiles), not on the note.
    notes = config.perf.unused_notes(profiler=True)
    assert notes == (note,) and strict_problems(result.perf, notes) == [
        "vamp printed no p50, p90, p95, p99 latency (asked with --percentiles)"
    ]
    assert run_config(cache_dir, *VASTAI, "perf.warmup=8").perf.unused_notes(profiler=True) == ()
    assert config.perf.unused_notes(profiler=False) == ()  # the harness's own loop warms up


@pytest.mark.parametrize("progress", [True, False])
def test_a_terminal_shows_each_tool_and_how_long_it_has_run(
    cache_dir: Path, tmp_path: Path, fake_tools: FakeTools, monkeypatch: pytest.MonkeyPatch, progress: bool
) -> None:
    # A vendor compile of ViT-L takes minutes, its output kept for the record: the terminal showed nothing.
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    config = run_config(cache_dir, *VASTAI, "stages=[build,perf,accuracy]", *FIXTURE_LOAD, f"progress={progress}")
    assert run(config, run_dir=tmp_path / "run").status == "ok"
    shown = set(re.findall(r"((?:vamc|vamp) [^:\r]+): \d\d:\d\d", terminal.getvalue()))
    # The parity photos at build, the profile, then the synthetic set's queries and database.
    images = (config.build.parity_images, config.dataset.synthetic_queries, config.dataset.synthetic_images)
    expected = {
        "vamc compile tiny14_reg4_fp16",
        "vamp b8 i3 p1 sync",
        *(f"vamp --datalist, {count} images" for count in images),
    }
    assert shown == (expected if progress else set())


def test_profile_command_lines(cache_dir: Path, fake_tools: FakeTools) -> None:
    config = run_config(cache_dir, *VASTAI, "backend.device_ids=[1]", "backend.percentiles=[50,99]")
    toolchain = VastaiToolchain(config.backend)
    prefix, vdsp = Path("/w/m/mod"), Path("/w/v.json")
    sync = ProfileLoad(instances=2, processes=2, batch=4, shape=(3, 224, 224), iterations=100, min_duration_s=0.0,
                       mode="sync")  # fmt: skip
    argv = toolchain.profile_argv(prefix, sync, vdsp_params=vdsp)
    assert argv[0] == str(fake_tools.bin / "vamp")
    assert argv[1:] == [
        "-m", "/w/m/mod", "--vdsp_params", "/w/v.json", "-i", "2", "-p", "2", "-b", "4", "-s", "[3,224,224]",
        "-d", "1", "--iterations", "400", "--forward_mode", "1", "--percentiles", "[50,99]",
    ]  # fmt: skip
    timed = ProfileLoad(instances=1, processes=1, batch=1, shape=(3, 448, 448), iterations=None, min_duration_s=30.0,
                        mode="async")  # fmt: skip
    assert toolchain.profile_argv(prefix, timed, vdsp_params=vdsp)[9:] == [
        "-b", "1", "-s", "[3,448,448]", "-d", "1", "-t", "30", "--forward_mode", "0", "--percentiles", "[50,99]"
    ]  # fmt: skip


def _tool_run(output: str) -> ToolRun:
    return ToolRun(argv=("vamp",), returncode=0, output=output, wall_s=2.0, cpu_s=1.0, peak_rss_bytes=1 << 20,
                   timed_out=False)  # fmt: skip


@pytest.mark.parametrize(
    ("fixture", "overrides", "expected"),
    [
        ("vamp-2.5.2-manual.txt", FIXTURE_LOAD, (10240, 3.30204, 3101.12, 128843, None, ())),
        (
            "vamp-2.1.0-percentiles.txt",
            ("perf.instances=1", "perf.batch=1", "perf.iterations=1024", "perf.min_duration_s=0"),
            (1024, 1024 / 102.118, 102.118, 24356, 29387, ("no samples line", "no forward time")),
        ),
        (
            "vamp-fp16-zoo-readme.txt",
            ("perf.instances=1", "perf.batch=1", "perf.iterations=1024", "perf.min_duration_s=0"),
            (1024, 15.5398, 65.8953, 255913, None, ()),
        ),
    ],
)
def test_every_vendor_output_becomes_a_measurement(
    cache_dir: Path, fixture: str, overrides: tuple[str, ...], expected: tuple
) -> None:
    perf = run_config(cache_dir, *VASTAI, *overrides).perf
    text = (FIXTURES / fixture).read_text()
    measurement = measurement_from_report(parse_vamp(text), _tool_run(text), perf)
    samples, forward_s, qps, e2e_avg, e2e_p99, warned = expected
    assert measurement.samples == samples and measurement.forward_time_s == pytest.approx(forward_s)
    assert measurement.throughput_qps == qps and measurement.latency_us.e2e.avg == e2e_avg
    assert measurement.latency_us.e2e.p99 == e2e_p99 and measurement.latency_us.e2e.std is None
    assert measurement.validity.valid, measurement.validity.reasons
    assert len(measurement.validity.warnings) == len(warned)
    assert all(any(part in warning for warning in measurement.validity.warnings) for part in warned)
    assert measurement.cpu_utilization_pct == pytest.approx(100.0 / (2.0 * (os.cpu_count() or 1)))


def test_a_report_of_another_load_is_invalid_and_says_why(cache_dir: Path) -> None:
    perf = run_config(cache_dir, *VASTAI, "perf.instances=1", "perf.batch=4", "perf.iterations=5000").perf
    text = (FIXTURES / "vamp-2.5.2-manual.txt").read_text()
    reasons = measurement_from_report(parse_vamp(text), _tool_run(text), perf).validity.reasons
    assert any("vamp ran 3 instances per device, perf.instances=1" in reason for reason in reasons)
    assert any("vamp ran batch 8, perf.batch=4" in reason for reason in reasons)
    assert any("1280 batches < 5000" in reason for reason in reasons)


def test_vamps_p99_is_judged_against_the_latency_bound(cache_dir: Path) -> None:
    text = (FIXTURES / "vamp-2.1.0-percentiles.txt").read_text()  # e2e p99 29387 us

    def judged(bound: str, fixture_text: str = text) -> Validity:
        perf = run_config(cache_dir, *VASTAI, "perf.min_duration_s=0", "perf.iterations=1", bound).perf
        return measurement_from_report(parse_vamp(fixture_text), _tool_run(fixture_text), perf).validity

    assert judged("perf.latency_bound_ms=25").reasons == ("e2e p99 29.39 ms > perf.latency_bound_ms=25.0",)
    assert judged("perf.latency_bound_ms=30").valid
    readme = (FIXTURES / "vamp-fp16-zoo-readme.txt").read_text()  # no percentiles printed
    assert (
        "perf.latency_bound_ms=30.0 not judged: vamp printed no e2e p99"
        in judged("perf.latency_bound_ms=30", readme).warnings
    )


@pytest.mark.parametrize(
    ("fault", "overrides", "error", "words"),
    [
        (
            "vamc-exit",
            (),
            "BuildError",
            ["vamc compile exited with status 3", "unsupported operator LayerNormalization"],
        ),
        ("vamc-missing-file", (), "BuildError", ["did not write", "mod.params", "backend.compiled_files"]),
        ("vamp-exit", (), "ToolError", ["vamp exited with status 4", "device 0 not found"]),
        ("vamp-hang", ("backend.profile_timeout_s=3",), "ToolError", ["still running after 3 s", "profile_timeout_s"]),
        ("vamp-garbage", (), "ToolError", ["not a vamp report", "Segmentation fault"]),
        ("vamp-no-outputs", (), "ToolError", ["vamp --path_output", "no output for 2 of 2 images"]),
    ],
)
def test_a_failing_tool_fails_the_run_with_its_last_lines(
    cache_dir: Path, tmp_path: Path, fake_tools: FakeTools, monkeypatch: pytest.MonkeyPatch, fault: str,
    overrides: tuple[str, ...], error: str, words: list[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("FAKE_VASTAI_FAULT", fault)
    stages = "stages=[build]" if fault.startswith("vamc") else "stages=[build,perf]"
    config = run_config(cache_dir, *VASTAI, stages, *FIXTURE_LOAD, *overrides)
    result = run(config, run_dir=tmp_path / "run")
    assert result.status == "failed" and result.error is not None and result.error.type == error
    assert all(word in result.error.message for word in words), result.error.message
    assert json.loads((tmp_path / "run" / "result.json").read_text())["status"] == "failed"
    if fault in ("vamp-exit", "vamp-garbage"):
        assert (tmp_path / "run" / "perf_vamp_repeat0.txt").exists()  # the tool's whole output is kept


def test_missing_tools_name_the_vendor_environment(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    result = run(run_config(cache_dir, *VASTAI, "stages=[build,perf]"), run_dir=tmp_path / "run")
    assert result.status == "failed" and result.error is not None and result.error.type == "BackendUnavailable"
    assert "vamc is not on PATH" in result.error.message and "VastAI toolchain" in result.error.message
    with pytest.raises(BackendUnavailable, match=r"backend.vamp=/nowhere/vamp: not an executable"):
        VastaiToolchain(run_config(cache_dir, *VASTAI, "backend.vamp=/nowhere/vamp").backend)._tool("vamp")


def test_what_the_toolchain_cannot_do_is_refused_before_anything_runs(cache_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"precision=fp32: backend 'vastai' runs \['fp16'\] \(backend.precisions"):
        run_config(cache_dir, "backend=vastai", "precision=fp32")
    with pytest.raises(ConfigError, match=r"precision=int8: backend 'vastai' runs \['fp16'\]"):
        run_config(cache_dir, "backend=vastai", "precision=int8")
    with pytest.raises(ConfigError, match=r"perf.scenario=server: backend=vastai measures with its vendor profiler"):
        run_config(cache_dir, *VASTAI, "perf.scenario=server", "perf.target_qps=10")
    with pytest.raises(ConfigError, match=r"stages=\['perf'\]: backend=vastai runs the artifact the build stage makes"):
        run_config(cache_dir, *VASTAI, "stages=[perf]")
    # vamp has no flag for these: taken silently, an async depth of 8 read in result.json as if vamp had kept it.
    with pytest.raises(
        ConfigError,
        match=r"^perf.queue_depth=8, perf.inputs='photos', perf.max_duration_s=30.0: settings of the harness's own load "
        r"generator; backend=vastai measures with its vendor profiler, which has no flag for them \(leave them unset\)$",
    ):
        run_config(cache_dir, *VASTAI, "perf.mode=async", "perf.queue_depth=8", "perf.inputs=photos",
                   "perf.max_duration_s=30")  # fmt: skip
    assert run_config(cache_dir, *VASTAI, "perf.mode=async", "perf.warmup=3").perf.mode == "async"
    # A switch, not a hard-coded limit: a toolchain build that has int8 says so in backend.precisions.
    assert run_config(
        cache_dir, "backend=vastai", "precision=int8", "backend.precisions=[fp16,int8]"
    ).backend.precisions
