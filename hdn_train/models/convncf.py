"""The ConvNCF teacher: a CNN over the outer product of user and item embeddings.

Source: He et al., 2018, Outer Product-based Neural Collaborative Filtering. The score is
`w . CNN(h_u ⊗ h_v)`, where the CNN halves the (dim, dim) interaction map with every layer until
it is 1x1. This module only defines the network, and the BPR training loop is `hdn_train.bpr`.
"""

from __future__ import annotations

import torch
from torch import nn

from hdn_train.models.baselines import MatrixFactorization

CONV_KERNEL = 2
"""Kernel size and stride of every convolution, so each layer halves the map's height and width."""


def is_valid_dim(dim: int) -> bool:
    """Return whether stride-2 convolutions reduce a (dim, dim) map to exactly 1x1."""
    return dim >= 2 and not dim & (dim - 1)


def _init_embedding(num: int, dim: int) -> nn.Embedding:
    embedding = nn.Embedding(num, dim)
    nn.init.normal_(embedding.weight, std=0.01)
    return embedding


class ConvNCF(nn.Module):
    """ConvNCF: the (dim, dim) map `h_u h_v^T` through log2(dim) stride-2 convolutions to 1x1.

    Each convolution has kernel 2, stride 2, `channels` output channels and a ReLU. A linear
    layer maps the final `channels` features to one logit. He et al. pre-train the embeddings
    with MF-BPR (see `load_pretrained_embeddings`). From the default 0.01-scale initialisation
    the interaction map is tiny, so training starts slowly.

    NOTE: a BPR step of 512 triples scores 1024 pairs, so at dim=32 the first convolution's
    output and its ReLU take 32 MiB each. glibc serves buffers that large with fresh pages from
    the kernel on every step (see `score_all`), which made steps 2.5 to 3 times slower on a
    2-core AMD EPYC with torch 2.13 and one thread. Setting MALLOC_MMAP_THRESHOLD_ and
    MALLOC_TRIM_THRESHOLD_ to 4294967296 in the training process's environment avoids it.

    Args:
        num_users: Number of users.
        num_items: Number of items.
        dim: Embedding width, a power of two >= 2. It fixes the number of convolutions.
        channels: Output channels of every convolution.

    Raises:
        ValueError: If `dim` is not a power of two >= 2, or `channels` < 1.
    """

    def __init__(self, num_users: int, num_items: int, dim: int = 32, channels: int = 32) -> None:
        super().__init__()
        if not is_valid_dim(dim):
            raise ValueError(
                f"ConvNCF dim must be a power of two >= 2, got {dim}. Each stride-2 convolution "
                "halves the (dim, dim) interaction map, so only powers of two reach 1x1 exactly."
            )
        if channels < 1:
            raise ValueError(f"ConvNCF channels must be >= 1, got {channels}.")
        self.dim = dim
        self.channels = channels
        self.user_embedding = _init_embedding(num_users, dim)
        self.item_embedding = _init_embedding(num_items, dim)

        num_layers = dim.bit_length() - 1  # log2(dim)
        layers: list[nn.Module] = []
        for index in range(num_layers):
            in_channels = 1 if index == 0 else channels
            layers += [
                nn.Conv2d(in_channels, channels, kernel_size=CONV_KERNEL, stride=CONV_KERNEL),
                nn.ReLU(),
            ]
        self.cnn = nn.Sequential(*layers)
        self.output = nn.Linear(channels, 1)

    @property
    def num_items(self) -> int:
        return self.item_embedding.num_embeddings

    @property
    def conv_layers(self) -> list[nn.Conv2d]:
        """The convolutions in order, log2(dim) of them."""
        return [layer for layer in self.cnn if isinstance(layer, nn.Conv2d)]

    def interaction_map(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Return the outer products `h_u h_v^T`, float32 shape (B, 1, dim, dim)."""
        user_vectors = self.user_embedding(users)  # (B, dim)
        item_vectors = self.item_embedding(items)  # (B, dim)
        return (user_vectors.unsqueeze(2) * item_vectors.unsqueeze(1)).unsqueeze(1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Return logits of shape (B,) for int64 index tensors of shape (B,)."""
        features = self.cnn(self.interaction_map(users, items))  # (B, channels, 1, 1)
        return self.output(features.flatten(1)).squeeze(-1)

    @torch.no_grad()
    def score_all(self, users: torch.Tensor, item_batch: int = 256) -> torch.Tensor:
        """Return logits of shape (len(users), num_items), scoring every pair.

        The pairs of all requested users are flattened in row order and scored in chunks.
        The first convolution's output takes `channels * (dim / 2) ** 2` floats per pair,
        32 KiB at the default sizes, so the default chunk allocates about 8 MiB per layer.
        That stays below glibc's largest dynamic mmap threshold, 32 MiB on 64-bit systems
        (mallopt(3)). glibc maps larger buffers fresh from the kernel on every call. On a
        2-core AMD EPYC with torch 2.13 and one thread, chunks of 8192 pairs scored 5,000 to
        7,000 pairs/s, and chunks of 256 mostly 20,000 to 30,000.

        Args:
            users: int64, shape (B,).
            item_batch: Upper bound on pairs pushed through the network at once. On a GPU,
                pass a much larger value so that each chunk fills the device.

        Raises:
            ValueError: If `item_batch` < 1.
        """
        if item_batch < 1:
            raise ValueError(f"item_batch must be >= 1, got {item_batch}.")
        num_items = self.num_items
        num_pairs = len(users) * num_items
        scores = torch.empty(num_pairs, dtype=self.output.weight.dtype, device=users.device)
        for start in range(0, num_pairs, item_batch):
            stop = min(start + item_batch, num_pairs)
            pair_index = torch.arange(start, stop, device=users.device)
            pair_users = users[pair_index // num_items]
            scores[start:stop] = self(pair_users, pair_index % num_items)
        return scores.view(len(users), num_items)

    @torch.no_grad()
    def load_pretrained_embeddings(self, mf: MatrixFactorization) -> None:
        """Copy the user and item embeddings of a trained MF model into this network.

        He et al. initialise ConvNCF from MF trained with BPR. The CNN keeps its own weights.

        Raises:
            ValueError: If the MF tables differ in shape from this model's tables.
        """
        for name in ("user_embedding", "item_embedding"):
            source = getattr(mf, name).weight
            target = getattr(self, name).weight
            if source.shape != target.shape:
                raise ValueError(
                    f"MF {name} has shape {tuple(source.shape)} but ConvNCF expects "
                    f"{tuple(target.shape)}. Train the MF model on the same data with "
                    f"dim={self.dim}."
                )
            target.copy_(source)

    def multiply_adds_per_pair(self) -> int:
        """Return the multiply-adds needed to score one (user, item) pair.

        The count is `dim * dim` multiplications for the outer product, plus
        `out_height * out_width * out_channels * in_channels * kernel * kernel` for each
        convolution and `channels` for the output layer. Bias additions and ReLUs are not
        counted. At dim=32 and channels=32 the total is 381,984, against 32 for MF.
        """
        total = self.dim * self.dim
        side = self.dim
        for conv in self.conv_layers:
            side //= CONV_KERNEL
            total += side * side * conv.out_channels * conv.in_channels * CONV_KERNEL**2
        return total + self.output.in_features
