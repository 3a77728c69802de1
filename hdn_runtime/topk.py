"""Per-segment ranking and top-K over flat (segment, item, value) arrays.

A segment is one user's row of the batch. Everything is vectorised: one sort for the whole
batch, then each pair's rank inside its segment follows from its sorted position.
"""

from __future__ import annotations

import numpy as np

from hdn_runtime.compaction import segment_counts


def rank_within_segments(
    segment_ids: np.ndarray, item_ids: np.ndarray, sort_values: np.ndarray, num_segments: int
) -> np.ndarray:
    """Rank each pair inside its segment by `sort_values` ascending, ties by lower item index.

    Pairs in any order are ranked correctly. Pairs already sorted by segment and then item, as
    the cascade keeps them, with float32 values take a faster path.

    Args:
        segment_ids: int64, shape (M,). Segment of each pair, in [0, num_segments).
        item_ids: int64, shape (M,). Item index of each pair; breaks ties in `sort_values`.
        sort_values: float, shape (M,). NaN ranks after every number, and -0.0 ties with 0.0.
        num_segments: Number of segments S.

    Returns:
        int64, shape (M,). 0 for the first pair of each segment, 1 for the next, and so on.
    """
    order = _order_by_segment_value_item(segment_ids, item_ids, sort_values)
    counts = segment_counts(segment_ids, num_segments)
    segment_starts = np.cumsum(counts) - counts  # position of each segment's first sorted pair

    ranks = np.empty(len(order), dtype=np.int64)
    ranks[order] = np.arange(len(order), dtype=np.int64) - segment_starts[segment_ids[order]]
    return ranks


def _order_by_segment_value_item(
    segment_ids: np.ndarray, item_ids: np.ndarray, sort_values: np.ndarray
) -> np.ndarray:
    """Return the permutation that sorts pairs by segment, then value, then item."""
    if sort_values.dtype != np.float32 or not _is_sorted_by_segment_then_item(
        segment_ids, item_ids
    ):
        return np.lexsort((item_ids, sort_values, segment_ids))

    # Pack (segment, value) into one uint64 key. A stable sort of it keeps the existing item
    # order among equal keys, and is several times faster than a three-key lexsort.
    value_bits = _order_preserving_bits(sort_values).astype(np.uint64)
    keys = (segment_ids.astype(np.uint64) << np.uint64(32)) | value_bits
    return np.argsort(keys, kind="stable")


def _is_sorted_by_segment_then_item(segment_ids: np.ndarray, item_ids: np.ndarray) -> bool:
    if len(segment_ids) < 2:
        return True
    segment_steps = np.diff(segment_ids)
    item_steps = np.diff(item_ids)
    return bool(np.all((segment_steps > 0) | ((segment_steps == 0) & (item_steps > 0))))


def _order_preserving_bits(values: np.ndarray) -> np.ndarray:
    """Map float32 values to uint32 so that unsigned order equals numeric order.

    -0.0 becomes 0.0 and every NaN becomes the positive quiet NaN, which maps above +inf.
    """
    canonical = np.where(np.isnan(values), np.float32(np.nan), values + np.float32(0.0))
    bits = canonical.astype(np.float32).view(np.uint32)
    is_negative = (bits >> np.uint32(31)).astype(np.bool_)
    # Negative floats order backwards as integers, so all their bits are flipped. The others
    # get the sign bit set, which puts them after every negative value.
    return np.where(is_negative, ~bits, bits | np.uint32(0x80000000))


