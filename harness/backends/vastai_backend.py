"""The VastAI toolchain: ``vamc compile`` builds the device model, ``vamp`` times it and runs images through it.

Formats and options: ``docs/vastai.md`` (from the vendor's model zoo READMEs and real tool outputs kept in
``tests/fixtures/vastai/``). The build spec follows the zoo's DINOv2 recipe (``official_dinov2.yaml``): the
checkpoint is the harness's verified fp32 ONNX build and ``backend.dtype`` does the reduction on the device.
"""

from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import yaml

from harness.backends import CompiledModel, ProfileLoad, register_backend
from harness.errors import BackendUnavailable, BuildError, ConfigError, DataError, HarnessError, ToolError, counted
from harness.fileio import write_text_atomic
from harness.processes import ToolRun, exit_description, run_tool

INSTALL_HINT = (
    "install the VastAI toolchain (the vendor's vamc compiler and vamp profiler, with the card's driver) and put "
    "them on PATH, or set backend.vamc / backend.vamp to their paths"
)
VERSION_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class VastaiConfig:
    """``backend=vastai`` (defaults and notes in ``conf/backend/vastai.yaml``; formats in ``docs/vastai.md``).

    Attributes:
        vamc, vamp: the tools' paths; ``None`` finds them on PATH.
        device_ids: cards vamp runs on (``-d``).
        precisions: what the toolchain builds for this model (the zoo's DINOv2 recipe: fp16 only).
        backend_type: ``backend.type`` of the build spec (``tvm_vacc``).
        compile_options: ``backend.compile`` of the build spec, verbatim.
        compiled_files: the files ``vamc compile`` promises under the model prefix (``mod`` + suffix).
        percentiles: latency percentiles vamp prints (``--percentiles``).
        input_key: the array name of each image npz vamp reads from a datalist.
        compile_timeout_s, profile_timeout_s: a tool still running after this is killed and the run fails.
    """

    # Its tools compile and run the build stage's fp32 ONNX artifact.
    loads_artifact: ClassVar[bool] = True

    name: Literal["vastai"]
    vamc: str | None
    vamp: str | None
    device_ids: tuple[int, ...]
    precisions: tuple[str, ...]
    backend_type: str
    compile_options: dict[str, Any]
    compiled_files: tuple[str, ...]
    percentiles: tuple[int, ...]
    input_key: str
    compile_timeout_s: float
    profile_timeout_s: float

    def __post_init__(self) -> None:
        if not self.device_ids:
            raise ConfigError("backend.device_ids=[]: expected at least one card")
        if not self.precisions:
            raise ConfigError("backend.precisions=[]: expected what the toolchain builds (the recipe: [fp16])")
        if any(not 0 < p < 100 for p in self.percentiles):
            raise ConfigError(f"backend.percentiles={list(self.percentiles)}: expected values in (0, 100)")
        if self.compile_timeout_s <= 0 or self.profile_timeout_s <= 0:
            raise ConfigError("backend.compile_timeout_s / profile_timeout_s: expected > 0")


@functools.cache
def _tool_version(path: str) -> str:
    """The ``--version`` first line of the tool at ``path``, asked once per process (build and perf both
    record it; the tool does not change under a running harness)."""
    run = run_tool([path, "--version"], timeout_s=VERSION_TIMEOUT_S)
    lines = run.output.strip().splitlines()
    return lines[0] if run.returncode == 0 and lines else f"unknown (--version exit {run.returncode})"


def _listed(values: Iterable[int]) -> str:
    """vamp's list syntax: ``[3,224,224]``."""
    return "[" + ",".join(str(value) for value in values) + "]"


