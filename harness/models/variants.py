"""The DINOv2 variant table: every fact that distinguishes one backbone from another, in one place.

Spec: ``docs/dinov2.md`` (official hub construction at facebookresearch/dinov2
commit e1277af). Tiny variants use the same code with small widths so tests run in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from harness.errors import ConfigError, unknown_name_message

FeedForward = Literal["mlp", "swiglu"]

CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/dinov2"


@dataclass(frozen=True)
class VariantSpec:
    """Architecture of one backbone.

    Attributes:
        name: short id used in configs and artifact names (``vitl14_reg4``).
        hub_name: the official ``torch.hub`` entry point (``dinov2_vitl14_reg``), or ``None`` for test variants.
        embed_dim: token width D.
        depth: number of transformer blocks.
        num_heads: attention heads per block.
        feed_forward: ``mlp`` (fc1/GELU/fc2) or ``swiglu`` (fused ``w12``/``w3``, ViT-g).
        ffn_hidden: hidden width of the feed-forward layer.
        num_registers: register tokens inserted after CLS (0 or 4).
        checkpoint_file: file name of the official checkpoint under ``CHECKPOINT_BASE_URL``.
        checkpoint_sha256: published digest of that file when known; otherwise the first download's digest
            is recorded beside the file and verified on every reuse.
    """

    name: str
    hub_name: str | None
    embed_dim: int
    depth: int
    num_heads: int
    feed_forward: FeedForward
    ffn_hidden: int
    num_registers: int
    checkpoint_file: str | None = None
    checkpoint_sha256: str | None = None
    patch_size: int = 14
    pretrain_img_size: int = 518
    layernorm_eps: float = 1e-6
    layerscale_init: float = 1.0

    @property
    def pretrain_grid(self) -> int:
        """Side of the square positional table the checkpoint stores (37 for 518 / 14)."""
        return self.pretrain_img_size // self.patch_size

    @property
    def interpolate_offset(self) -> float:
        """Offset added to the target grid when resizing the positional table.

        The official non-register models resize with ``scale_factor=(grid + 0.1) / 37`` (a workaround for a
        floating-point issue in early PyTorch); the register models resize to the exact size.
        """
        return 0.0 if self.num_registers else 0.1

    @property
    def interpolate_antialias(self) -> bool:
        """Whether the bicubic positional-table resize is antialiased (register models only)."""
        return bool(self.num_registers)

    @property
    def checkpoint_url(self) -> str | None:
        if self.checkpoint_file is None:
            return None
        family = self.checkpoint_file.removesuffix("_pretrain.pth").removesuffix("_reg4")
        return f"{CHECKPOINT_BASE_URL}/{family}/{self.checkpoint_file}"

    def official_checkpoint(self) -> tuple[str, str]:
        """(URL, file name) of the official checkpoint; a ``ConfigError`` for a variant that has none."""
        if self.checkpoint_url is None or self.checkpoint_file is None:
            with_one = [name for name, spec in VARIANTS.items() if spec.checkpoint_file]
            raise ConfigError(
                f"model.weights=official: variant {self.name!r} has no official checkpoint (variants with one: "
                f"{with_one}); use random or a path"
            )
        return self.checkpoint_url, self.checkpoint_file


def _official(size: str, embed_dim: int, depth: int, num_heads: int, registers: int) -> VariantSpec:
    suffix = "_reg4" if registers else ""
    giant = size == "g"
    return VariantSpec(
        name=f"vit{size}14{suffix}",
        hub_name=f"dinov2_vit{size}14" + ("_reg" if registers else ""),
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        feed_forward="swiglu" if giant else "mlp",
        # SwiGLU keeps 2/3 of 4D rounded up to a multiple of 8: 6144 * 2/3 = 4096 for ViT-g.
        ffn_hidden=(int(4 * embed_dim * 2 / 3) + 7) // 8 * 8 if giant else 4 * embed_dim,
        num_registers=registers,
        checkpoint_file=f"dinov2_vit{size}14{suffix}_pretrain.pth",
    )


def _tiny(name: str, feed_forward: FeedForward, registers: int) -> VariantSpec:
    return VariantSpec(
        name=name,
        hub_name=None,
        embed_dim=64,
        depth=2,
        num_heads=2,
        feed_forward=feed_forward,
        ffn_hidden=128 if feed_forward == "swiglu" else 256,
        num_registers=registers,
    )


_SIZES = (("s", 384, 12, 6), ("b", 768, 12, 12), ("l", 1024, 24, 16), ("g", 1536, 40, 24))

VARIANTS: dict[str, VariantSpec] = {
    spec.name: spec
    for spec in (
        *(_official(size, dim, depth, heads, regs) for size, dim, depth, heads in _SIZES for regs in (0, 4)),
        _tiny("tiny14", "mlp", 0),
        _tiny("tiny14_reg4", "mlp", 4),
        _tiny("tinyg14_reg4", "swiglu", 4),
    )
}

OFFICIAL_VARIANTS: tuple[str, ...] = tuple(name for name, spec in VARIANTS.items() if spec.hub_name)


def get_variant(name: str) -> VariantSpec:
    """Look a variant up by its short id.

    Raises:
        ConfigError: the name is unknown; the message lists the known ones and the closest match.
    """
    try:
        return VARIANTS[name]
    except KeyError:
        raise ConfigError(unknown_name_message("model.variant", name, VARIANTS)) from None
