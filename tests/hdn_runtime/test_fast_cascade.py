"""The fast cascade against the plain one: same top-K, ties, survivor counts, on every model.

Synthetic models use small-integer weights, so every score is exact in float32 and ties are
common. Near-zero decisions, where the matrix product and the stage file round differently, come
from float models whose items are orthogonal to θ_1 * u. The MovieLens-100K model is trained
briefly and exported with the real exporter.
"""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from model_factory import (
    NUM_ITEMS,
    NUM_USERS,
    make_synthetic_model,
    reference_recommend,
    reject_everything,
    write_model_dir,
)
from onnx import TensorProto, helper, numpy_helper

from hdn_runtime import ModelFormatError, Recommender
from hdn_runtime.backends.onnxruntime import OnnxRuntimeBackend
from hdn_runtime.cascade import Cascade
from hdn_runtime.fast_cascade import (
    FastCascade,
    OnnxRuntimeCpuStage,
    SessionSettings,
    _unique_excluded_pairs,
    decision_error_bound,
    read_first_decision_weight,
)
from hdn_runtime.topk import segmented_top_k, top_k_sorted_segments

RULES = ("sign", "quota")


def recommend_both(
    model_dir: Path, rule: str, users: np.ndarray, k: int, exclude_seen: bool = True
):
    """Return ((items, scores, counts), stats) of the plain and of the fast cascade."""
    results = {}
    for cascade in ("plain", "fast"):
        with Recommender.load(model_dir, rule=rule, cascade=cascade) as recommender:
            assert recommender.cascade == cascade
            top = recommender.recommend_indices(users, k, exclude_seen)
            results[cascade] = (top, recommender.last_stats)
    return results["plain"], results["fast"]


def assert_same_results(plain, fast) -> None:
    (plain_top, plain_stats), (fast_top, fast_stats) = plain, fast
    for name, expected, actual in zip(("items", "scores", "counts"), plain_top, fast_top):
        assert actual.dtype == expected.dtype, name
        np.testing.assert_array_equal(actual, expected, err_msg=name)
    np.testing.assert_array_equal(fast_stats.candidate_counts, plain_stats.candidate_counts)
    np.testing.assert_array_equal(fast_stats.survivor_counts, plain_stats.survivor_counts)


def float_model_with_near_zero_decisions(
    num_users: int = 6, items_per_user: int = 40, seed: int = 3
):
    """A float model whose items are orthogonal to θ_1 * u for some user, so d_1 is rounding noise.

    Each user gets its own block of items, made orthogonal to that user's θ_1 * u in float64
    and rounded to float32. Exact decisions are 0, so the sign and order of the computed ones
    depend on the order of the float32 operations.
    """
    base = make_synthetic_model(num_users, num_users * items_per_user, d=8, h=8, seed=seed)
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=8).astype(np.float32)
    users = rng.normal(size=(num_users, 8)).astype(np.float32)
    item_blocks = []
    for user in range(num_users):
        weighted = (users[user] * theta).astype(np.float64)
        raw = rng.normal(size=(items_per_user, 8))
        raw -= np.outer(raw @ weighted / (weighted @ weighted), weighted)
        item_blocks.append(raw)
    items = np.concatenate(item_blocks).astype(np.float32)
    return dataclasses.replace(
        base,
        user_embedding=users,
        item_embedding=items,
        decision_weights=[theta, *(w.astype(np.float32) * 0.1 for w in base.decision_weights[1:])],
        hidden_weights=[w.astype(np.float32) * 0.3 for w in base.hidden_weights],
        score_weight=base.score_weight.astype(np.float32) * 0.1,
    )


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("k", [1, 5, NUM_ITEMS])
def test_fast_equals_plain_on_synthetic(synthetic_model, rule, exclude_seen, k):
    model_dir, _ = synthetic_model
    users = np.arange(NUM_USERS)

    plain, fast = recommend_both(model_dir, rule, users, k, exclude_seen=exclude_seen)

    assert_same_results(plain, fast)


