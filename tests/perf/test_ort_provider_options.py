"""ONNX Runtime's GPU providers as far as a CPU machine can check them: the options each provider is given."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.backends import fp32_reference_backend
from harness.backends.onnxruntime_backend import KNOWN_PROVIDERS, OrtConfig, closest_provider, session_provider_options
from harness.errors import ConfigError
from tests.conftest import run_config
from tests.export.test_onnx_build import build


def ort_config(cache: Path, *overrides: str) -> OrtConfig:
    config = run_config(cache, *overrides).backend
    assert isinstance(config, OrtConfig)
    return config


def test_tensorrt_gets_fp16_and_an_engine_cache_under_the_harness_cache(cache_dir: Path) -> None:
    config = ort_config(
        cache_dir, "backend.providers=[TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider]",
        "backend.trt_fp16=true",
    )  # fmt: skip
    tensorrt, cuda, cpu = session_provider_options(config, str(cache_dir))
    assert tensorrt == {
        "trt_fp16_enable": "True", "trt_engine_cache_enable": "True",
        "trt_engine_cache_path": str(cache_dir / "tensorrt"),
    }  # fmt: skip
    assert cuda == {} and cpu == {}
    # the summary's runtime line: IO binding only where a device provider leads (the CPU provider ignores it)
    assert config.runs == (
        "TensorrtExecutionProvider+CUDAExecutionProvider+CPUExecutionProvider, IO binding, TensorRT fp16 engines"
    )
    assert ort_config(cache_dir).runs == "CPUExecutionProvider"


def test_explicit_provider_options_win_and_a_configured_engine_folder_is_used(cache_dir: Path) -> None:
    # As a shell passes them: numbers and booleans unquoted (ONNX Runtime gets every value as a string).
    config = ort_config(
        cache_dir, "backend.providers=[TensorrtExecutionProvider,CUDAExecutionProvider]",
        "backend.provider_options=[{trt_fp16_enable:false,device_id:1},{device_id:'1'}]",
        "backend.trt_fp16=true", "backend.trt_engine_cache=/engines",
    )  # fmt: skip
    assert config.provider_options == ({"trt_fp16_enable": False, "device_id": 1}, {"device_id": "1"})
    tensorrt, cuda = session_provider_options(config, str(cache_dir))
    assert tensorrt == {
        "trt_fp16_enable": "False", "trt_engine_cache_enable": "True", "trt_engine_cache_path": "/engines",
        "device_id": "1",
    }  # fmt: skip
    assert cuda == {"device_id": "1"}


def test_the_fp32_reference_of_a_tensorrt_fp16_session_runs_in_fp32(cache_dir: Path) -> None:
    config = ort_config(
        cache_dir, "backend.providers=[TensorrtExecutionProvider,CUDAExecutionProvider]", "precision=fp16",
        "backend.provider_options=[{trt_fp16_enable:true,device_id:1},{device_id:1}]", "backend.trt_fp16=true",
    )  # fmt: skip
    tensorrt, cuda = session_provider_options(fp32_reference_backend(config), str(cache_dir))
    assert tensorrt["trt_fp16_enable"] == "False" and tensorrt["device_id"] == "1" and cuda == {"device_id": "1"}
    assert fp32_reference_backend(ort_config(cache_dir)) == ort_config(cache_dir)  # the CPU session as it is


def test_the_cpu_provider_is_given_no_options(cache_dir: Path) -> None:
    assert session_provider_options(ort_config(cache_dir), str(cache_dir)) == [{}]
    with pytest.raises(
        ConfigError,
        match=r"backend.trt_fp16: only TensorrtExecutionProvider reads it, and backend.providers=\['CPUExecutionProvider'\]",
    ):
        ort_config(cache_dir, "backend.trt_fp16=true")  # would do nothing: the CPU session stays fp32


def test_options_for_the_cpu_provider_are_refused_since_onnx_runtime_ignores_them(cache_dir: Path) -> None:
    import onnxruntime

    # The premise, on the installed runtime: a session given CPU provider options takes none of them.
    config = run_config(cache_dir, "stages=[build]")
    artifact = build(config).artifact_path
    session = onnxruntime.InferenceSession(
        artifact, providers=["CPUExecutionProvider"], provider_options=[{"device_id": "0", "use_arena": "0"}]
    )
    assert session.get_provider_options() == {"CPUExecutionProvider": {}}
    with pytest.raises(ConfigError) as refused:
        ort_config(cache_dir, "backend.provider_options=[{device_id:0}]")
    assert str(refused.value) == (
        "backend.provider_options: CPUExecutionProvider takes no provider options, and ONNX Runtime ignores "
        "{'device_id': 0} without a word: its settings are backend.intra_op_threads, inter_op_threads, "
        "graph_optimization and session_config ({} holds its place beside other providers' options)"
    )
    beside = ort_config(cache_dir, "backend.providers=[CUDAExecutionProvider,CPUExecutionProvider]",
                        "backend.provider_options=[{device_id:1},{}]")  # fmt: skip
    assert beside.provider_options == ({"device_id": 1}, {})


def test_a_provider_option_that_is_not_a_scalar_is_refused_naming_it(cache_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"backend.provider_options\[0\].device_id=\[0, 1\]: expected"):
        ort_config(cache_dir, "backend.provider_options=[{device_id:[0,1]}]")


@pytest.mark.parametrize(
    ("given", "suggested"),
    [
        ("FooExecutionProvider", None),  # was 'QNNExecutionProvider': every name shares the suffix
        ("cuda", "CUDAExecutionProvider"),
        ("TensorRTExecutionProvider", "TensorrtExecutionProvider"),
        ("OpenVinoExecutionProvider", "OpenVINOExecutionProvider"),
        ("CPUExecutionPovider", "CPUExecutionProvider"),
    ],
)
def test_a_mistyped_provider_is_told_the_closest_known_one(given: str, suggested: str | None) -> None:
    assert closest_provider(given, KNOWN_PROVIDERS) == suggested


def test_a_provider_listed_twice_is_refused(cache_dir: Path) -> None:
    # ONNX Runtime ignored the repeat with a warning: the same session under a config hash of its own.
    with pytest.raises(ConfigError, match=r"CPUExecutionProvider listed more than once$"):
        ort_config(cache_dir, "backend.providers=[CPUExecutionProvider,CPUExecutionProvider]")
