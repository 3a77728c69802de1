import numpy as np
import pytest
import torch

from hdn_train.distill import (
    distill_hdn,
    fit_logit_calibration,
    keep_counts,
    rejection_shares,
    rejection_targets,
    user_thresholds,
)
from hdn_train.interactions import InteractionMatrix
from hdn_train.losses import decision_hinge_loss, score_distillation_loss
from hdn_train.models.hdn import HDN
from hdn_train.teachers import FitOptions


def test_keep_counts_follow_gammas():
    assert keep_counts(16, [0.5, 0.75, 0.875]) == [8, 4, 2]
    assert keep_counts(3, [0.9]) == [1]


@pytest.mark.parametrize("gammas", [[1.0], [-0.1], [0.75, 0.5]])
def test_keep_counts_reject_bad_gammas(gammas):
    with pytest.raises(ValueError, match="gamma|Rejection ratios"):
        keep_counts(10, gammas)


def test_thresholds_are_kth_best_teacher_score():
    scores = np.array([[0.1, 0.9, 0.5, 0.7], [4.0, 3.0, 2.0, 1.0]], dtype=np.float32)
    thresholds = user_thresholds(scores, [0.5, 0.75])
    # Keep 2 then 1 of 4 items: the 2nd and the 1st best score of each user.
    np.testing.assert_array_equal(thresholds, np.array([[0.7, 0.9], [3.0, 4.0]], np.float32))


def test_targets_reject_below_threshold_only():
    targets = rejection_targets(
        np.array([0.5, 0.7, 0.9], np.float32), np.array([[0.7, 0.9]] * 3, np.float32)
    )
    np.testing.assert_array_equal(targets, [[1, 1], [-1, 1], [-1, -1]])


def test_hinge_loss_is_zero_beyond_margin():
    decisions = torch.tensor([[2.0, -3.0]])
    targets = torch.tensor([[1.0, -1.0]])
    assert decision_hinge_loss(decisions, targets).item() == 0.0
    wrong = decision_hinge_loss(-decisions, targets).item()
    assert wrong == pytest.approx(3.0 + 4.0)


def test_score_loss_is_smallest_at_teacher_logit():
    teacher = torch.tensor([1.5])
    at_teacher = score_distillation_loss(teacher.clone(), teacher).item()
    assert at_teacher < score_distillation_loss(torch.tensor([0.0]), teacher).item()
    assert at_teacher < score_distillation_loss(torch.tensor([3.0]), teacher).item()


def test_distillation_reaches_rejection_targets():
    rng = np.random.default_rng(0)
    num_users, num_items = 40, 64
    # A low-rank teacher, so per-user rankings are learnable by the student.
    teacher = (rng.normal(size=(num_users, 4)) @ rng.normal(size=(4, num_items))).astype(np.float32)
    top = np.argsort(-teacher, axis=1)[:, :6]
    train = InteractionMatrix.from_pairs(
        np.repeat(np.arange(num_users), 6), top.ravel(), num_users, num_items
    )
    torch.manual_seed(0)
    model = HDN(num_users, num_items, dim=8, hidden_dim=8, num_decisions=2)
    history = distill_hdn(
        model,
        train,
        teacher,
        [0.5, 0.75],
        FitOptions(epochs=30, batch_size=64, negatives=10),
        rng,
    )
    cumulative, per_module = rejection_shares(model, np.arange(num_users))
    assert history[-1]["hinge_loss"] < history[0]["hinge_loss"]
    assert cumulative[0] == pytest.approx(0.5, abs=0.1)
    assert cumulative[1] == pytest.approx(0.75, abs=0.1)
    assert per_module[1] == pytest.approx(0.5, abs=0.2)


def test_distillation_needs_one_gamma_per_module():
    model = HDN(2, 4, dim=2, hidden_dim=2, num_decisions=2)
    train = InteractionMatrix.from_pairs(np.array([0]), np.array([1]), 2, 4)
    with pytest.raises(ValueError, match="2 decision modules"):
        distill_hdn(
            model,
            train,
            np.zeros((2, 4), np.float32),
            [0.5],
            FitOptions(epochs=1),
            np.random.default_rng(0),
        )


def calibration_case(seed: int = 0) -> tuple[np.ndarray, InteractionMatrix]:
    """Scores on a 0-to-1 scale, as ALS gives, where positives tend to score higher."""
    rng = np.random.default_rng(seed)
    num_users, num_items = 60, 80
    scores = rng.uniform(0.0, 0.6, size=(num_users, num_items)).astype(np.float32)
    items = np.stack([rng.choice(num_items, 8, replace=False) for _ in range(num_users)])
    users = np.repeat(np.arange(num_users), 8)
    scores[users, items.ravel()] += rng.uniform(0.1, 0.5, size=users.size).astype(np.float32)
    return scores, InteractionMatrix.from_pairs(users, items.ravel(), num_users, num_items)


def test_logit_calibration_is_the_maximum_likelihood_fit():
    scores, train = calibration_case()

    a, b = fit_logit_calibration(scores, train, negatives=4, rng=np.random.default_rng(1))

    # Redraw the same pairs: at the optimum the log-likelihood's gradient vanishes, so the mean
    # predicted probability equals the share of positives, 1 / (1 + 4).
    from hdn_train.sampling import training_pairs

    users, items, labels = training_pairs(train, 4, np.random.default_rng(1))
    x = scores[users, items].astype(np.float64)
    p = 1.0 / (1.0 + np.exp(-(a * x + b)))
    assert a > 1.0
    assert p.mean() == pytest.approx(0.2, abs=1e-6)
    assert ((p - labels) @ x) / len(x) == pytest.approx(0.0, abs=1e-6)


def test_logit_calibration_of_calibrated_scores_is_the_identity():
    scores, train = calibration_case()
    a, b = fit_logit_calibration(scores, train, negatives=4, rng=np.random.default_rng(1))
    logits = (a * scores + b).astype(np.float32)

    again = fit_logit_calibration(logits, train, negatives=4, rng=np.random.default_rng(1))

    assert again == pytest.approx((1.0, 0.0), abs=1e-4)


def test_logit_calibration_rejects_a_reversed_teacher():
    scores, train = calibration_case()

    with pytest.raises(ValueError, match="do not rank training positives above"):
        fit_logit_calibration(-scores, train, negatives=4, rng=np.random.default_rng(1))
