"""Leave-one-out evaluation against sampled negatives, the Neural Collaborative Filtering protocol.

He et al., 2017, Neural Collaborative Filtering, hold out each user's latest interaction and rank
it against 99 items the user never interacted with. The full-ranking protocol and its metrics live
in `hdn_train.metrics`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

import numpy as np

from hdn_train.data import _select_pairs
from hdn_train.interactions import InteractionMatrix
from hdn_train.metrics import _validate_ks

logger = logging.getLogger(__name__)

DENSE_SAMPLING_ACCEPTANCE = 0.25
"""Acceptance rate below which a row's negatives are drawn by ranking random keys.

Rejection sampling accepts each draw of a row with probability at least
(free_items - num_negatives) / n_items. Below this rate, rejection needs many rounds, so such
rows rank random keys over the whole catalogue instead, at a cost of O(n_items) per row.
"""

_DENSE_BATCH_ELEMENTS = 1 << 22
"""Maximum rows * n_items of one dense sampling batch, which bounds its memory use."""


def leave_one_out_split(
    interactions: InteractionMatrix, timestamps: np.ndarray | None, seed: int = 0
) -> tuple[InteractionMatrix, InteractionMatrix]:
    """Hold out each user's latest interaction for test, as in He et al., 2017.

    The held-out pair is the one with the largest timestamp, and a random one among equal
    timestamps. Without timestamps, it is a random pair of the user. Users with a single
    interaction keep it in train and get no test item.

    Args:
        interactions: The pairs to split.
        timestamps: int or float, shape (interactions.nnz,), aligned with
            `interactions.indices`, as in `Dataset.timestamps`. None when the data has none.
        seed: Seed of the numpy Generator that breaks ties or picks the random pair.

    Returns:
        (train, test), disjoint and together equal to `interactions`, with the same shape.
        Each row of `test` has at most one item.

    Raises:
        ValueError: If `timestamps` does not have one entry per pair, or contains NaN.
    """
    users, _ = interactions.to_pairs()
    lengths = interactions.row_lengths()
    random_keys = np.random.default_rng(seed).random(len(users))

    if timestamps is None:
        sort_keys: tuple[np.ndarray, ...] = (random_keys, users)
    else:
        timestamps = np.asarray(timestamps)
        if timestamps.shape != (interactions.nnz,):
            raise ValueError(
                f"timestamps must have shape ({interactions.nnz},), one per interaction, got "
                f"shape {timestamps.shape}. Pass Dataset.timestamps, or None for no timestamps."
            )
        if np.issubdtype(timestamps.dtype, np.floating) and np.isnan(timestamps).any():
            raise ValueError(
                f"timestamps contain {int(np.isnan(timestamps).sum())} NaN values. "
                "Fill them in, or pass None to hold out a random interaction per user."
            )
        sort_keys = (random_keys, timestamps, users)

    # Sorted by user first, user u's pairs fill positions indptr[u]:indptr[u + 1] of `order`,
    # and the last of them has the largest timestamp, then the largest random key.
    order = np.lexsort(sort_keys)
    has_test = lengths >= 2
    is_test = np.zeros(len(users), dtype=bool)
    is_test[order[interactions.indptr[1:][has_test] - 1]] = True

    logger.debug("Held out one interaction for each of %d users", int(has_test.sum()))
    return _select_pairs(interactions, ~is_test), _select_pairs(interactions, is_test)


def sample_candidates(
    train: InteractionMatrix, test: InteractionMatrix, num_negatives: int = 99, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Pair each user's held-out item with random items the user never interacted with.

    He et al., 2017 rank the held-out item among 99 such negatives. The negatives of a row are
    distinct, drawn uniformly from the items in neither the user's train row nor test row, and
    come in random order.

    Args:
        train: Training interactions.
        test: Held-out interactions with the same shape as `train`, at most one item per user,
            as returned by `leave_one_out_split`.
        num_negatives: Number of negatives per user, at least 0.
        seed: Seed of the numpy Generator; the same seed gives the same candidates.

    Returns:
        (users, candidates): int64 of shape (U,), the users with a test item in ascending order,
        and int64 of shape (U, 1 + num_negatives), the held-out item in column 0 and the
        negatives after it.

    Raises:
        ValueError: If the shapes differ, a user has more than one test item, `num_negatives`
            is negative, or a user has fewer than `num_negatives` items to sample from.
    """
    _check_same_shape(train, test)
    if not isinstance(num_negatives, (int, np.integer)) or isinstance(num_negatives, bool):
        raise ValueError(f"num_negatives must be an integer, got {num_negatives!r}.")
    if num_negatives < 0:
        raise ValueError(f"num_negatives must be at least 0, got {num_negatives}.")

    test_lengths = test.row_lengths()
    if test_lengths.max(initial=0) > 1:
        crowded = np.flatnonzero(test_lengths > 1)
        raise ValueError(
            f"{len(crowded)} user(s) have more than one test item (user {crowded[0]} has "
            f"{test_lengths[crowded[0]]}). This protocol holds out one item per user: split "
            "with leave_one_out_split."
        )
    users = np.flatnonzero(test_lengths == 1).astype(np.int64)
    held_out = test.indices[test.indptr[users]]  # (U,)

    interacted = train.union(test)
    free_counts = interacted.n_items - interacted.row_lengths()[users]  # (U,)
    _check_enough_free_items(users, free_counts, num_negatives)

    rng = np.random.default_rng(seed)
    negatives = np.empty((len(users), num_negatives), dtype=np.int64)
    is_dense = (free_counts - num_negatives) < DENSE_SAMPLING_ACCEPTANCE * interacted.n_items
    if num_negatives > 0:
        sparse_rows = np.flatnonzero(~is_dense)
        dense_rows = np.flatnonzero(is_dense)
        negatives[sparse_rows] = _sample_by_rejection(
            interacted, users[sparse_rows], num_negatives, rng
        )
        negatives[dense_rows] = _sample_by_ranking(
            interacted, users[dense_rows], num_negatives, rng
        )

    logger.debug(
        "Sampled %d negatives for each of %d users, %d of them by ranking random keys",
        num_negatives,
        len(users),
        int(is_dense.sum()) if num_negatives > 0 else 0,
    )
    return users, np.concatenate([held_out[:, None], negatives], axis=1)


