"""Pack the survivors of a stage into dense arrays on the host before the next stage runs.

Stage files take dense batches, so rejected (user, item) pairs are dropped from every
per-pair array between stages. Deciding which pairs survive is left to `cascade`.
"""

from __future__ import annotations

import numpy as np


def compact(keep_mask: np.ndarray, *arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Keep the rows of every array where `keep_mask` is True, in their original order.

    Args:
        keep_mask: bool, shape (M,). True for each candidate pair that moves on.
        *arrays: Per-pair arrays, each with M rows on axis 0 and any trailing shape.

    Returns:
        The arrays with only the kept rows, in the order given. When every row is kept the
        input arrays are returned as they are, without a copy.

    Raises:
        ValueError: `keep_mask` is not a 1-D bool array, or an array has another row count.
    """
    keep_mask = np.asarray(keep_mask)
    if keep_mask.ndim != 1 or keep_mask.dtype != np.bool_:
        raise ValueError(
            f"keep_mask must be a 1-D bool array, got dtype {keep_mask.dtype} and shape "
            f"{keep_mask.shape}."
        )
    for position, array in enumerate(arrays):
        if np.shape(array)[:1] != keep_mask.shape:
            raise ValueError(
                f"Array {position} has shape {np.shape(array)}, but keep_mask has "
                f"{keep_mask.shape[0]} rows; every array needs one row per candidate pair."
            )

    if keep_mask.all():
        return tuple(arrays)
    # One nonzero pass, then a gather per array, is cheaper than boolean indexing each array.
    kept_rows = np.flatnonzero(keep_mask)
    return tuple(np.take(array, kept_rows, axis=0) for array in arrays)


def segment_counts(segment_ids: np.ndarray, num_segments: int) -> np.ndarray:
    """Count the pairs of each segment.

    Args:
        segment_ids: int64, shape (M,). Segment (batch row) of each pair, in [0, num_segments).
        num_segments: Number of segments S.

    Returns:
        int64, shape (S,).
    """
    return np.bincount(segment_ids, minlength=num_segments).astype(np.int64, copy=False)
