"""Distil a trained teacher into an HDN student: per-user thresholds, targets and the training loop.

The teacher enters only through a function that scores every item for a batch of users, so
any model that scores pairs can teach. The losses live in `hdn_train.losses`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hdn_train.interactions import InteractionMatrix
from hdn_train.losses import decision_hinge_loss
from hdn_train.models.hdn import HDN
from hdn_train.sampling import training_pairs
from hdn_train.teachers import FitOptions, ProgressCallback, minibatch_epoch

logger = logging.getLogger(__name__)

ScoreAllFn = Callable[[np.ndarray], np.ndarray]
"""Maps int64 user indices of shape (B,) to float32 teacher logits of shape (B, n_items)."""


def teacher_score_matrix(
    score_all: ScoreAllFn, num_users: int, batch_users: int = 256
) -> np.ndarray:
    """Score every (user, item) pair with the teacher once, float32 shape (num_users, n_items).

    Thresholds and the score targets of every epoch are then look-ups in this matrix.
    """
    rows = [
        score_all(np.arange(start, min(start + batch_users, num_users)))
        for start in range(0, num_users, batch_users)
    ]
    return np.concatenate(rows).astype(np.float32, copy=False)


def fit_logit_calibration(
    teacher_scores: np.ndarray,
    train: InteractionMatrix,
    negatives: int,
    rng: np.random.Generator,
    iterations: int = 50,
) -> tuple[float, float]:
    """Fit a and b so that sigmoid(a * score + b) predicts the labels of sampled training pairs.

    Distillation reads sigmoid(teacher score) as a soft label, which is right for a teacher
    trained with a logistic loss and wrong for one whose scores live on another scale, such as
    ALS dot products of about 0 to 1. Platt scaling on the same pairs that distillation samples
    (every positive with `negatives` random negatives) turns such scores into logits. It is
    monotone, so per-user thresholds and rankings do not change.

    Args:
        teacher_scores: float32, shape (U, I). The teacher's raw scores for every pair.
        train: Training interactions, the positives.
        negatives: Sampled negatives per positive.
        rng: Source of randomness for the negatives.
        iterations: Upper bound on Newton steps; the fit stops earlier once it has converged.

    Returns:
        (a, b) as floats. a is positive for a teacher that ranks positives above negatives.
    """
    users, items, labels = training_pairs(train, negatives, rng)
    x = teacher_scores[users, items].astype(np.float64)
    y = labels.astype(np.float64)
    # Start from a standardised score and the base rate, where the log-likelihood is smooth.
    scale = float(x.std()) or 1.0
    base_rate = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    params = np.array([1.0 / scale, np.log(base_rate / (1 - base_rate)) - x.mean() / scale])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(params[0] * x + params[1])))
        residual = p - y
        weight = p * (1.0 - p) + 1e-12
        gradient = np.array([residual @ x, residual.sum()])
        hessian = np.array([[weight @ (x * x), weight @ x], [weight @ x, weight.sum()]])
        step = np.linalg.solve(hessian + 1e-9 * np.eye(2), gradient)
        params -= step
        if np.abs(step).max() < 1e-8 * (1.0 + np.abs(params).max()):
            break
    if not np.all(np.isfinite(params)) or params[0] <= 0:
        raise ValueError(
            f"Teacher scores do not rank training positives above sampled negatives (fitted "
            f"slope {params[0]:.4g}), so they cannot be turned into logits. Check that the "
            "teacher was trained on these interactions."
        )
    return float(params[0]), float(params[1])


def keep_counts(num_items: int, gammas: Sequence[float]) -> list[int]:
    """Return K = (1 - gamma_n) * num_items, rounded and at least 1, for each module."""
    for gamma in gammas:
        if not 0.0 <= gamma < 1.0:
            raise ValueError(
                f"Each rejection ratio gamma must be in [0, 1), got {gamma}. It is the share "
                "of the catalogue rejected once that decision module has decided."
            )
    if list(gammas) != sorted(gammas):
        raise ValueError(
            f"Rejection ratios must not decrease from one module to the next, got {list(gammas)}."
        )
    return [max(1, int(round((1.0 - gamma) * num_items))) for gamma in gammas]


def user_thresholds(teacher_scores: np.ndarray, gammas: Sequence[float]) -> np.ndarray:
    """Compute kappa(u, gamma_n): the teacher score of each user's K-th best item.

    Args:
        teacher_scores: float32, shape (U, I). Teacher logits for every pair.
        gammas: Rejection ratios, one per decision module.

    Returns:
        float32, shape (U, N). An item whose teacher score is below kappa is a rejection target.
    """
    num_items = teacher_scores.shape[1]
    thresholds = np.empty((teacher_scores.shape[0], len(gammas)), dtype=np.float32)
    for column, keep in enumerate(keep_counts(num_items, gammas)):
        # The K-th largest is at index I - K of an ascending partition.
        thresholds[:, column] = np.partition(teacher_scores, num_items - keep, axis=1)[
            :, num_items - keep
        ]
    return thresholds


def rejection_targets(pair_teacher_scores: np.ndarray, pair_thresholds: np.ndarray) -> np.ndarray:
    """Return float32 targets of shape (B, N): +1 (reject) below the threshold, -1 (keep) otherwise.

    Args:
        pair_teacher_scores: float32, shape (B,).
        pair_thresholds: float32, shape (B, N). The thresholds of each pair's user.
    """
    below = pair_teacher_scores[:, None] < pair_thresholds
    return np.where(below, 1.0, -1.0).astype(np.float32)


@torch.no_grad()
def rejection_shares(model: HDN, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Measure how much of the whole catalogue the sign rule rejects, averaged over `users`.

    Returns:
        (cumulative, per_module), both float64 of shape (N,). `cumulative[n]` is the share of
        all items rejected once module n has decided (its target is gamma_n); `per_module[n]`
        is the share of the items reaching module n that it rejects.
    """
    decisions, _ = model.score_all(torch.from_numpy(np.asarray(users, dtype=np.int64)))
    rejected_by = decisions > 0  # (U, I, N)
    rejected_so_far = torch.cummax(rejected_by.to(torch.int8), dim=-1).values.bool()
    cumulative = rejected_so_far.float().mean(dim=(0, 1)).double().numpy()
    reaching = np.concatenate([[1.0], 1.0 - cumulative[:-1]])
    per_module = np.where(
        reaching > 0,
        (cumulative - np.concatenate([[0.0], cumulative[:-1]])) / np.maximum(reaching, 1e-12),
        0.0,
    )
    return cumulative, per_module


