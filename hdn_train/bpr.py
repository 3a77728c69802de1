"""Pairwise BPR training on sampled negatives, for MF and for the ConvNCF teacher.

BPR (Bayesian Personalized Ranking) pushes the score of a training positive above that of an
item the user has not interacted with. He et al., 2018, Outer Product-based Neural Collaborative
Filtering, train ConvNCF and its MF pre-training this way. Pointwise cross-entropy training is
`hdn_train.teachers.fit_pointwise`.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hdn_train.interactions import InteractionMatrix
from hdn_train.sampling import sample_negatives
from hdn_train.teachers import FitOptions, ProgressCallback, minibatch_epoch

logger = logging.getLogger(__name__)


def bpr_triples(
    train: InteractionMatrix, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build one epoch of shuffled (user, positive, negative) triples.

    Every training positive appears once, paired with one uniformly drawn item that the user
    has not interacted with.

    Args:
        train: Training interactions. Each pair is one positive.
        rng: Source of randomness for the negatives and the shuffle.

    Returns:
        (users, positives, negatives): int64 arrays of shape (nnz,).
    """
    users, positives = train.to_pairs()
    negatives = sample_negatives(train, users, rng)
    order = rng.permutation(len(users))
    return users[order], positives[order], negatives[order]


def bpr_loss(
    model: nn.Module,
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    weight_decay: float = 0.0,
) -> torch.Tensor:
    """Return the mean BPR loss of a batch, `-log sigmoid(s(u, i) - s(u, j))`.

    With `weight_decay` > 0, the loss adds `weight_decay` times the batch mean of
    `|h_u|^2 + |h_i|^2 + |h_j|^2`, an L2 penalty on the embeddings that the batch uses.

    Args:
        model: Scores pairs as `model(users, items) -> logits (B,)`. With `weight_decay` > 0 it
            must also have `user_embedding` and `item_embedding` tables.
        users: int64, shape (B,).
        positives: int64, shape (B,). Items the users interacted with.
        negatives: int64, shape (B,). Sampled items the users did not interact with.
        weight_decay: Coefficient of the L2 penalty.

    Returns:
        A scalar float32 tensor.

    Raises:
        ValueError: If `weight_decay` > 0 and the model has no embedding tables.
    """
    # One forward call scores positives and negatives, so the per-call overhead is paid once.
    scores = model(torch.cat([users, users]), torch.cat([positives, negatives]))
    positive_scores, negative_scores = scores.split(len(users))
    loss = -F.logsigmoid(positive_scores - negative_scores).mean()
    if weight_decay > 0:
        loss = loss + weight_decay * _embedding_norms(model, users, positives, negatives).mean()
    return loss


def _embedding_norms(
    model: nn.Module, users: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    """Return `|h_u|^2 + |h_i|^2 + |h_j|^2` per triple, shape (B,)."""
    if not (hasattr(model, "user_embedding") and hasattr(model, "item_embedding")):
        raise ValueError(
            f"weight_decay > 0 needs a model with user_embedding and item_embedding tables, "
            f"but {type(model).__name__} does not have both. Pass weight_decay=0."
        )
    norms = model.user_embedding(users).pow(2).sum(-1)
    norms = norms + model.item_embedding(positives).pow(2).sum(-1)
    return norms + model.item_embedding(negatives).pow(2).sum(-1)


def fit_bpr(
    model: nn.Module,
    train: InteractionMatrix,
    options: FitOptions,
    rng: np.random.Generator,
    phase: str,
    on_step: ProgressCallback | None = None,
    weight_decay: float = 0.0,
) -> list[dict[str, float]]:
    """Train `model(users, items) -> logits` with the BPR loss, using Adam.

    Each epoch pairs every training positive with one fresh uniform negative, shuffles the
    triples and takes steps of `options.batch_size` triples (see `bpr_loss`).
    `options.negatives` is not used, because BPR draws exactly one negative per positive.

    Args:
        model: Any module that scores pairs, such as `MatrixFactorization` or `ConvNCF`.
        train: Training interactions.
        options: Epochs, batch size and learning rate.
        rng: Source of randomness for negatives and shuffling. Seed torch separately for the
            initial weights.
        phase: Name used in logs and passed to `on_step`.
        on_step: Called as `on_step(phase, done, total)` after each optimiser step.
        weight_decay: Coefficient of the L2 penalty on the batch embeddings.

    Returns:
        One record per epoch: "epoch" (1-based), "loss" (mean over steps) and "seconds".

    Raises:
        ValueError: If `train` has no interactions or `weight_decay` < 0, or see `bpr_loss`.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    if train.nnz == 0:
        raise ValueError(f"Cannot run {phase} BPR training: the training set has no interactions.")
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    history = []
    for epoch in range(options.epochs):
        started = time.perf_counter()
        users, positives, negatives = (torch.from_numpy(a) for a in bpr_triples(train, rng))

        def batch_loss(batch: slice) -> torch.Tensor:
            return bpr_loss(model, users[batch], positives[batch], negatives[batch], weight_decay)

        mean_loss = minibatch_epoch(
            model,
            optimizer,
            len(users),
            options.batch_size,
            batch_loss,
            phase,
            epoch,
            options.epochs,
            on_step,
        )
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch + 1, "loss": mean_loss, "seconds": seconds})
        logger.info(
            "%s epoch %d/%d: BPR loss %.4f in %.1fs",
            phase,
            epoch + 1,
            options.epochs,
            mean_loss,
            seconds,
        )
    return history
