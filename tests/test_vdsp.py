"""vdsp params: the three real vendor layouts, every NormaType and resize, and the torchvision default."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.data.photos import sample_photos
from harness.errors import ConfigError, DataError
from harness.preprocess import IMAGENET_MEAN, IMAGENET_STD, default_params, default_transform
from harness.vdsp import (
    device_input,
    fp16_from_bits,
    load_vdsp,
    parse_vdsp,
    preprocess,
    resize_bilinear_cv,
    to_vdsp_json,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "vastai"


def test_new_format_official_dinov2() -> None:
    params = load_vdsp(FIXTURES / "official-dinov2_vitl14_reg4-vdsp_params.json")
    assert params.source_format == "new" and params.op_type == "FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR"
    assert params.output_size == (224, 224) and params.norma_type == "DIV255_MINUSMEAN_DIVSTD"
    assert params.resize_type == "BILINEAR_CV" and params.color_cvt_code == "NO_CHANGE"
    assert params.mean == (0.485107421875, 0.4560546875, 0.406005859375) and params.std[0] == 0.22900390625


def test_legacy_property_list_with_fp16_bit_patterns() -> None:
    params = load_vdsp(FIXTURES / "legacy-proplist-vdsp_params.json")
    assert params.source_format == "legacy-proplist" and params.output_size == (640, 640)
    assert params.mean[0] == pytest.approx(0.4851, abs=1e-4) and params.std[2] == pytest.approx(fp16_from_bits(13107))
    assert (params.norma_type, params.resize_type, params.color_cvt_code) == ("DIV255", "BILINEAR_CV", "NO_CHANGE")


def test_legacy_flat_with_numeric_enums() -> None:
    params = load_vdsp(FIXTURES / "legacy-flat-vdsp_params.json")
    assert params.source_format == "legacy-flat" and params.op_type == "301" and params.output_size == (32, 100)
    assert params.mean == (0.5, 0.5, 0.5) and params.norma_type == "DIV255_MINUSMEAN_DIVSTD"
    assert params.resize_type == "code 1" and params.color_cvt_code == "code 2"  # undocumented: kept, not guessed
    with pytest.raises(ConfigError, match=r"vdsp resize_type='code 1' is not documented"):
        preprocess(Image.new("RGB", (100, 32)), params)


def test_fp16_bit_patterns() -> None:
    assert fp16_from_bits(14275) == pytest.approx(0.4851, abs=1e-4)
    assert fp16_from_bits(22459) == pytest.approx(123.69, abs=0.01)


def test_malformed_files_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a vdsp params file"):
        parse_vdsp({"something": 1}, source="x.json")
    with pytest.raises(DataError, match=r"x.json: NormaType='DIV7': expected one of"):
        parse_vdsp(
            {
                "OpType": "A",
                "OpConfig": {
                    "OimageWidth": 2,
                    "OimageHeight": 2,
                    "Mean": [0, 0, 0],
                    "Std": [1, 1, 1],
                    "NormaType": "DIV7",
                },
            },
            source="x.json",
        )
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(DataError, match=r"broken\.json: cannot read vdsp params"):
        load_vdsp(broken)
    latin1 = tmp_path / "latin1.json"
    latin1.write_bytes('{"OpType": "caf\u00e9"}'.encode("latin-1"))  # was a UnicodeDecodeError traceback
    with pytest.raises(DataError, match=r"latin1\.json: cannot read vdsp params \('utf-8' codec can't decode"):
        load_vdsp(latin1)


def test_a_vendor_file_saved_with_a_byte_order_mark_reads_as_without(tmp_path: Path) -> None:
    # Windows editors start UTF-8 files with a BOM, which json.loads refuses ("Unexpected UTF-8 BOM").
    official = FIXTURES / "official-dinov2_vitl14_reg4-vdsp_params.json"
    marked = tmp_path / "vdsp_params.json"
    marked.write_bytes(b"\xef\xbb\xbf" + official.read_bytes())
    assert load_vdsp(marked) == load_vdsp(official)


def official_with(**changes: object) -> dict[str, object]:
    """The official DINOv2 params file with ``changes`` to its OpConfig (a value of None removes the field)."""
    data = json.loads((FIXTURES / "official-dinov2_vitl14_reg4-vdsp_params.json").read_text())
    for field, value in changes.items():
        if value is None:
            del data["OpConfig"][field]
        else:
            data["OpConfig"][field] = value
    return data


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"NormaType": None}, "missing field 'NormaType'"),
        ({"OimageWidth": "abc"}, "OimageWidth='abc': expected an integer"),
        ({"OimageWidth": 224.5}, "OimageWidth=224.5: expected an integer"),
        ({"IimageHeight": True}, "IimageHeight=True: expected an integer"),
        ({"OimageWidth": 0}, "OimageHeight=224, OimageWidth=0: expected positive sizes"),
        ({"Std": [0, 1, 1]}, "Std=[0.0, 1.0, 1.0]: NormaType=DIV255_MINUSMEAN_DIVSTD divides by it"),
        ({"Std": [1, 1e-46, 1]}, "Std=[1.0, 1e-46, 1.0]: NormaType=DIV255_MINUSMEAN_DIVSTD divides by it"),  # 0 in fp32
        ({"Mean": [0.5, float("nan"), 0.5]}, "Mean=[0.5, nan, 0.5]: expected three finite numbers"),
        (
            {"CropWidth": 500, "CropHeight": 10},
            "CropX=0, CropY=0, CropWidth=500, CropHeight=10: expected a non-empty crop inside the 224x224 (H x W) "
            "resized image",
        ),
        ({"CropX": -1, "CropWidth": 10, "CropHeight": 10}, "CropX=-1, CropY=0, CropWidth=10, CropHeight=10"),
    ],
)
def test_a_value_the_preprocessing_cannot_use_is_refused_naming_its_field(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(DataError) as refused:
        parse_vdsp(official_with(**changes), source="v.json")
    assert str(refused.value).startswith(f"v.json: {message}"), refused.value


def test_a_legacy_bit_pattern_that_is_not_an_integer_is_named() -> None:
    data = json.loads((FIXTURES / "legacy-flat-vdsp_params.json").read_text())
    data["stdg"] = "0x3800"
    with pytest.raises(DataError, match=r"^v.json: stdg='0x3800': expected an integer$"):
        parse_vdsp(data, source="v.json")
    data["stdg"] = 0  # fp16 bit pattern of 0.0: norma_type 4 divides by it
    with pytest.raises(DataError, match=r"^v.json: std=\[0.5, 0.0, 0.5\]: norma_type=DIV255_MINUSMEAN_DIVSTD"):
        parse_vdsp(data, source="v.json")


def test_a_crop_makes_the_tensor_the_model_is_fed() -> None:
    params = parse_vdsp(official_with(OimageWidth=256, OimageHeight=256, CropX=16, CropY=16, CropWidth=224,
                                      CropHeight=224))  # fmt: skip
    assert params.output_size == (256, 256) and params.crop == (16, 16, 224, 224) and params.tensor_size == (224, 224)
    photo = sample_photos(1)[0][1]
    assert preprocess(photo, params).shape == (3, 224, 224)


@pytest.mark.parametrize(
    ("norma_type", "mean", "std", "expected"),
    [
        ("EQUAL", (0, 0, 0), (1, 1, 1), (100.0, 50.0, 200.0)),
        (
            "MINUSMEAN_DIVSTD",
            (123.675, 116.28, 103.53),
            (58.395, 57.12, 57.375),
            ((100 - 123.675) / 58.395, (50 - 116.28) / 57.12, (200 - 103.53) / 57.375),
        ),
        (
            "DIV255_MINUSMEAN_DIVSTD",
            IMAGENET_MEAN,
            IMAGENET_STD,
            ((100 / 255 - 0.485) / 0.229, (50 / 255 - 0.456) / 0.224, (200 / 255 - 0.406) / 0.225),
        ),
        ("DIV255", (9, 9, 9), (9, 9, 9), (100 / 255, 50 / 255, 200 / 255)),
        ("DIV1275_MINUSONE", (0, 0, 0), (1, 1, 1), (100 / 127.5 - 1, 50 / 127.5 - 1, 200 / 127.5 - 1)),
    ],
)
def test_every_norma_type(norma_type: str, mean: tuple, std: tuple, expected: tuple) -> None:
    params = dataclasses.replace(
        default_params((4, 4)), norma_type=norma_type, mean=mean, std=std, resize_type="BILINEAR_CV"
    )
    output = preprocess(Image.new("RGB", (4, 4), (100, 50, 200)), params)
    assert output.shape == (3, 4, 4) and output.dtype == np.float32
    np.testing.assert_allclose(output[:, 0, 0], expected, rtol=1e-5)


def test_bilinear_cv_is_half_pixel_bilinear_without_antialias() -> None:
    pixels = np.array([[0, 100], [200, 40]], dtype=np.uint8)[:, :, None]
    np.testing.assert_array_equal(resize_bilinear_cv(pixels, (2, 2)), pixels.astype(np.float32))
    up = resize_bilinear_cv(pixels, (4, 4))[:, :, 0]
    # output column 1 samples x = 0.25: 0.75 * left + 0.25 * right; the edges clamp
    assert up[0].tolist() == [0.0, 25.0, 75.0, 100.0]
    row = np.arange(8, dtype=np.uint8)[None, :, None] * 10
    # 8 -> 2 samples x = 1.5 and 5.5 only (no antialias): the mean of two neighbours, not of four
    assert resize_bilinear_cv(row, (1, 2))[0, :, 0].tolist() == [15.0, 55.0]


def test_colour_conversion_and_crop() -> None:
    image = Image.new("RGB", (8, 8), (10, 20, 30))
    params = dataclasses.replace(
        default_params((8, 8)), norma_type="EQUAL", color_cvt_code="RGB2BGR", crop=(2, 2, 4, 3)
    )
    output = preprocess(image, params)
    assert output.shape == (3, 3, 4) and output[:, 0, 0].tolist() == [30.0, 20.0, 10.0]


def torchvision_definition(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """Resize([H, W]) -> ToTensor -> Normalize, written from torchvision's definitions for PIL inputs."""
    resized = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)  # transforms.Resize on a PIL image
    tensor = torch.from_numpy(np.array(resized, copy=True)).permute(2, 0, 1).contiguous().float().div(255)  # ToTensor
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (tensor - mean) / std  # Normalize


