"""int8 builds: ONNX Runtime quantization of the harness's own verified fp32 ONNX build.

``static`` writes a QDQ graph (QuantizeLinear / DequantizeLinear around the quantized operators, weights
int8 per channel, activations uint8) whose activation ranges come from a calibration set; ``dynamic``
stores int8 weights and computes activation ranges on every call (MatMulInteger). Both start from the fp32
graph after ONNX Runtime's pre-processing (shape inference and graph optimisation), as its documentation
recommends. Calibration images are never the parity photos: they are random views of the shipped photos
made with ``calibration.seed``, or JPEGs drawn from ``calibration.folder``, preprocessed with the run's
vdsp params.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from PIL import Image, UnidentifiedImageError

from harness.config.schema import CalibrationConfig, QuantizationConfig, VdspParams
from harness.data.calibration import calibration_files
from harness.data.photos import as_rgb, photo_loaders
from harness.data.synthetic import random_view
from harness.environment import cpu_isa, has_int8_dot_product
from harness.errors import BuildError, DataError
from harness.export.onnx_export import INPUT_NAME
from harness.preprocess import batch_of
from harness.result.build import CalibrationRecord, QuantizationRecord

log = logging.getLogger(__name__)

CALIBRATION_BATCH = 8
# Operators a quantized graph adds; everything else in it is an operator of the float model.
QUANTIZATION_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "QLinearMatMul",
     "ConvInteger", "QLinearConv", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
)  # fmt: skip


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration images (their names) and the model inputs they give, ``[N, 3, H, W]`` float32."""

    names: tuple[str, ...]
    inputs: np.ndarray

    @property
    def inputs_sha256(self) -> str:
        return hashlib.sha256(np.ascontiguousarray(self.inputs).tobytes()).hexdigest()

    def record(self, config: CalibrationConfig) -> CalibrationRecord:
        return CalibrationRecord(
            method=config.method, source=config.source, seed=config.seed, images=self.names,
            inputs_sha256=self.inputs_sha256,
        )  # fmt: skip


def calibration_set(config: CalibrationConfig, params: VdspParams) -> CalibrationSet:
    """The calibration images ``config`` names, preprocessed with ``params``; the same for the same seed."""
    named = _views(config, np.random.default_rng(config.seed)) if config.source == "views" else _folder_images(config)
    inputs = batch_of([image for _, image in named], params.output_size, params)
    return CalibrationSet(names=tuple(name for name, _ in named), inputs=inputs)


def _views(config: CalibrationConfig, rng: np.random.Generator) -> list[tuple[str, Image.Image]]:
    loaders = list(photo_loaders().items())
    photos: dict[int, Image.Image] = {}
    named = []
    for number in range(config.images):
        index = int(rng.integers(len(loaders)))
        if index not in photos:
            photos[index] = as_rgb(loaders[index][1]())
        view, _ = random_view(photos[index], rng)
        named.append((f"{loaders[index][0]}#calibration-s{config.seed}-{number}", view))
    return named


def _folder_images(config: CalibrationConfig) -> list[tuple[str, Image.Image]]:
    named = []
    for path in calibration_files(config):
        try:
            with Image.open(path) as image:
                named.append((path.name, image.convert("RGB")))
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"{path}: not a readable image ({error})") from None
    return named


def resolve_reduce_range(setting: str, isa: list[str]) -> bool:
    """``auto``: 7-bit weights on x86 without VNNI, where u8 x s8 products saturate int16 (VPMADDUBSW)."""
    if setting != "auto":
        return setting == "true"
    x86 = bool({"avx2", "avx512f"} & set(isa))
    return x86 and not has_int8_dot_product(isa)


class _CalibrationReader:
    """ONNX Runtime's calibration data reader protocol over one in-memory batch of inputs."""

    def __init__(self, inputs: np.ndarray) -> None:
        self._batches = iter(
            [inputs[start : start + CALIBRATION_BATCH] for start in range(0, len(inputs), CALIBRATION_BATCH)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: batch}


def quantize_onnx(
    base_path: Path,
    path: Path,
    *,
    base_artifact: str,
    quantization: QuantizationConfig,
    calibration_config: CalibrationConfig,
    calibration: CalibrationSet | None,
    external: bool,
) -> QuantizationRecord:
    """Quantize the fp32 graph at ``base_path`` into ``path``; what was done and what the graph holds.

    Raises:
        BuildError: ONNX Runtime's pre-processing or quantizer failed.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    isa = cpu_isa()
    reduce_range = resolve_reduce_range(quantization.reduce_range, isa)
    common = {
        "op_types_to_quantize": list(quantization.quantize_ops),
        "nodes_to_exclude": list(quantization.float_nodes),
        "per_channel": quantization.per_channel,
        "reduce_range": reduce_range,
        "weight_type": QuantType.QInt8,
        "use_external_data_format": external,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="quantize-", dir=path.parent) as work:
            prepared = Path(work) / "prepared.onnx"
            quant_pre_process(str(base_path), str(prepared), save_as_external_data=external)
            if quantization.mode == "dynamic":
                quantize_dynamic(str(prepared), str(path), **common)  # type: ignore[arg-type]
            else:
                assert calibration is not None  # the build makes the set for static builds
                methods = {
                    "minmax": CalibrationMethod.MinMax,
                    "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile,
                }
                quantize_static(
                    str(prepared), str(path), _CalibrationReader(calibration.inputs),  # type: ignore[arg-type]
                    quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    calibrate_method=methods[calibration_config.method],
                    extra_options={
                        "CalibPercentile": calibration_config.percentile,
                        "OpTypesToExcludeOutputQuantization": [] if quantization.quantize_outputs else list(quantization.quantize_ops),
                    },
                    **common,
                )  # fmt: skip
    except Exception as error:  # the quantizer raises many unrelated types; report any as a build failure
        raise BuildError(
            f"ONNX Runtime {quantization.mode} quantization failed: {type(error).__name__}: {error}"
        ) from error
    op_counts = Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)
    if not QUANTIZATION_OPS & set(op_counts):
        raise BuildError(f"{path.name}: the quantized graph has no quantized operator ({dict(op_counts)})")
    record = QuantizationRecord(
        mode=quantization.mode,
        base_artifact=base_artifact,
        per_channel=quantization.per_channel,
        reduce_range=reduce_range,
        cpu_isa=tuple(isa),
        quantize_ops=quantization.quantize_ops,
        float_nodes=quantization.float_nodes,
        op_counts=dict(sorted(op_counts.items())),
        float_ops=tuple(sorted(set(op_counts) - QUANTIZATION_OPS - set(quantization.quantize_ops))),
        calibration=calibration.record(calibration_config) if calibration else None,
    )
    log.info("quantized mode=%s reduce_range=%s ops=%s", record.mode, reduce_range, record.op_counts)
    return record
