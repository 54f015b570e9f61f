"""Published Roxford5k / Rparis6k accuracy, shown beside measured numbers (sources in ``docs/accuracy.md``)."""

from __future__ import annotations

from harness.result.accuracy import Published

_PAPER = {"vits14": (68.8, 43.2), "vitb14": (72.9, 49.5), "vitl14": (75.1, 54.0), "vitg14": (73.6, 52.3)}
_PAPER_PARIS = {"vits14": (84.6, 68.5), "vitb14": (90.3, 78.6), "vitl14": (92.7, 83.5), "vitg14": (92.1, 82.6)}
_MODEL_CARD_HARD = {"vits14_reg4": 39.5, "vitb14_reg4": 51.0, "vitl14_reg4": 55.7, "vitg14_reg4": 58.2}
_VENDOR = {
    "vitl14": (Published("vendor CPU reference, torch fp32", "224 stretch, no crop, per_image", 74.91, 54.14),),
    "vitl14_reg4": (
        Published("vendor CPU reference, torch fp32", "224 stretch, no crop, per_image", 79.13, 59.21),
        Published("vendor CPU reference, ONNX fp32", "224 stretch, no crop, per_image", 79.41, 59.48),
        Published("vendor accelerator, fp16", "224 stretch, no crop, per_dimension", 79.6, 58.18),
    ),
}


def published_results(variant: str, dataset: str) -> list[Published]:
    """Every published number for this backbone on this dataset."""
    results: list[Published] = []
    if dataset == "roxford5k":
        if variant in _PAPER:
            results.append(Published("DINOv2 paper, Table 9", "paper", *_PAPER[variant]))
        if variant in _MODEL_CARD_HARD:
            results.append(Published("DINOv2 model card (Oxford-H)", "paper", None, _MODEL_CARD_HARD[variant]))
        results += _VENDOR.get(variant, ())
    elif dataset == "rparis6k" and variant in _PAPER_PARIS:
        results.append(Published("DINOv2 paper, Table 9", "paper", *_PAPER_PARIS[variant]))
    return results
