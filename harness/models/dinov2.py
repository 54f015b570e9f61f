"""DINOv2 ViT backbone, written from the official architecture (``docs/dinov2.md``).

State-dict names and shapes equal the official hub models, so an official ``.pth`` loads with
``strict=True``. Two deployment choices differ from the training code on purpose:

* attention is ``torch.nn.functional.scaled_dot_product_attention`` (exports as plain MatMul/Softmax);
* the last block computes the CLS token only: the features are the final-norm CLS token, and no token's
  output depends on another token's last-block output, so the last block's query projection, attention rows
  and MLP for the other tokens are skipped (about 1/depth of the FLOPs; exact, not an approximation);
* the positional table for the deployment input size is computed once, in fp32, with the official
  per-family bicubic resize, and stored as a buffer (``bake_positional_table``). Exported graphs then
  carry a constant instead of a Resize node, so no runtime can change its numerics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.variants import VariantSpec


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(images).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(embed_dim, 3 * embed_dim, bias=True)
        self.proj = nn.Linear(embed_dim, embed_dim)

    def forward(self, tokens: torch.Tensor, *, query_tokens: int | None = None) -> torch.Tensor:
        """Attention over all ``tokens``; with ``query_tokens`` only the first ones are queries (and outputs)."""
        batch, length, width = tokens.shape
        head = width // self.num_heads
        if query_tokens is None:
            qkv = self.qkv(tokens).reshape(batch, length, 3, self.num_heads, head)
            query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        else:
            query_weight, key_value_weight = self.qkv.weight.split((width, 2 * width))
            query_bias, key_value_bias = self.qkv.bias.split((width, 2 * width))
            query = F.linear(tokens[:, :query_tokens], query_weight, query_bias)
            query = query.reshape(batch, query_tokens, self.num_heads, head).transpose(1, 2)
            key_value = F.linear(tokens, key_value_weight, key_value_bias).reshape(
                batch, length, 2, self.num_heads, head
            )
            key, value = key_value.permute(2, 0, 3, 1, 4).unbind(0)
        attended = F.scaled_dot_product_attention(query, key, value)
        return self.proj(attended.transpose(1, 2).reshape(batch, -1, width))


class LayerScale(nn.Module):
    def __init__(self, embed_dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((embed_dim,), init_value))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens * self.gamma


class Mlp(nn.Module):
    def __init__(self, embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(embed_dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(tokens)))


class SwiGLUFused(nn.Module):
    """ViT-g feed-forward: ``w3(silu(a) * b)`` with ``a, b`` the two halves of ``w12(x)``."""

    def __init__(self, embed_dim: int, hidden: int) -> None:
        super().__init__()
        self.w12 = nn.Linear(embed_dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, embed_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(tokens).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class Block(nn.Module):
    def __init__(self, spec: VariantSpec) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(spec.embed_dim, eps=spec.layernorm_eps)
        self.attn = Attention(spec.embed_dim, spec.num_heads)
        self.ls1 = LayerScale(spec.embed_dim, spec.layerscale_init)
        self.norm2 = nn.LayerNorm(spec.embed_dim, eps=spec.layernorm_eps)
        feed_forward = SwiGLUFused if spec.feed_forward == "swiglu" else Mlp
        self.mlp = feed_forward(spec.embed_dim, spec.ffn_hidden)
        self.ls2 = LayerScale(spec.embed_dim, spec.layerscale_init)

    def forward(self, tokens: torch.Tensor, *, query_tokens: int | None = None) -> torch.Tensor:
        """The block's output for every token, or for the first ``query_tokens`` only (which attend to all)."""
        kept = tokens if query_tokens is None else tokens[:, :query_tokens]
        kept = kept + self.ls1(self.attn(self.norm1(tokens), query_tokens=query_tokens))
        return kept + self.ls2(self.mlp(self.norm2(kept)))


