"""Segmented top-K and in-segment ranking: ordering, ties, padding and edge cases."""

from __future__ import annotations

import numpy as np
import pytest

from hdn_runtime.topk import rank_within_segments, segmented_top_k


def _brute_force_top_k(segment_ids, item_ids, scores, num_segments, k):
    rows = []
    for segment in range(num_segments):
        pairs = [
            (float(score), int(item))
            for seg, item, score in zip(segment_ids, item_ids, scores)
            if seg == segment
        ]
        pairs.sort(key=lambda pair: (-pair[0], pair[1]))
        rows.append(pairs[:k])
    return rows


def test_ties_break_by_lower_item():
    segment_ids = np.array([0, 0, 0, 0, 1, 1], dtype=np.int64)
    item_ids = np.array([9, 4, 7, 2, 5, 3], dtype=np.int64)
    scores = np.array([1.0, 2.0, 2.0, 1.0, 0.5, 0.5], dtype=np.float32)

    items, top_scores, counts = segmented_top_k(segment_ids, item_ids, scores, 2, k=3)

    assert items.tolist() == [[4, 7, 2], [3, 5, -1]]
    assert top_scores.tolist() == [[2.0, 2.0, 1.0], [0.5, 0.5, -np.inf]]
    assert counts.tolist() == [3, 2]


def test_matches_brute_force_on_random_input():
    rng = np.random.default_rng(7)
    num_pairs, num_segments, k = 500, 9, 6
    segment_ids = rng.integers(0, num_segments, num_pairs)  # unsorted on purpose
    item_ids = rng.permutation(num_pairs)
    scores = rng.integers(-3, 4, num_pairs).astype(np.float32)  # many ties

    items, top_scores, counts = segmented_top_k(segment_ids, item_ids, scores, num_segments, k)

    expected = _brute_force_top_k(segment_ids, item_ids, scores, num_segments, k)
    for segment, pairs in enumerate(expected):
        assert counts[segment] == len(pairs)
        assert items[segment, : len(pairs)].tolist() == [item for _, item in pairs]
        assert top_scores[segment, : len(pairs)].tolist() == [score for score, _ in pairs]


def test_empty_segments_are_padded():
    items, top_scores, counts = segmented_top_k(
        np.array([2], dtype=np.int64), np.array([5]), np.array([0.1], dtype=np.float32), 4, k=2
    )

    assert items.tolist() == [[-1, -1], [-1, -1], [5, -1], [-1, -1]]
    assert np.isneginf(top_scores[[0, 1, 3]]).all()
    assert counts.tolist() == [0, 0, 1, 0]


def test_no_pairs_at_all():
    empty = np.array([], dtype=np.int64)
    items, top_scores, counts = segmented_top_k(empty, empty, empty.astype(np.float32), 3, k=4)

    assert items.shape == (3, 4)
    assert top_scores.dtype == np.float32
    assert (items == -1).all()
    assert counts.tolist() == [0, 0, 0]


def test_nan_scores_rank_last():
    items, _, _ = segmented_top_k(
        np.zeros(3, dtype=np.int64),
        np.array([0, 1, 2]),
        np.array([np.nan, -5.0, 1.0], dtype=np.float32),
        1,
        k=3,
    )

    assert items.tolist() == [[2, 1, 0]]


def test_zero_k_returns_empty_rows():
    items, top_scores, counts = segmented_top_k(
        np.array([0, 1]), np.array([3, 4]), np.array([1.0, 2.0], dtype=np.float32), 2, k=0
    )

    assert items.shape == (2, 0)
    assert top_scores.shape == (2, 0)
    assert counts.tolist() == [0, 0]


def test_invalid_arguments_raise():
    pairs = (np.array([0, 1]), np.array([3, 4]), np.array([1.0, 2.0], dtype=np.float32))
    with pytest.raises(ValueError, match="k must be >= 0"):
        segmented_top_k(*pairs, 2, k=-1)
    with pytest.raises(ValueError, match="segment_ids must lie in \\[0, 1\\)"):
        segmented_top_k(*pairs, 1, k=1)
    with pytest.raises(ValueError, match="1-D arrays of one length"):
        segmented_top_k(pairs[0], pairs[1][:1], pairs[2], 2, k=1)


def test_rank_within_segments_ascending():
    segment_ids = np.array([1, 0, 1, 0, 1], dtype=np.int64)
    item_ids = np.array([10, 11, 12, 13, 14], dtype=np.int64)
    values = np.array([0.5, 3.0, -1.0, 3.0, 0.5])

    ranks = rank_within_segments(segment_ids, item_ids, values, 2)

    assert ranks.tolist() == [1, 0, 0, 1, 2]


def test_sorted_and_shuffled_input_rank_alike():
    # Input sorted by (segment, item) with float32 values takes the packed-key path, and a
    # shuffled copy takes the lexsort path. Both must give each pair the same rank.
    rng = np.random.default_rng(3)
    num_pairs, num_segments = 2000, 13
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45], dtype=np.float32)
    values = rng.integers(-4, 5, num_pairs).astype(np.float32) / 2
    is_special = rng.random(num_pairs) < 0.2
    values[is_special] = rng.choice(special, size=int(is_special.sum()))
    values[::17] = -0.0
    values[::19] = np.nan
    segment_ids = np.sort(rng.integers(0, num_segments, num_pairs))
    item_ids = np.concatenate(
        [
            np.sort(rng.choice(10_000, size=count, replace=False))
            for count in np.bincount(segment_ids, minlength=num_segments)
        ]
    )
    shuffle = rng.permutation(num_pairs)

    fast_ranks = rank_within_segments(segment_ids, item_ids, values, num_segments)
    slow_ranks = rank_within_segments(
        segment_ids[shuffle], item_ids[shuffle], values[shuffle], num_segments
    )

    np.testing.assert_array_equal(fast_ranks[shuffle], slow_ranks)


def test_negative_zero_ties_with_zero():
    segment_ids = np.zeros(2, dtype=np.int64)
    item_ids = np.array([1, 2], dtype=np.int64)
    values = np.array([0.0, -0.0], dtype=np.float32)

    assert rank_within_segments(segment_ids, item_ids, values, 1).tolist() == [0, 1]
