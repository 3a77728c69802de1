"""Reference rankers that need no deep network: item popularity and matrix factorisation."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hdn_train.interactions import InteractionMatrix


class PopRank:
    """Rank every item by how many training users interacted with it, the same for all users."""

    def __init__(self, train: InteractionMatrix) -> None:
        self.popularity = train.item_counts()

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """Return float32 scores of shape (len(users), n_items)."""
        row = self.popularity.astype(np.float32)
        return np.broadcast_to(row, (len(users), len(row))).copy()


class MatrixFactorization(nn.Module):
    """Dot product of user and item embeddings, trained on sampled pairs with cross-entropy.

    Args:
        num_users: Number of users.
        num_items: Number of items.
        dim: Embedding width.
    """

    def __init__(self, num_users: int, num_items: int, dim: int = 32) -> None:
        super().__init__()
        self.user_embedding = nn.Embedding(num_users, dim)
        self.item_embedding = nn.Embedding(num_items, dim)
        nn.init.normal_(self.user_embedding.weight, std=0.01)
        nn.init.normal_(self.item_embedding.weight, std=0.01)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (B,) for int64 index tensors of shape (B,)."""
        return (self.user_embedding(users) * self.item_embedding(items)).sum(-1)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (len(users), num_items)."""
        return self.user_embedding(users) @ self.item_embedding.weight.T