@pytest.mark.parametrize("rule", RULES)
def test_fast_matches_loop_reference(synthetic_model, rule):
    model_dir, model = synthetic_model
    with Recommender.load(model_dir, rule=rule) as recommender:
        items, scores, counts = recommender.recommend_indices(np.arange(NUM_USERS), 7)

    for user in range(NUM_USERS):
        reference = reference_recommend(model, user, 7, rule=rule)
        assert items[user, : counts[user]].tolist() == reference.item_indices, f"user {user}"
        assert scores[user, : counts[user]].tolist() == reference.scores, f"user {user}"


@pytest.mark.parametrize("rule", RULES)
def test_all_scores_tied_break_by_item(tmp_path, rule):
    model = make_synthetic_model(NUM_USERS, NUM_ITEMS)
    tied = dataclasses.replace(model, score_weight=np.zeros_like(model.score_weight))
    model_dir = write_model_dir(tmp_path / "model", tied)

    plain, fast = recommend_both(model_dir, rule, np.arange(NUM_USERS), 10)

    assert_same_results(plain, fast)
    (items, scores, counts), _ = fast
    for user in range(NUM_USERS):
        returned = items[user, : counts[user]]
        assert np.all(np.diff(returned) > 0), f"user {user}: tied items out of index order"
        assert np.all(scores[user, : counts[user]] == 0)


def test_all_rejected_users(tmp_path):
    model = reject_everything(make_synthetic_model(NUM_USERS, NUM_ITEMS))
    model_dir = write_model_dir(tmp_path / "model", model)

    plain, fast = recommend_both(model_dir, "sign", np.arange(NUM_USERS), 5)

    assert_same_results(plain, fast)
    (items, _, counts), stats = fast
    assert counts.tolist() == [0] * NUM_USERS
    assert np.all(items == -1)
    # The matrix product is exact on integer weights, so no pair reaches stage 1.
    assert stats.prefilter_survivors.tolist() == [0] * NUM_USERS


@pytest.mark.parametrize("rule", RULES)
def test_some_users_all_rejected(tmp_path, rule):
    model = make_synthetic_model(NUM_USERS, NUM_ITEMS)
    user_embedding = np.abs(model.user_embedding) + 1
    user_embedding[::2] *= -1  # even users: every first decision < 0, odd users: > 0
    mixed = dataclasses.replace(
        model,
        user_embedding=user_embedding,
        item_embedding=np.abs(model.item_embedding) + 1,
        decision_weights=[np.abs(model.decision_weights[0]) + 1, *model.decision_weights[1:]],
    )
    model_dir = write_model_dir(tmp_path / "model", mixed)

    plain, fast = recommend_both(model_dir, rule, np.arange(NUM_USERS), 5)

    assert_same_results(plain, fast)
    if rule == "sign":
        survivors = fast[1].survivor_counts[0]
        assert np.all(survivors[1::2] == 0)
        assert np.all(survivors[::2] > 0)


@pytest.mark.parametrize("rule", RULES)
def test_near_zero_decisions_decided_by_stage(tmp_path, rule):
    model = float_model_with_near_zero_decisions()
    model_dir = write_model_dir(tmp_path / "model", model)
    users = np.arange(model.num_users)

    plain, fast = recommend_both(model_dir, rule, users, 10, exclude_seen=False)

    assert_same_results(plain, fast)
    with Recommender.load(model_dir, cascade="fast") as recommender:
        stage = recommender._cascade.stage_backends[0]
        pairs = {
            "user_emb": np.repeat(model.user_embedding, model.num_items, axis=0),
            "item_emb": np.tile(model.item_embedding, (model.num_users, 1)),
        }
        stage_decisions = stage.run(pairs)["decision"].reshape(model.num_users, -1)
    product_decisions = (model.user_embedding * model.decision_weights[0]) @ model.item_embedding.T
    # The test has teeth only if the two computations disagree somewhere.
    assert np.any(np.sign(stage_decisions) != np.sign(product_decisions))


