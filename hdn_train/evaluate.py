"""Full-ranking evaluation of every model kind, including the HDN cascade with its rejections.

Metric definitions live in `hdn_train.metrics`; this module turns models into per-user scores
and candidate masks, in batches of users so no (n_users, n_items) array is built at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from hdn_train.interactions import InteractionMatrix
from hdn_train.metrics import RankingAccumulator, top_k_items
from hdn_train.models.hdn import HDN

ScoreMaskFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
"""Maps user indices (B,) to (scores (B, I) float32, rejected (B, I) bool or None)."""


def dense_scorer(score_all: Callable[[np.ndarray], np.ndarray]) -> ScoreMaskFn:
    """Wrap a model that scores every item and rejects none."""
    return lambda users: (score_all(users), None)


def hdn_scorer(model: HDN, reject: bool = True) -> ScoreMaskFn:
    """Score with the student; with `reject`, items any decision module rejects are dropped.

    Rejected items are never ranked, so a user may get fewer than K results, as at serving time.
    """

    def score(users: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        decisions, scores = model.score_all(torch.from_numpy(np.asarray(users, np.int64)))
        rejected = (decisions > 0).any(dim=-1).numpy() if reject else None
        return scores.numpy(), rejected

    return score


def evaluate_ranking(
    scorer: ScoreMaskFn,
    train: InteractionMatrix,
    test: InteractionMatrix,
    ks: Sequence[int] = (10, 20),
    batch_users: int = 256,
) -> dict[str, float]:
    """Rank every non-training item for each user with test items and average the metrics.

    Returns:
        Keys like `ndcg@20`, `hr@20` and `recall@20` for each K, plus `users`.
    """
    users = np.flatnonzero(test.row_lengths() > 0)
    accumulator = RankingAccumulator(ks)
    for start in range(0, len(users), batch_users):
        batch = users[start : start + batch_users]
        scores, rejected = scorer(batch)
        exclude = train.to_dense_mask(batch)
        if rejected is not None:
            exclude |= rejected
        accumulator.add(top_k_items(scores, max(ks), exclude), test, batch)
    return accumulator.result()


def cascade_top_k(
    model: HDN, users: np.ndarray, k: int, seen: InteractionMatrix | None
) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-K of the cascade in PyTorch, for parity checks against exported stages.

    Survivors are the items that no decision module rejects (sign rule); ranking is by score
    descending, then item index ascending.

    Returns:
        (items, scores): int64 and float32 of shape (len(users), k), padded with -1 and -inf.
    """
    scores, rejected = hdn_scorer(model)(users)
    exclude = rejected if seen is None else rejected | seen.to_dense_mask(users)
    items = top_k_items(scores, k, exclude)
    gathered = np.take_along_axis(scores, np.maximum(items, 0), axis=1)
    return items, np.where(items >= 0, gathered, -np.inf).astype(np.float32)
