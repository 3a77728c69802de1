"""Pointwise training on sampled negatives, shared by MF, GMF, MLP and NeuMF.

The models live in `hdn_train.models`; distilling the student is `hdn_train.distill`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hdn_train.interactions import InteractionMatrix
from hdn_train.sampling import training_pairs

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, int, int], None]
"""Called as `on_step(phase, done, total)` after each optimiser step."""


@dataclass
class FitOptions:
    """Optimiser settings for one model.

    Attributes:
        epochs: Passes over the training positives.
        batch_size: Sampled pairs per step.
        learning_rate: Adam learning rate.
        negatives: Sampled negatives per positive.
    """

    epochs: int
    batch_size: int = 512
    learning_rate: float = 1e-3
    negatives: int = 5


def minibatch_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    num_rows: int,
    batch_size: int,
    batch_loss: Callable[[slice], torch.Tensor],
    phase: str,
    epoch: int,
    epochs: int,
    on_step: ProgressCallback | None = None,
) -> float:
    """Run one epoch of optimiser steps over `num_rows` pre-shuffled rows; return the mean loss.

    Args:
        batch_loss: Maps the slice of one batch's rows to its scalar loss.
        epoch: Zero-based epoch index, for the progress callback.
        epochs: Total epochs of the phase, for the progress callback.
    """
    num_steps = (num_rows + batch_size - 1) // batch_size
    model.train()
    total_loss = 0.0
    for step in range(num_steps):
        loss = batch_loss(slice(step * batch_size, (step + 1) * batch_size))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.item()
        if on_step is not None:
            on_step(phase, epoch * num_steps + step + 1, epochs * num_steps)
    model.eval()
    return total_loss / max(num_steps, 1)


def fit_pointwise(
    model: nn.Module,
    train: InteractionMatrix,
    options: FitOptions,
    rng: np.random.Generator,
    phase: str,
    on_step: ProgressCallback | None = None,
) -> list[dict[str, float]]:
    """Train `model(users, items) -> logits` with binary cross-entropy on sampled pairs.

    Each epoch draws fresh negatives for every training positive.

    Returns:
        One record per epoch with the mean loss and the seconds it took.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    history = []
    for epoch in range(options.epochs):
        started = time.perf_counter()
        users, items, labels = (
            torch.from_numpy(array) for array in training_pairs(train, options.negatives, rng)
        )

        def batch_loss(batch: slice) -> torch.Tensor:
            logits = model(users[batch], items[batch])
            return F.binary_cross_entropy_with_logits(logits, labels[batch])

        loss = minibatch_epoch(
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
        history.append({"epoch": epoch + 1, "loss": loss, "seconds": seconds})
        logger.info(
            "%s epoch %d/%d: loss %.4f in %.1fs", phase, epoch + 1, options.epochs, loss, seconds
        )
    return history


class Teacher(Protocol):
    """Any model that scores user-item pairs can teach an HDN, black boxes included.

    Scores are logits or any real-valued relevance: distillation ranks them per user for the
    decision targets and passes them through a sigmoid for the score target. A teacher whose
    scores are not logits (ALS dot products, or ConvNCF trained with the pairwise BPR loss)
    sets `scores_are_logits = False`, and distillation then maps them to
    logits first with `hdn_train.distill.fit_logit_calibration`. Teachers without the
    attribute are taken to return logits.
    """

    num_items: int

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Return float32 scores of shape (P,) for int64 index arrays of shape (P,)."""
        ...

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """Return float32 scores of shape (len(users), num_items) for every item."""
        ...


class TorchTeacher:
    """Adapter from a PyTorch model with `forward(users, items)` and `score_all(users)`.

    Args:
        model: The trained network; it is put in eval mode.
        batch_pairs: Upper bound on pairs scored per forward call.
        scores_are_logits: False for a model trained with a pairwise loss such as BPR, which
            fixes score differences only, so that distillation calibrates its scores first.
    """

    def __init__(
        self, model: nn.Module, batch_pairs: int = 1 << 18, scores_are_logits: bool = True
    ) -> None:
        self.model = model.eval()
        self.batch_pairs = batch_pairs
        self.scores_are_logits = scores_are_logits
        self.num_items = int(model.score_all(torch.zeros(1, dtype=torch.int64)).shape[1])

    @torch.no_grad()
    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        users_t = torch.from_numpy(np.asarray(users, np.int64))
        items_t = torch.from_numpy(np.asarray(items, np.int64))
        chunks = [
            self.model(
                users_t[start : start + self.batch_pairs], items_t[start : start + self.batch_pairs]
            )
            for start in range(0, len(users_t), self.batch_pairs)
        ]
        if not chunks:
            return np.zeros(0, np.float32)
        return torch.cat(chunks).numpy().astype(np.float32, copy=False)

    @torch.no_grad()
    def score_users(self, users: np.ndarray) -> np.ndarray:
        scores = self.model.score_all(torch.from_numpy(np.asarray(users, np.int64)))
        return scores.numpy().astype(np.float32, copy=False)
