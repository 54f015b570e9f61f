"""The deployed forward computes the last block for the CLS token only; its features equal the full forward's."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.models.variants import get_variant
from harness.models.weights import load_backbone


@pytest.mark.parametrize("variant", ["tiny14", "tiny14_reg4", "tinyg14_reg4"])
def test_cls_only_last_block_equals_every_token_through_every_block(tmp_path: Path, variant: str) -> None:
    model, _ = load_backbone(
        get_variant(variant), weights="random", seed=3, cache_dir=tmp_path, input_size=(112, 140), progress=False
    )
    images = torch.randn(3, 3, 112, 140, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        deployed = model(images)
        tokens = model.patch_embed(images)
        tokens = torch.cat((model.cls_token.expand(3, -1, -1), tokens), dim=1) + model.baked_pos_embed
        if model.spec.num_registers:
            registers = model.register_tokens.expand(3, -1, -1)
            tokens = torch.cat((tokens[:, :1], registers, tokens[:, 1:]), dim=1)
        for block in model.blocks:
            tokens = block(tokens)
        full = model.norm(tokens)[:, 0]
    assert deployed.shape == full.shape == (3, model.spec.embed_dim)
    torch.testing.assert_close(deployed, full, rtol=1e-5, atol=1e-5)
    # Not vacuous: the other tokens' last-block outputs differ from the CLS token's.
    assert not torch.allclose(model.norm(tokens)[:, 1], full, atol=1e-3)
