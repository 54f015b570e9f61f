"""Device check: the harness's torch GPU path on one CUDA device, beside timm's model of the same shape.

Run from the repository root on the accelerator machine (torch with CUDA and timm; no Hydra, no MLflow):

    python3 -m bench.device_check --systems harness --out harness.json   # then --systems timm: one process each
    python3 -m bench.device_check --device cpu --variants tiny14_reg4 --batches 1 --seconds 1 --no-compile --systems harness

Per variant: the parity of fp16 and bf16 features on the device against fp32 on the CPU (min cosine over 8
seeded inputs); then, per batch size, throughput and model latency through the harness's own load generator
(eager, and ``torch.compile(mode="reduce-overhead")``, i.e. CUDA graphs), and the anchor measured in the same
process: timm's ViT of the same shape (random weights), eager and with the same compile mode. Latency
percentiles follow the harness's rule (p50 needs 11 samples, p99 662), so short runs print ``-`` for p99.
Prints one table and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.backends import BackendFactory, LoadTarget
from harness.backends.torch_backend import TorchConfig
from harness.config.schema import ModelConfig
from harness.models.variants import get_variant
from harness.models.weights import load_backbone
from harness.perf.loadgen import LoadPlan, WorkerTask, run_instances
from harness.perf.stats import latency_stats

# timm's names for the DINOv2 register models (architecture only: created without weights).
TIMM_MODELS = {
    "vits14_reg4": "vit_small_patch14_reg4_dinov2",
    "vitb14_reg4": "vit_base_patch14_reg4_dinov2",
    "vitl14_reg4": "vit_large_patch14_reg4_dinov2",
}
TORCH_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def cosine_min(left: np.ndarray, right: np.ndarray) -> float:
    left64, right64 = left.astype(np.float64), right.astype(np.float64)
    cosines = np.sum(left64 * right64, axis=1) / (np.linalg.norm(left64, axis=1) * np.linalg.norm(right64, axis=1))
    return float(cosines.min())


def parity(variant: str, device: str, cache: Path, dtypes: list[str]) -> dict[str, float]:
    """Min cosine of device features in each dtype against CPU fp32 features, on 8 seeded inputs."""
    model, _ = load_backbone(
        get_variant(variant), weights="random", seed=0, cache_dir=cache, input_size=(224, 224), progress=False
    )
    inputs = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 3, 224, 224), dtype=np.float32))
    with torch.inference_mode():
        reference = model(inputs).numpy()
        found = {}
        for name in dtypes:
            dtype = TORCH_DTYPES[name]
            on_device = model.to(device=device, dtype=dtype)
            found[name] = cosine_min(on_device(inputs.to(device=device, dtype=dtype)).float().cpu().numpy(), reference)
    return found


def harness_row(variant: str, batch: int, backend: TorchConfig, seconds: float, cache: Path) -> dict[str, Any]:
    """One instance driven by the harness's load generator for ``seconds`` (after its cold call and warm-up)."""
    model = ModelConfig(variant=variant, weights="random", seed=0, input_size=(224, 224))
    target = LoadTarget(artifact_path=None, model=model, precision="fp16", cache_dir=str(cache))
    task = WorkerTask(
        worker=0, instances=(0,), iterations=(1,), factory=BackendFactory(backend, target),
        inputs=np.random.default_rng(0).standard_normal((batch, 3, 224, 224), dtype=np.float32),
        plan=LoadPlan(mode="sync", queue_depth=1, warmup=10, min_duration_s=seconds, max_duration_s=None),
    )  # fmt: skip
    (instance,) = run_instances(task).instances
    stats = latency_stats(instance.samples[:, 1])
    return {
        "img_s": instance.samples.shape[0] * batch / instance.last_completion_s,
        "p50_ms": stats.p50 / 1000 if stats.p50 is not None else None,
        "p99_ms": stats.p99 / 1000 if stats.p99 is not None else None,
        "first_call_s": instance.first_call_us / 1e6,
    }


