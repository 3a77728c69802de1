"""The NeuMF teacher: a GMF branch and an MLP branch joined by one linear output (He et al., 2017).

Training loops live in `hdn_train.teachers`; this module only defines the networks and the
pre-training hand-over from GMF and MLP to NeuMF.
"""

from __future__ import annotations

import torch
from torch import nn


def _init_embedding(num: int, dim: int) -> nn.Embedding:
    embedding = nn.Embedding(num, dim)
    nn.init.normal_(embedding.weight, std=0.01)
    return embedding


class GMF(nn.Module):
    """Generalised matrix factorisation: a learned weighting of the element-wise product."""

    def __init__(self, num_users: int, num_items: int, dim: int = 32) -> None:
        super().__init__()
        self.user_embedding = _init_embedding(num_users, dim)
        self.item_embedding = _init_embedding(num_items, dim)
        self.output = nn.Linear(dim, 1)

    def interaction(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Return the element-wise products, shape (B, dim)."""
        return self.user_embedding(users) * self.item_embedding(items)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (B,)."""
        return self.output(self.interaction(users, items)).squeeze(-1)


class MLP(nn.Module):
    """The MLP branch: concatenated embeddings through ReLU layers of the given widths.

    Args:
        layers: Widths from the concatenated input to the last hidden layer, for example
            (64, 32, 16, 8): the embeddings are then 32 wide each.
    """

    def __init__(self, num_users: int, num_items: int, layers: tuple[int, ...]) -> None:
        super().__init__()
        if len(layers) < 2 or layers[0] % 2:
            raise ValueError(
                f"MLP layers must start with an even input width and have at least two "
                f"entries, got {layers}. The first width is twice the embedding width."
            )
        self.user_embedding = _init_embedding(num_users, layers[0] // 2)
        self.item_embedding = _init_embedding(num_items, layers[0] // 2)
        blocks: list[nn.Module] = []
        for width_in, width_out in zip(layers[:-1], layers[1:]):
            blocks += [nn.Linear(width_in, width_out), nn.ReLU()]
        self.tower = nn.Sequential(*blocks)
        self.output = nn.Linear(layers[-1], 1)

    def interaction(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Return the last hidden layer, shape (B, layers[-1])."""
        pair = torch.cat([self.user_embedding(users), self.item_embedding(items)], dim=-1)
        return self.tower(pair)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (B,)."""
        return self.output(self.interaction(users, items)).squeeze(-1)


class NeuMF(nn.Module):
    """NeuMF: `w . concat(GMF product, MLP output)`, with separate embeddings per branch.

    Args:
        num_users: Number of users.
        num_items: Number of items.
        dim: GMF embedding width (32 in the HDN experiments).
        mlp_layers: MLP widths, (64, 32, 16, 8) in the HDN experiments.
    """

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int = 32,
        mlp_layers: tuple[int, ...] = (64, 32, 16, 8),
    ) -> None:
        super().__init__()
        self.gmf = GMF(num_users, num_items, dim)
        self.mlp = MLP(num_users, num_items, mlp_layers)
        self.output = nn.Linear(dim + mlp_layers[-1], 1)

    def interaction(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Return the GMF product beside the MLP's last layer, shape (B, dim + mlp_layers[-1])."""
        return torch.cat(
            [self.gmf.interaction(users, items), self.mlp.interaction(users, items)], dim=-1
        )

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (B,) for int64 index tensors of shape (B,)."""
        return self.output(self.interaction(users, items)).squeeze(-1)

    @torch.no_grad()
    def load_pretrained(self, gmf: GMF, mlp: MLP, alpha: float = 0.5) -> None:
        """Copy pre-trained branches in and blend their output layers.

        The joint output weight is `concat(alpha * w_gmf, (1 - alpha) * w_mlp)`, the NCF
        recipe, so the untrained NeuMF starts as a weighted sum of the two branch predictions.
        """
        self.gmf.load_state_dict(gmf.state_dict())
        self.mlp.load_state_dict(mlp.state_dict())
        weight = torch.cat([alpha * gmf.output.weight, (1 - alpha) * mlp.output.weight], dim=1)
        self.output.weight.copy_(weight)
        self.output.bias.copy_(alpha * gmf.output.bias + (1 - alpha) * mlp.output.bias)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor, item_batch: int = 1 << 20) -> torch.Tensor:
        """Return logits of shape (len(users), num_items), scoring every pair.

        Args:
            users: int64, shape (B,).
            item_batch: Upper bound on pairs pushed through the network at once.
        """
        num_items = self.gmf.item_embedding.num_embeddings
        items = torch.arange(num_items)
        rows_per_chunk = max(1, item_batch // num_items)
        chunks = []
        for start in range(0, len(users), rows_per_chunk):
            chunk = users[start : start + rows_per_chunk]
            pair_users = chunk.repeat_interleave(num_items)
            pair_items = items.repeat(len(chunk))
            chunks.append(self(pair_users, pair_items).view(len(chunk), num_items))
        return torch.cat(chunks) if chunks else torch.zeros(0, num_items)