def test_small_chunks_and_blocks_give_same_results(synthetic_model):
    model_dir, _ = synthetic_model
    users = np.arange(NUM_USERS)
    with Recommender.load(model_dir, rule="quota", cascade="plain") as plain:
        expected = plain.recommend_indices(users, 9)
    with Recommender.load(model_dir, rule="quota", max_candidates=3 * NUM_ITEMS) as fast:
        fast._cascade.block_rows = 7
        actual = fast.recommend_indices(users, 9)
        assert fast.last_stats.num_chunks == NUM_USERS // 3

    for expected_array, actual_array in zip(expected, actual):
        np.testing.assert_array_equal(actual_array, expected_array)


def test_duplicate_and_repeated_users(synthetic_model):
    model_dir, _ = synthetic_model
    users = np.array([3, 3, 0, 11, 3])

    plain, fast = recommend_both(model_dir, "sign", users, 6)

    assert_same_results(plain, fast)


def test_exported_model_fast_equals_plain(exported_model):
    users = np.arange(Recommender.load(exported_model, cascade="plain").num_users)

    for rule in RULES:
        plain, fast = recommend_both(exported_model, rule, users, 10)
        assert_same_results(plain, fast)


@pytest.fixture(scope="module")
def movielens_model(shared_data, tmp_path_factory) -> Path:
    """MovieLens-100K trained for a few epochs and exported, as in the end-to-end test."""
    pytest.importorskip("torch")
    from hdn_export.onnx import export_onnx
    from hdn_train.config import TrainConfig
    from hdn_train.pipeline import train_all, write_run

    config = TrainConfig(
        data=str(shared_data / "ml-100k"),
        mf_epochs=1,
        pretrain_epochs=0,
        teacher_epochs=2,
        student_epochs=4,
    )
    root = tmp_path_factory.mktemp("fast_ml100k")
    write_run(train_all(config), root / "run")
    export_onnx(root / "run", root / "model")
    return root / "model"


@pytest.mark.parametrize("rule", RULES)
def test_movielens_fast_equals_plain(movielens_model, rule):
    with Recommender.load(movielens_model, cascade="plain") as recommender:
        users = np.arange(recommender.num_users)

    plain, fast = recommend_both(movielens_model, rule, users, 20)

    assert_same_results(plain, fast)
    prefiltered = fast[1].prefilter_survivors
    assert np.all(prefiltered >= fast[1].survivor_counts[0])
    assert prefiltered.sum() < fast[1].candidate_counts.sum()


def test_first_decision_weight_is_theta(synthetic_model):
    model_dir, model = synthetic_model
    source = OnnxRuntimeBackend(model_dir / "stages" / "decision_1.onnx")

    with OnnxRuntimeCpuStage(source, SessionSettings(1)) as stage:
        weight = read_first_decision_weight(stage, model.user_embedding, model.item_embedding)

    np.testing.assert_array_equal(weight, model.decision_weights[0])
    assert source.is_closed


def test_nonlinear_first_stage_raises(tmp_path, synthetic_model):
    _, model = synthetic_model
    model_dir = write_model_dir(tmp_path / "model", model)
    _write_relu_first_stage(model_dir / "stages" / "decision_1.onnx", model)
    _refresh_stage_checksum(model_dir, "decision_1")

    with pytest.raises(ModelFormatError, match="cascade='plain'"):
        Recommender.load(model_dir)
    with Recommender.load(model_dir, cascade="plain") as recommender:
        assert recommender.cascade == "plain"


