import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_hit_rate, retrieval_normalized_dcg

from hdn_train.data import read_u_data
from hdn_train.interactions import InteractionMatrix
from hdn_train.protocols import (
    leave_one_out_split,
    sample_candidates,
    sampled_ranking_metrics,
)

DATA_HOME = Path(
    os.environ.get("HDN_DATA_HOME")
    or Path(__file__).resolve().parents[2].parent / "shared" / "data"
)
ML_100K_U_DATA = DATA_HOME / "ml-100k" / "u.data"


def matrix_from_rows(rows: list[list[int]], n_items: int) -> InteractionMatrix:
    users = [user for user, items in enumerate(rows) for _ in items]
    items = [item for row in rows for item in row]
    return InteractionMatrix.from_pairs(
        np.array(users, dtype=np.int64), np.array(items, dtype=np.int64), len(rows), n_items
    )


def random_matrix(n_users: int, n_items: int, density: float, seed: int) -> InteractionMatrix:
    rng = np.random.default_rng(seed)
    mask = rng.random((n_users, n_items)) < density
    users, items = np.nonzero(mask)
    return InteractionMatrix.from_pairs(users, items, n_users, n_items)


def pair_set(matrix: InteractionMatrix) -> set[tuple[int, int]]:
    users, items = matrix.to_pairs()
    return set(zip(users.tolist(), items.tolist()))


