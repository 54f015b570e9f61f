"""The vendor's preprocessing description ("vdsp params" JSON) and the preprocessing it implies.

Spec: ``docs/vdsp.md`` (the vendor's model-zoo vdsp params files). Two formats:

* new: ``OpType`` + ``OpConfig`` with float ``Mean`` / ``Std`` on the scale the ``NormaType`` implies;
* legacy: ``vdsp_op_type`` with flat fields or a ``config`` property list; ``meanr/g/b`` and ``stdr/g/b`` are
  uint16 fp16 bit patterns (14275 -> 0.4851, 22459 -> 123.69) and enums may be numbers.

Numeric enums are mapped only where their meaning is documented (``norma_type`` 3 and 4); any other number
is kept as ``code N`` and refused when preprocessing needs it, naming the field, instead of guessed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from harness.config.schema import Crop, VdspConfig, VdspParams
from harness.errors import ConfigError, DataError
from harness.fileio import write_text_atomic

NORMA_TYPES = ("EQUAL", "MINUSMEAN_DIVSTD", "DIV255_MINUSMEAN_DIVSTD", "DIV255", "DIV1275_MINUSONE")
RESIZE_TYPES = ("BILINEAR_CV", "BILINEAR_PILLOW", "BILINEAR")
COLOR_CONVERSIONS = ("NO_CHANGE", "BGR2RGB", "RGB2BGR")
NUMERIC_NORMA_TYPES = {3: "MINUSMEAN_DIVSTD", 4: "DIV255_MINUSMEAN_DIVSTD"}
# The zoo's fused preprocessing op (resize, colour conversion, normalisation), as its DINOv2 recipe names it.
DEVICE_OP_TYPE = "FUSION_OP_RGB_RESIZE_CVTCOLOR_NORM_TENSOR"
VDSP_FILE = "vdsp_params.json"


def fp16_from_bits(bits: int) -> float:
    """A uint16 fp16 bit pattern as a float (14275 -> 0.48510742...)."""
    return float(np.array([bits], dtype=np.uint16).view(np.float16)[0])


def _enum(value: object, allowed: tuple[str, ...], numeric: dict[int, str], field: str, source: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return numeric.get(value, f"code {value}")
    name = str(value).upper().removeprefix("COLOR_")
    if name not in allowed:
        raise DataError(f"{source}: {field}={value!r}: expected one of {list(allowed)}")
    return name


def _three(values: Any, field: str, source: str) -> tuple[float, float, float]:
    try:
        first, second, third = (float(value) for value in values)
    except (TypeError, ValueError):
        raise DataError(f"{source}: {field}={values!r}: expected three numbers") from None
    if not all(math.isfinite(value) for value in (first, second, third)):
        raise DataError(f"{source}: {field}={values!r}: expected three finite numbers")
    return first, second, third


def _integer(fields: dict[str, Any], field: str, source: str) -> int:
    """``fields[field]`` as an int (a ``KeyError`` when missing); a ``DataError`` for text, a fraction or a bool."""
    value = fields[field]
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or isinstance(value, bool) or number != float(value):
        raise DataError(f"{source}: {field}={value!r}: expected an integer")
    return number


def _size(fields: dict[str, Any], height: str, width: str, source: str) -> tuple[int, int]:
    size = (_integer(fields, height, source), _integer(fields, width, source))
    if min(size) <= 0:
        raise DataError(f"{source}: {height}={size[0]}, {width}={size[1]}: expected positive sizes")
    return size


def _crop(fields: dict[str, Any], keys: tuple[str, str, str, str], size: tuple[int, int], source: str) -> Crop | None:
    """(x, y, width, height) of the crop the params declare (by their width key), inside the resized image."""
    if keys[2] not in fields:
        return None
    x, y, width, height = (_integer(fields, key, source) if key in fields else 0 for key in keys)
    if min(x, y) < 0 or min(width, height) <= 0 or x + width > size[1] or y + height > size[0]:
        declared = ", ".join(f"{key}={value}" for key, value in zip(keys, (x, y, width, height), strict=True))
        raise DataError(
            f"{source}: {declared}: expected a non-empty crop inside the {size[0]}x{size[1]} (H x W) resized image"
        )
    return x, y, width, height


@dataclass(frozen=True)
class _Layout:
    """Key names of one vdsp JSON layout."""

    width: str
    height: str
    input_width: str
    input_height: str
    input_format: str
    norma_type: str
    resize_type: str
    color_cvt_code: str
    crop: tuple[str, str, str, str]


NEW_LAYOUT = _Layout(
    "OimageWidth", "OimageHeight", "IimageWidth", "IimageHeight", "IimageFormat", "NormaType", "ResizeType", "ColorCvtCode",
    ("CropX", "CropY", "CropWidth", "CropHeight"),
)  # fmt: skip
LEGACY_LAYOUT = _Layout(
    "oimage_width", "oimage_height", "iimage_width", "iimage_height", "iimage_format", "norma_type", "resize_type", "color_cvt_code",
    ("crop_x", "crop_y", "crop_width", "crop_height"),
)  # fmt: skip


def _fields(data: dict[str, Any], source: str) -> tuple[dict[str, Any], _Layout, str, object, tuple[str, str]]:
    """The op's fields, their layout, the format's name, the op type, and the names of its mean and std
    fields (the legacy layouts' are rewritten from fp16 bit patterns into floats under ``mean`` / ``std``)."""
    if "OpConfig" in data:
        return dict(data["OpConfig"]), NEW_LAYOUT, "new", data.get("OpType"), ("Mean", "Std")
    if "vdsp_op_type" not in data:
        raise DataError(f"{source}: neither OpType/OpConfig nor vdsp_op_type: not a vdsp params file")
    if "config" in data:
        fields = {entry["Property"]: entry["Value"] for entry in data["config"]}
        source_format = "legacy-proplist"
    else:
        fields = {key: value for key, value in data.items() if key != "vdsp_op_type"}
        source_format = "legacy-flat"
    for name in ("mean", "std"):
        fields[name] = [fp16_from_bits(_integer(fields, f"{name}{channel}", source)) for channel in "rgb"]
    return fields, LEGACY_LAYOUT, source_format, data["vdsp_op_type"], ("mean", "std")


def parse_vdsp(data: dict[str, Any], *, source: str = "vdsp params") -> VdspParams:
    """Parse any of the three vdsp JSON layouts into ``VdspParams``; a ``DataError`` naming ``source`` and the
    field for a value the preprocessing cannot use (a missing field, a size that is not a positive integer, a
    zero Std it would divide by, a crop outside the resized image)."""
    try:
        fields, layout, source_format, op_type, (mean_field, std_field) = _fields(data, source)
        mean, std = _three(fields[mean_field], mean_field, source), _three(fields[std_field], std_field, source)
        size = _size(fields, layout.height, layout.width, source)
        declares_input = layout.input_height in fields and layout.input_width in fields
        input_size = _size(fields, layout.input_height, layout.input_width, source) if declares_input else None
        norma_type = _enum(fields[layout.norma_type], NORMA_TYPES, NUMERIC_NORMA_TYPES, layout.norma_type, source)
        crop = _crop(fields, layout.crop, size, source)
    except KeyError as missing:
        raise DataError(f"{source}: missing field {missing.args[0]!r}") from None
    if norma_type.endswith("DIVSTD") and not np.asarray(std, dtype=np.float32).all():  # as preprocess divides
        raise DataError(f"{source}: {std_field}={list(std)}: {layout.norma_type}={norma_type} divides by it")
    return VdspParams(
        op_type=str(op_type),
        input_format=str(fields.get(layout.input_format, "RGB_PLANAR")),
        output_size=size,
        mean=mean,
        std=std,
        norma_type=norma_type,
        resize_type=_enum(fields.get(layout.resize_type, "BILINEAR_CV"), RESIZE_TYPES, {}, layout.resize_type, source),
        color_cvt_code=_enum(
            fields.get(layout.color_cvt_code, "NO_CHANGE"), COLOR_CONVERSIONS, {}, layout.color_cvt_code, source
        ),
        crop=crop,
        input_size=input_size,
        source_format=source_format,
    )


def load_vdsp(path: Path) -> VdspParams:
    try:
        # utf-8-sig: a vendor JSON saved by a Windows editor starts with a byte-order mark, which json refuses
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as error:  # ValueError: not JSON, or not text (UnicodeDecodeError)
        raise DataError(f"{path}: cannot read vdsp params ({error})") from None
    return parse_vdsp(data, source=str(path))


def resize_bilinear_cv(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """OpenCV-style bilinear resize (half-pixel centres, edge clamp, no antialias) of [H, W, C] to ``size`` (H, W).

    OpenCV's uint8 path rounds the weights to 11 bits; this computes them in float, so it may differ from
    ``cv2.resize`` by at most one grey level.
    """
    height, width = size

    def axis(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        source = (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5
        low = np.floor(source).astype(np.int64)
        fraction = (source - low).astype(np.float32)
        fraction[low < 0] = 0.0
        low = np.clip(low, 0, size_in - 1)
        fraction[low >= size_in - 1] = 0.0
        return low, np.minimum(low + 1, size_in - 1), fraction

    values = pixels.astype(np.float32)
    top, bottom, fy = axis(values.shape[0], height)
    left, right, fx = axis(values.shape[1], width)
    rows = values[top] * (1 - fy)[:, None, None] + values[bottom] * fy[:, None, None]
    return rows[:, left] * (1 - fx)[None, :, None] + rows[:, right] * fx[None, :, None]


def check_documented(params: VdspParams) -> None:
    """A ``ConfigError`` for an enum kept as ``code N``: its meaning is not documented, so it is not guessed."""
    for field in ("norma_type", "resize_type", "color_cvt_code"):
        if getattr(params, field).startswith("code "):
            raise ConfigError(
                f"vdsp {field}={getattr(params, field)!r} is not documented: set it by name in the vdsp config"
            )


def preprocess(image: Image.Image, params: VdspParams) -> np.ndarray:
    """RGB image -> [3, H, W] float32 model input as ``params`` describe."""
    check_documented(params)
    rgb = image.convert("RGB")
    if params.resize_type == "BILINEAR_PILLOW":
        height, width = params.output_size
        pixels = np.asarray(rgb.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    else:
        pixels = resize_bilinear_cv(np.asarray(rgb), params.output_size)
    if params.crop is not None:
        x, y, width, height = params.crop
        pixels = pixels[y : y + height, x : x + width]
    if params.color_cvt_code in ("BGR2RGB", "RGB2BGR"):
        pixels = pixels[:, :, ::-1]
    mean, std = np.asarray(params.mean, dtype=np.float32), np.asarray(params.std, dtype=np.float32)
    if params.color_cvt_code == "RGB2BGR":  # constants follow the output channel order
        mean, std = mean[::-1], std[::-1]
    normalised = {
        "EQUAL": lambda x: x,
        "MINUSMEAN_DIVSTD": lambda x: (x - mean) / std,
        "DIV255_MINUSMEAN_DIVSTD": lambda x: (x / np.float32(255.0) - mean) / std,
        "DIV255": lambda x: x / np.float32(255.0),
        "DIV1275_MINUSONE": lambda x: x / np.float32(127.5) - np.float32(1.0),
    }[params.norma_type](pixels)
    return np.ascontiguousarray(normalised.transpose(2, 0, 1), dtype=np.float32)


def to_vdsp_json(params: VdspParams) -> dict[str, Any]:
    """``params`` in the new vdsp JSON layout (what vamp's ``--vdsp_params`` reads), input as wide as output
    unless the params say otherwise; the default pipeline and legacy op numbers are written as the zoo's fused op."""
    check_documented(params)
    height, width = params.output_size
    input_height, input_width = params.input_size or params.output_size
    op_type = params.op_type if params.source_format == "new" else DEVICE_OP_TYPE
    config: dict[str, Any] = {
        "IimageFormat": params.input_format,
        "IimageWidth": input_width,
        "IimageHeight": input_height,
        "OimageWidth": width,
        "OimageHeight": height,
        "IimageWidthPitch": input_width,
        "IimageHeightPitch": input_height,
        "Mean": list(params.mean),
        "Std": list(params.std),
        "NormaType": params.norma_type,
        "ColorCvtCode": params.color_cvt_code,
        "ResizeType": params.resize_type,
    }
    if params.crop is not None:
        config.update(zip(NEW_LAYOUT.crop, params.crop, strict=True))
    return {"OpType": op_type, "OpConfig": config}


def device_input(image: Image.Image, params: VdspParams) -> np.ndarray:
    """The decoded image as the device's preprocessing reads it: RGB planar uint8 [3, H, W] at the params'
    input size (their output size where they declare none), resized on the host as they resize."""
    if params.input_format != "RGB_PLANAR":
        raise ConfigError(f"vdsp IimageFormat={params.input_format!r}: device inputs are written as RGB_PLANAR only")
    height, width = params.input_size or params.output_size
    rgb = image.convert("RGB")
    if params.resize_type == "BILINEAR_PILLOW":
        pixels = np.asarray(rgb.resize((width, height), Image.Resampling.BILINEAR))
    else:
        pixels = np.clip(np.rint(resize_bilinear_cv(np.asarray(rgb), (height, width))), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def vdsp_params_file(vdsp: VdspConfig, params: VdspParams, folder: Path) -> Path:
    """The vdsp params file a device preprocesses with: the configured file itself, else the resolved
    ``params`` written into ``folder`` in the layout vamp reads."""
    if vdsp.path:
        return Path(vdsp.path).expanduser().resolve()
    path = folder / VDSP_FILE
    write_text_atomic(path, json.dumps(to_vdsp_json(params), indent=2) + "\n")
    return path