def test_run_into_equals_run(synthetic_model):
    model_dir, model = synthetic_model
    source = OnnxRuntimeBackend(model_dir / "stages" / "decision_2.onnx")
    rng = np.random.default_rng(0)
    inputs = {
        "user_emb": model.user_embedding[rng.integers(0, NUM_USERS, 50)],
        "item_emb": model.item_embedding[rng.integers(0, NUM_ITEMS, 50)],
        "hidden_in": rng.integers(0, 3, (50, model.hidden_dim)).astype(np.float32),
    }

    with OnnxRuntimeCpuStage(source, SessionSettings(1)) as stage:
        expected = stage.run(inputs)
        outputs = {
            "decision": np.full(50, np.nan, dtype=np.float32),
            "hidden": np.full((50, model.hidden_dim), np.nan, dtype=np.float32),
        }
        stage.run_into(inputs, outputs)

    np.testing.assert_array_equal(outputs["decision"], expected["decision"])
    np.testing.assert_array_equal(outputs["hidden"], expected["hidden"])


def test_generic_backends_without_prefilter(synthetic_model):
    model_dir, _ = synthetic_model
    paths = [
        model_dir / "stages" / f"{name}.onnx"
        for name in ("decision_1", "decision_2", "decision_3", "score")
    ]
    with Recommender.load(model_dir, cascade="plain") as recommender:
        tables = recommender._tables
        expected = recommender.recommend_indices(np.arange(NUM_USERS), 5)
    excluded = tables.seen_items(np.arange(NUM_USERS))
    cascade = FastCascade([OnnxRuntimeBackend(path) for path in paths], (0.5, 0.75, 0.875))

    with cascade:
        result = cascade.run(tables.user_embedding, tables.item_embedding, 5, *excluded)

    assert result.stats.prefilter_survivors.tolist() == result.stats.candidate_counts.tolist()
    np.testing.assert_array_equal(result.item_indices, expected[0])
    np.testing.assert_array_equal(result.scores, expected[1])


