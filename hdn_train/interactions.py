"""Sparse user-item interaction sets in CSR form, the one container the training side passes around.

Loading files lives in `hdn_train.data`; this module only stores and queries dense-index pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class InteractionMatrix:
    """Implicit-feedback interactions as CSR rows, one row per user.

    Attributes:
        indptr: int64, shape (n_users + 1,). Row `u` is `indices[indptr[u]:indptr[u + 1]]`.
        indices: int64, shape (nnz,). Item indices, sorted and unique within each row.
        n_items: Size of the item catalogue; every index is below it.
    """

    indptr: np.ndarray
    indices: np.ndarray
    n_items: int

    @classmethod
    def from_pairs(
        cls, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int
    ) -> InteractionMatrix:
        """Build rows from (user, item) pairs; duplicate pairs count once.

        Args:
            users: int, shape (P,). Dense user indices in [0, n_users).
            items: int, shape (P,). Dense item indices in [0, n_items).
            n_users: Number of rows.
            n_items: Catalogue size.
        """
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        # Sorted by user, then item. A sort plus a neighbour check drops duplicates several
        # times faster than np.unique, which takes a hashing path on large int64 inputs.
        keys = np.sort(users * n_items + items)
        if len(keys):
            keys = keys[np.concatenate([[True], keys[1:] != keys[:-1]])]
        row_users = keys // n_items
        indices = keys % n_items
        counts = np.bincount(row_users, minlength=n_users)
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr=indptr, indices=indices.astype(np.int64), n_items=int(n_items))

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def row_lengths(self) -> np.ndarray:
        """Return the number of items of each user, int64 shape (n_users,)."""
        return np.diff(self.indptr)

    def items_of(self, user: int) -> np.ndarray:
        """Return the sorted item indices of one user."""
        return self.indices[self.indptr[user] : self.indptr[user + 1]]

    def to_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Return (users, items), both int64 shape (nnz,), in row order."""
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), self.row_lengths())
        return users, self.indices.copy()

    def to_dense_mask(self, users: np.ndarray | None = None) -> np.ndarray:
        """Return a bool mask of shape (len(users), n_items), True where a pair is present."""
        if users is None:
            users = np.arange(self.n_users)
        users = np.asarray(users, dtype=np.int64)
        lengths = self.indptr[users + 1] - self.indptr[users]
        rows = np.repeat(np.arange(len(users)), lengths)
        starts = np.repeat(self.indptr[users], lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        mask = np.zeros((len(users), self.n_items), dtype=bool)
        mask[rows, self.indices[starts + offsets]] = True
        return mask

    def item_counts(self) -> np.ndarray:
        """Return how many users interacted with each item, int64 shape (n_items,)."""
        return np.bincount(self.indices, minlength=self.n_items).astype(np.int64)

    def union(self, other: InteractionMatrix) -> InteractionMatrix:
        """Return the pairs present in either matrix; both must have the same shape."""
        if other.n_users != self.n_users or other.n_items != self.n_items:
            raise ValueError(
                f"Cannot join interaction matrices of shapes ({self.n_users}, {self.n_items}) "
                f"and ({other.n_users}, {other.n_items})."
            )
        users_a, items_a = self.to_pairs()
        users_b, items_b = other.to_pairs()
        return InteractionMatrix.from_pairs(
            np.concatenate([users_a, users_b]),
            np.concatenate([items_a, items_b]),
            self.n_users,
            self.n_items,
        )
