"""Device check: the harness's torch GPU builds on one CUDA device, beside timm's model of the same shape.

One command on the accelerator machine (torch with CUDA and timm; no Hydra, MLflow, psutil or network):

    python3 -m bench.device_check --out device_check.json

1. Parity: fp16 and bf16 features of ViT-S/14-reg4 and ViT-L/14-reg4 on the device against fp32 on the CPU
   (min cosine over 8 seeded inputs; the target is >= 0.999).
2. Perf, per case (ViT-L/14-reg4 at batch 64 and 1, ViT-S/14-reg4 at batch 256; fp16, 224x224, random weights):
   - ``anchor``: timm's model of the same shape + ``torch.compile`` + a CUDA graph, timed in this process;
   - ``timm eager``;
   - the harness's builds through its own torch backend and load generator: ``compile+graph`` (torch.compile
     and one CUDA graph per batch size), ``aoti+graph`` (the AOTInductor package, loaded without recompiling,
     replayed as a CUDA graph), ``eager``; and, only when ``--modes`` names it, ``autotune+graph``
     (``compile_mode=max-autotune-no-cudagraphs``: Inductor autotunes the GEMMs, minutes per batch size).
   Model latency is CUDA events around each call (the harness's ``model`` column), throughput is images over
   the wall time of the measured window; p50 needs 11 samples and p99 662 (the harness's rule), else ``-``.
   Efficiency is the harness's definition: the model's own GEMMs (its matmul shapes at the batch, fp16),
   run alone with ``torch.matmul`` back to back, over the measured mean model time per batch. A GEMM-only time
   longer than a row's whole model (taken, or cached, while the machine was busy) is timed again; a row still
   past it shows ``?`` and says so under the targets, rather than an efficiency over 100%.
   ``host_io sync`` and ``host_io async`` are the eager build fed from pinned host memory, its features
   copied back (as a server is fed): one call at a time, then two queued on the instance, so one call's copies
   overlap the other's compute; throughput counts the copies, the row keeps their median times.
   With NVML (``nvidia-ml-py``) each row also carries the device's readings over its measured window, taken
   by the harness's own sampler: mean utilisation, power and SM clock, and images per joule (absent, not
   zero, without NVML). The first line is the torch backend's own environment check (device, CUDA, compute
   capability, and NVML's driver and clocks), as a run's tags record it.
3. The targets, each judged on numbers measured in this same call.

Compiles cost tens of seconds each, so the rows run in phases, case by case within each (``PHASES``): every
case's uncompiled rows (seconds each), then every case's anchor and ``compile+graph``, then the AOTInductor
packages, then the host I/O rows (no target needs them). A row is listed as skipped, not run, once
``--budget-s`` is spent or when the same mode of the same variant already took longer than what is left, so
the check ends close to its budget with every case measured at least uncompiled and the dearest compiles the
first to go. A row (or a parity) that raises is recorded with
its error, its traceback goes to stderr, and the check goes on to the next; the exit status is then 1. The
table is printed as rows finish, then again in case order. The JSON is rewritten after every row, so a check
killed from outside keeps what it measured.
A CPU rehearsal (what the test suite runs): ``--device cpu --cases tiny14_reg4:2 --modes eager --seconds 0.2``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.device_report import HEADER, Report, print_row, verdicts
from harness.backends import BackendFactory, LoadTarget
from harness.backends.torch_backend import TorchBackend, capture_cuda_graph, torch_dtype
from harness.backends.torch_config import CompileMode, TorchConfig
from harness.config.schema import ModelConfig, Precision
from harness.export.aoti_package import compile_package
from harness.models.variants import get_variant
from harness.models.weights import load_backbone
from harness.nvml import NvmlSampler, device_telemetry
from harness.perf.efficiency import EFFICIENCY_CEILING, GEMM_DTYPES, model_gemms, time_gemms
from harness.perf.loadgen import LoadPlan, WorkerTask, run_instances, startup_heap_frozen
from harness.perf.stats import latency_stats

# timm's names for the DINOv2 register models (architecture only: created without weights).
TIMM_MODELS = {
    "vits14_reg4": "vit_small_patch14_reg4_dinov2",
    "vitb14_reg4": "vit_base_patch14_reg4_dinov2",
    "vitl14_reg4": "vit_large_patch14_reg4_dinov2",
}
INPUT_SIZE = (224, 224)
MODES = (
    "anchor",
    "compile+graph",
    "autotune+graph",
    "aoti+graph",
    "eager",
    "timm eager",
    "host_io sync",
    "host_io async",
)
# ``autotune+graph`` (Inductor's GEMM autotuning: minutes per batch size) only when asked for with ``--modes``.
DEFAULT_MODES = tuple(mode for mode in MODES if mode != "autotune+graph")
# The order rows run in, case by case within each phase: the uncompiled rows (seconds each); then the anchor
# and the harness's torch.compile build, which every target needs; then the dearest compiles, the AOTInductor
# packages (export, Inductor, then a C++ build) and the autotuned compile when asked for, which the budget may
# cut without leaving a target unmeasured; last the host I/O rows, which no target needs.
PHASES = (
    ("eager", "timm eager"),
    ("anchor", "compile+graph"),
    ("aoti+graph", "autotune+graph"),
    ("host_io sync", "host_io async"),
)
WARMUP_CALLS = 10


@dataclass(frozen=True)
class Case:
    variant: str
    batch: int

    @property
    def label(self) -> str:
        return f"{self.variant} b{self.batch}"


def cosine_min(left: np.ndarray, right: np.ndarray) -> float:
    left64, right64 = left.astype(np.float64), right.astype(np.float64)
    cosines = np.sum(left64 * right64, axis=1) / (np.linalg.norm(left64, axis=1) * np.linalg.norm(right64, axis=1))
    return float(cosines.min())


def failure(error: BaseException) -> str:
    """The error as the report keeps it; the whole traceback goes to stderr."""
    traceback.print_exception(error, file=sys.stderr)
    return f"{type(error).__name__}: {error}"


def backbone(variant: str, cache: Path) -> torch.nn.Module:
    model, _ = load_backbone(
        get_variant(variant), weights="random", seed=0, cache_dir=cache, input_size=INPUT_SIZE, progress=False
    )
    return model.eval()


def parity(variant: str, device: str, dtypes: list[str], cache: Path) -> dict[str, float | None]:
    """Min cosine of the device's features in each dtype against CPU fp32 features, on 8 seeded inputs."""
    model = backbone(variant, cache)
    inputs = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 3, *INPUT_SIZE), dtype=np.float32))
    with torch.inference_mode():
        reference = model(inputs).numpy()
        found: dict[str, float | None] = {}
        for name in dtypes:
            on_device = copy.deepcopy(model).to(device=device, dtype=torch_dtype(name))
            features = on_device(inputs.to(device=device, dtype=torch_dtype(name))).float().cpu().numpy()
            found[name] = cosine_min(features, reference)
    return found