@register_backend("vastai", config=VastaiConfig, toolchain=True)
class VastaiToolchain:
    """``vamc`` and ``vamp`` driven as the zoo's recipe drives them, with every option from the run's config."""

    def __init__(self, config: VastaiConfig) -> None:
        self.config = config
        self.precisions = config.precisions

    def _tool(self, name: Literal["vamc", "vamp"]) -> str:
        configured = getattr(self.config, name)
        found = shutil.which(configured or name)
        if found is None:
            where = f"backend.{name}={configured}: not an executable" if configured else f"{name} is not on PATH"
            raise BackendUnavailable(f"{where}: {INSTALL_HINT}")
        return found

    def check_environment(self) -> dict[str, object]:
        return {"vamc": self._tool("vamc"), "vamp": self._tool("vamp"), "device": self.device}

    @property
    def device(self) -> str:
        return "vastai:" + ",".join(str(device) for device in self.config.device_ids)

    def versions(self) -> dict[str, str]:
        """Each tool's ``--version`` first line (``unknown (...)`` when it has none)."""
        return {name: _tool_version(self._tool(name)) for name in ("vamc", "vamp")}  # type: ignore[arg-type]

    def build_spec(
        self, onnx_path: Path, *, name: str, input_name: str, batch: int, shape: tuple[int, int, int],
        precision: str, workspace: Path,
    ) -> dict[str, Any]:  # fmt: skip
        """The ``vamc compile`` YAML as a mapping, laid out as the zoo's ``official_dinov2.yaml``."""
        return {
            "name": name,
            "frontend": {
                "shape": {input_name: [batch, *shape]},
                "type": "onnx",
                "checkpoint": str(onnx_path),
                "dtype": "fp32",
            },
            "backend": {
                "type": self.config.backend_type,
                "dtype": precision,
                "compile": dict(self.config.compile_options),
            },
            "workspace": {"path": str(workspace)},
        }

    def compile(
        self, onnx_path: Path, *, name: str, input_name: str, batch: int, shape: tuple[int, int, int],
        precision: str, workspace: Path, progress: bool,
    ) -> CompiledModel:  # fmt: skip
        spec = self.build_spec(
            onnx_path, name=name, input_name=input_name, batch=batch, shape=shape, precision=precision,
            workspace=workspace,
        )  # fmt: skip
        spec_path = workspace / f"{name}.yaml"
        write_text_atomic(spec_path, yaml.safe_dump(spec, sort_keys=False))
        run = run_tool(
            [self._tool("vamc"), "compile", str(spec_path)], timeout_s=self.config.compile_timeout_s,
            progress=f"vamc compile {name}" if progress else None,
        )  # fmt: skip
        _check_run(run, "vamc compile", self.config.compile_timeout_s, "backend.compile_timeout_s", BuildError)
        prefix = workspace / name / "mod"
        files = tuple(prefix.parent / file for file in self.config.compiled_files)
        missing = [str(path) for path in files if not path.is_file()]
        if missing:
            raise BuildError(
                f"vamc compile exited 0 but did not write {missing} (backend.compiled_files)", details=run.tail()
            )
        return CompiledModel(prefix=prefix, spec=spec, run=run)

    def profile_argv(self, prefix: Path, load: ProfileLoad, *, vdsp_params: Path) -> list[str]:
        """vamp's command line for ``load`` (``-p`` always given: the zoo README's ``p 1`` lacks its dash)."""
        argv = [
            self._tool("vamp"), "-m", str(prefix), "--vdsp_params", str(vdsp_params),
            "-i", str(load.instances), "-p", str(load.processes), "-b", str(load.batch), "-s", _listed(load.shape),
            "-d", ",".join(str(device) for device in self.config.device_ids),
        ]  # fmt: skip
        if load.iterations is not None:
            # vamp counts --iterations in samples (10240 gives "samples: 10240" at -b 8); perf.iterations is batches.
            argv += ["--iterations", str(load.iterations * load.batch)]
        if load.min_duration_s > 0:
            argv += ["-t", f"{load.min_duration_s:g}"]
        argv += [
            "--forward_mode",
            "1" if load.mode == "sync" else "0",
            "--percentiles",
            _listed(self.config.percentiles),
        ]
        return argv

    def profile(self, prefix: Path, load: ProfileLoad, *, vdsp_params: Path, output: Path, progress: bool) -> ToolRun:
        shown = f"vamp b{load.batch} i{load.instances} p{load.processes} {load.mode}"
        run = run_tool(
            self.profile_argv(prefix, load, vdsp_params=vdsp_params), timeout_s=self.config.profile_timeout_s,
            progress=shown if progress else None,
        )  # fmt: skip
        write_text_atomic(output, run.output)
        _check_run(run, "vamp", self.config.profile_timeout_s, "backend.profile_timeout_s", ToolError)
        return run

    def run_images(
        self, prefix: Path, images: Iterable[tuple[str, np.ndarray]], *, vdsp_params: Path, workdir: Path, batch: int,
        progress: bool,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        """Each image written as one npz (``backend.input_key``), listed in a datalist, run with
        ``--path_output``; the first array of each ``<name>.npz`` vamp writes is that image's output (read as
        ``harness eval-features --folder`` reads them). The inputs are removed once vamp has run on them."""
        inputs, outputs = workdir / "inputs", workdir / "outputs"
        for folder in (inputs, outputs):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        names: list[str] = []
        shape: tuple[int, ...] | None = None
        for name, image in images:
            if os.sep in name or name.startswith("."):
                raise DataError(f"image name {name!r}: expected a plain file name for vamp's datalist")
            arrays: dict[str, Any] = {self.config.input_key: image}
            np.savez(inputs / f"{name}.npz", **arrays)
            names.append(name)
            shape = image.shape
        if shape is None:
            raise DataError("no image to run through vamp")
        datalist = workdir / "datalist.txt"
        write_text_atomic(datalist, "".join(f"{inputs / name}.npz\n" for name in names))
        argv = [
            self._tool("vamp"), "-m", str(prefix), "--vdsp_params", str(vdsp_params), "-i", "1", "-p", "1",
            "-b", str(batch), "-s", _listed(shape), "-d", str(self.config.device_ids[0]),
            "--datalist", str(datalist), "--path_output", str(outputs),
        ]  # fmt: skip
        shown = f"vamp --datalist, {counted(len(names), 'image')}"
        run = run_tool(argv, timeout_s=self.config.profile_timeout_s, progress=shown if progress else None)
        write_text_atomic(workdir / "vamp_output.txt", run.output)
        _check_run(run, "vamp --datalist", self.config.profile_timeout_s, "backend.profile_timeout_s", ToolError)
        missing = [name for name in names if not (outputs / f"{name}.npz").is_file()]
        if missing:
            raise ToolError(
                f"vamp --path_output {outputs}: no output for {len(missing)} of {counted(len(names), 'image')}, "
                f"e.g. {missing[:3]}",
                details=run.tail(),
            )
        # The decoded inputs are the bulk (150 kB an image at 224x224); vamp's outputs and log stay.
        shutil.rmtree(inputs)
        found = {}
        for name in names:
            try:
                with np.load(outputs / f"{name}.npz", allow_pickle=False) as loaded:
                    found[name] = np.asarray(loaded[loaded.files[0]], dtype=np.float32).ravel()
            except (OSError, ValueError, IndexError) as error:
                raise ToolError(f"{outputs / name}.npz: cannot read vamp's output ({error})") from None
        return found


def _check_run(run: ToolRun, what: str, timeout_s: float, timeout_key: str, error: type[HarnessError]) -> None:
    """Raise ``error`` with the tool's last lines unless it exited 0 in time."""
    if run.timed_out:
        raise error(f"{what} still running after {timeout_s:g} s ({timeout_key}): killed", details=run.tail())
    if run.returncode != 0:
        raise error(
            f"{what} {exit_description(run.returncode)}; its last lines:\n{run.tail()}", details=run.output[-4000:]
        )
