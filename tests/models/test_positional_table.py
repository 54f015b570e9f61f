"""The baked positional table against independent computations of the official per-family resize.

Non-register models: bicubic (A = -0.75, no antialias) with the source step 37 / 16.1, written out here in
numpy. Register models: antialiased bicubic to 16x16, which is PIL's bicubic filter (a = -0.5, support
scaled with the shrink factor), computed by PIL itself on float images.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from harness.models.dinov2 import DinoVisionTransformer, resize_positional_table
from harness.models.variants import get_variant


def cubic_weight(distance: float, a: float = -0.75) -> float:
    x = abs(distance)
    if x <= 1:
        return ((a + 2) * x - (a + 3)) * x * x + 1
    if x < 2:
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return 0.0


def bicubic_axis_matrix(size_in: int, size_out: int, scale_factor: float) -> np.ndarray:
    """[out, in] weights of PyTorch's non-antialiased bicubic along one axis, align_corners=False."""
    matrix = np.zeros((size_out, size_in))
    for out in range(size_out):
        source = (out + 0.5) / scale_factor - 0.5
        base = math.floor(source)
        fraction = source - base
        for tap in range(-1, 3):
            index = min(max(base + tap, 0), size_in - 1)
            matrix[out, index] += cubic_weight(tap - fraction)
    return matrix


def official_non_register_table(pos_embed: np.ndarray, grid: int) -> np.ndarray:
    side = math.isqrt(pos_embed.shape[1] - 1)
    patches = pos_embed[0, 1:].reshape(side, side, -1).astype(np.float64)
    axis = bicubic_axis_matrix(side, grid, (grid + 0.1) / side)
    resized = np.einsum("ai,bj,ijd->abd", axis, axis, patches)
    return np.concatenate([pos_embed[0, :1], resized.reshape(grid * grid, -1)])[None]


def pil_register_table(pos_embed: np.ndarray, grid: int) -> np.ndarray:
    side = math.isqrt(pos_embed.shape[1] - 1)
    patches = pos_embed[0, 1:].reshape(side, side, -1)
    channels = [
        np.asarray(
            Image.fromarray(patches[:, :, channel].astype(np.float32), "F").resize(
                (grid, grid), Image.Resampling.BICUBIC
            )
        )
        for channel in range(patches.shape[-1])
    ]
    return np.concatenate([pos_embed[0, :1], np.stack(channels, axis=-1).reshape(grid * grid, -1)])[None]


@pytest.fixture
def pos_embed() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(1, 1 + 37 * 37, 32, generator=generator)


def test_non_register_resize_uses_the_offset_scale_factor(pos_embed: torch.Tensor) -> None:
    table = resize_positional_table(pos_embed, grid_height=16, grid_width=16, offset=0.1, antialias=False)
    expected = official_non_register_table(pos_embed.numpy(), 16)
    np.testing.assert_allclose(table.numpy(), expected, atol=2e-5)
    # Resizing to the exact size (the timm / transformers path) gives a measurably different table.
    exact_size = torch.nn.functional.interpolate(
        pos_embed[:, 1:].reshape(1, 37, 37, 32).permute(0, 3, 1, 2), size=(16, 16), mode="bicubic"
    )
    assert np.abs(exact_size.permute(0, 2, 3, 1).reshape(1, 256, 32).numpy() - expected[:, 1:]).max() > 1e-2


@pytest.mark.parametrize(("offset", "antialias"), [(0.1, False), (0.0, True)], ids=["non-register", "register"])
def test_the_pretraining_grid_keeps_the_table_itself(pos_embed: torch.Tensor, offset: float, antialias: bool) -> None:
    """The official ``interpolate_pos_encoding`` returns ``pos_embed`` when the input has its grid (518 x 518):
    resampled with the non-register models' offset (scale 37.1 / 37), every row moved, and the features of a
    518 x 518 input differed from DINOv2's (and timm's) by 1e-3 of their size (tests/models/test_layouts.py)."""
    table = resize_positional_table(pos_embed, grid_height=37, grid_width=37, offset=offset, antialias=antialias)
    assert torch.equal(table, pos_embed)
    # Baked, it stays a buffer of its own: the parameter itself, returned, became a second parameter of the model.
    model = DinoVisionTransformer(get_variant("tiny14" if offset else "tiny14_reg4"))
    model.init_random(0)
    model.bake_positional_table(518, 518)
    assert "baked_pos_embed" in dict(model.named_buffers()) and "baked_pos_embed" not in dict(model.named_parameters())
    assert torch.equal(model.baked_pos_embed, model.pos_embed.detach())
    assert model.baked_pos_embed.data_ptr() != model.pos_embed.data_ptr()
    resampled = official_non_register_table(pos_embed.numpy(), 37)
    assert np.abs(resampled - pos_embed.numpy()).max() > 1e-2  # what the offset path would have made of it


def test_register_resize_is_antialiased_bicubic(pos_embed: torch.Tensor) -> None:
    table = resize_positional_table(pos_embed, grid_height=16, grid_width=16, offset=0.0, antialias=True)
    np.testing.assert_allclose(table.numpy(), pil_register_table(pos_embed.numpy(), 16), atol=2e-5)


@pytest.mark.parametrize("name", ["tiny14", "tiny14_reg4"])
def test_model_bakes_its_family_resize_in_fp32(name: str) -> None:
    model = DinoVisionTransformer(get_variant(name))
    model.init_random(0)
    model.bake_positional_table(224, 224)
    source = model.pos_embed.detach().numpy()
    expected = official_non_register_table(source, 16) if name == "tiny14" else pil_register_table(source, 16)
    assert model.baked_pos_embed.dtype == torch.float32
    np.testing.assert_allclose(model.baked_pos_embed.numpy(), expected, atol=2e-5)
    half = model.half()
    assert half.baked_pos_embed.dtype == torch.float16


def test_registers_get_no_positional_embedding() -> None:
    """Shifting every positional entry must not change the register tokens' input, only CLS and patches'."""
    model = DinoVisionTransformer(get_variant("tiny14_reg4")).eval()
    model.init_random(0)
    model.bake_positional_table(224, 224)
    captured: list[torch.Tensor] = []
    model.blocks[0].register_forward_pre_hook(lambda _module, args: captured.append(args[0].clone()))
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        model(images)
        model.baked_pos_embed += 1.0
        model(images)
    before, after = captured
    assert before.shape == (1, 1 + 4 + 256, 64)
    torch.testing.assert_close(after[:, 1:5], before[:, 1:5])
    torch.testing.assert_close(after[:, :1], before[:, :1] + 1.0)
    torch.testing.assert_close(after[:, 5:], before[:, 5:] + 1.0)


def test_forward_refuses_an_input_size_it_was_not_baked_for() -> None:
    model = DinoVisionTransformer(get_variant("tiny14")).eval()
    model.bake_positional_table(224, 224)
    with pytest.raises(ValueError, match=r"baked for \(224, 224\)"):
        model(torch.zeros(1, 3, 112, 112))
