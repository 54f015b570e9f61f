"""Checkpoint layouts: DINOv2's own key names, and timm's and Hugging Face transformers' for the same networks,
mapped onto DINOv2's (docs/dinov2.md, "Other libraries' layouts").

timm (the hub's ``timm/vit_*_patch14*_dinov2.lvd142m``) differs from DINOv2 in four ways:

- no ``mask_token`` (used only by DINOv2's masked training; the features never read it);
- the registers are ``reg_token``, not ``register_tokens``;
- the register models (timm's ``no_embed_class``) have no positional row for the class token: its row is added
  into ``cls_token`` instead, and ``pos_embed`` holds the patch grid only. Mapped back, the row is zero and
  ``cls_token`` keeps the sum: DINOv2 adds that row to the class token unchanged at any input size (only the
  patch rows are resized), so the features are the same;
- the SwiGLU feed-forward of ViT-g is ``mlp.fc1`` / ``mlp.fc2`` where DINOv2 has ``mlp.w12`` / ``mlp.w3``.

transformers (the hub's ``facebook/dinov2-*``, ``Dinov2Model`` / ``Dinov2WithRegistersModel``) renames every
module and splits the attention's input projection into query, key and value, which DINOv2 holds as one ``qkv``
matrix (query rows first); its image classifier holds the same backbone under ``dinov2.``, beside a head that is
left out. Its files (the hub's, and what transformers 5's ``save_pretrained`` still writes) use transformers 4's
module names; transformers 5's modules have names of their own (``q_proj``, ``o_proj``; ViT-g's first
feed-forward layer split into ``gate_proj`` and ``up_proj``), which a ``state_dict()`` saved with ``torch.save``
keeps: both are mapped.
"""

from __future__ import annotations

import logging
import re
from typing import Literal

import torch

from harness.errors import WeightsError
from harness.models.variants import VariantSpec

log = logging.getLogger(__name__)

Layout = Literal["dinov2", "timm", "transformers"]
TIMM_FEED_FORWARD = re.compile(r"^(blocks\.\d+\.mlp\.)(fc1|fc2)(\.(?:weight|bias))$")
SWIGLU_NAMES = {"fc1": "w12", "fc2": "w3"}
# transformers' names outside the blocks, and inside block N (``encoder.layer.N.``), as DINOv2's.
TRANSFORMERS_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
TRANSFORMERS_BLOCK = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "attention.o_proj": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
    "mlp.down_proj": "mlp.w3",
}
# Matrices transformers holds apart that DINOv2 holds as one, stacked in this order: the attention's input
# projection (transformers 4's names, then 5's) and ViT-g's first feed-forward layer (transformers 5's names: 4
# holds it whole as ``mlp.weights_in``), whose first half goes through SiLU in both.
TRANSFORMERS_STACKED: dict[str, list[tuple[str, ...]]] = {
    "attn.qkv": [
        ("attention.attention.query", "attention.attention.key", "attention.attention.value"),
        ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
    ],
    "mlp.w12": [("mlp.gate_proj", "mlp.up_proj")],
}
# Each part's stacked matrix.
TRANSFORMERS_PARTS = {
    part: stacked for stacked, orders in TRANSFORMERS_STACKED.items() for parts in orders for part in parts
}
TRANSFORMERS_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+?)(?:\.(weight|bias))?$")
# Dinov2ForImageClassification (the hub's facebook/dinov2-*-imagenet1k-1-layer): the backbone under this prefix,
# beside a linear head on its features (``classifier``) that retrieval does not use.
TRANSFORMERS_BACKBONE = "dinov2."
TRANSFORMERS_HEAD = "classifier."


def layout_of(state: dict[str, torch.Tensor]) -> Layout:
    """Which layout a state dict is in: transformers' by its module names, timm's by its missing ``mask_token``
    (which every DINOv2 checkpoint holds)."""
    if "embeddings.cls_token" in state or f"{TRANSFORMERS_BACKBONE}embeddings.cls_token" in state:
        return "transformers"
    return "timm" if "cls_token" in state and "mask_token" not in state else "dinov2"