@contextlib.contextmanager
def nvml_sampled(device: str) -> Iterator[NvmlSampler | None]:
    """NVML sampling of ``device`` while the block runs (``None``: not CUDA, or no NVML)."""
    sampler = NvmlSampler.open(device)
    if sampler is None:
        yield None
        return
    sampler.start(pids=[os.getpid()])
    try:
        yield sampler
    finally:
        sampler.stop()


def with_telemetry(row: dict, sampler: NvmlSampler | None, start: float, end: float) -> dict:
    """``row`` with the device's telemetry over its measured window [start, end] (absent without NVML)."""
    telemetry = None if sampler is None else device_telemetry(
        sampler.samples, start=start, end=end, throughput_qps=row["img_s"]
    )  # fmt: skip
    return row if telemetry is None else {**row, "telemetry": dataclasses.asdict(telemetry)}


def harness_row(
    case: Case,
    backend: TorchConfig,
    precision: Precision,
    seconds: float,
    cache: Path,
    package: Path | None,
    in_flight: int,
) -> dict:
    """One instance of the harness's torch backend driven by its load generator for ``seconds``, with ``in_flight``
    requests outstanding (1: sync)."""
    model = ModelConfig(variant=case.variant, weights="random", seed=0, input_size=INPUT_SIZE)
    target = LoadTarget(
        artifact_path=None if package is None else str(package), model=model, precision=precision, cache_dir=str(cache)
    )
    task = WorkerTask(
        worker=0, instances=(0,), iterations=(1,), factory=BackendFactory(backend, target),
        inputs=np.random.default_rng(0).standard_normal((case.batch, 3, *INPUT_SIZE), dtype=np.float32),
        plan=LoadPlan(
            mode="sync" if in_flight == 1 else "async", queue_depth=in_flight, warmup=WARMUP_CALLS,
            min_duration_s=seconds, max_duration_s=None,
        ),
    )  # fmt: skip
    with nvml_sampled(backend.device) as sampler:
        (instance,) = run_instances(task).instances
    row = summarise(instance.samples[:, 1], instance.samples.shape[0] * case.batch / instance.last_completion_s,
                    instance.first_call_us / 1e6)  # fmt: skip
    if instance.transfer_us.size:
        row["h2d_ms_p50"], row["d2h_ms_p50"] = (float(np.median(column)) / 1e3 for column in instance.transfer_us.T)
    return with_telemetry(row, sampler, instance.start, instance.start + instance.last_completion_s)


