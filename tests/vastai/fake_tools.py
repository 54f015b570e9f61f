"""Test doubles of the VastAI tools, run as ``vamc`` / ``vamp`` executables (see ``conftest.py``).

They record their arguments (one JSON line per call in ``$FAKE_VASTAI_LOG``) and behave as far as the harness
can observe: ``vamc compile`` checks the build YAML's structure and writes the files it promises; ``vamp``
prints a real vamp output fixture (``$FAKE_VAMP_FIXTURE``) for a perf run, and for a ``--datalist`` run reads
each image npz, preprocesses it as the ``--vdsp_params`` say and runs the compiled model's ONNX checkpoint
in ONNX Runtime, writing one ``<name>.npz`` output per image: real outputs, so accuracy and parity are real.
``$FAKE_VASTAI_FAULT`` rehearses a broken tool: ``vamc-exit``, ``vamc-missing-file``; for perf runs
``vamp-exit``, ``vamp-hang``, ``vamp-garbage``; for datalist runs ``vamp-no-outputs``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "vastai"
COMPILED_FILES = ("mod.so", "mod.json", "mod.params")


def _record(tool: str, argv: list[str]) -> None:
    log = os.environ.get("FAKE_VASTAI_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(json.dumps({"tool": tool, "argv": argv}) + "\n")


def _fail(message: str, status: int = 1) -> None:
    print(message, file=sys.stderr)
    sys.exit(status)


def vamc(argv: list[str]) -> None:
    fault = os.environ.get("FAKE_VASTAI_FAULT", "")
    if argv == ["--version"]:
        print("vamc 3.1.0 (harness test double)")
        return
    if len(argv) != 2 or argv[0] != "compile":
        _fail("usage: vamc compile <build.yaml>", 2)
    spec = yaml.safe_load(Path(argv[1]).read_text())
    ((input_name, shape),) = spec["frontend"]["shape"].items()
    assert spec["frontend"]["type"] == "onnx" and spec["frontend"]["dtype"] == "fp32", spec["frontend"]
    assert Path(spec["frontend"]["checkpoint"]).is_file(), spec["frontend"]["checkpoint"]
    assert len(shape) == 4 and spec["backend"]["type"] == "tvm_vacc", spec
    print(f"compiling {spec['name']}: {input_name} {shape} -> {spec['backend']['dtype']}")
    if fault == "vamc-exit":
        _fail("vacc error: unsupported operator LayerNormalization in subgraph 3", 3)
    folder = Path(spec["workspace"]["path"]) / spec["name"]
    folder.mkdir(parents=True, exist_ok=True)
    for name in COMPILED_FILES[:-1] if fault == "vamc-missing-file" else COMPILED_FILES:
        (folder / name).write_bytes(b"compiled by the test double\n")
    model = {"checkpoint": spec["frontend"]["checkpoint"], "input": input_name, "shape": shape}
    (folder / "mod.json").write_text(json.dumps(model))
    print("compile done")


def _run_datalist(args: argparse.Namespace) -> None:
    import onnxruntime
    from PIL import Image

    from harness.vdsp import load_vdsp, preprocess

    model = json.loads(Path(f"{args.m}.json").read_text())
    params = load_vdsp(Path(args.vdsp_params))
    session = onnxruntime.InferenceSession(model["checkpoint"], providers=["CPUExecutionProvider"])
    paths = [Path(line) for line in Path(args.datalist).read_text().splitlines() if line]
    output = Path(args.path_output)
    output.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(paths), args.b):
        chunk = paths[start : start + args.b]
        inputs = []
        for path in chunk:
            with np.load(path) as loaded:
                planar = loaded[loaded.files[0]]
            assert planar.dtype == np.uint8 and planar.shape[0] == 3, (path, planar.dtype, planar.shape)
            inputs.append(preprocess(Image.fromarray(planar.transpose(1, 2, 0)), params))
        (features,) = session.run(None, {model["input"]: np.stack(inputs)})
        for path, row in zip(chunk, features, strict=True):
            np.savez(output / f"{path.stem}.npz", output_0=row.astype(np.float16))
    print(f"{len(paths)} outputs written to {output}")


def vamp(argv: list[str]) -> None:
    fault = os.environ.get("FAKE_VASTAI_FAULT", "")
    if argv == ["--version"]:
        print("vamp 2.5.2 (harness test double)")
        return
    parser = argparse.ArgumentParser(prog="vamp")
    for flag in ("-m", "--vdsp_params", "-s", "-d", "--datalist", "--path_output", "--percentiles", "-t"):
        parser.add_argument(flag)
    for flag in ("-i", "-p", "-b", "--iterations", "--forward_mode"):
        parser.add_argument(flag, type=int)
    args = parser.parse_args(argv)
    if not Path(f"{args.m}.json").is_file():
        _fail(f"failed to load model {args.m}")
    if args.p > args.i:
        _fail(f"process count {args.p} exceeds instance count {args.i}")
    if args.datalist:
        if fault == "vamp-no-outputs":
            print("0 outputs written")
            return
        _run_datalist(args)
        return
    if fault == "vamp-exit":
        _fail("vacc runtime error: device 0 not found", 4)
    if fault == "vamp-hang":
        time.sleep(3600)
    if fault == "vamp-garbage":
        print("Segmentation fault (core dumped)")
        return
    print((FIXTURES / os.environ.get("FAKE_VAMP_FIXTURE", "vamp-2.5.2-manual.txt")).read_text(), end="")


if __name__ == "__main__":
    tool, *rest = sys.argv[1:]
    _record(tool, rest)
    {"vamc": vamc, "vamp": vamp}[tool](rest)