def test_concurrent_requests_match_sequential(synthetic_model):
    model_dir, _ = synthetic_model
    requests = [np.array([user, (user + 5) % NUM_USERS]) for user in range(NUM_USERS)]
    with Recommender.load(model_dir) as recommender:
        expected = [recommender.recommend_indices(users, 5)[0] for users in requests]
        actual: dict[int, np.ndarray] = {}

        def serve(index: int) -> None:
            for _ in range(20):
                actual[index] = recommender.recommend_indices(requests[index], 5)[0]

        threads = [threading.Thread(target=serve, args=(index,)) for index in range(NUM_USERS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    for index, items in enumerate(expected):
        np.testing.assert_array_equal(actual[index], items)


def test_buffers_are_reused(synthetic_model):
    model_dir, _ = synthetic_model
    with Recommender.load(model_dir) as recommender:
        recommender.recommend_indices(np.arange(NUM_USERS), 5)
        workspace_bytes = recommender._cascade.workspace_bytes
        for _ in range(5):
            recommender.recommend_indices(np.arange(NUM_USERS), 5)
            recommender.recommend_indices(np.array([2]), 5)

        assert recommender._cascade.workspace_bytes == workspace_bytes


def test_error_bound_is_infinite_for_unsafe_users():
    from hdn_runtime.fast_cascade import _ItemBounds

    weight = np.ones(4, dtype=np.float32)
    users = np.array([[1, 2, 3, 4], [np.nan, 0, 0, 0], [3e38, 0, 0, 0]], dtype=np.float32)
    items = np.ones((3, 4), dtype=np.float32)

    bound = decision_error_bound(users * weight, users, weight, _ItemBounds(items, 2.0, 1.0))

    assert np.isfinite(bound[0]) and 0 < bound[0] < 1e-4
    assert np.isinf(bound[1])
    assert np.isinf(bound[2])


def test_invalid_cascade_name(synthetic_model):
    model_dir, _ = synthetic_model

    with pytest.raises(ValueError, match=r"cascade must be one of \['fast', 'plain'\]"):
        Recommender.load(model_dir, cascade="turbo")


def test_invalid_block_rows(synthetic_model):
    model_dir, _ = synthetic_model
    stages = [
        OnnxRuntimeBackend(model_dir / "stages" / f"{name}.onnx")
        for name in ("decision_1", "score")
    ]

    with pytest.raises(ValueError, match="block_rows must be a positive integer, got 0"):
        FastCascade(stages, [0.5], block_rows=0)


def test_fast_cascade_is_a_cascade():
    assert issubclass(FastCascade, Cascade)


@pytest.mark.parametrize("seed", range(40))
def test_top_k_sorted_segments_matches_sort(seed):
    rng = np.random.default_rng(seed)
    num_segments, num_items = int(rng.integers(1, 9)), int(rng.integers(1, 40))
    segment_ids, item_ids = np.nonzero(rng.random((num_segments, num_items)) < rng.random())
    scores = rng.integers(-3, 3, len(segment_ids)).astype(np.float32)
    for special in (np.nan, -np.inf, np.inf, -0.0):
        scores[rng.random(len(scores)) < 0.08] = special
    k = int(rng.integers(0, num_items + 2))

    expected = segmented_top_k(segment_ids, item_ids, scores, num_segments, k)
    actual = top_k_sorted_segments(segment_ids, item_ids, scores, num_segments, k)

    for name, want, got in zip(("items", "scores", "counts"), expected, actual):
        np.testing.assert_array_equal(got, want, err_msg=name)


def test_top_k_sorted_segments_one_long_segment():
    segment_ids = np.array([0] * 500 + [1, 2, 3], dtype=np.int64)
    item_ids = np.concatenate([np.arange(500), [0, 0, 0]])
    scores = np.concatenate([np.zeros(500), [1, 2, 3]]).astype(np.float32)

    items, top_scores, counts = top_k_sorted_segments(segment_ids, item_ids, scores, 6, 3)

    assert items[0].tolist() == [0, 1, 2]
    assert counts.tolist() == [3, 1, 1, 1, 0, 0]
    assert top_scores[3, 0] == 3


def _write_relu_first_stage(path: Path, model) -> None:
    """Write decision_1 with decision = θ . relu(u * v), which is not an inner product."""
    d, h = model.embedding_dim, model.hidden_dim
    nodes = [
        helper.make_node("Mul", ["user_emb", "item_emb"], ["product"]),
        helper.make_node("Relu", ["product"], ["positive"]),
        helper.make_node("MatMul", ["positive", "theta"], ["decision"]),
        helper.make_node("MatMul", ["product", "weight_t"], ["pre_hidden"]),
        helper.make_node("Relu", ["pre_hidden"], ["hidden"]),
    ]
    inputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", d])
        for name in ("user_emb", "item_emb")
    ]
    outputs = [
        helper.make_tensor_value_info("decision", TensorProto.FLOAT, ["batch"]),
        helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", h]),
    ]
    initializers = [
        numpy_helper.from_array(model.decision_weights[0].astype(np.float32), "theta"),
        numpy_helper.from_array(
            np.ascontiguousarray(model.hidden_weights[0].T, dtype=np.float32), "weight_t"
        ),
    ]
    graph = helper.make_graph(nodes, "decision_1", inputs, outputs, initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(onnx_model, str(path))


def _refresh_stage_checksum(model_dir: Path, stage_name: str) -> None:
    from model_factory import read_manifest_json, sha256_of, write_manifest

    manifest = read_manifest_json(model_dir)
    for entry in manifest["stages"]:
        if entry["name"] == stage_name:
            entry["sha256"] = sha256_of(model_dir / entry["path"])
    write_manifest(model_dir, manifest)


@pytest.mark.parametrize(
    ("indptr", "indices", "expected_rows", "expected_items"),
    [
        ([0, 2, 2, 3], [1, 4, 0], [0, 0, 2], [1, 4, 0]),  # sorted rows, one empty
        ([0, 3, 4], [4, 1, 4, 2], [0, 0, 1], [1, 4, 2]),  # unsorted row with a repeat
    ],
)
def test_excluded_pairs_are_distinct_and_sorted(indptr, indices, expected_rows, expected_items):
    rows, items = _unique_excluded_pairs(
        (np.array(indptr), np.array(indices)), num_users=len(indptr) - 1, num_items=5
    )

    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(items, expected_items)
