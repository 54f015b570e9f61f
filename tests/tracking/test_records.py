"""Flattening a result into params, metrics and tags."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import pytest

from harness.errors import TrackingError, masked
from harness.resolve import resolve_config
from harness.tracking.records import (
    config_hash,
    identity_of_params,
    identity_params,
    metrics_of,
    params_of,
    shorten,
    tags_of,
)
from harness.tracking.store import StoreClient
from tests.conftest import compose, run_config


def test_long_values_are_cut_with_a_hash_of_the_whole() -> None:
    first, second = "x" * 7000 + "a", "x" * 7000 + "b"
    assert len(shorten(first)) == 6000 and shorten(first) != shorten(second)
    assert shorten(first).endswith(shorten(first)[-12:]) and "...sha256:" in shorten(first)
    assert shorten("short") == "short"


def test_params_are_the_flattened_config() -> None:
    params = params_of({"model": {"variant": "vits14", "input_size": [224, 224]}, "perf": {"batch": 8, "shape": None}})
    assert params == {
        "model.variant": "vits14",
        "model.input_size": "[224, 224]",
        "perf.batch": "8",
        "perf.shape": "null",
    }


def test_metrics_are_measurements_only_with_headline_names_first() -> None:
    result = {
        "schema_version": 1, "status": "ok", "duration_s": 2.5, "config": {"perf": {"batch": 8}},
        "environment": {"cpu_count": 2},
        "build": {"cache_hit": True, "time_s": 1.0, "manifest": {"key_fields": {"opset": 18}, "schema_version": 1},
                  "parity": {"min_cosine": 0.99, "threshold_min_cosine": 0.9, "passed": True}},
        "perf": {"throughput_qps": 12.5, "batch": 8, "instances": 1, "latency_us": {"e2e": {"p99": None, "p50": 3000.0}},
                 "validity": {"valid": True}, "window_throughput_qps": [1.0, 2.0], "repeats": [{"throughput_qps": 11.0}]},
        "accuracy": {"crop_queries": False, "images": 16, "medium": {"map": 50.0, "mp1": 100.0}},
    }  # fmt: skip
    metrics = metrics_of(result)
    assert list(metrics)[:4] == ["throughput_qps", "e2e_latency_p50_ms", "map_medium", "parity_min_cos"]
    assert metrics == {
        "throughput_qps": [12.5], "e2e_latency_p50_ms": [3.0], "map_medium": [50.0], "parity_min_cos": [0.99],
        "duration_s": [2.5], "build.time_s": [1.0], "build.parity.min_cosine": [0.99], "perf.throughput_qps": [12.5],
        "perf.latency_us.e2e.p50": [3000.0], "perf.window_throughput_qps": [1.0, 2.0],
        "accuracy.medium.map": [50.0], "accuracy.medium.mp1": [100.0],
    }  # fmt: skip
    tags = tags_of({**result, "run_uid": "u", "run_dir": "/r", "stages": []})
    assert (tags["harness.perf_valid"], tags["harness.parity_passed"], tags["harness.cache_hit"]) == ("true",) * 3


def test_tags_identify_code_machine_config_and_weights() -> None:
    result = {
        "run_uid": "abc", "status": "failed", "run_dir": "/r", "stages": ["build"], "config": {"a": 1},
        "environment": {"host": "h", "cpu_model": "cpu", "hardware_fingerprint": "f", "libraries": {"torch": "2.13"},
                        "git": {"commit": "c0ffee", "dirty": True}},
        "weights": {"kind": "random"}, "error": {"type": "ConfigError", "message": "bad"},
    }  # fmt: skip
    tags = tags_of(result)
    assert tags["harness.run_uid"] == "abc" and tags["harness.weights_kind"] == "random"
    assert tags["git.commit"] == "c0ffee" and tags["git.dirty"] == "true" and tags["version.torch"] == "2.13"
    assert len(tags["harness.config_hash"]) == 12 and "ConfigError" in tags["harness.error"]
    result["environment"]["git"] = {"commit": None, "dirty": None}  # type: ignore[index]
    assert (tags_of(result)["git.commit"], tags_of(result)["git.dirty"]) == ("unknown", "unknown")  # was "none"
    assert "harness.rerun_of" not in tags
    assert tags_of({**result, "config": {"a": 1, "rerun_of": "0f1e"}})["harness.rerun_of"] == "0f1e"


def test_a_run_measured_beside_other_work_is_tagged_so() -> None:
    result = {"run_uid": "abc", "status": "ok", "run_dir": "/r", "config": {}, "environment": {}}
    quiet = {"host": {"other_cpu_pct": 0.4, "steal_pct": 0.0}}
    busy = {"host": {"other_cpu_pct": 26.3, "steal_pct": None}}  # steal unknown off a VM
    tagged = tags_of({**result, "perf": {**quiet, "repeats": [quiet, busy, quiet]}})
    assert tagged["harness.beside_other_work"] == (
        "measured beside other work (other processes up to 26% of the CPU in a repeat)"
    )
    # The numbers behind it, which `harness gate --promote` judges against its own limit.
    assert json.loads(tagged["harness.other_work_pct"]) == {"other processes": 26.3, "hypervisor steal": 0.0}
    assert "harness.beside_other_work" not in tags_of({**result, "perf": {**quiet, "repeats": [quiet, quiet]}})
    assert "harness.beside_other_work" not in tags_of({**result, "perf": {"throughput_qps": 1.0}})  # an older result


def test_the_config_hash_ignores_where_a_run_is_kept_but_not_what_it_measured() -> None:
    base = {"model": {"variant": "vits14"}, "perf": {"batch": 8}, "paths": {"outputs": "/a"}, "tracking": {"uri": None},
            "dataset": {"name": "synthetic", "root": "/data"}, "stages": ["build", "perf"]}  # fmt: skip
    moved = {**base, "paths": {"outputs": "/b"}, "tracking": {"uri": "http://x"}, "stages": ["perf"],
             "dataset": {"name": "synthetic", "root": "/elsewhere"}, "rerun_of": "0f1e"}  # fmt: skip
    assert config_hash(base) == config_hash(moved)
    assert config_hash(base) != config_hash({**base, "perf": {"batch": 16}})
    assert base["paths"] == {"outputs": "/a"}  # the caller's mapping is left as it was


def recorded_config(tmp_path: Path, *overrides: str) -> dict[str, object]:
    """The config as ``result.json`` records it."""
    return json.loads(json.dumps(dataclasses.asdict(run_config(tmp_path, *overrides).portable())))


def test_settings_a_run_does_not_use_are_hashed_at_their_unset_values(tmp_path: Path) -> None:
    # A sweep `-m precision=fp32,int8 calibration.images=64` hashed its fp32 job apart from every default fp32 run,
    # so a baseline promoted from one paired with neither (the calibration set is static int8's alone); the same
    # for `-m precision=fp32,fp16 build.io_dtype=native`.
    def hashed(*overrides: str) -> tuple[str, dict[str, str]]:
        config = recorded_config(tmp_path, *overrides)
        return config_hash(config), identity_of_params(params_of(config))

    for precision in ("fp32", "fp16", "int8_dynamic"):
        default = hashed(f"precision={precision}")
        assert hashed(f"precision={precision}", "calibration.images=64", "calibration.method=entropy") == default
    static = hashed("precision=int8")
    assert hashed("precision=int8", "calibration.images=64")[0] != static[0]
    assert hashed("precision=int8", "calibration.method=entropy")[0] != static[0]
    # The percentile is read by method=percentile only.
    assert hashed("precision=int8", "calibration.percentile=99.9") == static
    percentile = hashed("precision=int8", "calibration.method=percentile")
    assert hashed("precision=int8", "calibration.method=percentile", "calibration.percentile=99.9")[0] != percentile[0]
    # The I/O dtype is ONNX Runtime's fp16 build's alone.
    for overrides in (("precision=fp32",), ("precision=int8",), ("precision=fp16", "backend=torch")):
        assert hashed(*overrides, "build.io_dtype=native") == hashed(*overrides)
    assert hashed("precision=fp16", "build.io_dtype=native")[0] != hashed("precision=fp16")[0]
    # An fp32 run has no fp32 build to compare its features with.
    assert hashed("precision=fp32", "accuracy.compare_fp32=false") == hashed("precision=fp32")
    assert hashed("precision=fp16", "accuracy.compare_fp32=false")[0] != hashed("precision=fp16")[0]
    # perf.stability's rule, not the minimums, decides how long a run measures.
    stable = ("perf.stability=true", "perf.iterations=1024", "perf.min_duration_s=1.0", "perf.min_samples=64")
    assert hashed(*stable, "perf.iterations=16", "perf.min_duration_s=30", "perf.min_samples=1") == hashed(*stable)
    assert hashed("perf.min_duration_s=30")[0] != hashed("perf.min_duration_s=1.0")[0]
    # The vendor profiler has no flag for a warm-up.
    vendor = ("backend=vastai", "precision=fp16")
    assert hashed(*vendor, "perf.warmup=1") == hashed(*vendor, "perf.warmup=8") == hashed(*vendor, "perf.warmup=50")
    assert hashed("perf.warmup=1")[0] != hashed("perf.warmup=8")[0]
    # Where a tool or cache is, and what bounds or forces the work: a forced rebuild, the timeouts, the places.
    assert hashed("build.force=true", "perf.start_timeout_s=60") == hashed()
    tensorrt = "backend.providers=[TensorrtExecutionProvider,CPUExecutionProvider]"
    assert hashed(tensorrt, "backend.trt_engine_cache=/fast/trt") == hashed(tensorrt)
    timeouts = ("backend.compile_timeout_s=60", "backend.profile_timeout_s=30", "backend.vamp=/opt/vastai/bin/vamp")
    assert hashed(*vendor, *timeouts, "build.force=true") == hashed(*vendor)
    # An MLflow baseline's params say the same as the hashed config.
    for overrides in (("precision=fp16", "calibration.seed=7"), ("precision=int8", "calibration.percentile=99.9"),
                      ("precision=fp32", "build.io_dtype=native"), ("precision=fp16", "build.io_dtype=native"),
                      ("perf.stability=true",), ("perf.stability=false",), (*vendor, "perf.warmup=3"),
                      (*vendor, *timeouts, "build.force=true")):  # fmt: skip
        config = recorded_config(tmp_path, *overrides)
        assert identity_of_params(params_of(config)) == identity_params(config)


def test_the_unset_values_of_settings_some_runs_use_are_the_run_configs_defaults(tmp_path: Path) -> None:
    from harness.config.schema import UNMEASURED_SETTINGS_UNSET

    defaults: dict[str, str] = {}
    for backend in ("onnxruntime", "vastai"):  # no debug preset: conf/'s own defaults
        config = resolve_config(compose([f"paths.cache={tmp_path}", f"backend={backend}", "precision=fp16"]))
        defaults |= params_of(json.loads(json.dumps(dataclasses.asdict(config.portable()))))
    assert {key: defaults[key] for key in UNMEASURED_SETTINGS_UNSET} == params_of(UNMEASURED_SETTINGS_UNSET)


def test_a_cuda_run_is_tagged_with_its_device_driver_cuda_and_clocks_and_logs_its_telemetry() -> None:
    resolved = {
        "device": "cuda:0", "device_name": "NVIDIA H100 80GB HBM3", "driver": "570.86.15", "cuda": "12.8",
        "sm_clock_max_mhz": 1980, "memory_clock_max_mhz": 2619,
    }  # fmt: skip
    perf = {
        "backend_resolved": resolved, "throughput_qps": 2800.0,
        "telemetry": {"ai_utilize_pct": 97.0, "card_power_w": 650.0, "images_per_joule": 4.3, "source": "nvml"},
        "transfer_us": {"h2d": {"avg": 1200.0}, "d2h": {"avg": 15.0}}, "device_queue": 2, "queue_depth": 4,
    }  # fmt: skip
    result = {"run_uid": "u", "status": "ok", "run_dir": "/r", "stages": ["perf"], "config": {}, "perf": perf}
    tags = tags_of(result)
    assert tags["hardware.gpu"] == "NVIDIA H100 80GB HBM3" and tags["hardware.gpu_driver"] == "570.86.15"
    assert tags["hardware.cuda"] == "12.8" and tags["hardware.gpu_max_clocks_mhz"] == "sm 1980, memory 2619"
    metrics = metrics_of(result)
    assert metrics["ai_utilize_pct"] == [97.0] and metrics["images_per_joule"] == [4.3]
    assert metrics["perf.transfer_us.h2d.avg"] == [1200.0] and metrics["perf.transfer_us.d2h.avg"] == [15.0]
    assert metrics["perf.device_queue"] == [2] and "perf.queue_depth" not in metrics  # an outcome, and a setting
    # A CPU run has none of these tags, rather than empty ones.
    cpu = tags_of({**result, "perf": {"backend_resolved": {"device": "cpu"}}})
    assert cpu["hardware.gpu"] == "none" and "hardware.gpu_driver" not in cpu and "hardware.cuda" not in cpu


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql://me:s3cret@db:5432/mlflow", "postgresql://me:***@db:5432/mlflow"),
        ("mysql://u:p%40ss@h/db and https://a:b@c/", "mysql://u:***@h/db and https://a:***@c/"),
        ("tracking.uri=http\\://me\\:s3cret@127.0.0.1\\:5000", "tracking.uri=http\\://me\\:***@127.0.0.1\\:5000"),
        ("sqlite:////data/a:b@c/mlflow.db", "sqlite:////data/a:b@c/mlflow.db"),  # no user info: a path
        ("http://me@host:5000", "http://me@host:5000"),  # a user, no password
    ],
)
def test_passwords_in_urls_are_masked_and_nothing_else(text: str, shown: str) -> None:
    assert masked(text) == shown


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is not None, reason="the PostgreSQL driver is installed")
def test_a_database_store_without_its_driver_says_which_to_install(tmp_path: Path) -> None:
    # It said "No module named 'psycopg'", with the password of the URI beside it.
    tracking = run_config(tmp_path).tracking
    with pytest.raises(TrackingError) as refused:
        StoreClient("postgresql://me:s3cret@127.0.0.1:1/db", tracking)
    assert str(refused.value) == (
        "tracking store postgresql://me:***@127.0.0.1:1/db: its database driver is not installed (no Python module "
        "'psycopg': pip install 'psycopg[binary]'), or log through an MLflow tracking server (tracking.uri=http://...)"
    )