def timm_row(variant: str, batch: int, device: str, compiled: bool, seconds: float) -> dict[str, Any] | None:
    """timm's model of the same shape, timed with CUDA events the same way (the anchor)."""
    try:
        import timm
    except ImportError:
        return None
    if variant not in TIMM_MODELS:
        return None
    model = timm.create_model(TIMM_MODELS[variant], pretrained=False, img_size=224, num_classes=0)
    model = model.to(device=device, dtype=torch.float16).eval()
    runnable = torch.compile(model, mode="reduce-overhead") if compiled else model
    inputs = torch.randn(batch, 3, 224, 224, device=device, dtype=torch.float16)
    started = time.perf_counter()
    with torch.inference_mode():
        runnable(inputs)
        torch.cuda.synchronize()
        first_call_s = time.perf_counter() - started
        for _ in range(10):
            runnable(inputs)
        torch.cuda.synchronize()
        times_us = []
        begin = time.perf_counter()
        while time.perf_counter() - begin < seconds:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            runnable(inputs)
            end.record()
            end.synchronize()
            times_us.append(start.elapsed_time(end) * 1000.0)
        elapsed = time.perf_counter() - begin
    stats = latency_stats(np.asarray(times_us))
    return {
        "img_s": len(times_us) * batch / elapsed,
        "p50_ms": stats.p50 / 1000 if stats.p50 is not None else None,
        "p99_ms": stats.p99 / 1000 if stats.p99 is not None else None,
        "first_call_s": first_call_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", default="vits14_reg4,vitl14_reg4")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument(
        "--systems",
        default="harness,timm",
        help="which to measure; run each in its own process when compiling: CUDA-graph trees keep per-thread "
        "state, and the harness calls the model from its instance thread",
    )
    parser.add_argument("--cache", type=Path, default=Path("/tmp/harness-device-cache"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device visible: nothing to check", file=sys.stderr)
        return 2
    on_gpu = args.device.startswith("cuda")
    name = torch.cuda.get_device_name() if on_gpu else "cpu"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    dtype = "fp16" if on_gpu else "fp32"
    modes = [("eager", False)] + ([] if args.no_compile else [("compile+graphs", True)])
    rows: list[dict[str, Any]] = []
    header = f"{'variant':<12} {'system':<8} {'mode':<15} {'batch':>5} {'img/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'1st call s':>10}"
    for variant in args.variants.split(","):
        cosines = parity(variant, args.device, args.cache, ["fp16", "bf16"] if on_gpu else ["fp32"])
        print(f"{variant}: parity min cos vs CPU fp32: {cosines}", flush=True)
        rows.append({"variant": variant, "parity": cosines})
        print(header, flush=True)
        for batch in (int(value) for value in args.batches.split(",")):
            for mode, compiled in modes:
                backend = TorchConfig(
                    name="torch", device=args.device, dtype=dtype, compile=compiled, compile_mode="reduce-overhead", threads=0
                )  # fmt: skip
                systems = args.systems.split(",")
                measured: dict[str, dict[str, Any] | None] = {}
                if "harness" in systems:
                    measured["harness"] = harness_row(variant, batch, backend, args.seconds, args.cache)
                if on_gpu and "timm" in systems:
                    measured["timm"] = timm_row(variant, batch, args.device, compiled, args.seconds)
                for system, row in measured.items():
                    if row is None:
                        continue
                    rows.append({"variant": variant, "system": system, "mode": mode, "batch": batch, **row})
                    p50 = f"{row['p50_ms']:.3f}" if row["p50_ms"] is not None else "-"
                    p99 = f"{row['p99_ms']:.3f}" if row["p99_ms"] is not None else "-"
                    print(
                        f"{variant:<12} {system:<8} {mode:<15} {batch:>5} {row['img_s']:>9.1f} {p50:>8} {p99:>8} "
                        f"{row['first_call_s']:>10.2f}",
                        flush=True,
                    )
    if args.out:
        args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
