"""Reference outputs of timm's and Hugging Face transformers' DINOv2 models, for the test that loads checkpoints
saved in their layouts.

Both publish DINOv2's weights under their own key names (on the Hugging Face hub: ``timm/vit_*_dinov2.lvd142m``
and ``facebook/dinov2-*``, as ``.safetensors``); the harness maps them onto DINOv2's (``harness.models.layouts``).
To check that mapping against the libraries themselves rather than against its own inverse, this script builds
each library's model of each test variant's shape, sets every tensor from ``seeded_state`` (seeded, so the test
recreates the same tensors without the library), and records the features it computes for seeded inputs.
transformers 4 (whose names the hub's files use, and which transformers 5's ``save_pretrained`` still writes)
and transformers 5 (whose modules, and so a ``state_dict()`` saved with ``torch.save``, have other names) cannot
be installed together: run it once where timm and transformers 4 are installed, once where transformers 5 is,
each run replacing the libraries it recorded:

    python -m bench.layout_reference --out tests/fixtures/layouts/reference.json

The JSON holds, per library and variant, the model and its arguments, its state dict's key names and shapes,
the seeds, and the features it computed (fp32, CPU).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

# The harness's test variants (embed 64, depth 2, 2 heads; harness.models.variants). timm: the SwiGLU variant's
# hidden width 128 is its packed fc1 of 256 rows, mlp_ratio 256 / 64. transformers: hidden 128 comes from
# mlp_ratio 3 (its SwiGLU takes two thirds of 64 x 3, rounded up to a multiple of 8).
TIMM_SHAPE = {"embed_dim": 64, "depth": 2, "num_heads": 2, "init_values": 1.0}
TRANSFORMERS_SHAPE = {
    "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "layerscale_value": 1.0, "patch_size": 14,
}  # fmt: skip
TRANSFORMERS_MODELS = {
    "tiny14": ("Dinov2Model", {**TRANSFORMERS_SHAPE, "mlp_ratio": 4}),
    "tiny14_reg4": ("Dinov2WithRegistersModel", {**TRANSFORMERS_SHAPE, "mlp_ratio": 4, "num_register_tokens": 4}),
    "tinyg14_reg4": (
        "Dinov2WithRegistersModel",
        {**TRANSFORMERS_SHAPE, "mlp_ratio": 3, "num_register_tokens": 4, "use_swiglu_ffn": True},
    ),
}
# Recorded in this order: each case's seeds come from its place in it, so a run that records some libraries
# leaves the others' seeds as they were.
MODELS: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "timm": {
        "tiny14": ("vit_small_patch14_dinov2", TIMM_SHAPE),
        "tiny14_reg4": ("vit_small_patch14_reg4_dinov2", TIMM_SHAPE),
        "tinyg14_reg4": ("vit_giant_patch14_reg4_dinov2", {**TIMM_SHAPE, "mlp_ratio": 4.0}),
    },
    "transformers": TRANSFORMERS_MODELS,
    "transformers5": TRANSFORMERS_MODELS,
}
# DINOv2's pretraining resolution, where no positional interpolation happens (the libraries' and DINOv2's
# resize paths differ).
IMAGE_SIZE = 518
IMAGES = 2
AROUND_ONE = ("norm1.weight", "norm2.weight", "norm.weight", "layernorm.weight", ".gamma", ".lambda1")


def seeded_state(keys: list[tuple[str, list[int]]], seed: int) -> dict[str, np.ndarray]:
    """Every tensor of a state dict drawn in key order from one seeded generator: normal values around 1 for
    norm weights and layer scales (so that no block is switched off), around 0 elsewhere."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, shape in keys:
        values = rng.standard_normal(shape).astype(np.float32)
        state[name] = 1.0 + 0.1 * values if name.endswith(AROUND_ONE) else 0.1 * values
    return state


def seeded_images(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((IMAGES, 3, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)


def library_model(library: str, name: str, arguments: dict[str, Any]) -> Any:
    if library == "timm":
        import timm

        return timm.create_model(name, pretrained=False, num_classes=0, img_size=IMAGE_SIZE, **arguments)
    import transformers

    model_class = getattr(transformers, name)
    return model_class(model_class.config_class(image_size=IMAGE_SIZE, **arguments))


def features_of(library: str, model: Any, images: Any) -> Any:
    # transformers' pooler output is the final layer norm's class token, as DINOv2's and timm's features are.
    return model(images) if library == "timm" else model(pixel_values=images).pooler_output


def reference(library: str, variant: str, seed: int) -> dict:
    import torch

    name, arguments = MODELS[library][variant]
    model = library_model(library, name, arguments).eval()
    keys = [(key, list(tensor.shape)) for key, tensor in model.state_dict().items()]
    state = {key: torch.from_numpy(values) for key, values in seeded_state(keys, seed).items()}
    model.load_state_dict(state, strict=True)
    with torch.inference_mode():
        features = features_of(library, model, torch.from_numpy(seeded_images(seed + 1)))
    case = {
        "model": name,
        "arguments": arguments,
        "keys": keys,
        "weights_seed": seed,
        "images_seed": seed + 1,
        "features": features.tolist(),
    }
    if library != "timm":
        case["saved_keys"] = saved_keys(model)
    return case


def saved_keys(model: Any) -> list[str]:
    """The key names ``save_pretrained`` writes, which need not be the model's own (transformers 5 converts)."""
    import tempfile

    from safetensors import safe_open

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        with safe_open(str(Path(folder) / "model.safetensors"), "pt") as saved:
            return sorted(saved.keys())


def installed_libraries() -> dict[str, str]:
    """The libraries of ``MODELS`` this environment has, with their versions: timm if installed, and transformers
    under its major version's name."""
    import importlib.util

    versions = {}
    if importlib.util.find_spec("timm"):
        import timm

        versions["timm"] = timm.__version__
    if importlib.util.find_spec("transformers"):
        import transformers

        major = int(transformers.__version__.split(".")[0])
        versions["transformers" if major == 4 else f"transformers{major}"] = transformers.__version__
    return {library: version for library, version in versions.items() if library in MODELS}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    arguments = parser.parse_args()
    libraries = installed_libraries()
    if not libraries:
        raise SystemExit(f"none of {', '.join(MODELS)} is installed")
    record: dict[str, Any] = json.loads(arguments.out.read_text()) if arguments.out.exists() else {"versions": {}}
    record["image_size"] = IMAGE_SIZE
    seed = 0
    for library, variants in MODELS.items():
        if library in libraries:
            record["versions"][library] = f"{libraries[library]} (torch {torch.__version__})"
            record[library] = {
                variant: reference(library, variant, seed + 2 * index) for index, variant in enumerate(variants)
            }
        seed += 2 * len(variants)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"{arguments.out}: {', '.join(f'{library} {version}' for library, version in libraries.items())}")


if __name__ == "__main__":
    main()
