"""Distillation losses of the HDN student, one function per term."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def decision_hinge_loss(decisions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the mean of `max(0, 1 - d_n * target_n)`, summed over the N modules.

    Args:
        decisions: float32, shape (B, N). Decision logits d_n; positive means reject.
        targets: float32, shape (B, N). +1 where the teacher places the item below the user's
            threshold for module n (reject), -1 where it keeps it.
    """
    return torch.relu(1.0 - decisions * targets).mean(dim=0).sum()


def score_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> torch.Tensor:
    """Return the binary cross-entropy between sigmoid(student) and sigmoid(teacher).

    The teacher's probability is the soft label, which suits implicit feedback; both inputs are
    float32 logits of shape (B,).
    """
    return F.binary_cross_entropy_with_logits(student_logits, torch.sigmoid(teacher_logits))
