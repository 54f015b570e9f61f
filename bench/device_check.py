"""Device check: the GPU paths of the harness on one CUDA device, in a few minutes, as one table.

Run on the accelerator machine (torch with CUDA, no Hydra needed):

    python3 bench/device_check.py                      # ViT-S and ViT-L reg4, batch 1/8/64, eager + compile
    python3 bench/device_check.py --device cpu --variants tiny14_reg4 --batches 1 --seconds 1   # smoke test

For each variant it checks parity of the torch backend on the device (fp16) against fp32 on the CPU, then
measures throughput and CUDA-event model latency through the harness's own instance loop, eager and with
``torch.compile(mode="reduce-overhead")`` (CUDA graphs), and prints them beside the reference anchors of
shared/reference/README.md section 5 (H100, torch 2.11, fp16, 224x224).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.backends import LoadTarget
from harness.backends.torch_backend import TorchConfig
from harness.build.parity import cosine_rows
from harness.config.schema import ModelConfig, PerfConfig
from harness.models.variants import get_variant
from harness.models.weights import load_backbone
from harness.perf.loadgen import WorkerTask, run_instances
from harness.perf.stats import latency_stats

# img/s of eager fp16 on one H100 (reference section 5), for the side-by-side column.
ANCHORS_QPS = {
    ("vits14_reg4", 1): 155, ("vits14_reg4", 8): 2673, ("vits14_reg4", 64): 14580,
    ("vitl14_reg4", 1): 147, ("vitl14_reg4", 8): 1267, ("vitl14_reg4", 64): 2278,
}  # fmt: skip


def parity(variant: str, device: str, cache: Path) -> float:
    """Min cosine of device fp16 features against CPU fp32 features on 8 seeded inputs."""
    model, _ = load_backbone(
        get_variant(variant), weights="random", seed=0, cache_dir=cache, input_size=(224, 224), progress=False
    )
    inputs = torch.from_numpy(np.random.default_rng(0).standard_normal((8, 3, 224, 224), dtype=np.float32))
    with torch.inference_mode():
        reference = model(inputs).numpy()
        dtype = torch.float16 if device != "cpu" else torch.float32
        measured = model.to(device=device, dtype=dtype)(inputs.to(device=device, dtype=dtype)).float().cpu().numpy()
    return float(cosine_rows(measured, reference).min())


def measure(variant: str, batch: int, backend: TorchConfig, seconds: float, cache: Path) -> dict[str, float]:
    model = ModelConfig(variant=variant)
    perf = PerfConfig(iterations=None, duration_s=seconds, batch=batch, warmup=5, min_samples=1)
    task = WorkerTask(
        worker=0, instances=(0,), iterations=(0,), backend_config=backend,
        target=LoadTarget(artifact_path=None, model=model, precision="fp16", cache_dir=str(cache)),
        perf=perf, batch_shape=(batch, 3, 224, 224), input_dtype="float32", seed=0,
    )  # fmt: skip
    started = time.perf_counter()
    (instance,) = run_instances(task).instances
    samples = instance.samples
    model_stats = latency_stats(samples[:, 1])
    return {
        "qps": samples.shape[0] * batch / instance.last_completion_s,
        "model_p50_ms": (model_stats.p50 or model_stats.avg) / 1000,
        "first_call_s": instance.first_call_us / 1e6,
        "wall_s": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--variants", default="vits14_reg4,vitl14_reg4")
    parser.add_argument("--batches", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/harness-device-cache"))
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device visible: nothing to check", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {name}, torch {torch.__version__}")
    modes = [("eager", TorchConfig(device=args.device, dtype="fp16" if args.device != "cpu" else "fp32"))]
    if not args.no_compile:
        modes.append(
            (
                "compile+graphs",
                TorchConfig(device=args.device, dtype=modes[0][1].dtype, compile=True, compile_mode="reduce-overhead"),
            )
        )
    print(
        f"{'variant':<13} {'mode':<15} {'batch':>5} {'img/s':>10} {'model p50 ms':>13} {'first call s':>13} {'anchor img/s':>13} {'parity cos':>11}"
    )
    for variant in args.variants.split(","):
        cosine = parity(variant, args.device, args.cache)
        for mode, backend in modes:
            for batch in (int(value) for value in args.batches.split(",")):
                row = measure(variant, batch, backend, args.seconds, args.cache)
                anchor = ANCHORS_QPS.get((variant, batch)) if mode == "eager" else None
                print(
                    f"{variant:<13} {mode:<15} {batch:>5} {row['qps']:>10.1f} {row['model_p50_ms']:>13.3f} "
                    f"{row['first_call_s']:>13.2f} {anchor if anchor else '-':>13} {cosine:>11.6f}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
