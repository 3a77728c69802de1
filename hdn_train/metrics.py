"""Full-ranking top-K selection and the ranking metrics HR@K, Recall@K and NDCG@K.

The caller scores users. `evaluate_full_ranking` takes a function that returns one batch of
scores at a time, so it never builds an (n_users, n_items) array. This module uses numpy only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import numpy as np

from hdn_train.interactions import InteractionMatrix

logger = logging.getLogger(__name__)

PADDING_ITEM = -1
"""Item index that fills a top-K row when a user has fewer than K rankable items."""


def top_k_items(scores: np.ndarray, k: int, exclude: np.ndarray | None = None) -> np.ndarray:
    """Rank every non-excluded item of each row and return the first `k` item indices.

    Items are ordered by score descending, and equal scores by item index ascending, so the
    result is deterministic. Excluded items are never returned. A row with fewer than `k`
    non-excluded items is padded on the right with `PADDING_ITEM` (-1). A score of -inf is a
    valid score and ranks last among the non-excluded items.

    Args:
        scores: float, shape (B, I). Higher is better. NaN is allowed only at excluded items.
        k: Number of items to return per row, at least 1.
        exclude: bool, shape (B, I), or None. True marks items that must not be ranked, such
            as the user's training items.

    Returns:
        int64, shape (B, min(k, I)). Item indices in rank order, -1 where a row ran out of items.

    Raises:
        ValueError: If `scores` is not 2-D, `exclude` has another shape, `k` is below 1, or a
            non-excluded score is NaN.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(
            f"scores must have shape (batch, n_items), got shape {scores.shape}. "
            "Pass one row of item scores per user."
        )
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)

    # Sort keys are ascending: negated scores, with NaN for excluded items. numpy's sort and
    # partition place NaN after every number, +inf included, so excluded items come last.
    sort_keys = -scores
    is_excluded = np.isnan(sort_keys)
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        if exclude.shape != scores.shape:
            raise ValueError(
                f"exclude must have the same shape as scores {scores.shape}, got {exclude.shape}."
            )
        is_nan_score = is_excluded & ~exclude
        sort_keys[exclude] = np.nan
        is_excluded = is_excluded | exclude
    else:
        is_nan_score = is_excluded
    if is_nan_score.any():
        raise ValueError(
            f"scores contain {int(is_nan_score.sum())} NaN values at items that are not "
            "excluded. Fix the model output, or mark those items in exclude."
        )

    n_items = scores.shape[1]
    width = min(int(k), n_items)
    if width == n_items:
        order = np.argsort(sort_keys, axis=1, kind="stable")
    else:
        order = _partial_stable_argsort(sort_keys, width)

    top_items = order.astype(np.int64)
    top_items[np.take_along_axis(is_excluded, order, axis=1)] = PADDING_ITEM
    return top_items


def _partial_stable_argsort(sort_keys: np.ndarray, width: int) -> np.ndarray:
    """Return the first `width` columns of a stable ascending argsort, for width < n_items.

    argpartition picks `width` smallest keys per row, but when the width-th key is tied with
    keys outside that pick, the pick may contain a higher index than a left-out tied item. Those
    rows are fully sorted instead. Other rows sort only their `width` candidates.
    """
    candidates = np.argpartition(sort_keys, width - 1, axis=1)[:, :width]
    candidates.sort(axis=1)  # index order, so the stable key sort breaks ties by index
    candidate_keys = np.take_along_axis(sort_keys, candidates, axis=1)
    order = np.take_along_axis(
        candidates, np.argsort(candidate_keys, axis=1, kind="stable"), axis=1
    )

    # After the sort, column width - 1 contains the width-th smallest key. A NaN threshold never
    # compares as tied, and needs no fix because every excluded item becomes padding anyway.
    threshold = np.take_along_axis(sort_keys, order[:, -1:], axis=1)
    has_boundary_tie = (sort_keys <= threshold).sum(axis=1) > width
    if has_boundary_tie.any():
        # NOTE: rows that tie at the boundary, such as rows of equal scores, pay for a full
        # stable argsort instead of a partition.
        tied_rows = np.flatnonzero(has_boundary_tie)
        full_order = np.argsort(sort_keys[tied_rows], axis=1, kind="stable")
        order[tied_rows] = full_order[:, :width]
    return order


def _validate_ks(ks: Iterable[int]) -> tuple[int, ...]:
    cutoffs = tuple(ks)
    if not cutoffs:
        raise ValueError("ks must list at least one cutoff, got an empty sequence.")
    for cutoff in cutoffs:
        if not isinstance(cutoff, (int, np.integer)) or isinstance(cutoff, bool) or cutoff < 1:
            raise ValueError(f"Every cutoff in ks must be a positive integer, got {cutoffs!r}.")
    if len(set(cutoffs)) != len(cutoffs):
        raise ValueError(f"ks must not repeat a cutoff, got {cutoffs!r}.")
    return tuple(int(cutoff) for cutoff in cutoffs)


