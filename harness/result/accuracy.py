"""The accuracy stage's records: revisitop metrics per setup, published numbers, the comparison with fp32."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SetupMetrics:
    """One setup in percent: mAP and mean precision at 1, 5, 10, over ``queries_evaluated`` queries."""

    map: float
    mp1: float
    mp5: float
    mp10: float
    queries_evaluated: int


@dataclass(frozen=True)
class Published:
    """One published result (x100); ``None`` where the source gives no number."""

    source: str
    protocol: str
    medium_map: float | None
    hard_map: float | None


@dataclass(frozen=True)
class Fp32Comparison:
    """What a lower precision changes in retrieval against the fp32 build of the same weights, same images.

    Attributes:
        reference: what gave the fp32 descriptors (the fp32 artifact, or the torch model).
        neighbour_overlap_at_10: mean over queries of the share of the top-10 database neighbours that the
            fp32 ranking also has in its top 10 (1.0: same neighbours). Meaningful with random weights too.
        min_neighbour_overlap_at_10: the worst query's share.
        descriptor_min_cosine: the smallest cosine between an image's descriptor and its fp32 descriptor.
        fp32_map: fp32 mAP per setup (easy, medium, hard), in percent.
        map_delta: this run's mAP minus fp32's per setup, in points.
    """

    reference: str
    neighbour_overlap_at_10: float
    min_neighbour_overlap_at_10: float
    descriptor_min_cosine: float
    fp32_map: dict[str, float]
    map_delta: dict[str, float]


@dataclass(frozen=True)
class AccuracyResult:
    """The accuracy section of ``result.json``."""

    dataset: str
    images: int
    queries: int
    crop_queries: bool
    normalization: str
    preprocessing: dict[str, object]
    easy: SetupMetrics
    medium: SetupMetrics
    hard: SetupMetrics
    skipped_images: tuple[str, ...]
    features_files: tuple[str, str]
    extraction_time_s: float
    images_per_s: float
    published: tuple[Published, ...] = ()
    fp32: Fp32Comparison | None = None
    warnings: tuple[str, ...] = ()
