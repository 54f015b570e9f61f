"""Reference outputs of timm's DINOv2 models, for the test that loads checkpoints saved in timm's layout.

timm publishes DINOv2's weights under its own key names (``timm/vit_small_patch14_reg4_dinov2.lvd142m`` on the
Hugging Face hub, as ``.safetensors``); the harness maps them onto DINOv2's (``harness.models.layouts``). To
check that mapping against timm itself rather than against its own inverse, this script builds timm's model of
each test variant's shape, sets every tensor from ``seeded_state`` (seeded, so the test recreates the same
tensors without timm), and records timm's features for seeded inputs. Run where timm is installed (the device
machine has it):

    python -m bench.timm_reference --out tests/fixtures/timm/reference.json

The JSON holds, per variant, timm's model name and arguments, its state dict's key names and shapes, the
seeds, and the features timm computed (fp32, CPU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

# The harness's test variants (embed 64, depth 2, 2 heads; harness.models.variants) as timm's models: the
# SwiGLU variant's hidden width 128 is timm's packed fc1 of 256 rows, mlp_ratio 256 / 64.
SHAPE = {"embed_dim": 64, "depth": 2, "num_heads": 2, "init_values": 1.0}
TIMM_MODELS = {
    "tiny14": ("vit_small_patch14_dinov2", SHAPE),
    "tiny14_reg4": ("vit_small_patch14_reg4_dinov2", SHAPE),
    "tinyg14_reg4": ("vit_giant_patch14_reg4_dinov2", {**SHAPE, "mlp_ratio": 4.0}),
}
# DINOv2's pretraining resolution, where no positional interpolation happens (timm's and DINOv2's differ).
IMAGE_SIZE = 518
IMAGES = 2


def seeded_state(keys: list[tuple[str, list[int]]], seed: int) -> dict[str, np.ndarray]:
    """Every tensor of a state dict drawn in key order from one seeded generator: normal values around 1 for
    norm weights and layer scales (so that no block is switched off), around 0 elsewhere."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in keys:
        values = rng.standard_normal(shape).astype(np.float32)
        around_one = name.endswith(("norm1.weight", "norm2.weight", "norm.weight", ".gamma"))
        state[name] = 1.0 + 0.1 * values if around_one else 0.1 * values
    return state


def seeded_images(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((IMAGES, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)


def reference(variant: str, seed: int) -> dict:
    import timm
    import torch

    name, arguments = TIMM_MODELS[variant]
    model = timm.create_model(name, pretrained=False, num_classes=0, img_size=IMAGE_SIZE, **arguments).eval()
    keys = [(key, list(tensor.shape)) for key, tensor in model.state_dict().items()]
    state = {key: torch.from_numpy(values) for key, values in seeded_state(keys, seed).items()}
    model.load_state_dict(state, strict=True)
    with torch.inference_mode():
        features = model(torch.from_numpy(seeded_images(seed + 1)))
    return {
        "timm_model": name,
        "timm_arguments": arguments,
        "keys": keys,
        "weights_seed": seed,
        "images_seed": seed + 1,
        "features": features.tolist(),
    }


def main() -> None:
    import timm
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    cases = {variant: reference(variant, seed) for seed, variant in enumerate(TIMM_MODELS)}
    record = {"timm": timm.__version__, "torch": torch.__version__, "image_size": IMAGE_SIZE, "variants": cases}
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(record, indent=1) + "\n")
    made = ", ".join(f"{variant} ({case['timm_model']})" for variant, case in cases.items())
    print(f"{arguments.out}: {made}")


if __name__ == "__main__":
    main()