DECISION_TARGETS = ("teacher", "implicit", "none")
SCORE_TARGETS = ("teacher", "implicit")


def distill_hdn(
    model: HDN,
    train: InteractionMatrix,
    teacher_scores: np.ndarray | None,
    gammas: Sequence[float],
    options: FitOptions,
    rng: np.random.Generator,
    monitor_users: np.ndarray | None = None,
    on_step: ProgressCallback | None = None,
    decision_targets: str = "teacher",
    score_target: str = "teacher",
) -> list[dict]:
    """Train `model` to match the teacher's scores and its per-user rejection thresholds.

    Loss per sampled pair: score BCE against sigmoid(teacher) plus one hinge loss per decision
    module, with targets from `user_thresholds`. These are the defaults, and the ablations swap
    the targets. Every training positive is paired with `options.negatives` sampled negatives
    per epoch.

    Args:
        model: The student, trained in place.
        train: Training interactions, the positives to sample around.
        teacher_scores: float32, shape (U, I). Teacher logits for every pair.
        gammas: Rejection ratio of each decision module, len N.
        options: Optimiser settings.
        rng: Source of randomness for sampling.
        monitor_users: Users on whom the actual rejection shares are measured after each
            epoch; None skips the measurement.
        on_step: Progress callback.
        decision_targets: "teacher" distils the per-user thresholds (HDN); "implicit" trains
            each decision to keep positives and reject sampled negatives (the HDN-nd and
            HDN-nr- ablations); "none" leaves the decisions untrained (HDN-nr-nd).
        score_target: "teacher" matches sigmoid(teacher score); "implicit" fits the 0/1 labels
            of the sampled pairs, with no teacher (HDN-nr-nd).

    Returns:
        One record per epoch: losses, seconds and, with monitor users, the rejection shares.
    """
    if decision_targets not in DECISION_TARGETS:
        raise ValueError(
            f"decision_targets must be one of {DECISION_TARGETS}, got {decision_targets!r}."
        )
    if score_target not in SCORE_TARGETS:
        raise ValueError(f"score_target must be one of {SCORE_TARGETS}, got {score_target!r}.")
    needs_teacher = decision_targets == "teacher" or score_target == "teacher"
    if needs_teacher and teacher_scores is None:
        raise ValueError(
            "teacher_scores is None, but the decision or score targets come from the teacher. "
            "Pass the teacher's score matrix, or use implicit targets."
        )
    if len(gammas) != model.num_decisions:
        raise ValueError(
            f"Got {len(gammas)} rejection ratios for a student with {model.num_decisions} "
            "decision modules. Pass one gamma per module."
        )
    thresholds = user_thresholds(teacher_scores, gammas) if decision_targets == "teacher" else None
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    history = []

    for epoch in range(options.epochs):
        started = time.perf_counter()
        users, items, labels = training_pairs(train, options.negatives, rng)
        if score_target == "teacher":
            score_labels = torch.sigmoid(torch.from_numpy(teacher_scores[users, items]))
        else:
            score_labels = torch.from_numpy(labels)
        if decision_targets == "teacher":
            targets = rejection_targets(teacher_scores[users, items], thresholds[users])
        else:
            # Implicit labels: keep (-1) the positives, reject (+1) the sampled negatives.
            column = np.where(labels > 0, -1.0, 1.0).astype(np.float32)
            targets = np.repeat(column[:, None], model.num_decisions, axis=1)
        users_t, items_t = torch.from_numpy(users), torch.from_numpy(items)
        targets_t = torch.from_numpy(targets)
        num_steps = (len(users) + options.batch_size - 1) // options.batch_size

        model.train()
        score_total = hinge_total = 0.0
        for step in range(num_steps):
            batch = slice(step * options.batch_size, (step + 1) * options.batch_size)
            decisions, scores = model(users_t[batch], items_t[batch])
            score_loss = F.binary_cross_entropy_with_logits(scores, score_labels[batch])
            if decision_targets == "none":
                hinge_loss = torch.zeros(())
            else:
                hinge_loss = decision_hinge_loss(decisions, targets_t[batch])
            loss = score_loss + hinge_loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            score_total += score_loss.item()
            hinge_total += hinge_loss.item()
            if on_step is not None:
                on_step("hdn", epoch * num_steps + step + 1, options.epochs * num_steps)
        model.eval()

        record = {
            "epoch": epoch + 1,
            "score_loss": score_total / num_steps,
            "hinge_loss": hinge_total / num_steps,
            "seconds": time.perf_counter() - started,
        }
        if monitor_users is not None:
            cumulative, per_module = rejection_shares(model, monitor_users)
            record["rejection_share"] = cumulative.tolist()
            record["module_rejection_share"] = per_module.tolist()
        history.append(record)
        logger.info(
            "hdn epoch %d/%d: score loss %.4f, hinge loss %.4f, rejection %s in %.1fs",
            epoch + 1,
            options.epochs,
            record["score_loss"],
            record["hinge_loss"],
            record.get("rejection_share"),
            record["seconds"],
        )
    return history