def timm_row(case: Case, device: str, dtype: str, graphed: bool, seconds: float) -> dict:
    """timm's model of the same shape (eager, or torch.compile + one CUDA graph), timed with CUDA events."""
    import timm

    model = timm.create_model(TIMM_MODELS[case.variant], pretrained=False, img_size=INPUT_SIZE[0], num_classes=0)
    model = model.to(device=device, dtype=torch_dtype(dtype)).eval()
    inputs = torch.randn(case.batch, 3, *INPUT_SIZE, device=device, dtype=torch_dtype(dtype))
    stream = torch.cuda.Stream(device)
    started = time.perf_counter()
    if graphed:
        compiled = torch.compile(model, dynamic=False)
        graph, _ = capture_cuda_graph(lambda: compiled(inputs), stream)
        forward: Callable[[], Any] = graph.replay
    else:
        forward = lambda: model(inputs)  # noqa: E731
    with torch.inference_mode(), torch.cuda.stream(stream), nvml_sampled(device) as sampler:
        forward()
        stream.synchronize()
        first_call_s = time.perf_counter() - started
        for _ in range(WARMUP_CALLS):
            forward()
        stream.synchronize()
        times_us = []
        # As the harness's rows are measured (``run_instances``): no collection of this process's heap inside the
        # window, which would cost the anchor up to a tenth of a second of its 1.5 s.
        with startup_heap_frozen():
            begin = time.perf_counter()
            while time.perf_counter() - begin < seconds:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                forward()
                end.record()
                end.synchronize()
                times_us.append(start.elapsed_time(end) * 1000.0)
            finished = time.perf_counter()
    row = summarise(np.asarray(times_us), len(times_us) * case.batch / (finished - begin), first_call_s)
    return with_telemetry(row, sampler, begin, finished)


def summarise(model_us: np.ndarray, img_s: float, first_call_s: float) -> dict:
    stats = latency_stats(model_us)
    return {
        "img_s": img_s,
        "model_us_mean": float(np.mean(model_us)),
        "p50_ms": None if stats.p50 is None else stats.p50 / 1000,
        "p99_ms": None if stats.p99 is None else stats.p99 / 1000,
        "samples": int(model_us.size),
        "first_call_s": first_call_s,
    }


def gemm_time_us(case: Case, device: str, dtype: str, cache: Path, *, reuse: bool = True) -> float:
    gemms = model_gemms(get_variant(case.variant), case.batch, INPUT_SIZE)
    timing = time_gemms(
        gemms, runtime="torch", dtype=GEMM_DTYPES[dtype], threads=None, cache_dir=cache, fingerprint="device-check",
        device=device, reuse=reuse,
    )  # fmt: skip
    return timing.gemm_time_us


