"""Checkpoints in timm's and transformers' layouts (and as safetensors) give those libraries' own features;
other files are refused by name.

``tests/fixtures/layouts/reference.json`` was written by ``bench/layout_reference.py`` with timm 1.0.31,
transformers 4.57.6 and transformers 5.25.0 themselves: per library and test variant, its model of that shape, the key names and shapes,
the seeds of every tensor and of the inputs, and the features it computed. The tensors are drawn again here from
the same seeds, so the check is against the library's forward pass, not against an inverse of the harness's own
mapping.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from bench.layout_reference import seeded_images, seeded_state
from harness.errors import WeightsError
from harness.models.dinov2 import DinoVisionTransformer
from harness.models.variants import get_variant
from harness.models.weights import backbone_from, read_checkpoint

REFERENCE = json.loads((Path(__file__).parents[1] / "fixtures" / "layouts" / "reference.json").read_text())


def library_state(library: str, variant: str) -> dict[str, torch.Tensor]:
    case = REFERENCE[library][variant]
    keys = [(name, shape) for name, shape in case["keys"]]
    return {name: torch.from_numpy(values) for name, values in seeded_state(keys, case["weights_seed"]).items()}


def timm_state(variant: str) -> dict[str, torch.Tensor]:
    return library_state("timm", variant)


def features(checkpoint: Path, library: str, variant: str) -> np.ndarray:
    size = REFERENCE["image_size"]
    model = backbone_from(get_variant(variant), checkpoint=checkpoint, seed=0, input_size=(size, size))
    with torch.inference_mode():
        images = torch.from_numpy(seeded_images(REFERENCE[library][variant]["images_seed"]))
        return model(images).numpy()


@pytest.mark.parametrize("library", ["timm", "transformers", "transformers5"])
@pytest.mark.parametrize("variant", ["tiny14", "tiny14_reg4", "tinyg14_reg4"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_a_library_checkpoint_gives_that_librarys_features(
    library: str, variant: str, suffix: str, tmp_path: Path
) -> None:
    path = tmp_path / f"{library}{suffix}"
    state = library_state(library, variant)
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    expected = np.asarray(REFERENCE[library][variant]["features"], dtype=np.float32)
    got = features(path, library, variant)
    assert got.shape == expected.shape == (2, 64)
    # Same arithmetic in another order (the libraries' attention and feed-forward modules): float32 rounding.
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


@pytest.mark.parametrize("variant", ["tiny14", "tiny14_reg4", "tinyg14_reg4"])
def test_transformers_5_saves_transformers_4s_names(variant: str) -> None:
    # Recorded from save_pretrained itself: the files users share have the names the transformers layout maps,
    # whichever version wrote them; transformers 5's own names reach a file only through torch.save.
    version_4, version_5 = REFERENCE["transformers"][variant], REFERENCE["transformers5"][variant]
    assert version_5["saved_keys"] == version_4["saved_keys"] == sorted(name for name, _ in version_4["keys"])
    assert {name for name, _ in version_5["keys"]} != set(version_5["saved_keys"])


def test_the_backbone_of_a_transformers_image_classifier_is_taken_without_its_head(tmp_path: Path) -> None:
    # Dinov2ForImageClassification (the hub's facebook/dinov2-*-imagenet1k-1-layer): dinov2.* and classifier.*.
    state = {f"dinov2.{name}": tensor for name, tensor in library_state("transformers", "tiny14_reg4").items()}
    state |= {"classifier.weight": torch.ones(10, 128), "classifier.bias": torch.zeros(10)}
    save_file(state, tmp_path / "classifier.safetensors")
    expected = np.asarray(REFERENCE["transformers"]["tiny14_reg4"]["features"], dtype=np.float32)
    got = features(tmp_path / "classifier.safetensors", "transformers", "tiny14_reg4")
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))


def test_the_class_tokens_positional_row_folded_in_by_timm_is_restored_as_zero(tmp_path: Path) -> None:
    state = timm_state("tiny14_reg4")
    save_file(state, tmp_path / "timm.safetensors")
    model = backbone_from(
        get_variant("tiny14_reg4"), checkpoint=tmp_path / "timm.safetensors", seed=0, input_size=(224, 224)
    )
    assert torch.equal(model.pos_embed[:, 0], torch.zeros(1, 64))
    assert torch.equal(model.pos_embed[:, 1:], state["pos_embed"]) and torch.equal(model.cls_token, state["cls_token"])
    assert torch.equal(model.register_tokens, state["reg_token"])


def test_a_dinov2_checkpoint_saved_as_safetensors_loads_unchanged(tmp_path: Path) -> None:
    spec = get_variant("tinyg14_reg4")
    reference = DinoVisionTransformer(spec)
    reference.init_random(3)
    save_file(reference.state_dict(), tmp_path / "dinov2.safetensors")
    loaded = read_checkpoint(tmp_path / "dinov2.safetensors")
    assert loaded.keys() == reference.state_dict().keys()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in reference.state_dict().items())
    model = backbone_from(spec, checkpoint=tmp_path / "dinov2.safetensors", seed=0, input_size=(224, 224))
    assert torch.equal(model.mask_token, reference.mask_token)


def test_a_truncated_or_foreign_checkpoint_is_named(tmp_path: Path) -> None:
    path = tmp_path / "cut.safetensors"
    save_file(timm_state("tiny14"), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsError, match=r"cut.safetensors: not a readable safetensors file \(SafetensorError: "):
        read_checkpoint(path)
    # A transformers checkpoint with a module neither version has: named, with what is mapped.
    foreign = library_state("transformers", "tiny14") | {"encoder.layer.0.attention.rotary.weight": torch.zeros(8)}
    save_file(foreign, tmp_path / "model.safetensors")
    with pytest.raises(WeightsError) as refused:
        backbone_from(get_variant("tiny14"), checkpoint=tmp_path / "model.safetensors", seed=0, input_size=(224, 224))
    assert str(refused.value) == (
        f"{tmp_path / 'model.safetensors'}: a Hugging Face transformers checkpoint with keys this harness does not "
        "map (1: encoder.layer.0.attention.rotary.weight); it maps Dinov2Model and Dinov2WithRegistersModel as the "
        "hub's facebook/dinov2-* files name them (transformers 4 and 5)"
    )
    # Parts of one matrix missing, or mixed from both versions' names: which block, and what goes together.
    mixed = library_state("transformers5", "tiny14")
    mixed["encoder.layer.1.attention.attention.key.weight"] = mixed.pop("encoder.layer.1.attention.k_proj.weight")
    save_file(mixed, tmp_path / "mixed.safetensors")
    with pytest.raises(WeightsError) as refused:
        backbone_from(get_variant("tiny14"), checkpoint=tmp_path / "mixed.safetensors", seed=0, input_size=(224, 224))
    assert str(refused.value).endswith(
        "block 1's weight has attention.attention.key, attention.q_proj, attention.v_proj where attention.q_proj, "
        "attention.k_proj, attention.v_proj go together"
    )
    # timm's checkpoint of another variant: the mismatch is named in DINOv2's terms.
    save_file(timm_state("tiny14_reg4"), tmp_path / "reg4.safetensors")
    with pytest.raises(WeightsError, match=r"reg4.safetensors does not fit tiny14: unexpected \(1\): register_tokens"):
        backbone_from(get_variant("tiny14"), checkpoint=tmp_path / "reg4.safetensors", seed=0, input_size=(224, 224))