def test_default_pipeline_equals_the_torchvision_definition_on_real_photos() -> None:
    for _, photo in sample_photos(6):
        np.testing.assert_allclose(
            default_transform(photo, (224, 224)), torchvision_definition(photo, (224, 224)).numpy(), atol=1e-6
        )


@pytest.mark.parametrize("name", ["official-dinov2_vitl14_reg4-vdsp_params.json", "legacy-proplist-vdsp_params.json"])
def test_what_vamp_is_given_parses_back_to_the_same_preprocessing(name: str) -> None:
    params = load_vdsp(FIXTURES / name)
    written = to_vdsp_json(params)
    again = parse_vdsp(written)
    assert dataclasses.replace(again, op_type=params.op_type, source_format=params.source_format) == params
    assert written["OpConfig"]["IimageWidth"] == params.input_size[1]  # type: ignore[index]


def test_the_default_pipeline_is_written_as_the_zoo_fused_op() -> None:
    written = to_vdsp_json(default_params((224, 448)))
    assert written["OpType"] == "FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR"
    config = written["OpConfig"]
    assert (config["IimageWidth"], config["IimageHeight"], config["OimageWidth"], config["OimageHeight"]) == (
        448, 224, 448, 224
    )  # fmt: skip
    assert config["ResizeType"] == "BILINEAR_PILLOW" and config["NormaType"] == "DIV255_MINUSMEAN_DIVSTD"


