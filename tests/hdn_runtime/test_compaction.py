"""Host-side compaction of per-pair arrays."""

from __future__ import annotations

import numpy as np
import pytest

from hdn_runtime.compaction import compact, segment_counts


def test_compact_keeps_rows_in_order():
    keep_mask = np.array([True, False, True, False])
    ids = np.array([10, 11, 12, 13])
    hidden = np.arange(8, dtype=np.float32).reshape(4, 2)

    kept_ids, kept_hidden = compact(keep_mask, ids, hidden)

    assert kept_ids.tolist() == [10, 12]
    assert kept_hidden.tolist() == [[0.0, 1.0], [4.0, 5.0]]


def test_compact_all_kept_returns_inputs():
    ids = np.array([1, 2, 3])

    (kept_ids,) = compact(np.ones(3, dtype=bool), ids)

    assert kept_ids is ids


def test_compact_nothing_kept_gives_empty_arrays():
    hidden = np.ones((3, 4), dtype=np.float32)

    (kept_hidden,) = compact(np.zeros(3, dtype=bool), hidden)

    assert kept_hidden.shape == (0, 4)
    assert kept_hidden.dtype == np.float32


def test_compact_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="Array 1 has shape \\(2,\\)"):
        compact(np.ones(3, dtype=bool), np.arange(3), np.arange(2))


def test_compact_rejects_non_bool_mask():
    with pytest.raises(ValueError, match="1-D bool array"):
        compact(np.array([1, 0, 1]), np.arange(3))


def test_segment_counts_includes_empty_segments():
    assert segment_counts(np.array([0, 0, 2]), 4).tolist() == [2, 0, 1, 0]
