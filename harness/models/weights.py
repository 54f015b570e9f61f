"""A backbone with its weights: an official checkpoint, a local file, or a seeded random init (see
``harness.models.provenance`` for where each comes from).

``model.weights`` is ``official`` (downloaded into ``<paths.cache>/weights`` and verified), ``random``
(seeded, tagged as such everywhere) or a path to a state dict: ``.pth`` (read with
``torch.load(weights_only=True)``: a pickle that wants to run code is refused) or ``.safetensors`` (which holds
tensors only), in DINOv2's layout, timm's or transformers' (``harness.models.layouts``).
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path

import torch

from harness.errors import ConfigError, WeightsError
from harness.models.dinov2 import DinoVisionTransformer
from harness.models.layouts import to_dinov2_layout
from harness.models.provenance import resolve_weights
from harness.models.variants import VariantSpec
from harness.result.build import WeightsInfo

log = logging.getLogger(__name__)

MAX_LISTED_MISMATCHES = 3


def load_backbone(
    spec: VariantSpec, *, weights: str, seed: int, cache_dir: Path, input_size: tuple[int, int], progress: bool = True
) -> tuple[DinoVisionTransformer, WeightsInfo]:
    """Build the fp32 reference model for ``spec`` with its positional table baked for ``input_size`` (H, W)."""
    checkpoint, info = resolve_weights(spec, weights=weights, seed=seed, cache_dir=cache_dir, progress=progress)
    return backbone_from(spec, checkpoint=checkpoint, seed=seed, input_size=input_size), info


def backbone_from(
    spec: VariantSpec, *, checkpoint: Path | None, seed: int, input_size: tuple[int, int]
) -> DinoVisionTransformer:
    """The fp32 model from a resolved ``checkpoint`` (``None``: random weights drawn with ``seed``).

    The model is made on the meta device: every parameter is then set from the checkpoint or the seed, so
    PyTorch's default initialisation would be thrown away (1.5 s for ViT-L, 6 s for ViT-g), and the checkpoint's
    tensors become the parameters instead of being copied into a second set (4.5 GB less at peak for ViT-g).
    """
    # Read first: a bad checkpoint fails before a large model is allocated.
    state = read_checkpoint(checkpoint) if checkpoint is not None else None
    if state is not None:
        state, layout = to_dinov2_layout(state, spec, source=str(checkpoint))
        if layout != "dinov2":
            log.info("checkpoint %s is in %s's layout: mapped onto DINOv2's", checkpoint, layout)
    with torch.device("meta"):
        model = DinoVisionTransformer(spec)
    if state is None:
        model.to_empty(device="cpu")
        model.init_random(seed)
    else:
        load_state_dict_checked(model, state, source=str(checkpoint))
        model.float()  # the reference is fp32 whatever a file stores: an fp16 checkpoint's values widen exactly
    model.eval()
    try:
        model.bake_positional_table(*input_size)
    except ValueError as error:
        raise ConfigError(f"model.input_size={list(input_size)}: {error}") from None
    log.info("model ready variant=%s checkpoint=%s", spec.name, checkpoint or f"random(seed={seed})")
    return model


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict (``torch.save``'s formats with ``weights_only=True``, or safetensors); anything else is a
    ``WeightsError`` naming the file."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
    except OSError as error:
        raise WeightsError(f"{path}: cannot read ({error.strerror or error})") from None
    state: object
    if _is_safetensors(head):
        state = _read_safetensors(path)
    elif head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        state = _read_torch_save(path)
    else:
        raise WeightsError(
            f"{path}: not a model checkpoint (neither torch.save's zip format, a pickle nor safetensors)"
        )
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict of tensors, found {type(state).__name__}")
    if not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise WeightsError(f"{path}: {_not_flat(state, path)}")
    for name, tensor in state.items():
        # A sum is finite when every value is (0.04 s for ViT-L's 300M values, an element-wise test 0.9 s); the
        # values are counted only when it is not, since a large enough sum overflows without any bad value.
        if tensor.is_floating_point() and not torch.isfinite(tensor.sum(dtype=torch.float32)):
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise WeightsError(f"{path}: {name} holds NaN or inf ({bad} of {tensor.numel()} values)")
    return state


def _is_safetensors(head: bytes) -> bool:
    """safetensors' header: its JSON's length (8 bytes, little-endian), then the JSON object itself."""
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 100 * 2**20


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise WeightsError(f"{path}: not a readable safetensors file ({type(error).__name__}: {error})") from None


def _read_torch_save(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise WeightsError(f"{path}: {_refusal(error)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError) as error:
        raise WeightsError(f"{path}: not a readable PyTorch checkpoint ({type(error).__name__}: {error})") from None


def _not_flat(state: dict[str, object], path: Path) -> str:
    """Why a checkpoint whose top level is not all tensors was refused, and how to extract the model from it.

    DINOv2's training saves ``{"teacher": {"backbone.<key>": tensor, "dino_head.<key>": ...}, ...}``; its own
    evaluation loads the teacher and drops the ``backbone.`` prefix (``load_pretrained_weights`` in
    https://github.com/facebookresearch/dinov2/blob/main/dinov2/utils/utils.py).
    """
    nested = [key for key, value in state.items() if isinstance(value, dict)]
    if not nested:
        kinds = sorted({type(value).__name__ for value in state.values() if not isinstance(value, torch.Tensor)})
        return f"expected a state dict of tensors, found entries of type {', '.join(kinds)}"
    key = "teacher" if "teacher" in nested else nested[0]
    inner: dict[str, object] = state[key]  # type: ignore[assignment]
    if any(str(name).startswith("backbone.") for name in inner):
        extract = (
            f"{{name.removeprefix('backbone.'): tensor for name, tensor in checkpoint[{key!r}].items() "
            "if name.startswith('backbone.')}"
        )
    else:
        extract = f"checkpoint[{key!r}]"
    return (
        f"a training checkpoint (its tensors are nested under {', '.join(map(repr, nested))}): save the model's "
        f"state dict on its own, as the official checkpoints are: checkpoint = torch.load({str(path)!r}, "
        f"weights_only=True); torch.save({extract}, 'backbone.pth'); then set model.weights to that file"
    )


def _refusal(error: pickle.UnpicklingError) -> str:
    """Why ``torch.load(weights_only=True)`` refused a pickle, without torch's advice to load it unsafely."""
    detail = re.search(r"WeightsUnpickler error:\s*(.*?)\s*(?:Check the documentation|$)", str(error), re.S)
    reason = " ".join(detail.group(1).split()) if detail and detail.group(1).strip() else "not plain tensors"
    return f"refused to unpickle: it holds more than plain tensors ({reason}); only tensors are ever loaded"


def load_state_dict_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True, assign=True)``: the state's tensors become the parameters (a model made on
    the meta device has none of its own); one-line error naming the first missing, unexpected, misshapen keys."""
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshapen = [
        f"{key} {list(state[key].shape)} != {list(expected[key].shape)}"
        for key in expected
        if key in state and state[key].shape != expected[key].shape
    ]
    problems = [
        f"{label} ({len(items)}): "
        + ", ".join(items[:MAX_LISTED_MISMATCHES] + ["..."] * (len(items) > MAX_LISTED_MISMATCHES))
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", misshapen))
        if items
    ]
    if problems:
        variant = getattr(getattr(model, "spec", None), "name", type(model).__name__)
        raise WeightsError(f"{source} does not fit {variant}: " + "; ".join(problems))
    model.load_state_dict(state, strict=True, assign=True)