def scores_from_table(table: dict[tuple[int, int], float]):
    """Return a score_pairs function that looks each pair up in `table`."""

    def score_pairs(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        pairs = zip(users.tolist(), items.tolist())
        return np.array([table[pair] for pair in pairs], dtype=np.float32)

    return score_pairs


# ---------------------------------------------------------------- leave_one_out_split


def test_split_holds_out_latest_timestamp():
    # Rows are stored by item, so the latest pair is not the last one in each row.
    interactions = matrix_from_rows([[0, 2, 5], [1, 3], [4, 6, 7, 8]], n_items=9)
    timestamps = np.array([30, 10, 20, 5, 9, 100, 400, 200, 300], dtype=np.int64)

    train, test = leave_one_out_split(interactions, timestamps)

    assert test.items_of(0).tolist() == [0]
    assert test.items_of(1).tolist() == [3]
    assert test.items_of(2).tolist() == [6]
    assert train.items_of(0).tolist() == [2, 5]
    assert train.items_of(1).tolist() == [1]
    assert train.items_of(2).tolist() == [4, 7, 8]


def test_split_breaks_timestamp_ties_by_seed():
    # Items 1 and 2 share the latest timestamp. Item 0 is older and is never held out.
    interactions = matrix_from_rows([[0, 1, 2]], n_items=3)
    timestamps = np.array([1, 7, 7], dtype=np.int64)

    def held_out(seed: int) -> list[int]:
        return leave_one_out_split(interactions, timestamps, seed=seed)[1].items_of(0).tolist()

    picks = {seed: held_out(seed) for seed in range(20)}

    assert {tuple(items) for items in picks.values()} == {(1,), (2,)}
    for seed, items in picks.items():
        assert held_out(seed) == items


def test_split_without_timestamps_is_seeded():
    interactions = random_matrix(200, 30, density=0.3, seed=1)

    first_train, first_test = leave_one_out_split(interactions, None, seed=5)
    again_train, again_test = leave_one_out_split(interactions, None, seed=5)
    _, other_test = leave_one_out_split(interactions, None, seed=6)

    np.testing.assert_array_equal(first_test.indices, again_test.indices)
    np.testing.assert_array_equal(first_train.indices, again_train.indices)
    assert not np.array_equal(first_test.indices, other_test.indices)


def test_split_without_timestamps_varies_within_user():
    interactions = matrix_from_rows([[3, 4, 5, 6]], n_items=7)

    held_out = {
        int(leave_one_out_split(interactions, None, seed=seed)[1].items_of(0)[0])
        for seed in range(40)
    }

    assert held_out == {3, 4, 5, 6}


def test_split_partitions_interactions():
    interactions = random_matrix(100, 40, density=0.2, seed=2)
    timestamps = np.random.default_rng(3).integers(0, 5, size=interactions.nnz)

    train, test = leave_one_out_split(interactions, timestamps, seed=0)

    assert pair_set(train) | pair_set(test) == pair_set(interactions)
    assert not pair_set(train) & pair_set(test)
    assert (test.n_users, test.n_items) == (interactions.n_users, interactions.n_items)
    lengths = interactions.row_lengths()
    np.testing.assert_array_equal(test.row_lengths(), (lengths >= 2).astype(np.int64))


def test_split_keeps_single_interaction_in_train():
    interactions = matrix_from_rows([[4], [], [1, 2]], n_items=5)
    timestamps = np.array([50, 1, 2], dtype=np.int64)

    train, test = leave_one_out_split(interactions, timestamps)

    assert train.items_of(0).tolist() == [4]
    assert test.items_of(0).tolist() == []
    assert train.items_of(1).tolist() == []
    assert test.items_of(1).tolist() == []
    assert test.items_of(2).tolist() == [2]


def test_split_rejects_misaligned_timestamps():
    interactions = matrix_from_rows([[0, 1]], n_items=2)

    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        leave_one_out_split(interactions, np.array([1, 2, 3]))


def test_split_rejects_nan_timestamps():
    interactions = matrix_from_rows([[0, 1]], n_items=2)

    with pytest.raises(ValueError, match="NaN"):
        leave_one_out_split(interactions, np.array([1.0, np.nan]))


# ---------------------------------------------------------------- sample_candidates


@pytest.mark.parametrize("num_negatives", [0, 5, 20])
def test_candidates_avoid_interacted_items(num_negatives):
    interactions = random_matrix(150, 60, density=0.3, seed=4)
    train, test = leave_one_out_split(interactions, None, seed=0)

    users, candidates = sample_candidates(train, test, num_negatives=num_negatives, seed=1)

    assert users.dtype == np.int64
    assert candidates.dtype == np.int64
    assert candidates.shape == (len(users), 1 + num_negatives)
    np.testing.assert_array_equal(users, np.flatnonzero(test.row_lengths() > 0))
    np.testing.assert_array_equal(candidates[:, 0], test.indices[test.indptr[users]])
    interacted = interactions.to_dense_mask(users)
    negatives = candidates[:, 1:]
    assert not np.take_along_axis(interacted, negatives, axis=1).any()
    for row in candidates:
        assert len(set(row.tolist())) == len(row)


def test_candidates_are_seeded():
    interactions = random_matrix(80, 50, density=0.2, seed=5)
    train, test = leave_one_out_split(interactions, None)

    _, first = sample_candidates(train, test, num_negatives=10, seed=3)
    _, again = sample_candidates(train, test, num_negatives=10, seed=3)
    _, other = sample_candidates(train, test, num_negatives=10, seed=4)

    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_candidates_avoid_items_in_test_only():
    # Item 2 is user 0's test item and user 1's train item, so neither user gets it as a negative.
    train = matrix_from_rows([[0, 1], [2]], n_items=8)
    test = matrix_from_rows([[2], [3]], n_items=8)

    _, candidates = sample_candidates(train, test, num_negatives=5, seed=0)

    assert candidates[0, 0] == 2
    assert sorted(candidates[0, 1:].tolist()) == [3, 4, 5, 6, 7]
    assert candidates[1, 0] == 3
    assert set(candidates[1, 1:].tolist()) <= {0, 1, 4, 5, 6, 7}


def test_candidates_use_every_free_item_when_needed():
    # User 0 has exactly 4 free items, so all of them must be sampled (the dense path).
    train = matrix_from_rows([[0, 1, 2, 3, 4], [0]], n_items=10)
    test = matrix_from_rows([[5], [9]], n_items=10)

    users, candidates = sample_candidates(train, test, num_negatives=4, seed=0)

    np.testing.assert_array_equal(users, [0, 1])
    assert sorted(candidates[0, 1:].tolist()) == [6, 7, 8, 9]
    assert len(set(candidates[1].tolist())) == 5
    assert not {0, 9} & set(candidates[1, 1:].tolist())


def test_candidates_are_close_to_uniform():
    # 2000 users with the same 5 interacted items of 20: each of the 15 free items should be
    # drawn about 2000 * 3 / 15 = 400 times (standard deviation about 18).
    n_users = 2000
    train = matrix_from_rows([[0, 1, 2, 3]] * n_users, n_items=20)
    test = matrix_from_rows([[4]] * n_users, n_items=20)

    _, candidates = sample_candidates(train, test, num_negatives=3, seed=0)

    counts = np.bincount(candidates[:, 1:].ravel(), minlength=20)
    assert counts[:5].sum() == 0
    assert counts[5:].min() > 320
    assert counts[5:].max() < 480


def test_candidates_without_test_users():
    train = matrix_from_rows([[0, 1], [2]], n_items=5)
    test = matrix_from_rows([[], []], n_items=5)

    users, candidates = sample_candidates(train, test, num_negatives=3)

    assert users.shape == (0,)
    assert candidates.shape == (0, 4)


def test_candidates_reject_too_few_free_items():
    train = matrix_from_rows([[0, 1, 2], [0]], n_items=6)
    test = matrix_from_rows([[3], [1]], n_items=6)

    with pytest.raises(ValueError, match=r"user 0 has 2"):
        sample_candidates(train, test, num_negatives=3)


def test_candidates_reject_several_test_items():
    train = matrix_from_rows([[0]], n_items=6)
    test = matrix_from_rows([[1, 2]], n_items=6)

    with pytest.raises(ValueError, match="more than one test item"):
        sample_candidates(train, test, num_negatives=2)


def test_candidates_reject_shape_mismatch():
    train = matrix_from_rows([[0]], n_items=6)
    test = matrix_from_rows([[1]], n_items=7)

    with pytest.raises(ValueError, match="same user and item indices"):
        sample_candidates(train, test, num_negatives=2)


@pytest.mark.parametrize("num_negatives", [-1, 2.0, True])
def test_candidates_reject_bad_num_negatives(num_negatives):
    train = matrix_from_rows([[0]], n_items=6)
    test = matrix_from_rows([[1]], n_items=6)

    with pytest.raises(ValueError, match="num_negatives"):
        sample_candidates(train, test, num_negatives=num_negatives)


# ---------------------------------------------------------------- sampled_ranking_metrics


def test_metrics_held_out_ranked_first():
    candidates = np.array([[7, 1, 2, 3]])
    score_pairs = scores_from_table({(0, 7): 0.9, (0, 1): 0.1, (0, 2): 0.2, (0, 3): 0.3})

    metrics = sampled_ranking_metrics(score_pairs, np.array([0]), candidates)

    assert metrics == {"hr@10": 1.0, "ndcg@10": 1.0, "users": 1}


def test_metrics_held_out_ranked_third():
    candidates = np.array([[7, 1, 2, 3]])
    score_pairs = scores_from_table({(0, 7): 0.5, (0, 1): 0.1, (0, 2): 0.8, (0, 3): 0.9})

    metrics = sampled_ranking_metrics(score_pairs, np.array([0]), candidates, ks=(2, 3))

    assert metrics["hr@2"] == 0.0
    assert metrics["ndcg@2"] == 0.0
    assert metrics["hr@3"] == 1.0
    assert metrics["ndcg@3"] == pytest.approx(0.5)
    assert list(metrics) == ["hr@2", "ndcg@2", "hr@3", "ndcg@3", "users"]


def test_metrics_ties_rank_held_out_last():
    # One tie with a negative puts the held-out item second, not first.
    candidates = np.array([[7, 1, 2], [7, 1, 2]])
    score_pairs = scores_from_table(
        {(0, 7): 0.5, (0, 1): 0.5, (0, 2): 0.1, (1, 7): 0.5, (1, 1): 0.5, (1, 2): 0.5}
    )

    metrics = sampled_ranking_metrics(score_pairs, np.array([0, 1]), candidates, ks=(1, 2, 3))

    assert metrics["hr@1"] == 0.0
    assert metrics["hr@2"] == 0.5  # user 0 at rank 1, user 1 tied with both at rank 2
    assert metrics["ndcg@2"] == pytest.approx(0.5 / math.log2(3))
    assert metrics["ndcg@3"] == pytest.approx(0.5 / math.log2(3) + 0.5 / math.log2(4))


def test_metrics_constant_scores_miss():
    users = np.arange(5, dtype=np.int64)
    candidates = np.tile(np.arange(100, dtype=np.int64), (5, 1))

    metrics = sampled_ranking_metrics(
        lambda users, items: np.zeros(len(users), np.float32), users, candidates
    )

    assert metrics["hr@10"] == 0.0
    assert metrics["ndcg@10"] == 0.0


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_match_torchmetrics(seed):
    rng = np.random.default_rng(seed)
    n_users, n_candidates, n_items = 60, 30, 200
    users = np.arange(n_users, dtype=np.int64)
    candidates = np.stack([rng.permutation(n_items)[:n_candidates] for _ in range(n_users)])
    score_table = rng.random((n_users, n_items))

    metrics = sampled_ranking_metrics(
        lambda users, items: score_table[users, items],
        users,
        candidates,
        ks=(1, 5, 10),
        batch_size=7,
    )

    target = torch.zeros(n_candidates, dtype=torch.bool)
    target[0] = True
    for k in (1, 5, 10):
        hit_rates, ndcgs = [], []
        for user in range(n_users):
            preds = torch.from_numpy(score_table[user, candidates[user]])
            hit_rates.append(float(retrieval_hit_rate(preds, target, top_k=k)))
            ndcgs.append(float(retrieval_normalized_dcg(preds, target, top_k=k)))
        assert metrics[f"hr@{k}"] == pytest.approx(np.mean(hit_rates), abs=1e-12)
        assert metrics[f"ndcg@{k}"] == pytest.approx(np.mean(ndcgs), abs=1e-6)


def test_metrics_pass_users_to_score_pairs():
    calls = []

    def score_pairs(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        calls.append((users.copy(), items.copy()))
        return (items == users).astype(np.float32)  # only the pair (u, u) scores 1

    users = np.array([3, 4, 5], dtype=np.int64)
    candidates = np.array([[3, 0, 1], [0, 4, 1], [5, 0, 1]], dtype=np.int64)

    metrics = sampled_ranking_metrics(score_pairs, users, candidates, ks=(1,), batch_size=2)

    assert metrics["hr@1"] == pytest.approx(2 / 3)
    assert len(calls) == 2
    np.testing.assert_array_equal(calls[0][0], [3, 3, 3, 4, 4, 4])
    np.testing.assert_array_equal(calls[0][1], [3, 0, 1, 0, 4, 1])


def test_metrics_without_rows_are_nan():
    metrics = sampled_ranking_metrics(
        lambda users, items: np.zeros(len(users)),
        np.zeros(0, dtype=np.int64),
        np.zeros((0, 100), dtype=np.int64),
    )

    assert math.isnan(metrics["hr@10"])
    assert math.isnan(metrics["ndcg@10"])
    assert metrics["users"] == 0


def test_metrics_reject_wrong_score_shape():
    with pytest.raises(ValueError, match="one score per pair"):
        sampled_ranking_metrics(
            lambda users, items: np.zeros(3), np.array([0]), np.array([[0, 1, 2, 3]])
        )


def test_metrics_reject_nan_scores():
    with pytest.raises(ValueError, match="NaN"):
        sampled_ranking_metrics(
            lambda users, items: np.full(len(users), np.nan), np.array([0]), np.array([[0, 1]])
        )


def test_metrics_reject_mismatched_users():
    with pytest.raises(ValueError, match=r"users must have shape \(2,\)"):
        sampled_ranking_metrics(
            lambda users, items: np.zeros(len(users)), np.array([0]), np.zeros((2, 3), int)
        )


@pytest.mark.parametrize("batch_size", [0, 1.5])
def test_metrics_reject_bad_batch_size(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        sampled_ranking_metrics(
            lambda users, items: np.zeros(len(users)),
            np.array([0]),
            np.array([[0, 1]]),
            batch_size=batch_size,
        )


# ---------------------------------------------------------------- MovieLens 100K


@pytest.mark.skipif(not ML_100K_U_DATA.is_file(), reason=f"{ML_100K_U_DATA} not found")
def test_movielens_100k_leave_one_out():
    dataset = read_u_data(ML_100K_U_DATA)
    interactions, timestamps = dataset.interactions, dataset.timestamps

    train, test = leave_one_out_split(interactions, timestamps, seed=0)
    users, candidates = sample_candidates(train, test, num_negatives=99, seed=0)

    assert interactions.n_users == 943
    np.testing.assert_array_equal(test.row_lengths(), np.ones(943, dtype=np.int64))
    assert train.nnz == interactions.nnz - 943

    # The held-out item has the user's largest timestamp.
    pair_users, pair_items = interactions.to_pairs()
    latest = np.full(interactions.n_users, np.iinfo(np.int64).min)
    np.maximum.at(latest, pair_users, timestamps)
    held_out_codes = np.arange(943) * interactions.n_items + test.indices
    is_held_out = np.isin(pair_users * interactions.n_items + pair_items, held_out_codes)
    np.testing.assert_array_equal(timestamps[is_held_out], latest)

    np.testing.assert_array_equal(users, np.arange(943))
    assert candidates.shape == (943, 100)
    assert not np.take_along_axis(interactions.to_dense_mask(), candidates[:, 1:], axis=1).any()
    sorted_rows = np.sort(candidates, axis=1)
    assert (sorted_rows[:, 1:] != sorted_rows[:, :-1]).all()


# ---------------------------------------------------------------- experiment hold-out setting


def write_u_data(path: Path, num_users: int = 20, num_items: int = 12) -> Path:
    """Write a u.data file where each user's latest interaction is with item user % num_items."""
    rng = np.random.default_rng(0)
    lines = []
    for user in range(num_users):
        latest = user % num_items
        others = rng.choice(np.delete(np.arange(num_items), latest), size=5, replace=False)
        for step, item in enumerate([*others.tolist(), latest]):
            lines.append(f"{user + 1}\t{item + 1}\t4\t{1000 + step}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("holdout", ["latest", "random"])
def test_experiment_loo_holdout(tmp_path, holdout):
    from hdn_train.experiment import ExperimentConfig, Workspace

    data = write_u_data(tmp_path / "u.data")
    config = ExperimentConfig(datasets=[str(data)], protocol="loo", loo_holdout=holdout)

    workspace = Workspace(config, None, str(data), seed=0)

    # Compare through the external ids, whatever order the reader gives the dense indices.
    dataset = read_u_data(data)
    users, items = workspace.test.to_pairs()
    assert len(users) == 20
    held_out = {dataset.user_ids[user]: dataset.item_ids[item] for user, item in zip(users, items)}
    latest = {str(user + 1): str(user % 12 + 1) for user in range(20)}
    if holdout == "latest":
        assert held_out == latest
    else:
        assert held_out != latest


def test_experiment_rejects_unknown_holdout():
    from hdn_train.experiment import ExperimentConfig

    with pytest.raises(ValueError, match="loo_holdout must be one of"):
        ExperimentConfig(protocol="loo", loo_holdout="earliest")


def test_experiment_loo_records_holdout(tmp_path, caplog):
    from hdn_train.experiment import ExperimentConfig, Workspace

    csv_path = tmp_path / "pairs.csv"
    dataset = read_u_data(write_u_data(tmp_path / "u.data"))
    users, items = dataset.interactions.to_pairs()
    rows = [f"{dataset.user_ids[u]},{dataset.item_ids[i]}" for u, i in zip(users, items)]
    csv_path.write_text("user_id,item_id\n" + "\n".join(rows) + "\n")
    config = ExperimentConfig(datasets=[str(csv_path)], protocol="loo")

    with caplog.at_level("WARNING", logger="hdn_train.experiment"):
        workspace = Workspace(config, None, str(csv_path), seed=0)

    assert workspace.holdout == "random"
    assert "has no timestamps" in caplog.text
