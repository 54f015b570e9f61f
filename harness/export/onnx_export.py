"""Torch backbone -> ONNX file (the "accelerator build" for ONNX-consuming runtimes).

The graph has one input ``input`` [N, 3, H, W] with a dynamic batch axis and one output ``features``
[N, D]. fp16 builds cast the weights and activations to half; ``io_dtype=fp32`` keeps fp32 I/O with a cast
at each end inside the graph, ``native`` exposes fp16 I/O. Models over the 2 GB protobuf limit (ViT-g) are
saved with external data.
"""

from __future__ import annotations

import copy
import logging
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from harness.config.schema import BuildConfig, Precision
from harness.errors import BuildError

log = logging.getLogger(__name__)

INPUT_NAME = "input"
OUTPUT_NAME = "features"
PROTOBUF_LIMIT_BYTES = 2**31 - 1
# Headroom for graph structure on top of the weights when deciding whether external data is needed.
PROTOBUF_HEADROOM_BYTES = 64 * 2**20
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class _CastingModel(nn.Module):
    """Runs ``model`` in its dtype and returns features in ``output_dtype``."""

    def __init__(self, model: nn.Module, compute_dtype: torch.dtype, output_dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.compute_dtype = compute_dtype
        self.output_dtype = output_dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images.to(self.compute_dtype)).to(self.output_dtype)


def io_dtype_for(precision: Precision, io_dtype: str) -> torch.dtype:
    """The tensor dtype of the artifact's input and output (int8 builds take and give float32)."""
    return torch.float32 if io_dtype == "fp32" or precision not in TORCH_DTYPES else TORCH_DTYPES[precision]


def needs_external_data(model: nn.Module, precision: Precision, mode: str) -> bool:
    if mode != "auto":
        return mode == "always"
    element_size = torch.empty(0, dtype=TORCH_DTYPES[precision]).element_size()
    weight_bytes = sum(tensor.numel() for tensor in model.state_dict().values()) * element_size
    return weight_bytes + PROTOBUF_HEADROOM_BYTES > PROTOBUF_LIMIT_BYTES


def export_onnx(
    model: nn.Module, *, precision: Precision, input_size: tuple[int, int], build: BuildConfig, path: Path
) -> bool:
    """Export ``model`` (fp32, positional table baked) to ``path``; returns whether external data was written.

    Raises:
        BuildError: the exporter failed, or the graph breaks an invariant (a Resize node, a static batch axis).
    """
    compute_dtype = TORCH_DTYPES[precision]
    io_dtype = io_dtype_for(precision, build.io_dtype)
    # Keep the fp32 reference untouched; the baked positional table is cast with the weights.
    export_model = _CastingModel(copy.deepcopy(model).to(compute_dtype), compute_dtype, io_dtype).eval()
    example = torch.zeros(2, 3, *input_size, dtype=io_dtype)
    external = needs_external_data(model, precision, build.external_data)
    raw_path = path.with_name(path.stem + ".export.onnx")
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # Both exporters announce deprecations and tracer notes that say nothing about this graph.
            warnings.simplefilter("ignore")
            if build.exporter == "dynamo":
                batch = torch.export.Dim("batch", min=1)
                program = torch.onnx.export(
                    export_model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    opset_version=build.opset, dynamic_shapes=({0: batch},), verbose=False,
                )  # fmt: skip
                assert program is not None  # dynamo=True always returns the program
                program.save(str(raw_path), external_data=external)
            else:
                torch.onnx.export(
                    export_model, (example,), str(raw_path), dynamo=False, input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME], opset_version=build.opset, do_constant_folding=True,
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                )  # fmt: skip
    except Exception as error:  # the exporters raise many unrelated types; report any as a build failure
        raise BuildError(
            f"ONNX export ({build.exporter}, opset {build.opset}) failed: {type(error).__name__}: {error}"
        ) from error
    _resave(raw_path, path, external=external)
    check_graph(path)
    return external


def _resave(raw_path: Path, path: Path, *, external: bool) -> None:
    """Re-save as one self-contained file, or with all weights in one ``<name>.data`` file beside it."""
    proto = onnx.load(str(raw_path), load_external_data=True)
    for leftover in raw_path.parent.glob(raw_path.name + "*"):
        leftover.unlink()
    if external:
        onnx.save_model(
            proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=path.name + ".data"
        )
    else:
        onnx.save_model(proto, str(path))


def check_graph(path: Path) -> None:
    """Validate the file with the ONNX checker and the harness's own graph invariants."""
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as error:
        raise BuildError(f"{path.name}: ONNX checker rejected the graph: {error}") from None
    proto = onnx.load(str(path), load_external_data=False)
    resize_nodes = [node.name for node in proto.graph.node if node.op_type == "Resize"]
    if resize_nodes:
        raise BuildError(f"{path.name}: graph has Resize nodes {resize_nodes[:3]}; the positional table must be baked")
    (graph_input,) = proto.graph.input
    if graph_input.name != INPUT_NAME or not graph_input.type.tensor_type.shape.dim[0].dim_param:
        raise BuildError(f"{path.name}: expected input {INPUT_NAME!r} with a dynamic batch axis, got {graph_input}")
