"""Table loading: dtype, shape and CSR checks, id lists, and the seen-item gather."""

from __future__ import annotations

import json

import numpy as np
import pytest
from model_factory import refresh_checksums
from safetensors.numpy import load_file, save_file

from hdn_runtime import ModelFormatError
from hdn_runtime.manifest import read_manifest
from hdn_runtime.tables import load_tables


def _rewrite_tables(model_dir, edit):
    path = model_dir / "tables.safetensors"
    tensors = dict(load_file(str(path)))
    edit(tensors)
    save_file(tensors, str(path))
    refresh_checksums(model_dir)


def test_loads_tables(synthetic_model):
    model_dir, model = synthetic_model
    tables = load_tables(read_manifest(model_dir))

    np.testing.assert_array_equal(tables.user_embedding, model.user_embedding)
    np.testing.assert_array_equal(tables.item_popularity, model.item_popularity)
    assert tables.user_index["1005"] == 5
    assert tables.item_ids == model.item_ids


def test_seen_items_gathers_rows(synthetic_model):
    model_dir, model = synthetic_model
    tables = load_tables(read_manifest(model_dir))
    users = np.array([3, 0, 3, 7], dtype=np.int64)

    indptr, indices = tables.seen_items(users)

    assert indptr.tolist()[0] == 0
    for row, user in enumerate(users):
        assert indices[indptr[row] : indptr[row + 1]].tolist() == model.seen_items[user]


def test_seen_items_empty_batch(synthetic_model):
    model_dir, _ = synthetic_model
    tables = load_tables(read_manifest(model_dir))

    indptr, indices = tables.seen_items(np.array([], dtype=np.int64))

    assert indptr.tolist() == [0]
    assert indices.shape == (0,)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.pop("item_popularity"), "no tensor 'item_popularity'"),
        (
            lambda t: t.update(user_embedding=t["user_embedding"].astype(np.float64)),
            "'user_embedding' .* dtype float64",
        ),
        (
            lambda t: t.update(item_embedding=t["item_embedding"][:, :4].copy()),
            "'item_embedding' .* expected float32 and \\(40, 8\\)",
        ),
        (
            lambda t: t.update(seen_indptr=t["seen_indptr"].astype(np.int32)),
            "'seen_indptr' .* dtype int32",
        ),
        (
            lambda t: t.update(seen_indptr=t["seen_indptr"] + 1),
            "not a valid CSR row pointer",
        ),
        (
            lambda t: t.update(seen_indices=t["seen_indices"] + 40),
            "outside the catalogue",
        ),
    ],
)
def test_invalid_tables_raise(model_dir_copy, edit, message):
    _rewrite_tables(model_dir_copy, edit)

    with pytest.raises(ModelFormatError, match=message):
        load_tables(read_manifest(model_dir_copy))


@pytest.mark.parametrize(
    ("ids", "message"),
    [
        ({"0": "a"}, "JSON list of strings"),
        (list(range(12)), "JSON list of strings"),
        ([str(index) for index in range(11)], "lists 11 ids, but the manifest has num_users = 12"),
        (["same"] * 12, "duplicate ids"),
    ],
)
def test_invalid_user_ids_raise(model_dir_copy, ids, message):
    (model_dir_copy / "user_ids.json").write_text(json.dumps(ids))
    refresh_checksums(model_dir_copy)

    with pytest.raises(ModelFormatError, match=message):
        load_tables(read_manifest(model_dir_copy))