def to_dinov2_layout(
    state: dict[str, torch.Tensor], spec: VariantSpec, *, source: str
) -> tuple[dict[str, torch.Tensor], Layout]:
    """``state`` under DINOv2's key names (unchanged when it already is), and the layout it came in."""
    layout = layout_of(state)
    if layout == "timm":
        return _from_timm(state, spec), layout
    if layout == "transformers":
        return _from_transformers(state, source=source), layout
    return state, layout


def _from_timm(state: dict[str, torch.Tensor], spec: VariantSpec) -> dict[str, torch.Tensor]:
    mapped = dict(state)
    if "reg_token" in mapped:
        mapped["register_tokens"] = mapped.pop("reg_token")
    grid = spec.pretrain_grid**2
    positions = mapped.get("pos_embed")
    if positions is not None and positions.ndim == 3 and positions.shape[1] == grid:
        # timm's no_embed_class: the class token's row already added into cls_token.
        mapped["pos_embed"] = torch.cat([positions.new_zeros(1, 1, positions.shape[2]), positions], dim=1)
    if spec.feed_forward == "swiglu":
        mapped = {_swiglu_name(name): tensor for name, tensor in mapped.items()}
    cls_token = mapped["cls_token"]
    # Unused by the features (DINOv2 initialises it to zeros too); present so that the state fits the model.
    mapped["mask_token"] = cls_token.new_zeros(1, cls_token.shape[-1])
    return mapped


def _swiglu_name(name: str) -> str:
    match = TIMM_FEED_FORWARD.match(name)
    return f"{match[1]}{SWIGLU_NAMES[match[2]]}{match[3]}" if match else name


def _from_transformers(state: dict[str, torch.Tensor], *, source: str) -> dict[str, torch.Tensor]:
    if f"{TRANSFORMERS_BACKBONE}embeddings.cls_token" in state:
        head = [name for name in state if name.startswith(TRANSFORMERS_HEAD)]
        log.info("%s: the backbone of an image classifier; its head (%s) is left out", source, ", ".join(head))
        state = {
            name.removeprefix(TRANSFORMERS_BACKBONE): tensor
            for name, tensor in state.items()
            if not name.startswith(TRANSFORMERS_HEAD)
        }
    mapped: dict[str, torch.Tensor] = {}
    # (block, stacked matrix, weight or bias) -> the parts found, by module name.
    split: dict[tuple[int, str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for name, tensor in state.items():
        if name in TRANSFORMERS_TOP:
            mapped[TRANSFORMERS_TOP[name]] = tensor
            continue
        match = TRANSFORMERS_LAYER.match(name)
        module = match[2] if match else ""
        if match and module in TRANSFORMERS_PARTS:
            split.setdefault((int(match[1]), TRANSFORMERS_PARTS[module], match[3]), {})[module] = tensor
        elif match and module in TRANSFORMERS_BLOCK:
            mapped[f"blocks.{match[1]}.{TRANSFORMERS_BLOCK[module]}" + (f".{match[3]}" if match[3] else "")] = tensor
        else:
            unknown.append(name)
    if unknown:
        shown = ", ".join(unknown[:3]) + (", ..." if len(unknown) > 3 else "")
        raise WeightsError(
            f"{source}: a Hugging Face transformers checkpoint with keys this harness does not map ({len(unknown)}: "
            f"{shown}); it maps Dinov2Model and Dinov2WithRegistersModel as the hub's facebook/dinov2-* files name "
            "them (transformers 4 and 5)"
        )
    for (block, stacked, kind), parts in split.items():
        # The names these parts are closest to, for the message when some are missing or mixed.
        order = max(TRANSFORMERS_STACKED[stacked], key=lambda names: len(set(names) & set(parts)))
        if set(parts) != set(order):
            found, wanted = ", ".join(sorted(parts)), ", ".join(order)
            raise WeightsError(f"{source}: block {block}'s {kind} has {found} where {wanted} go together")
        mapped[f"blocks.{block}.{stacked}.{kind}"] = torch.cat([parts[name] for name in order], dim=0)
    return mapped