def _find_hits(top_items: np.ndarray, test: InteractionMatrix, users: np.ndarray) -> np.ndarray:
    """Mark which ranked items are test items of their user, bool shape (U, K).

    Each (row, item) pair is encoded as row * n_items + item and looked up in the sorted codes
    of the batch's test pairs, so the cost follows the batch's test items, not the catalogue.
    """
    lengths = test.indptr[users + 1] - test.indptr[users]
    rows = np.repeat(np.arange(len(users), dtype=np.int64), lengths)
    starts = np.repeat(test.indptr[users], lengths)
    offsets = np.arange(lengths.sum(), dtype=np.int64) - np.repeat(
        np.cumsum(lengths) - lengths, lengths
    )
    test_codes = np.sort(rows * test.n_items + test.indices[starts + offsets])

    if len(test_codes) == 0:
        return np.zeros(top_items.shape, dtype=bool)

    query_codes = np.arange(len(users), dtype=np.int64)[:, None] * test.n_items + top_items
    positions = np.searchsorted(test_codes, query_codes)
    positions = np.minimum(positions, len(test_codes) - 1)
    # A padding item would encode as the previous row's last item, so it is masked here.
    return (test_codes[positions] == query_codes) & (top_items != PADDING_ITEM)


def _validate_batch(
    top_items: np.ndarray, test: InteractionMatrix, users: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    top_items = np.asarray(top_items)
    users = np.asarray(users)
    if top_items.ndim != 2:
        raise ValueError(
            f"top_items must have shape (n_users, K), got shape {top_items.shape}. "
            "Pass one ranked row per user."
        )
    if not np.issubdtype(top_items.dtype, np.integer):
        raise ValueError(
            f"top_items must contain integer item indices, got dtype {top_items.dtype}."
        )
    if users.ndim != 1 or len(users) != len(top_items):
        raise ValueError(
            f"users must have shape ({len(top_items)},) to match top_items, "
            f"got shape {users.shape}."
        )
    if not np.issubdtype(users.dtype, np.integer):
        raise ValueError(f"users must contain integer row indices, got dtype {users.dtype}.")

    top_items = top_items.astype(np.int64, copy=False)
    users = users.astype(np.int64, copy=False)
    if top_items.size and (top_items.min() < PADDING_ITEM or top_items.max() >= test.n_items):
        raise ValueError(
            f"top_items must lie in [-1, {test.n_items}) for a catalogue of {test.n_items} "
            f"items, got values from {top_items.min()} to {top_items.max()}."
        )
    if users.size and (users.min() < 0 or users.max() >= test.n_users):
        raise ValueError(
            f"users must lie in [0, {test.n_users}) for a test matrix with {test.n_users} "
            f"rows, got values from {users.min()} to {users.max()}."
        )
    return top_items, users


class RankingAccumulator:
    """Running sums of HR@K, Recall@K and NDCG@K over batches of users.

    Definitions, per user u with test items T_u, for each cutoff K:

    - HR@K is 1 if any item of T_u is among the first K ranked items, else 0.
    - Recall@K is the number of those hits divided by min(K, |T_u|).
    - NDCG@K is the DCG of the first K items, with binary relevance and a 1 / log2(rank + 1)
      discount for ranks counted from 1, divided by the DCG of min(K, |T_u|) hits at ranks
      1, 2, ... (the ideal DCG).

    Users without test items are skipped and not counted. When K exceeds the number of ranked
    columns, only the available columns are scored, but the denominators still use K.

    Args:
        ks: Cutoffs K, positive and distinct, in the order the result keys should follow.

    Raises:
        ValueError: If `ks` is empty, repeats a cutoff or contains a cutoff below 1.
    """

    def __init__(self, ks: Iterable[int] = (10, 20)) -> None:
        self.ks = _validate_ks(ks)
        max_k = max(self.ks)
        self._discounts = 1.0 / np.log2(np.arange(2, max_k + 2, dtype=np.float64))  # (max_k,)
        self._ideal_dcgs = np.cumsum(self._discounts)  # [n - 1] is the DCG of n hits at the top
        self._sums = {key: 0.0 for key in self._metric_keys()}
        self._user_count = 0

    def _metric_keys(self) -> list[str]:
        return [f"{name}@{k}" for k in self.ks for name in ("hr", "recall", "ndcg")]

    def add(self, top_items: np.ndarray, test: InteractionMatrix, users: np.ndarray) -> None:
        """Add one batch of ranked lists to the sums.

        Args:
            top_items: int, shape (U, K). Ranked item indices per user, best first. The value
                -1 marks padding and never counts as a hit.
            test: Held-out interactions. Row `users[i]` contains the test items of row i.
            users: int, shape (U,). Row of `test` for each row of `top_items`.

        Raises:
            ValueError: If the shapes disagree, or an item or user index is out of range.
        """
        top_items, users = _validate_batch(top_items, test, users)
        test_lengths = test.indptr[users + 1] - test.indptr[users]
        has_test = test_lengths > 0
        top_items = top_items[has_test]
        users = users[has_test]
        test_lengths = test_lengths[has_test]
        if len(users) == 0:
            return

        hits = _find_hits(top_items, test, users)  # bool (U, K)
        n_columns = hits.shape[1]
        for k in self.ks:
            ranked_width = min(k, n_columns)
            hits_at_k = hits[:, :ranked_width]
            hit_counts = hits_at_k.sum(axis=1)  # (U,)
            relevant_counts = np.minimum(test_lengths, k)  # (U,), at least 1
            dcg = hits_at_k @ self._discounts[:ranked_width]  # (U,)
            ideal_dcg = self._ideal_dcgs[relevant_counts - 1]

            self._sums[f"hr@{k}"] += float((hit_counts > 0).sum())
            self._sums[f"recall@{k}"] += float((hit_counts / relevant_counts).sum())
            self._sums[f"ndcg@{k}"] += float((dcg / ideal_dcg).sum())
        self._user_count += len(users)

    def result(self) -> dict[str, float]:
        """Return each metric averaged over the users added so far, plus `users`, their count.

        Keys follow `ks`: for ks=(10, 20), `hr@10`, `recall@10`, `ndcg@10`, `hr@20`,
        `recall@20`, `ndcg@20`, then `users`. With no users counted, every metric is NaN.
        """
        if self._user_count == 0:
            logger.warning("No user with test items was added, so every ranking metric is NaN.")
            metrics = {key: float("nan") for key in self._sums}
        else:
            metrics = {key: total / self._user_count for key, total in self._sums.items()}
        metrics["users"] = self._user_count
        return metrics


def ranking_metrics(
    top_items: np.ndarray,
    test: InteractionMatrix,
    users: np.ndarray,
    ks: Iterable[int] = (10, 20),
) -> dict[str, float]:
    """Compute HR@K, Recall@K and NDCG@K for ranked lists, averaged over users with test items.

    See `RankingAccumulator` for the definitions. Users without test items are skipped.

    Args:
        top_items: int, shape (U, K). Ranked item indices per user, best first, with -1 as padding.
        test: Held-out interactions. Row `users[i]` contains the test items of row i.
        users: int, shape (U,). Row of `test` for each row of `top_items`.
        ks: Cutoffs K, positive and distinct.

    Returns:
        `hr@K`, `recall@K` and `ndcg@K` for each K in `ks`, then `users`, the number of users
        averaged over. Metrics are NaN when no user has test items.

    Raises:
        ValueError: If `ks` is invalid, the shapes disagree, or an index is out of range.
    """
    accumulator = RankingAccumulator(ks)
    accumulator.add(top_items, test, users)
    return accumulator.result()


def evaluate_full_ranking(
    score_batch: Callable[[np.ndarray], np.ndarray],
    train: InteractionMatrix,
    test: InteractionMatrix,
    ks: Iterable[int] = (10, 20),
    batch_size: int = 256,
) -> dict[str, float]:
    """Rank the whole catalogue for every user with test items and compute ranking metrics.

    Each user's training items are excluded from the ranking. A test item that is also a
    training item of the same user can therefore never be hit, but still counts in |T_u|.
    Memory per batch is O(batch_size * n_items).

    Args:
        score_batch: Maps user indices, int64 shape (B,), to scores, float shape (B, n_items),
            higher is better.
        train: Training interactions, whose items are excluded from each user's ranking.
        test: Held-out interactions with the same shape as `train`.
        ks: Cutoffs K, positive and distinct. The top max(ks) items are ranked per user.
        batch_size: Number of users scored per call to `score_batch`.

    Returns:
        The same keys as `ranking_metrics`: `hr@K`, `recall@K`, `ndcg@K` per K, and `users`.

    Raises:
        ValueError: If `train` and `test` differ in shape, `batch_size` is below 1, `ks` is
            invalid, or `score_batch` returns scores of the wrong shape.
    """
    if (train.n_users, train.n_items) != (test.n_users, test.n_items):
        raise ValueError(
            f"train has shape ({train.n_users}, {train.n_items}) but test has shape "
            f"({test.n_users}, {test.n_items}). Build both from the same user and item indices."
        )
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    accumulator = RankingAccumulator(ks)
    max_k = max(accumulator.ks)

    users = np.flatnonzero(test.row_lengths() > 0).astype(np.int64)
    logger.info(
        "Evaluating full ranking for %d users over %d items, ks=%s",
        len(users),
        test.n_items,
        accumulator.ks,
    )
    start_time = time.perf_counter()

    for start in range(0, len(users), batch_size):
        batch_users = users[start : start + batch_size]
        scores = np.asarray(score_batch(batch_users))
        if scores.shape != (len(batch_users), test.n_items):
            raise ValueError(
                f"score_batch returned shape {scores.shape} for {len(batch_users)} users, "
                f"expected ({len(batch_users)}, {test.n_items}): one score per catalogue item."
            )

        train_mask = train.to_dense_mask(batch_users)  # bool (B, n_items)
        top_items = top_k_items(scores, max_k, exclude=train_mask)
        accumulator.add(top_items, test, batch_users)
        logger.debug("Ranked users %d to %d", start, start + len(batch_users) - 1)

    metrics = accumulator.result()
    logger.info("Evaluated %d users in %.1fs", metrics["users"], time.perf_counter() - start_time)
    return metrics