def distill_dot_product(
    model: torch.nn.Module,
    train: InteractionMatrix,
    teacher_scores: np.ndarray,
    options: FitOptions,
    rng: np.random.Generator,
    on_step: ProgressCallback | None = None,
) -> list[dict]:
    """Train a dot-product student (the MF student) on sigmoid(teacher) with cross-entropy.

    Pairs are sampled as for HDN, so the two students see the same teacher signal.

    Returns:
        One record per epoch with the mean score loss and the seconds it took.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=options.learning_rate)
    history = []
    for epoch in range(options.epochs):
        started = time.perf_counter()
        users, items, _ = training_pairs(train, options.negatives, rng)
        soft_labels = torch.sigmoid(torch.from_numpy(teacher_scores[users, items]))
        users_t, items_t = torch.from_numpy(users), torch.from_numpy(items)

        def batch_loss(batch: slice) -> torch.Tensor:
            logits = model(users_t[batch], items_t[batch])
            return F.binary_cross_entropy_with_logits(logits, soft_labels[batch])

        loss = minibatch_epoch(
            model,
            optimizer,
            len(users),
            options.batch_size,
            batch_loss,
            "mf-student",
            epoch,
            options.epochs,
            on_step,
        )
        history.append(
            {"epoch": epoch + 1, "score_loss": loss, "seconds": time.perf_counter() - started}
        )
    return history
