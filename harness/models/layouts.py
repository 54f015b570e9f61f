"""Checkpoint layouts: DINOv2's own key names, and timm's for the same networks, mapped onto DINOv2's.

timm publishes DINOv2's weights under its own names (the Hugging Face hub's ``timm/vit_*_patch14*_dinov2.lvd142m``,
as ``.safetensors``). Its layout differs from DINOv2's in four ways (docs/dinov2.md, "timm's layout"):

- no ``mask_token`` (used only by DINOv2's masked training; the features never read it);
- the registers are ``reg_token``, not ``register_tokens``;
- the register models (timm's ``no_embed_class``) have no positional row for the class token: its row is added
  into ``cls_token`` instead, and ``pos_embed`` holds the patch grid only;
- the SwiGLU feed-forward of ViT-g is ``mlp.fc1`` / ``mlp.fc2`` where DINOv2 has ``mlp.w12`` / ``mlp.w3``.

Mapped back, the class token's row is zero and ``cls_token`` keeps the sum: DINOv2 adds that row to the class
token unchanged at any input size (only the patch rows are interpolated), so the features are the same.
"""

from __future__ import annotations

import re
from typing import Literal

import torch

from harness.errors import WeightsError
from harness.models.variants import VariantSpec

Layout = Literal["dinov2", "timm"]
TIMM_FEED_FORWARD = re.compile(r"^(blocks\.\d+\.mlp\.)(fc1|fc2)(\.(?:weight|bias))$")
SWIGLU_NAMES = {"fc1": "w12", "fc2": "w3"}


# Hugging Face transformers' Dinov2Model: separate query / key / value projections under other module names.
TRANSFORMERS_PREFIXES = ("embeddings.", "encoder.layer.")


def layout_of(state: dict[str, torch.Tensor]) -> Layout:
    """Which layout a state dict is in: timm's lacks ``mask_token``, which every DINOv2 checkpoint holds."""
    return "timm" if "cls_token" in state and "mask_token" not in state else "dinov2"


def to_dinov2_layout(
    state: dict[str, torch.Tensor], spec: VariantSpec, *, source: str
) -> tuple[dict[str, torch.Tensor], Layout]:
    """``state`` under DINOv2's key names (unchanged when it already is), and the layout it came in; a
    ``WeightsError`` naming ``source`` for Hugging Face transformers' layout, which is not mapped."""
    if any(name.startswith(TRANSFORMERS_PREFIXES) for name in state):
        raise WeightsError(
            f"{source}: a Hugging Face transformers checkpoint (Dinov2Model: embeddings.*, encoder.layer.*), whose "
            "layout is not mapped: use DINOv2's own checkpoint (model.weights=official) or timm's "
            "(timm/vit_*_patch14*_dinov2.lvd142m)"
        )
    layout = layout_of(state)
    if layout == "dinov2":
        return state, layout
    mapped = dict(state)
    if "reg_token" in mapped:
        mapped["register_tokens"] = mapped.pop("reg_token")
    grid = (spec.pretrain_img_size // spec.patch_size) ** 2
    positions = mapped.get("pos_embed")
    if positions is not None and positions.ndim == 3 and positions.shape[1] == grid:
        # timm's no_embed_class: the class token's row already added into cls_token.
        mapped["pos_embed"] = torch.cat([positions.new_zeros(1, 1, positions.shape[2]), positions], dim=1)
    if spec.feed_forward == "swiglu":
        mapped = {_swiglu_name(name): tensor for name, tensor in mapped.items()}
    cls_token = mapped["cls_token"]
    # Unused by the features (DINOv2 initialises it to zeros too); present so that the state fits the model.
    mapped["mask_token"] = cls_token.new_zeros(1, cls_token.shape[-1])
    return mapped, layout


def _swiglu_name(name: str) -> str:
    match = TIMM_FEED_FORWARD.match(name)
    return f"{match[1]}{SWIGLU_NAMES[match[2]]}{match[3]}" if match else name