def resize_positional_table(
    pos_embed: torch.Tensor, *, grid_height: int, grid_width: int, offset: float, antialias: bool
) -> torch.Tensor:
    """The official ``interpolate_pos_encoding`` of DINOv2, for a fixed target grid, in fp32.

    Args:
        pos_embed: the checkpoint's table, [1, 1 + M*M, D] (CLS first).
        grid_height: patches along the image height (H / patch).
        grid_width: patches along the image width (W / patch).
        offset: 0.1 for the non-register models (bicubic with ``scale_factor=(grid + 0.1) / M``), 0.0 for the
            register models (bicubic to the exact size).
        antialias: antialiased bicubic (register models).

    Returns:
        [1, 1 + grid_height * grid_width, D] float32: the table unchanged at the pretraining grid (518 x 518
        for patch 14), as the official code returns it there. The official code maps the width-derived size to the
        first spatial axis; for square inputs (every DINOv2 deployment) that is the identity, and we keep the
        official order so non-square results equal the official ones too.
    """
    table = pos_embed.detach().float()
    class_pos, patch_pos = table[:, :1], table[:, 1:]
    dim = table.shape[-1]
    side = math.isqrt(patch_pos.shape[1])
    if side * side != patch_pos.shape[1]:
        raise ValueError(f"pos_embed has {patch_pos.shape[1]} patch positions, not a square number")
    if grid_height == grid_width == side:
        # As the official code does for an input of the pretraining grid: the table itself. Resampled, the
        # non-register models' offset (a scale factor of 37.1 / 37) would move every row. A copy: the model keeps
        # it as a buffer of its own, not as a second name for its pos_embed parameter.
        return table.clone()
    first, second = grid_width, grid_height
    grid = patch_pos.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    if offset:
        size_or_scale: dict[str, object] = {"scale_factor": ((first + offset) / side, (second + offset) / side)}
    else:
        size_or_scale = {"size": (first, second)}
    resized = F.interpolate(grid, mode="bicubic", antialias=antialias, **size_or_scale)  # type: ignore[arg-type]
    if tuple(resized.shape[-2:]) != (first, second):
        raise ValueError(f"positional resize produced {tuple(resized.shape[-2:])}, expected {(first, second)}")
    return torch.cat((class_pos, resized.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)


class DinoVisionTransformer(nn.Module):
    """A DINOv2 backbone whose ``forward`` returns the final-norm CLS token, [N, D] (not L2-normalised)."""

    def __init__(self, spec: VariantSpec) -> None:
        super().__init__()
        self.spec = spec
        dim = spec.embed_dim
        self.patch_embed = PatchEmbed(spec.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + spec.pretrain_grid**2, dim))
        if spec.num_registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, spec.num_registers, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.norm = nn.LayerNorm(dim, eps=spec.layernorm_eps)
        # Not in the state dict: derived from pos_embed and the input size by bake_positional_table().
        self.register_buffer("baked_pos_embed", torch.empty(0), persistent=False)
        self.baked_input_size: tuple[int, int] | None = None

    def init_random(self, seed: int) -> None:
        """Seeded initialisation in the official style (truncated normal 0.02, tiny CLS/register tokens)."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name.endswith("gamma"):
                    param.fill_(self.spec.layerscale_init)
                elif name in ("cls_token", "register_tokens"):
                    param.normal_(std=1e-6, generator=generator)
                elif name == "mask_token" or name.endswith("bias"):
                    param.zero_()
                elif "norm" in name:
                    param.fill_(1.0)
                else:
                    param.copy_(_truncated_normal(param.shape, std=0.02, generator=generator))

    def bake_positional_table(self, height: int, width: int) -> None:
        """Compute the positional table for [H, W] inputs once, in fp32, and keep it in the model's dtype."""
        patch = self.spec.patch_size
        if height % patch or width % patch:
            raise ValueError(f"input size {height}x{width} is not a multiple of the patch size {patch}")
        with torch.no_grad():
            table = resize_positional_table(
                self.pos_embed,
                grid_height=height // patch,
                grid_width=width // patch,
                offset=self.spec.interpolate_offset,
                antialias=self.spec.interpolate_antialias,
            )
        self.baked_pos_embed = table.to(self.pos_embed.dtype)
        self.baked_input_size = (height, width)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.baked_input_size is None:
            raise RuntimeError("call bake_positional_table(height, width) before forward")
        if not torch.jit.is_tracing() and tuple(images.shape[-2:]) != self.baked_input_size:
            raise ValueError(f"input is {tuple(images.shape[-2:])}, model was baked for {self.baked_input_size}")
        tokens = self.patch_embed(images)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        tokens = torch.cat((cls, tokens), dim=1) + self.baked_pos_embed
        if self.spec.num_registers:
            registers = self.register_tokens.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1)
        for block in self.blocks[:-1]:
            tokens = block(tokens)
        return self.norm(self.blocks[-1](tokens, query_tokens=1)[:, 0])


def _truncated_normal(shape: torch.Size, *, std: float, generator: torch.Generator) -> torch.Tensor:
    """Normal(0, std) truncated to +-2 std, by redrawing out-of-range samples (deterministic for a seed)."""
    values = torch.randn(shape, generator=generator)
    # Only the redrawn samples are checked again (a whole-tensor pass per round made ViT-g's init take a minute);
    # they are redrawn in the same order as a whole-tensor mask would give, so a seed makes the same weights.
    outside = (values.abs() > 2).nonzero(as_tuple=True)
    while outside[0].numel():
        redrawn = torch.randn(outside[0].numel(), generator=generator)
        values[outside] = redrawn
        still = redrawn.abs() > 2
        outside = tuple(index[still] for index in outside)
    return values * std
