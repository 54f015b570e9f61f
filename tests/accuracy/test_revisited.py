"""revisitop metrics: hand-worked cases and an independent sort-based implementation on random cases."""

from __future__ import annotations

import numpy as np
import pytest

from harness.accuracy.revisited import (
    QueryTruth,
    average_precision,
    evaluate,
    evaluate_setup,
    positive_ranks,
    precision_at,
    ranks_in_ranking,
    setup_truth,
    similarity,
)


def reference_query(
    scores: np.ndarray, positives: np.ndarray, junk: np.ndarray, kappas=(1, 5, 10)
) -> tuple[float, np.ndarray]:
    """Written from the protocol text: full stable sort, drop junk, walk the list."""
    order = np.argsort(-scores, kind="stable")
    kept = [index for index in order if index not in set(junk.tolist())]
    hits = [rank for rank, index in enumerate(kept) if index in set(positives.tolist())]
    ap = 0.0
    for j, rank in enumerate(hits):
        before = 1.0 if rank == 0 else j / rank
        ap += (before + (j + 1) / (rank + 1)) / 2
    ap /= len(positives)
    last = hits[-1] + 1
    precisions = np.array([sum(1 for rank in hits if rank + 1 <= min(last, k)) / min(last, k) for k in kappas])
    return ap, precisions


def test_a_single_positive_at_rank_three_scores_one_sixth() -> None:
    assert average_precision(np.array([2]), 1) == pytest.approx(1 / 6)


def test_junk_before_a_positive_is_removed_from_its_rank() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.1])  # ranking: 0 (junk), 1 (junk), 2 (positive), 3
    truth = QueryTruth(positives=np.array([2]), junk=np.array([0, 1]))
    assert positive_ranks(scores, truth).tolist() == [0]
    assert average_precision(positive_ranks(scores, truth), 1) == 1.0


def test_hand_worked_average_precision_and_capped_precision() -> None:
    # positives at junk-free ranks 0 and 2 of 2 positives: (1 + 1)/2 + (1/2 + 2/3)/2 = 1 + 7/12, / 2
    ranks = np.array([0, 2])
    assert average_precision(ranks, 2) == pytest.approx((1 + 7 / 12) / 2)
    # P@1 = 1; P@5 capped at the last positive's rank 3: 2/3; P@10 also 2/3
    np.testing.assert_allclose(precision_at(ranks), [1.0, 2 / 3, 2 / 3])


def test_setups_follow_revisitop() -> None:
    gnd = [{"easy": [1, 2], "hard": [3], "junk": [4]}]
    easy, medium, hard = (setup_truth(gnd, setup)[0] for setup in ("easy", "medium", "hard"))
    assert easy.positives.tolist() == [1, 2] and sorted(easy.junk.tolist()) == [3, 4]
    assert medium.positives.tolist() == [1, 2, 3] and medium.junk.tolist() == [4]
    assert hard.positives.tolist() == [3] and sorted(hard.junk.tolist()) == [1, 2, 4]


def test_queries_without_positives_are_excluded() -> None:
    scores = np.array([[0.9, 0.1], [0.2, 0.8]])
    truths = [
        QueryTruth(np.array([0]), np.empty(0, dtype=np.int64)),
        QueryTruth(np.empty(0, dtype=np.int64), np.array([1])),
    ]
    result = evaluate_setup(scores, truths)
    assert result.queries_evaluated == 1 and result.map == 100.0 and np.isnan(result.ap_per_query[1])


def test_ranks_count_ties_like_a_stable_sort() -> None:
    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1])
    items = np.array([3, 0, 4])
    expected = np.argsort(np.argsort(-scores, kind="stable"), kind="stable")[items]
    assert ranks_in_ranking(scores, items).tolist() == expected.tolist()


@pytest.mark.parametrize("seed", range(20))
def test_matches_an_independent_implementation_on_random_cases(seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = int(rng.integers(20, 300))
    scores = rng.standard_normal(size)
    if seed % 4 == 0:  # include ties
        scores = np.round(scores, 1)
    chosen = rng.permutation(size)
    npos, njunk = int(rng.integers(1, 15)), int(rng.integers(0, 15))
    positives, junk = chosen[:npos], chosen[npos : npos + njunk]
    ranks = positive_ranks(scores, QueryTruth(positives, junk))
    ap, precisions = reference_query(scores, positives, junk)
    assert average_precision(ranks, npos) == pytest.approx(ap, abs=1e-9)
    np.testing.assert_allclose(precision_at(ranks), precisions, atol=1e-9)


def test_per_image_and_per_dimension_similarity_fold_the_database_normalisation() -> None:
    rng = np.random.default_rng(0)
    query, database = rng.standard_normal((3, 16)).astype(np.float32), rng.standard_normal((50, 16)).astype(np.float32)
    cosine = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (
        database / np.linalg.norm(database, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(similarity(query, database, "per_image", chunk=7), cosine, rtol=1e-5, atol=1e-6)
    per_dim = (query / np.linalg.norm(query, axis=0)) @ (database / np.linalg.norm(database, axis=0)).T
    np.testing.assert_allclose(similarity(query, database, "per_dimension", chunk=7), per_dim, rtol=1e-5, atol=1e-6)


def test_evaluate_reports_percent_for_every_setup() -> None:
    rng = np.random.default_rng(1)
    database = rng.standard_normal((40, 8)).astype(np.float32)
    query = database[[3, 7]] + 0.01 * rng.standard_normal((2, 8)).astype(np.float32)
    gnd = [{"easy": [3], "hard": [], "junk": []}, {"easy": [], "hard": [7], "junk": [3]}]
    results = evaluate(query, database, gnd)
    assert results["easy"].map == 100.0 and results["easy"].queries_evaluated == 1
    assert results["hard"].map == 100.0 and results["medium"].queries_evaluated == 2
    assert results["medium"].mp_at == {1: 100.0, 5: 100.0, 10: 100.0}