class CaseEfficiency:
    """The GEMM-only time of one case, over each row's model time: timed once per case (cached on disk), timed
    again when a row's GEMMs alone would take longer than its whole model (a timing taken while the machine was
    busy, now or when it was cached); a row still past that is recorded as disturbed, not as an efficiency."""

    def __init__(self, case: Case, args: argparse.Namespace, report: Report) -> None:
        self.case, self.args, self.report = case, args, report
        self.retimed = False
        self.gemm_us = self._timed(reuse=True) if "efficiency" not in args.skip else None

    def _timed(self, *, reuse: bool) -> float | None:
        try:
            return gemm_time_us(self.case, self.args.device, check_precision(self.args.device), self.args.cache,
                                reuse=reuse)  # fmt: skip
        except Exception as error:  # the rows are still worth measuring without their efficiency
            self.report.errors[f"{self.case.label} efficiency"] = failure(error)
            return None

    def of(self, model_us: float) -> dict[str, Any]:
        """A row's ``efficiency``, or, when the GEMM timing was disturbed, ``efficiency: None`` and why."""
        if self.gemm_us is not None and self.gemm_us / model_us > EFFICIENCY_CEILING and not self.retimed:
            self.retimed = True
            self.gemm_us = self._timed(reuse=False)
        if self.gemm_us is not None and self.gemm_us / model_us > EFFICIENCY_CEILING:
            return {
                "efficiency": None,
                "efficiency_note": f"disturbed: the GEMMs alone took {self.gemm_us / model_us:.2f}x the whole "
                f"model's {model_us:.0f} us, timed twice (a busy device or host, or this build's GEMMs faster than "
                "torch.matmul's)",
            }
        return {"efficiency": None if self.gemm_us is None else self.gemm_us / model_us}


def base_config(device: str) -> TorchConfig:
    """The harness's torch backend as the check drives it: eager."""
    return TorchConfig(
        name="torch", device=device, compile=False, compile_mode="default", threads=0, attention="auto",
        cuda_graphs=False, host_io=False, artifact="module", aot_inductor_configs={},
    )  # fmt: skip


def check_precision(device: str) -> Precision:
    """The precision the rows are measured in: fp16 on a GPU, as the anchors were; fp32 on a CPU rehearsal."""
    return "fp16" if device.startswith("cuda") else "fp32"


def measure(case: Case, mode: str, base: TorchConfig, args: argparse.Namespace) -> dict:
    dtype = check_precision(args.device)
    on_gpu = args.device.startswith("cuda")
    if mode == "anchor":
        return timm_row(case, args.device, dtype, graphed=True, seconds=args.seconds)
    if mode == "timm eager":
        return timm_row(case, args.device, dtype, graphed=False, seconds=args.seconds)
    backend, in_flight = base, 1
    package: Path | None = None
    if mode in ("compile+graph", "autotune+graph"):
        compile_mode: CompileMode = "default" if mode == "compile+graph" else "max-autotune-no-cudagraphs"
        backend = dataclasses.replace(base, compile=True, compile_mode=compile_mode, cuda_graphs=on_gpu)
    elif mode.startswith("host_io"):
        backend = dataclasses.replace(base, host_io=on_gpu)
        in_flight = 1 if mode == "host_io sync" else 2
    elif mode == "aoti+graph":
        package = compile_package(
            backbone(case.variant, args.cache).to(device=args.device, dtype=torch_dtype(dtype)),
            batch=case.batch, input_size=INPUT_SIZE, dtype=torch_dtype(dtype), device=args.device,
            attention="auto", inductor_configs={},
            metadata={"batch": str(case.batch), "feature_dim": str(get_variant(case.variant).embed_dim)},
            path=args.cache / f"{case.variant}-b{case.batch}-{dtype}.pt2",
        )  # fmt: skip
        backend = dataclasses.replace(base, artifact="aoti", cuda_graphs=on_gpu)
    return harness_row(case, backend, dtype, args.seconds, args.cache, package, in_flight)


