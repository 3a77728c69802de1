"""Recommender against a plain-loop numpy reference, plus its request checks."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from model_factory import (
    NUM_ITEMS,
    NUM_USERS,
    make_synthetic_model,
    reference_recommend,
    reject_everything,
    write_model_dir,
)

from hdn_runtime import (
    Recommender,
    UnknownUserError,
    UserRecommendations,
)


@pytest.fixture(scope="module", params=["sign", "quota"])
def recommender(request, synthetic_model):
    model_dir, _ = synthetic_model
    with Recommender.load(model_dir, rule=request.param) as loaded:
        yield loaded


@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_top_k_matches_reference(recommender, synthetic_model, k, exclude_seen):
    _, model = synthetic_model
    items, scores, counts = recommender.recommend_indices(
        np.arange(NUM_USERS), k, exclude_seen=exclude_seen
    )

    assert items.shape == (NUM_USERS, k)
    assert scores.shape == (NUM_USERS, k)
    assert scores.dtype == np.float32
    for user in range(NUM_USERS):
        reference = reference_recommend(model, user, k, exclude_seen, rule=recommender.rule)
        count = counts[user]
        assert items[user, :count].tolist() == reference.item_indices, f"user {user}"
        assert scores[user, :count].tolist() == reference.scores, f"user {user}"
        assert np.all(items[user, count:] == -1)
        assert np.all(scores[user, count:] == -np.inf)


def test_stats_match_reference(recommender, synthetic_model):
    _, model = synthetic_model
    recommender.recommend_indices(np.arange(NUM_USERS), k=5)
    stats = recommender.last_stats

    for user in range(NUM_USERS):
        reference = reference_recommend(model, user, 5, rule=recommender.rule)
        assert stats.candidate_counts[user] == reference.candidate_count
        assert stats.survivor_counts[:, user].tolist() == reference.survivor_counts


def test_quota_rule_keeps_exact_counts(synthetic_model):
    model_dir, model = synthetic_model
    with Recommender.load(model_dir, rule="quota") as recommender:
        recommender.recommend_indices(np.arange(NUM_USERS), k=5)
    stats = recommender.last_stats

    for stage_index, gamma in enumerate(model.gammas):
        expected = np.ceil((1 - gamma) * stats.candidate_counts).astype(np.int64)
        assert stats.survivor_counts[stage_index].tolist() == expected.tolist()


def test_recommend_maps_external_ids(recommender, synthetic_model):
    _, model = synthetic_model
    results = recommender.recommend(["1003", 1004], k=5)

    assert [result.user_id for result in results] == ["1003", "1004"]
    for result, user in zip(results, (3, 4)):
        reference = reference_recommend(model, user, 5, rule=recommender.rule)
        assert isinstance(result, UserRecommendations)
        assert result.item_ids == [model.item_ids[item] for item in reference.item_indices]
        assert result.scores.tolist() == reference.scores
        assert result.scores.dtype == np.float32
        assert not result.fallback


def test_exclude_seen_never_returns_seen_items(recommender, synthetic_model):
    _, model = synthetic_model
    results = recommender.recommend(model.user_ids, k=NUM_ITEMS)

    for user, result in enumerate(results):
        seen_ids = {model.item_ids[item] for item in model.seen_items[user]}
        assert not seen_ids & set(result.item_ids), f"user {user}"


def test_exclude_seen_false_can_return_seen(synthetic_model):
    model_dir, model = synthetic_model
    with Recommender.load(model_dir, rule="quota") as recommender:
        items, _, counts = recommender.recommend_indices(
            np.arange(NUM_USERS), k=NUM_ITEMS, exclude_seen=False
        )

    returned_seen = [
        set(items[user, : counts[user]].tolist()) & set(model.seen_items[user])
        for user in range(NUM_USERS)
    ]
    assert any(returned_seen)
    assert recommender.last_stats.candidate_counts.tolist() == [NUM_ITEMS] * NUM_USERS


def test_all_rejected_returns_empty_lists(tmp_path):
    model = reject_everything(make_synthetic_model(NUM_USERS, NUM_ITEMS))
    model_dir = write_model_dir(tmp_path / "model", model)

    with Recommender.load(model_dir, rule="sign") as recommender:
        results = recommender.recommend(model.user_ids[:3], k=10)
        stats = recommender.last_stats

    assert [result.item_ids for result in results] == [[], [], []]
    assert [len(result.scores) for result in results] == [0, 0, 0]
    assert stats.total_survivors == [0, 0, 0]


def test_fewer_survivors_than_k(synthetic_model):
    model_dir, model = synthetic_model
    with Recommender.load(model_dir, rule="sign") as recommender:
        results = recommender.recommend(model.user_ids, k=NUM_ITEMS)
        stats = recommender.last_stats

    survivors = stats.survivor_counts[-1]
    assert np.all(survivors < NUM_ITEMS)
    assert [len(result.item_ids) for result in results] == survivors.tolist()
    for result in results:
        assert np.all(np.isfinite(result.scores))
        assert np.all(np.diff(result.scores) <= 0)


def test_duplicate_users_get_same_results(recommender):
    results = recommender.recommend(["1002", "1002"], k=5)

    assert results[0].item_ids == results[1].item_ids
    assert results[0].scores.tolist() == results[1].scores.tolist()


def test_empty_request(recommender):
    assert recommender.recommend([], k=5) == []


@pytest.mark.parametrize("k", [0, -3])
def test_non_positive_k_raises(recommender, k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        recommender.recommend(["1000"], k=k)


def test_k_over_catalogue_names_both_numbers(recommender):
    with pytest.raises(ValueError, match=f"k = {NUM_ITEMS + 1}.*num_items = {NUM_ITEMS}"):
        recommender.recommend(["1000"], k=NUM_ITEMS + 1)
    with pytest.raises(ValueError, match=f"num_items = {NUM_ITEMS}"):
        recommender.recommend_indices(np.array([0]), k=NUM_ITEMS + 1)


def test_non_integer_k_raises(recommender):
    with pytest.raises(TypeError, match="k must be an integer"):
        recommender.recommend(["1000"], k=2.5)


def test_single_string_request_raises(recommender):
    with pytest.raises(TypeError, match="Wrap one id in a list"):
        recommender.recommend("1000", k=5)


def test_unknown_user_error_names_ids(recommender):
    with pytest.raises(UnknownUserError) as caught:
        recommender.recommend(["1000", "nobody", 99], k=5)

    assert caught.value.user_ids == ("nobody", "99")
    assert "'nobody', '99'" in str(caught.value)
    assert "unknown_users='popular'" in str(caught.value)
    assert isinstance(caught.value, KeyError)


def test_unknown_user_error_truncates_long_lists(recommender):
    unknown = [f"ghost-{index}" for index in range(8)]
    with pytest.raises(UnknownUserError, match=r"ghost-4', \.\.\. \(3 more\)") as caught:
        recommender.recommend(unknown, k=5)

    assert len(caught.value.user_ids) == 8


def test_popular_fallback_for_unknown_users(recommender, synthetic_model):
    _, model = synthetic_model
    results = recommender.recommend(["ghost", "1001"], k=5, unknown_users="popular")

    popularity = model.item_popularity
    expected = sorted(range(NUM_ITEMS), key=lambda item: (-popularity[item], item))[:5]
    assert results[0].user_id == "ghost"
    assert results[0].fallback
    assert results[0].item_ids == [model.item_ids[item] for item in expected]
    assert results[0].scores.tolist() == [float(popularity[item]) for item in expected]
    assert results[0].scores.dtype == np.float32
    assert not results[1].fallback
    assert results[1].user_id == "1001"


def test_invalid_unknown_users_policy(recommender):
    with pytest.raises(ValueError, match="unknown_users must be one of"):
        recommender.recommend(["1000"], k=5, unknown_users="skip")


@pytest.mark.parametrize("bad_indices", [[NUM_USERS], [-1], [[0, 1]]])
def test_recommend_indices_rejects_bad_indices(recommender, bad_indices):
    with pytest.raises(ValueError, match="user_indices"):
        recommender.recommend_indices(np.array(bad_indices), k=5)


def test_recommend_indices_empty_batch(recommender):
    items, scores, counts = recommender.recommend_indices(np.array([], dtype=np.int64), k=5)

    assert items.shape == (0, 5)
    assert scores.shape == (0, 5)
    assert counts.shape == (0,)


def test_small_chunks_give_same_results(synthetic_model):
    model_dir, _ = synthetic_model
    with Recommender.load(model_dir, rule="quota") as whole:
        expected = whole.recommend_indices(np.arange(NUM_USERS), k=7)
    with Recommender.load(model_dir, rule="quota", max_candidates=2 * NUM_ITEMS) as chunked:
        actual = chunked.recommend_indices(np.arange(NUM_USERS), k=7)
        num_chunks = chunked.last_stats.num_chunks

    assert num_chunks == NUM_USERS // 2
    for expected_array, actual_array in zip(expected, actual):
        np.testing.assert_array_equal(actual_array, expected_array)


def test_load_metadata(synthetic_model):
    model_dir, model = synthetic_model
    with Recommender.load(model_dir, intra_op_threads=1) as recommender:
        assert recommender.num_users == NUM_USERS
        assert recommender.num_items == NUM_ITEMS
        assert recommender.user_ids == model.user_ids
        assert recommender.item_ids == model.item_ids
        assert recommender.manifest.rejection_ratios == model.gammas
        assert recommender.last_stats is None


def test_unknown_backend_lists_valid_ones(synthetic_model):
    model_dir, _ = synthetic_model
    with pytest.raises(ValueError, match=r"backend must be one of \['cpu', 'auto'"):
        Recommender.load(model_dir, backend="tpu")


def test_unknown_rule_raises(synthetic_model):
    model_dir, _ = synthetic_model
    with pytest.raises(ValueError, match=r"rule must be one of \['sign', 'quota'\]"):
        Recommender.load(model_dir, rule="top")


def test_auto_backend_logs_choice(synthetic_model, caplog):
    model_dir, _ = synthetic_model
    with caplog.at_level(logging.INFO, logger="hdn_runtime"):
        with Recommender.load(model_dir, backend="auto"):
            pass

    assert "backend='auto' selected 'cpu'" in caplog.text


def test_request_path_logs_nothing_at_info(recommender, caplog):
    with caplog.at_level(logging.INFO, logger="hdn_runtime"):
        recommender.recommend(["1000", "ghost"], k=5, unknown_users="popular")

    assert caplog.records == []


def test_closed_recommender_raises(synthetic_model):
    model_dir, _ = synthetic_model
    recommender = Recommender.load(model_dir)
    recommender.close()

    with pytest.raises(RuntimeError, match="closed"):
        recommender.recommend(["1000"], k=5)