def segmented_top_k(
    segment_ids: np.ndarray,
    item_ids: np.ndarray,
    scores: np.ndarray,
    num_segments: int,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Select the k best-scored items of every segment.

    Order is score descending, then item index ascending, so ties resolve the same way on
    every run and backend. A segment with fewer than k pairs gets all of them, and padding.

    Args:
        segment_ids: int64, shape (M,). Segment of each pair, in [0, num_segments), any order.
        item_ids: int64, shape (M,). Item index of each pair.
        scores: float32, shape (M,). Score of each pair; NaN ranks last.
        num_segments: Number of segments S.
        k: Number of items to keep per segment, k >= 0.

    Returns:
        items: int64, shape (S, k). Item indices, padded with -1.
        top_scores: float32, shape (S, k). Their scores, padded with -inf.
        counts: int64, shape (S,). Number of real (unpadded) entries per segment.

    Raises:
        ValueError: Arrays differ in length, k is negative, or a segment id is out of range.
    """
    segment_ids = np.asarray(segment_ids, dtype=np.int64)
    item_ids = np.asarray(item_ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    if not segment_ids.shape == item_ids.shape == scores.shape or segment_ids.ndim != 1:
        raise ValueError(
            "segment_ids, item_ids and scores must be 1-D arrays of one length, got shapes "
            f"{segment_ids.shape}, {item_ids.shape} and {scores.shape}."
        )
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}.")
    if len(segment_ids) and (segment_ids.min() < 0 or segment_ids.max() >= num_segments):
        raise ValueError(
            f"segment_ids must lie in [0, {num_segments}), got values from {segment_ids.min()} "
            f"to {segment_ids.max()}."
        )

    items = np.full((num_segments, k), -1, dtype=np.int64)
    top_scores = np.full((num_segments, k), -np.inf, dtype=np.float32)
    ranks = rank_within_segments(segment_ids, item_ids, -scores, num_segments)
    is_selected = ranks < k
    selected_segments = segment_ids[is_selected]
    selected_ranks = ranks[is_selected]
    items[selected_segments, selected_ranks] = item_ids[is_selected]
    top_scores[selected_segments, selected_ranks] = scores[is_selected]

    counts = np.minimum(segment_counts(segment_ids, num_segments), k)
    return items, top_scores, counts


_EMPTY_KEY = np.iinfo(np.uint64).max
_LOW_32_BITS = np.uint64(0xFFFFFFFF)


def top_k_sorted_segments(
    segment_ids: np.ndarray,
    item_ids: np.ndarray,
    scores: np.ndarray,
    num_segments: int,
    k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Select the k best-scored items of every segment, for pairs sorted by segment and item.

    Returns the same arrays as `segmented_top_k`, ties and NaN included, but with a partial
    selection per segment in place of a sort of all pairs. Each pair becomes one uint64 key,
    the order-preserving bits of -score above its position. Keys are unique, and within a
    segment a lower position means a lower item index. The keys are scattered into a dense
    (num_segments, max segment length) matrix, each row is partitioned at k, and only the
    k winners are sorted.

    Args:
        segment_ids: int, shape (M,). Segment of each pair, non-decreasing.
        item_ids: int, shape (M,). Item index of each pair, increasing within a segment.
        scores: float32, shape (M,).
        num_segments: Number of segments S.
        k: Number of items to keep per segment, k >= 0.

    Returns:
        items: int64, shape (S, k). Item indices, padded with -1.
        top_scores: float32, shape (S, k). Their scores, padded with -inf.
        counts: int64, shape (S,). Number of real entries per segment.
    """
    num_pairs = len(segment_ids)
    counts = segment_counts(segment_ids, num_segments)
    items = np.full((num_segments, k), -1, dtype=np.int64)
    top_scores = np.full((num_segments, k), -np.inf, dtype=np.float32)
    if k == 0 or num_pairs == 0:
        return items, top_scores, np.minimum(counts, k)
    assert num_pairs < 2**32, "pair positions must fit in the low 32 bits of a key"

    width = int(counts.max())
    if num_segments * width > 4 * num_pairs + 1024:
        # One long segment among short ones would make the dense matrix mostly padding.
        return segmented_top_k(segment_ids, item_ids, scores, num_segments, k)

    segment_starts = np.cumsum(counts) - counts
    positions = np.arange(num_pairs, dtype=np.int64)
    columns = positions - segment_starts[segment_ids]
    keys = np.full((num_segments, width), _EMPTY_KEY, dtype=np.uint64)
    value_bits = _order_preserving_bits(-np.asarray(scores, dtype=np.float32))
    keys[segment_ids, columns] = (value_bits.astype(np.uint64) << np.uint64(32)) | positions.astype(
        np.uint64
    )

    selected = min(k, width)
    if selected < width:
        keys.partition(selected - 1, axis=1)
    best = np.sort(keys[:, :selected], axis=1)  # (S, selected), padding keys last
    is_real = best != _EMPTY_KEY
    winners = (best[is_real] & _LOW_32_BITS).astype(np.int64)
    items[:, :selected][is_real] = item_ids[winners]
    top_scores[:, :selected][is_real] = scores[winners]
    return items, top_scores, np.minimum(counts, k)
