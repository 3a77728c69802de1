"""Negative sampling for implicit feedback: uniformly drawn items a user has not interacted with."""

from __future__ import annotations

import numpy as np

from hdn_train.interactions import InteractionMatrix


def sample_negatives(
    train: InteractionMatrix, users: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Draw one uniformly random non-interacted item for each entry of `users`.

    Rejection sampling, vectorised: draw for every entry, then redraw only the entries that hit
    one of the user's training items. Each round shrinks the redraw set by the user's density,
    so a handful of rounds suffice for MovieLens-like data.

    Args:
        train: The interactions a negative must avoid.
        users: int64, shape (P,). Dense user indices.
        rng: Source of randomness.

    Returns:
        int64, shape (P,). Item indices, none of them in the user's training row.

    Raises:
        ValueError: If some user has interacted with every item, so no negative exists.
    """
    lengths = train.row_lengths()
    full_users = np.flatnonzero(lengths[np.unique(users)] >= train.n_items) if len(users) else []
    if len(full_users):
        raise ValueError(
            f"{len(full_users)} user(s) interacted with all {train.n_items} items, so no "
            "negative item can be sampled for them. Drop such users from the data."
        )

    # Sorted keys user * n_items + item make membership one searchsorted call.
    pair_users, pair_items = train.to_pairs()
    keys = pair_users * train.n_items + pair_items
    items = rng.integers(0, train.n_items, size=len(users), dtype=np.int64)
    pending = np.arange(len(users))
    while len(pending):
        candidate_keys = users[pending] * train.n_items + items[pending]
        positions = np.searchsorted(keys, candidate_keys)
        positions = np.minimum(positions, len(keys) - 1)
        collided = keys[positions] == candidate_keys if len(keys) else np.zeros(0, bool)
        pending = pending[collided]
        items[pending] = rng.integers(0, train.n_items, size=len(pending), dtype=np.int64)
    return items


def training_pairs(
    train: InteractionMatrix, negatives_per_positive: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build one epoch of shuffled (user, item, label) triples from every training positive.

    Args:
        train: Training interactions; each pair is one positive.
        negatives_per_positive: Number of sampled negatives per positive.
        rng: Source of randomness for the negatives and the shuffle.

    Returns:
        (users, items, labels): int64, int64 and float32 arrays of shape
        (nnz * (1 + negatives_per_positive),); labels are 1 for positives and 0 for negatives.
    """
    pos_users, pos_items = train.to_pairs()
    neg_users = np.repeat(pos_users, negatives_per_positive)
    neg_items = sample_negatives(train, neg_users, rng)

    users = np.concatenate([pos_users, neg_users])
    items = np.concatenate([pos_items, neg_items])
    labels = np.concatenate(
        [np.ones(len(pos_users), np.float32), np.zeros(len(neg_users), np.float32)]
    )
    order = rng.permutation(len(users))
    return users[order], items[order], labels[order]