def run_case(case: Case, modes: list[str], args: argparse.Namespace, deadline: float, report: Report) -> None:
    """Measure ``modes`` of ``case`` (the GEMM-only time is cached on disk, so a second call reuses it)."""
    on_gpu = args.device.startswith("cuda")
    base = base_config(args.device)
    efficiency = CaseEfficiency(case, args, report)
    for mode in modes:
        row: dict[str, Any] = {"case": case.label, "variant": case.variant, "batch": case.batch, "mode": mode}
        timm_mode = mode in ("anchor", "timm eager")
        if timm_mode and not (on_gpu and case.variant in TIMM_MODELS):
            continue
        now, expected_s = time.perf_counter(), report.longest_s(case.variant, mode)
        if now + expected_s > deadline:
            longest = f"its longest '{mode}' row of {case.variant} took {expected_s:.0f} s"
            reason = f"--budget-s {args.budget_s} " + ("spent" if now > deadline else f"would be passed: {longest}")
            report.add({**row, "skipped": reason})
            continue
        started = time.perf_counter()
        try:
            measured = measure(case, mode, base, args)
        except Exception as error:  # one failed build must not cost the rows after it
            report.add({**row, "error": failure(error), "wall_s": time.perf_counter() - started})
        else:
            row.update(measured, system="timm" if timm_mode else "harness", wall_s=time.perf_counter() - started)
            row.update({"efficiency": None} if timm_mode else efficiency.of(measured["model_us_mean"]))
            report.add(row)
        if on_gpu:
            torch.cuda.empty_cache()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--cases", default="vitl14_reg4:64,vitl14_reg4:1,vits14_reg4:256", help="variant:batch,...")
    parser.add_argument("--parity", default="vits14_reg4,vitl14_reg4", help="variants whose parity is checked")
    parser.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"subset of {','.join(MODES)}, in order")
    parser.add_argument("--seconds", type=float, default=1.5, help="measured seconds per row")
    parser.add_argument(
        "--budget-s", type=float, default=280.0,
        help="no row starts after this many seconds, nor one expected to end after them (the longest row so far of "
        "its mode and variant)",
    )  # fmt: skip
    parser.add_argument("--skip", default="", help="'efficiency' skips the GEMM-only timing")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "harness-device-check")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    args.modes = [mode for mode in args.modes.split(",") if mode]
    unknown = set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"--modes: unknown {sorted(unknown)}; known: {', '.join(MODES)}")
    try:
        args.cases = [
            Case(variant, int(batch)) for variant, batch in (item.split(":") for item in args.cases.split(","))
        ]
    except ValueError:
        parser.error(f"--cases: {args.cases!r} is not variant:batch,...")
    args.parity = [variant for variant in args.parity.split(",") if variant]
    for variant in {case.variant for case in args.cases} | set(args.parity):
        try:
            get_variant(variant)
        except Exception as error:  # a typo is refused before minutes are spent on the cases before it
            parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    deadline = started + args.budget_s
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        print("no CUDA device visible: nothing to check", file=sys.stderr)
        return 2
    args.cache.mkdir(parents=True, exist_ok=True)
    # The backend's own environment check: device name, CUDA, compute capability, and NVML's driver and clocks.
    environment = TorchBackend(base_config(args.device)).check_environment()
    report = Report(environment, args.out, started)
    print(f"device: {', '.join(f'{key} {value}' for key, value in environment.items())}, pid {os.getpid()}", flush=True)
    if on_gpu and "driver" not in environment:
        print(
            "NVML: not available (nvidia-ml-py not importable, or no driver): the rows carry no device telemetry; "
            "`make device-bundle` copies it into .device/ for PYTHONPATH=.device",
            flush=True,
        )
    dtypes = ["fp16", "bf16"] if on_gpu else ["fp32"]
    for variant in args.parity:
        try:
            report.parity[variant] = parity(variant, args.device, dtypes, args.cache)
        except Exception as error:  # the perf rows do not depend on it
            report.parity[variant] = dict.fromkeys(dtypes)
            report.errors[f"{variant} parity"] = failure(error)
        print(f"{variant}: parity min cos vs CPU fp32: {report.parity[variant]}", flush=True)
        report.write()
    print(HEADER, flush=True)
    for phase in PHASES:
        modes = [mode for mode in args.modes if mode in phase]
        for case in args.cases:
            run_case(case, modes, args, deadline, report)
    report.rows.sort(
        key=lambda row: (args.cases.index(Case(row["variant"], row["batch"])), args.modes.index(row["mode"]))
    )
    print(f"\n{HEADER}", flush=True)
    for row in report.rows:
        print_row(row)
    print("targets:", flush=True)
    for target in verdicts(report.parity, report.rows):
        value = "-" if target["ratio"] is None else f"{target['ratio']:.4f}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[target["met"]]
        print(f"  {target['target']:<44} {value:>8} (bound {target['bound']}) {verdict}", flush=True)
    for row in report.rows:
        if "efficiency_note" in row:
            print(f"  {row['case']} {row['mode']} efficiency {row['efficiency_note']}", flush=True)
    report.write()
    print(f"total {time.perf_counter() - started:.0f} s", flush=True)
    failed = [*report.errors, *(f"{row['case']} {row['mode']}" for row in report.rows if "error" in row)]
    if failed:
        print(f"failed ({len(failed)}): {', '.join(failed)}; tracebacks above, on stderr", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