@pytest.mark.parametrize("resize_type", ["BILINEAR_CV", "BILINEAR_PILLOW"])
def test_device_inputs_are_the_resized_photo_in_uint8_planar(resize_type: str) -> None:
    params = dataclasses.replace(load_vdsp(FIXTURES / "official-dinov2_vitl14_reg4-vdsp_params.json"),
                                 resize_type=resize_type)  # fmt: skip
    for _, photo in sample_photos(3):
        planar = device_input(photo, params)
        assert planar.dtype == np.uint8 and planar.shape == (3, 224, 224)
        # The device normalises what it reads; that equals the float pipeline up to the uint8 rounding of the resize.
        on_device = preprocess(Image.fromarray(planar.transpose(1, 2, 0)), params)
        np.testing.assert_allclose(on_device, preprocess(photo, params), atol=0.51 / 255 / min(params.std) + 1e-6)
    with pytest.raises(ConfigError, match=r"vdsp IimageFormat='BGR_PLANAR': device inputs are written as RGB_PLANAR"):
        device_input(photo, dataclasses.replace(params, input_format="BGR_PLANAR"))


def test_an_undocumented_enum_is_not_written_for_vamp() -> None:
    with pytest.raises(ConfigError, match=r"vdsp resize_type='code 1' is not documented"):
        to_vdsp_json(load_vdsp(FIXTURES / "legacy-flat-vdsp_params.json"))
