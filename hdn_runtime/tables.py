"""Load and validate the embedding tables, seen items, popularity and id maps of a model.

The file paths come from a `Manifest` whose checksums were verified. Running the stages is left
to `cascade`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from hdn_runtime.errors import ModelFormatError
from hdn_runtime.manifest import Manifest

_REEXPORT_HINT = "Re-export the model with 'hdn export'."


@dataclass(frozen=True)
class ModelTables:
    """Per-user and per-item arrays of an exported model, indexed by dense index.

    Attributes:
        user_embedding: float32, shape (U, d).
        item_embedding: float32, shape (I, d).
        seen_indptr: int64, shape (U + 1,). User u's training items are
            `seen_indices[seen_indptr[u]:seen_indptr[u + 1]]`.
        seen_indices: int64, shape (nnz,). Item indices in [0, I).
        item_popularity: int64, shape (I,). Training interactions per item.
        user_ids: External id of each user index.
        item_ids: External id of each item index.
        user_index: Dense index of each external user id.
    """

    user_embedding: np.ndarray
    item_embedding: np.ndarray
    seen_indptr: np.ndarray
    seen_indices: np.ndarray
    item_popularity: np.ndarray
    user_ids: list[str]
    item_ids: list[str]
    user_index: dict[str, int] = field(repr=False)

    def seen_items(self, user_indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gather the seen items of a batch of users as a CSR slice, without a loop over users.

        Args:
            user_indices: int64, shape (B,). Dense user indices. Repeats are allowed.

        Returns:
            indptr: int64, shape (B + 1,). Row b's items are `indices[indptr[b]:indptr[b + 1]]`.
            indices: int64, shape (nnz_batch,). Item indices.
        """
        starts = self.seen_indptr[user_indices]
        lengths = self.seen_indptr[user_indices + 1] - starts
        indptr = np.zeros(len(user_indices) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])

        # Position of each gathered item inside its row, shifted to where that row starts.
        offsets_in_row = np.arange(indptr[-1], dtype=np.int64) - np.repeat(indptr[:-1], lengths)
        return indptr, self.seen_indices[np.repeat(starts, lengths) + offsets_in_row]


def load_tables(manifest: Manifest) -> ModelTables:
    """Read `tables.safetensors` and the two id lists, and check them against the manifest.

    Args:
        manifest: A manifest returned by `read_manifest`, whose checksums were verified.

    Raises:
        ModelFormatError: A tensor or id list is missing, or has the wrong dtype, shape or
            content.
    """
    tables_path = manifest.files["tables"].path
    try:
        tensors = load_file(tables_path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelFormatError(f"Cannot read {tables_path}: {err}. {_REEXPORT_HINT}") from err

    num_users, num_items = manifest.num_users, manifest.num_items
    dim = manifest.embedding_dim
    expected_tensors = {
        "user_embedding": (np.float32, (num_users, dim)),
        "item_embedding": (np.float32, (num_items, dim)),
        "seen_indptr": (np.int64, (num_users + 1,)),
        "seen_indices": (np.int64, (None,)),
        "item_popularity": (np.int64, (num_items,)),
    }
    for name, (dtype, shape) in expected_tensors.items():
        _check_tensor(tensors, name, dtype, shape, tables_path)
    _check_seen_csr(tensors["seen_indptr"], tensors["seen_indices"], num_items, tables_path)

    user_ids = _read_id_list(manifest.files["user_ids"].path, num_users, "num_users")
    item_ids = _read_id_list(manifest.files["item_ids"].path, num_items, "num_items")
    return ModelTables(
        user_embedding=tensors["user_embedding"],
        item_embedding=tensors["item_embedding"],
        seen_indptr=tensors["seen_indptr"],
        seen_indices=tensors["seen_indices"],
        item_popularity=tensors["item_popularity"],
        user_ids=user_ids,
        item_ids=item_ids,
        user_index={user_id: index for index, user_id in enumerate(user_ids)},
    )


def _check_tensor(
    tensors: dict[str, np.ndarray],
    name: str,
    dtype: type,
    shape: tuple[int | None, ...],
    tables_path: Path,
) -> None:
    if name not in tensors:
        raise ModelFormatError(
            f"{tables_path} has no tensor {name!r} (found: {sorted(tensors)}). {_REEXPORT_HINT}"
        )
    tensor = tensors[name]
    shape_matches = tensor.ndim == len(shape) and all(
        expected is None or size == expected for size, expected in zip(tensor.shape, shape)
    )
    if tensor.dtype != dtype or not shape_matches:
        expected_shape = tuple("nnz" if size is None else size for size in shape)
        raise ModelFormatError(
            f"Tensor {name!r} in {tables_path} has dtype {tensor.dtype} and shape {tensor.shape}, "
            f"expected {np.dtype(dtype)} and {expected_shape}. {_REEXPORT_HINT}"
        )


def _check_seen_csr(
    seen_indptr: np.ndarray, seen_indices: np.ndarray, num_items: int, tables_path: Path
) -> None:
    is_monotone = bool(np.all(np.diff(seen_indptr) >= 0))
    if seen_indptr[0] != 0 or seen_indptr[-1] != len(seen_indices) or not is_monotone:
        raise ModelFormatError(
            f"'seen_indptr' in {tables_path} is not a valid CSR row pointer: it must start at 0, "
            f"never decrease and end at len(seen_indices) = {len(seen_indices)}, but it starts "
            f"at {seen_indptr[0]} and ends at {seen_indptr[-1]}. {_REEXPORT_HINT}"
        )
    if len(seen_indices) and (seen_indices.min() < 0 or seen_indices.max() >= num_items):
        raise ModelFormatError(
            f"'seen_indices' in {tables_path} contains values from {seen_indices.min()} to "
            f"{seen_indices.max()}, outside the catalogue [0, {num_items}). {_REEXPORT_HINT}"
        )


def _read_id_list(path: Path, expected_length: int, manifest_key: str) -> list[str]:
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFormatError(f"{path} is not valid JSON ({err}). {_REEXPORT_HINT}") from err

    if not isinstance(ids, list) or not all(isinstance(external_id, str) for external_id in ids):
        raise ModelFormatError(f"{path} must contain a JSON list of strings. {_REEXPORT_HINT}")
    if len(ids) != expected_length:
        raise ModelFormatError(
            f"{path} lists {len(ids)} ids, but the manifest has {manifest_key} = "
            f"{expected_length}. {_REEXPORT_HINT}"
        )
    if len(set(ids)) != len(ids):
        raise ModelFormatError(f"{path} contains duplicate ids. {_REEXPORT_HINT}")
    return ids
