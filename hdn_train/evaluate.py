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


REJECTION_RULES = ("sign", "quota", "none")


def quota_keep_counts(candidate_counts: np.ndarray, gammas: Sequence[float]) -> np.ndarray:
    """Return how many candidates each module keeps under the quota rule, int64 (N, B).

    Module n keeps ceil((1 - gamma_n) * c_u) of user u's c_u candidates, the same count the
    runtime's quota rule keeps.
    """
    exact = (1.0 - np.asarray(gammas, np.float64))[:, None] * candidate_counts[None, :]
    # (1 - 0.7) * 10 is 3.0000000000000004 in float64, so round before the ceiling.
    return np.ceil(np.round(exact, 6)).astype(np.int64)


def quota_rejections(
    decisions: np.ndarray, candidates: np.ndarray, gammas: Sequence[float]
) -> np.ndarray:
    """Apply the quota rule: each module keeps a fixed share of the user's candidates.

    Args:
        decisions: float32, shape (B, I, N). Decision logits; lower means keep.
        candidates: bool, shape (B, I). The items the user's request may return.
        gammas: Rejection ratios, len N.

    Returns:
        bool, shape (B, I). True for candidates some module rejected (and for non-candidates).
        Ties in a decision keep the lower item index, as in the runtime.
    """
    num_users, num_items, _ = decisions.shape
    keep_counts_per_module = quota_keep_counts(candidates.sum(axis=1), gammas)
    alive = candidates.copy()
    rows = np.arange(num_users)[:, None]
    for module, keep in enumerate(keep_counts_per_module):
        key = np.where(alive, decisions[..., module], np.inf)
        order = np.argsort(key, axis=1, kind="stable")
        ranks = np.empty_like(order)
        ranks[rows, order] = np.arange(num_items)
        alive &= ranks < keep[:, None]
    return ~alive


def hdn_scorer(
    model: HDN,
    rule: str = "sign",
    gammas: Sequence[float] | None = None,
    seen: InteractionMatrix | None = None,
) -> ScoreMaskFn:
    """Score with the student and drop the items its decision modules reject.

    Rejected items are never ranked, so a user may get fewer than K results, as at serving time.

    Args:
        model: The trained student.
        rule: "sign" rejects where any d_n > 0 (as trained); "quota" keeps a fixed share of
            each user's candidates per module (needs `gammas`); "none" rejects nothing.
        gammas: Rejection ratios for the quota rule.
        seen: Items excluded before the first module, which the quota rule must not count as
            candidates; None counts every item.
    """
    if rule not in REJECTION_RULES:
        raise ValueError(f"rule must be one of {REJECTION_RULES}, got {rule!r}.")
    if rule == "quota" and gammas is None:
        raise ValueError("The quota rule needs gammas, one rejection ratio per module.")

    def score(users: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        decisions, scores = model.score_all(torch.from_numpy(np.asarray(users, np.int64)))
        if rule == "none":
            return scores.numpy(), None
        if rule == "sign":
            return scores.numpy(), (decisions > 0).any(dim=-1).numpy()
        candidates = np.ones(scores.shape, dtype=bool)
        if seen is not None:
            candidates &= ~seen.to_dense_mask(users)
        return scores.numpy(), quota_rejections(decisions.numpy(), candidates, gammas)

    return score


def two_stage_scorer(
    retriever: Callable[[np.ndarray], np.ndarray],
    ranker: Callable[[np.ndarray], np.ndarray],
    seen: InteractionMatrix,
    shortlist: int = 100,
) -> ScoreMaskFn:
    """Let `retriever` shortlist each user's top items, then rank only those with `ranker`.

    Both callables map user indices (B,) to float32 scores (B, I); training items are never
    shortlisted.
    """

    def score(users: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        first = retriever(users)
        shortlisted = top_k_items(first, shortlist, seen.to_dense_mask(users))
        rejected = np.ones(first.shape, dtype=bool)
        rows = np.repeat(np.arange(len(users)), shortlisted.shape[1]).reshape(shortlisted.shape)
        valid = shortlisted >= 0
        rejected[rows[valid], shortlisted[valid]] = False
        return ranker(users), rejected

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
    model: HDN,
    users: np.ndarray,
    k: int,
    seen: InteractionMatrix | None,
    rule: str = "sign",
    gammas: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference top-K of the cascade in PyTorch, for parity checks against exported stages.

    Survivors are the items that no decision module rejects under `rule`; ranking is by score
    descending, then item index ascending.

    Returns:
        (items, scores): int64 and float32 of shape (len(users), k), padded with -1 and -inf.
    """
    scores, rejected = hdn_scorer(model, rule, gammas, seen)(users)
    exclude = np.zeros(scores.shape, dtype=bool) if rejected is None else rejected
    if seen is not None:
        exclude |= seen.to_dense_mask(users)
    items = top_k_items(scores, k, exclude)
    gathered = np.take_along_axis(scores, np.maximum(items, 0), axis=1)
    return items, np.where(items >= 0, gathered, -np.inf).astype(np.float32)