def _check_same_shape(train: InteractionMatrix, test: InteractionMatrix) -> None:
    if (train.n_users, train.n_items) != (test.n_users, test.n_items):
        raise ValueError(
            f"train has shape ({train.n_users}, {train.n_items}) but test has shape "
            f"({test.n_users}, {test.n_items}). Build both from the same user and item indices."
        )


def _check_enough_free_items(
    users: np.ndarray, free_counts: np.ndarray, num_negatives: int
) -> None:
    short = np.flatnonzero(free_counts < num_negatives)
    if len(short):
        worst = short[np.argmin(free_counts[short])]
        raise ValueError(
            f"{len(short)} user(s) have fewer than num_negatives={num_negatives} items they never "
            f"interacted with (user {users[worst]} has {free_counts[worst]}). Lower "
            "num_negatives, or drop those users before splitting."
        )


def _sample_by_rejection(
    interacted: InteractionMatrix, users: np.ndarray, num_negatives: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw distinct non-interacted items per user, redrawing rejected entries round by round.

    Returns:
        int64, shape (len(users), num_negatives).
    """
    n_items = interacted.n_items
    # CSR rows are sorted by user, then item, so these codes are sorted for searchsorted.
    pair_users, pair_items = interacted.to_pairs()
    interacted_codes = pair_users * n_items + pair_items

    negatives = rng.integers(0, n_items, size=(len(users), num_negatives), dtype=np.int64)
    is_fresh = np.ones(negatives.shape, dtype=bool)  # drawn in the current round
    rows = np.arange(len(users))
    while len(rows):
        block = negatives[rows]  # (R, num_negatives)
        codes = users[rows, None] * n_items + block
        positions = np.minimum(np.searchsorted(interacted_codes, codes), len(interacted_codes) - 1)
        is_rejected = interacted_codes[positions] == codes

        # A stable sort by (item, is_fresh) puts the copy accepted in an earlier round first
        # among equal items, so only the later copies are redrawn.
        order = np.argsort(block * 2 + is_fresh[rows], axis=1, kind="stable")
        sorted_items = np.take_along_axis(block, order, axis=1)
        is_repeat = np.zeros_like(is_rejected)
        np.put_along_axis(
            is_repeat, order[:, 1:], sorted_items[:, 1:] == sorted_items[:, :-1], axis=1
        )
        is_rejected |= is_repeat

        is_fresh[rows] = False
        rejected_rows, rejected_columns = np.nonzero(is_rejected)
        rejected_rows = rows[rejected_rows]
        negatives[rejected_rows, rejected_columns] = rng.integers(
            0, n_items, size=len(rejected_rows), dtype=np.int64
        )
        is_fresh[rejected_rows, rejected_columns] = True
        rows = np.unique(rejected_rows)
    return negatives


def _sample_by_ranking(
    interacted: InteractionMatrix, users: np.ndarray, num_negatives: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw distinct non-interacted items per user by ranking random keys over the catalogue.

    Returns:
        int64, shape (len(users), num_negatives).
    """
    n_items = interacted.n_items
    negatives = np.empty((len(users), num_negatives), dtype=np.int64)
    batch_rows = max(1, _DENSE_BATCH_ELEMENTS // n_items)
    for start in range(0, len(users), batch_rows):
        batch = slice(start, start + batch_rows)
        keys = rng.random((len(users[batch]), n_items))
        keys[interacted.to_dense_mask(users[batch])] = np.inf  # interacted items rank last

        picked = np.argpartition(keys, num_negatives - 1, axis=1)[:, :num_negatives]
        picked_keys = np.take_along_axis(keys, picked, axis=1)
        # argpartition leaves the picked items in no particular order, so sort them by key.
        negatives[batch] = np.take_along_axis(picked, np.argsort(picked_keys, axis=1), axis=1)
    return negatives


def sampled_ranking_metrics(
    score_pairs: Callable[[np.ndarray, np.ndarray], np.ndarray],
    users: np.ndarray,
    candidates: np.ndarray,
    ks: Iterable[int] = (10,),
    batch_size: int = 1024,
) -> dict[str, float]:
    """Rank each held-out item among its sampled candidates and compute HR@K and NDCG@K.

    The rank of the held-out item counts from 0: it is the number of other candidates in its
    row whose score is greater than or equal to the held-out item's score. Ties are therefore
    pessimistic, so a model that returns a constant score gets rank C - 1 for C candidates.
    HR@K is the mean of rank < K, and NDCG@K the mean of 1 / log2(rank + 2) where rank < K,
    else 0. With one relevant item per user, the ideal DCG is 1. He et al., 2017 report both
    at K = 10 with 99 negatives.

    Args:
        score_pairs: Maps users and items, int64 shape (P,) each, to scores, float shape (P,),
            higher is better, such as `Teacher.score_pairs`.
        users: int, shape (U,). The user of each row of `candidates`.
        candidates: int, shape (U, C). Item indices, the held-out item in column 0, as
            returned by `sample_candidates`.
        ks: Cutoffs K, positive and distinct.
        batch_size: Number of users whose candidates go into one call to `score_pairs`.

    Returns:
        `hr@K` and `ndcg@K` for each K in `ks`, then `users`, the number of rows. Metrics are
        NaN when there are no rows.

    Raises:
        ValueError: If the shapes disagree, `ks` or `batch_size` is invalid, or `score_pairs`
            returns scores of the wrong shape or NaN.
    """
    ks = _validate_ks(ks)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    users, candidates = _validate_candidates(users, candidates)
    n_candidates = candidates.shape[1]

    logger.info(
        "Evaluating sampled ranking for %d users over %d candidates each, ks=%s",
        len(users),
        n_candidates,
        ks,
    )
    start_time = time.perf_counter()

    ranks = np.empty(len(users), dtype=np.int64)
    for start in range(0, len(users), batch_size):
        batch = slice(start, start + batch_size)
        batch_users = np.repeat(users[batch], n_candidates)
        scores = np.asarray(score_pairs(batch_users, candidates[batch].ravel()))
        if scores.shape != batch_users.shape:
            raise ValueError(
                f"score_pairs returned shape {scores.shape} for {len(batch_users)} pairs, "
                f"expected ({len(batch_users)},): one score per pair."
            )
        if np.isnan(scores).any():
            raise ValueError(
                f"score_pairs returned {int(np.isnan(scores).sum())} NaN scores for candidate "
                f"rows {start} to {start + len(scores) // n_candidates - 1}. Fix the model output."
            )
        scores = scores.reshape(-1, n_candidates)  # (B, C)
        ranks[batch] = (scores[:, 1:] >= scores[:, :1]).sum(axis=1)

    metrics: dict[str, float] = {}
    for k in ks:
        is_hit = ranks < k
        gains = np.where(is_hit, 1.0 / np.log2(ranks + 2.0), 0.0)
        metrics[f"hr@{k}"] = float(is_hit.mean()) if len(ranks) else float("nan")
        metrics[f"ndcg@{k}"] = float(gains.mean()) if len(ranks) else float("nan")
    metrics["users"] = len(users)

    if len(users) == 0:
        logger.warning("No candidate rows were given, so every sampled ranking metric is NaN.")
    logger.info("Evaluated %d users in %.1fs", len(users), time.perf_counter() - start_time)
    return metrics


def _validate_candidates(
    users: np.ndarray, candidates: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    users = np.asarray(users)
    candidates = np.asarray(candidates)
    if candidates.ndim != 2 or candidates.shape[1] < 1:
        raise ValueError(
            f"candidates must have shape (n_users, C) with C >= 1, got shape {candidates.shape}. "
            "Pass one row per user with the held-out item in column 0."
        )
    if users.shape != (len(candidates),):
        raise ValueError(
            f"users must have shape ({len(candidates)},) to match candidates, "
            f"got shape {users.shape}."
        )
    for name, values in (("users", users), ("candidates", candidates)):
        if values.size and not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{name} must contain integer indices, got dtype {values.dtype}.")
    return users.astype(np.int64, copy=False), candidates.astype(np.int64, copy=False)
