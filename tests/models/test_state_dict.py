"""Official state-dict compatibility for every variant, against key lists written from the specification."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from harness.errors import ConfigError, WeightsError
from harness.models.dinov2 import DinoVisionTransformer
from harness.models.variants import OFFICIAL_VARIANTS, VARIANTS, get_variant
from harness.models.weights import backbone_from, load_backbone, load_state_dict_checked, read_checkpoint

# (D, depth, registers, giant) from docs/dinov2.md, independent of variants.py.
SPEC_TABLE = {
    "vits14": (384, 12, 0, False),
    "vits14_reg4": (384, 12, 4, False),
    "vitb14": (768, 12, 0, False),
    "vitb14_reg4": (768, 12, 4, False),
    "vitl14": (1024, 24, 0, False),
    "vitl14_reg4": (1024, 24, 4, False),
    "vitg14": (1536, 40, 0, True),
    "vitg14_reg4": (1536, 40, 4, True),
}
PUBLISHED_PARAMS_M = {"s": 21, "b": 86, "l": 300, "g": 1100}


def official_shapes(dim: int, depth: int, registers: int, giant: bool) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 1 + 37 * 37, dim),
        "mask_token": (1, dim),
        "patch_embed.proj.weight": (dim, 3, 14, 14),
        "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,),
        "norm.bias": (dim,),
    }
    if registers:
        shapes["register_tokens"] = (1, registers, dim)
    for block in range(depth):
        prefix = f"blocks.{block}."
        shapes.update({
            prefix + "norm1.weight": (dim,), prefix + "norm1.bias": (dim,),
            prefix + "attn.qkv.weight": (3 * dim, dim), prefix + "attn.qkv.bias": (3 * dim,),
            prefix + "attn.proj.weight": (dim, dim), prefix + "attn.proj.bias": (dim,),
            prefix + "ls1.gamma": (dim,), prefix + "norm2.weight": (dim,), prefix + "norm2.bias": (dim,),
            prefix + "ls2.gamma": (dim,),
        })  # fmt: skip
        if giant:
            shapes.update({
                prefix + "mlp.w12.weight": (8192, dim), prefix + "mlp.w12.bias": (8192,),
                prefix + "mlp.w3.weight": (dim, 4096), prefix + "mlp.w3.bias": (dim,),
            })  # fmt: skip
        else:
            shapes.update({
                prefix + "mlp.fc1.weight": (4 * dim, dim), prefix + "mlp.fc1.bias": (4 * dim,),
                prefix + "mlp.fc2.weight": (dim, 4 * dim), prefix + "mlp.fc2.bias": (dim,),
            })  # fmt: skip
    return shapes


def test_every_official_variant_is_in_the_table() -> None:
    assert set(OFFICIAL_VARIANTS) == set(SPEC_TABLE)


@pytest.mark.parametrize("name", sorted(SPEC_TABLE))
def test_official_keys_and_shapes_load_strictly(name: str) -> None:
    expected = official_shapes(*SPEC_TABLE[name])
    with torch.device("meta"):
        model = DinoVisionTransformer(get_variant(name))
    actual = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    assert actual == expected
    params_m = sum(tensor.numel() for tensor in model.state_dict().values()) / 1e6
    published = PUBLISHED_PARAMS_M[name[3]]
    assert abs(params_m - published) / published < 0.08  # published counts are rounded
    with torch.device("meta"):
        checkpoint = {key: torch.empty(shape) for key, shape in expected.items()}
    model.load_state_dict(checkpoint, strict=True, assign=True)


def test_official_urls_follow_the_hub_layout() -> None:
    assert get_variant("vitl14_reg4").checkpoint_url == (
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_reg4_pretrain.pth"
    )
    assert (
        get_variant("vitg14").checkpoint_url
        == "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitg14/dinov2_vitg14_pretrain.pth"
    )
    assert get_variant("vits14_reg4").hub_name == "dinov2_vits14_reg"


def test_unknown_variant_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"model.variant='vitl14_reg'.*did you mean 'vitl14_reg4'"):
        get_variant("vitl14_reg")


@pytest.mark.parametrize("name", [name for name, spec in VARIANTS.items() if spec.hub_name is None])
def test_checkpoint_file_round_trip_gives_identical_features(name: str, tmp_path: Path, cache_dir: Path) -> None:
    source, _ = load_backbone(get_variant(name), weights="random", seed=3, cache_dir=cache_dir, input_size=(224, 224))
    path = tmp_path / f"{name}.pth"
    torch.save(source.state_dict(), path)
    loaded, info = load_backbone(
        get_variant(name), weights=str(path), seed=0, cache_dir=cache_dir, input_size=(224, 224)
    )
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(source(images), loaded(images))
    assert info.kind == "path" and info.sha256 is not None and len(info.sha256) == 64


def test_a_checkpoint_becomes_the_fp32_parameters_without_a_second_copy(tmp_path: Path) -> None:
    spec = get_variant("tiny14_reg4")
    source = backbone_from(spec, checkpoint=None, seed=3, input_size=(224, 224))
    path = tmp_path / "tiny.pth"
    torch.save(source.state_dict(), path)
    state = read_checkpoint(path)
    with torch.device("meta"):
        model = DinoVisionTransformer(spec)
    load_state_dict_checked(model, state, source=str(path))
    # The file's tensors are the parameters: loading a ViT-g checkpoint does not hold two 4.5 GB copies at once.
    assert model.pos_embed.data_ptr() == state["pos_embed"].data_ptr() and not model.pos_embed.is_meta
    # A half-precision file gives the fp32 reference all the same, its values widened exactly.
    half = tmp_path / "tiny-fp16.pth"
    torch.save({key: value.half() for key, value in source.state_dict().items()}, half)
    widened = backbone_from(spec, checkpoint=half, seed=0, input_size=(224, 224))
    assert {tensor.dtype for tensor in widened.state_dict().values()} == {torch.float32}
    assert torch.equal(widened.pos_embed, source.pos_embed.half().float())


def test_random_weights_are_seeded(cache_dir: Path) -> None:
    spec = get_variant("tiny14")
    first, info = load_backbone(spec, weights="random", seed=1, cache_dir=cache_dir, input_size=(224, 224))
    again, _ = load_backbone(spec, weights="random", seed=1, cache_dir=cache_dir, input_size=(224, 224))
    other, _ = load_backbone(spec, weights="random", seed=2, cache_dir=cache_dir, input_size=(224, 224))
    assert info.kind == "random" and info.digest == "random-seed1"
    assert torch.equal(first.pos_embed, again.pos_embed)
    assert not torch.equal(first.pos_embed, other.pos_embed)


def test_mismatched_checkpoint_names_the_first_mismatches() -> None:
    model = DinoVisionTransformer(get_variant("tiny14_reg4"))
    state = model.state_dict()
    del state["register_tokens"]
    state["blocks.0.extra.weight"] = torch.zeros(1)
    state["norm.weight"] = torch.zeros(7)
    with pytest.raises(WeightsError) as caught:
        load_state_dict_checked(model, state, source="bad.pth")
    message = str(caught.value)
    assert "\n" not in message
    assert "missing (1): register_tokens" in message
    assert "unexpected (1): blocks.0.extra.weight" in message
    assert "norm.weight [7] != [64]" in message


def test_a_vitl_checkpoint_does_not_fit_a_vits_model(tmp_path: Path, cache_dir: Path) -> None:
    small = DinoVisionTransformer(get_variant("tiny14"))
    path = tmp_path / "wrong.pth"
    torch.save(small.state_dict(), path)
    with pytest.raises(WeightsError, match=r"wrong.pth does not fit tiny14_reg4: missing \(1\): register_tokens"):
        load_backbone(get_variant("tiny14_reg4"), weights=str(path), seed=0, cache_dir=cache_dir, input_size=(224, 224))


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (self.marker,))  # type: ignore[return-value]


def test_unsafe_pickle_is_refused_without_running_it(tmp_path: Path, cache_dir: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"cls_token": _RunsCode(str(marker))}, path)
    with pytest.raises(
        WeightsError, match=r"evil.pth: refused to unpickle: it holds more than plain tensors"
    ) as refused:
        load_backbone(get_variant("tiny14"), weights=str(path), seed=0, cache_dir=cache_dir, input_size=(224, 224))
    assert not marker.exists()
    assert "weights_only` set to `False`" not in str(refused.value)  # never the advice to unpickle unsafely


def test_a_file_that_is_no_checkpoint_is_named_without_unsafe_advice(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"these are not model weights\n" * 40)
    with pytest.raises(WeightsError) as refused:
        load_backbone(get_variant("tiny14"), weights=str(path), seed=0, cache_dir=cache_dir, input_size=(224, 224))
    assert (
        str(refused.value)
        == f"{path}: not a model checkpoint (neither torch.save's zip format, a pickle nor safetensors)"
    )
    assert "weights_only" not in str(refused.value)


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path, cache_dir: Path) -> None:
    path = tmp_path / "cut.pth"
    torch.save(DinoVisionTransformer(get_variant("tiny14")).state_dict(), path)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightsError, match=r"cut.pth: not a readable PyTorch checkpoint"):
        load_backbone(get_variant("tiny14"), weights=str(path), seed=0, cache_dir=cache_dir, input_size=(224, 224))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_checkpoint_holding_nan_or_inf_is_refused_naming_the_tensor(tmp_path: Path, bad: float) -> None:
    # It was read, exported and failed parity as "min cosine nan": the reference itself was NaN.
    state = DinoVisionTransformer(get_variant("tiny14")).state_dict()
    state["blocks.1.mlp.fc1.weight"][3, :2] = bad
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(WeightsError) as refused:
        read_checkpoint(tmp_path / "bad.pth")
    count = state["blocks.1.mlp.fc1.weight"].numel()
    assert (
        str(refused.value) == f"{tmp_path / 'bad.pth'}: blocks.1.mlp.fc1.weight holds NaN or inf (2 of {count} values)"
    )
    # Values so large that their float32 sum overflows are finite all the same: the file is read.
    state["blocks.1.mlp.fc1.weight"][3, :2] = torch.finfo(torch.float32).max
    torch.save(state, tmp_path / "large.pth")
    assert torch.equal(
        read_checkpoint(tmp_path / "large.pth")["blocks.1.mlp.fc1.weight"], state["blocks.1.mlp.fc1.weight"]
    )


def test_missing_checkpoint_path(cache_dir: Path) -> None:
    with pytest.raises(WeightsError, match=r"model.weights='/nope.pth': no such file"):
        load_backbone(get_variant("tiny14"), weights="/nope.pth", seed=0, cache_dir=cache_dir, input_size=(224, 224))


def test_a_training_checkpoint_is_refused_with_the_line_that_extracts_its_backbone(
    tmp_path: Path, cache_dir: Path
) -> None:
    # DINOv2's training saves the teacher's backbone and heads nested, beside the iteration count.
    spec = get_variant("tiny14")
    source, _ = load_backbone(spec, weights="random", seed=5, cache_dir=cache_dir, input_size=(224, 224))
    teacher = {f"backbone.{name}": tensor for name, tensor in source.state_dict().items()}
    teacher["dino_head.last_layer.weight"] = torch.zeros(8, 4)
    path = tmp_path / "teacher_checkpoint.pth"
    torch.save({"teacher": teacher, "iteration": 12499}, path)
    with pytest.raises(WeightsError) as refused:
        load_backbone(spec, weights=str(path), seed=0, cache_dir=cache_dir, input_size=(224, 224))
    message = str(refused.value)
    assert message.startswith(f"{path}: a training checkpoint (its tensors are nested under 'teacher'): ")
    # The advice works as printed: the file it writes loads and gives the teacher's features.
    statements = message.split("as the official checkpoints are: ", 1)[1].split("; then set model.weights", 1)[0]
    extracted = tmp_path / "backbone.pth"
    exec(statements.replace("'backbone.pth'", repr(str(extracted))), {"torch": torch})
    loaded, _ = load_backbone(spec, weights=str(extracted), seed=0, cache_dir=cache_dir, input_size=(224, 224))
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(loaded(images), source(images))


def test_random_weights_are_a_truncated_normal_that_a_seed_fixes() -> None:
    from harness.models.dinov2 import _truncated_normal

    def redrawn_by_whole_tensor_masks(shape: tuple[int, ...], seed: int) -> torch.Tensor:
        # The definition: redraw every sample outside +-2 std, in the tensor's order, until none is.
        generator = torch.Generator().manual_seed(seed)
        values = torch.randn(shape, generator=generator)
        while (outside := values.abs() > 2).any():
            values[outside] = torch.randn(int(outside.sum()), generator=generator)
        return values * 0.02

    for shape in [(3000, 700), (64,), (5, 7, 11)]:
        drawn = _truncated_normal(torch.Size(shape), std=0.02, generator=torch.Generator().manual_seed(7))
        assert torch.equal(drawn, redrawn_by_whole_tensor_masks(shape, 7))  # the same weights for a seed
        assert drawn.abs().max() <= 0.04
    # Normal(0, 0.02) cut at +-2 std has a std of 0.88 x 0.02.
    large = _truncated_normal(torch.Size((3000, 700)), std=0.02, generator=torch.Generator().manual_seed(0))
    assert float(large.std()) == pytest.approx(0.02 * 0.88, rel=0.01)
