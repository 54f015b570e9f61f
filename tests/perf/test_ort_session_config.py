"""ONNX Runtime's session config entries: from the command line into the session the perf workers time and the one
that times the GEMMs alone, refused when the installed runtime reads no such key (it would ignore it without a
word), and out of the config hash while unset, so that baselines measured before the setting existed still match.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from harness.backends import LoadTarget
from harness.backends.onnxruntime_backend import OrtBackend, check_session_config, session_config_keys
from harness.config.store import compose
from harness.errors import ConfigError
from harness.pipeline import run
from harness.report import setting_cells, swept_settings
from harness.resolve import resolve_config
from harness.result import RunResult
from harness.tracking.records import config_hash, identity_of_params, identity_params, params_of
from tests.conftest import run_config
from tests.export.test_onnx_build import build
from tests.perf.test_loadgen import measure

NO_SPINNING = "backend.session_config={session.intra_op.allow_spinning:0,session.intra_op.spin_duration_us:'250'}"


def test_entries_reach_the_timed_session_and_the_gemm_timing(cache_dir: Path, tmp_path: Path) -> None:
    config = run_config(cache_dir, "stages=[build,perf]", "perf.iterations=20", "perf.min_samples=20", NO_SPINNING)
    # As a shell passes them: a number unquoted, a string quoted; ONNX Runtime takes strings.
    assert config.backend.session_config == {
        "session.intra_op.allow_spinning": 0,
        "session.intra_op.spin_duration_us": "250",
    }
    artifact = build(config).artifact_path
    backend = OrtBackend(config.backend)
    backend.load(LoadTarget(artifact_path=artifact, model=config.model, precision="fp32", cache_dir=str(cache_dir)))
    options = backend.session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert options.get_session_config_entry("session.intra_op.spin_duration_us") == "250"
    entries = "session.intra_op.allow_spinning=0, session.intra_op.spin_duration_us=250"
    result = measure(config, tmp_path / "entries", artifact)
    assert result.backend_resolved["runs"] == f"CPUExecutionProvider ({entries})"
    assert result.efficiency is not None and result.efficiency.runtime.endswith(f"float32, {entries}")
    # The GEMMs alone are timed with the same entries, and cached apart from a timing without them.
    plain = measure(run_config(cache_dir, "stages=[build,perf]", "perf.iterations=20", "perf.min_samples=20"),
                    tmp_path / "plain", artifact)  # fmt: skip
    assert plain.backend_resolved["runs"] == "CPUExecutionProvider"
    assert plain.efficiency is not None and plain.efficiency.runtime.endswith("float32")
    assert len(list((cache_dir / "gemm").iterdir())) == 2


def test_a_key_the_runtime_does_not_read_is_refused_with_the_closest_it_does(cache_dir: Path) -> None:
    keys = session_config_keys()
    assert {"session.intra_op.allow_spinning", "session.set_denormal_as_zero", "session.use_env_allocators"} <= set(
        keys
    )
    assert all(key.startswith(("session.", "optimization.", "ep.", "mlas.")) for key in keys)
    with pytest.raises(ConfigError) as refused:
        OrtBackend(
            run_config(cache_dir, "backend.session_config={session.intra_op.allow_spining:0}").backend
        ).check_environment()
    assert str(refused.value).startswith("backend.session_config: onnxruntime ")
    assert str(refused.value).endswith(
        "reads no session config key 'session.intra_op.allow_spining'; did you mean 'session.intra_op.allow_spinning'? "
        "(it would ignore it without a word)"
    )
    with pytest.raises(ConfigError, match=r"reads no session config key 'color'\ \(it would"):
        check_session_config(["color"], "1.32.0")
    # The tail of a key the runtime holds is not a key.
    with pytest.raises(
        ConfigError, match=r"key 'intra_op.allow_spinning'; did you mean 'session.intra_op.allow_spinning'"
    ):
        check_session_config(["intra_op.allow_spinning"], "1.32.0")
    check_session_config(list(keys), "1.32.0")  # every key found is taken
    # A boolean would reach ONNX Runtime as 'True', which its switches (0 or 1) do not read.
    with pytest.raises(ConfigError, match=r"^backend.session_config.session.intra_op.allow_spinning=true: expected"):
        run_config(cache_dir, "backend.session_config={session.intra_op.allow_spinning:true}")


def test_an_unset_session_config_leaves_the_config_hash_of_earlier_runs(cache_dir: Path) -> None:
    current = compose(["debug=tiny", f"paths.cache={cache_dir}"])
    assert current["backend"]["session_config"] is None
    earlier = copy.deepcopy(current)
    del earlier["backend"]["session_config"]  # a result.json written before the setting existed
    empty = copy.deepcopy(current)
    empty["backend"]["session_config"] = {}
    assert config_hash(current) == config_hash(earlier) == config_hash(empty)
    assert config_hash(compose(["debug=tiny", NO_SPINNING])) != config_hash(current)
    # A baseline read back from MLflow's params is told apart from a candidate by the same settings.
    for config in (current, empty, compose(["debug=tiny", NO_SPINNING]), compose(["debug=tiny", "backend=sleep"])):
        assert identity_of_params(params_of(config)) == identity_params(config)
    assert "backend.session_config.session.intra_op.allow_spinning" in identity_params(
        compose(["debug=tiny", NO_SPINNING])
    )
    # Measured again (harness gate --rerun resolves the saved config), the earlier run runs as it ran.
    assert resolve_config(earlier) == resolve_config(current)
    assert resolve_config(earlier).backend.session_config is None
    sleep = compose(["debug=tiny", "backend=sleep"])
    assert "session_config" not in sleep["backend"] and resolve_config(sleep).backend.name == "sleep"


def test_a_report_shows_the_entries_as_one_setting_and_unset_as_before(cache_dir: Path, tmp_path: Path) -> None:
    build_only = ["debug=tiny", "stages=[build]", "tracking=off", f"paths.cache={cache_dir}"]
    plain = run(compose(build_only), run_dir=tmp_path / "plain")
    entries = run(compose([*build_only, "backend.session_config={session.intra_op.allow_spinning:0}"]),
                  run_dir=tmp_path / "entries")  # fmt: skip
    assert swept_settings([plain, entries]) == ["backend.session_config"]  # one column, not one per key
    assert [setting_cells(result, ["backend.session_config"]) for result in (plain, entries)] == [
        {"backend.session_config": ""}, {"backend.session_config": '{"session.intra_op.allow_spinning": 0}'}
    ]  # fmt: skip
    # A result written before the setting existed does not differ from one that leaves it unset.
    saved = json.loads((tmp_path / "plain" / "result.json").read_text())
    del saved["config"]["backend"]["session_config"]
    assert swept_settings([RunResult.from_dict(saved), plain]) == []
