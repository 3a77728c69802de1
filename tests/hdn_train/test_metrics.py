import math

import numpy as np
import pytest

from hdn_train.interactions import InteractionMatrix
from hdn_train.metrics import (
    RankingAccumulator,
    evaluate_full_ranking,
    ranking_metrics,
    top_k_items,
)


def matrix_from_rows(rows: list[list[int]], n_items: int) -> InteractionMatrix:
    users = [user for user, items in enumerate(rows) for _ in items]
    items = [item for row in rows for item in row]
    return InteractionMatrix.from_pairs(
        np.array(users, dtype=np.int64), np.array(items, dtype=np.int64), len(rows), n_items
    )


def reference_top_k(scores: np.ndarray, k: int, exclude: np.ndarray) -> np.ndarray:
    """Top-k by (score descending, index ascending) with one Python sort per row."""
    width = min(k, scores.shape[1])
    result = np.full((scores.shape[0], width), -1, dtype=np.int64)
    for row in range(scores.shape[0]):
        ranked = sorted(
            (item for item in range(scores.shape[1]) if not exclude[row, item]),
            key=lambda item: (-scores[row, item], item),
        )[:width]
        result[row, : len(ranked)] = ranked
    return result


# ---------------------------------------------------------------- top_k_items


def test_top_k_orders_by_score_descending():
    scores = np.array([[0.1, 0.7, 0.3, 0.9], [0.4, 0.2, 0.8, 0.6]], dtype=np.float32)

    top_items = top_k_items(scores, 3)

    np.testing.assert_array_equal(top_items, [[3, 1, 2], [2, 3, 0]])
    assert top_items.dtype == np.int64


def test_top_k_ties_rank_lower_index_first():
    # Items 1 and 3 tie at 0.9, items 0 and 2 tie at 0.5.
    scores = np.array([[0.5, 0.9, 0.5, 0.9, 0.1]])

    np.testing.assert_array_equal(top_k_items(scores, 3), [[1, 3, 0]])


def test_top_k_tie_at_partition_boundary():
    # Item 9 wins, then the 3rd place is contested by nine items tied at 0.0:
    # the two lowest indices, 0 and 1, must fill it.
    scores = np.zeros((1, 10))
    scores[0, 9] = 1.0

    np.testing.assert_array_equal(top_k_items(scores, 3), [[9, 0, 1]])


def test_top_k_equal_scores_first_indices():
    scores = np.ones((4, 50), dtype=np.float32)

    np.testing.assert_array_equal(top_k_items(scores, 5), np.tile(np.arange(5), (4, 1)))


@pytest.mark.parametrize("k", [1, 3, 7, 20, 40, 41])
def test_top_k_reference_with_ties(k):
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 4, size=(30, 40)).astype(np.float32)  # heavy ties
    exclude = rng.random((30, 40)) < 0.3
    exclude[0] = True  # one row with nothing to rank
    exclude[1, 2:] = True  # one row with two items to rank

    np.testing.assert_array_equal(
        top_k_items(scores, k, exclude), reference_top_k(scores, k, exclude)
    )


def test_top_k_pads_when_few_items_remain():
    scores = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
    exclude = np.array([[True, False, True, True, False]])

    np.testing.assert_array_equal(top_k_items(scores, 4, exclude), [[1, 4, -1, -1]])


def test_top_k_all_excluded_row_is_padding():
    scores = np.array([[0.3, 0.2, 0.1], [0.1, 0.2, 0.3]])
    exclude = np.array([[True, True, True], [False, False, False]])

    np.testing.assert_array_equal(top_k_items(scores, 2, exclude), [[-1, -1], [2, 1]])


def test_top_k_width_capped_at_item_count():
    scores = np.array([[0.2, 0.5, 0.1]])

    top_items = top_k_items(scores, 10)

    assert top_items.shape == (1, 3)
    np.testing.assert_array_equal(top_items, [[1, 0, 2]])


def test_top_k_never_returns_excluded_items():
    rng = np.random.default_rng(0)
    scores = rng.random((16, 100))
    exclude = rng.random((16, 100)) < 0.5

    top_items = top_k_items(scores, 20, exclude)

    returned = top_items >= 0
    rows = np.nonzero(returned)[0]
    assert not exclude[rows, top_items[returned]].any()


def test_top_k_negative_infinity_is_ranked_last():
    # -inf is a score, not an exclusion: item 0 is returned after item 2 and before padding.
    scores = np.array([[-np.inf, 0.5, 0.7, 0.1]])
    exclude = np.array([[False, False, False, True]])

    np.testing.assert_array_equal(top_k_items(scores, 4, exclude), [[2, 1, 0, -1]])


def test_top_k_nan_allowed_only_at_excluded_items():
    scores = np.array([[0.1, np.nan, 0.3]])

    np.testing.assert_array_equal(
        top_k_items(scores, 2, np.array([[False, True, False]])), [[2, 0]]
    )
    with pytest.raises(ValueError, match="NaN"):
        top_k_items(scores, 2)


@pytest.mark.parametrize("k", [0, -1, 2.0, True])
def test_top_k_rejects_invalid_k(k):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        top_k_items(np.zeros((1, 3)), k)


def test_top_k_rejects_mismatched_exclude():
    with pytest.raises(ValueError, match="exclude must have the same shape"):
        top_k_items(np.zeros((2, 3)), 1, np.zeros((2, 4), dtype=bool))


def test_top_k_rejects_one_dimensional_scores():
    with pytest.raises(ValueError, match="scores must have shape"):
        top_k_items(np.zeros(3), 1)


# ---------------------------------------------------------------- ranking_metrics


LOG2_3 = math.log2(3)


@pytest.fixture
def hand_case():
    """Four users over 10 items, where user 2 has no test items.

    user 0: test {0, 2, 5}, ranked [0, 1, 2, 3] -> hits at ranks 1 and 3
    user 1: test {7},       ranked [1, 7, 3, 4] -> hit at rank 2
    user 2: test {},        ranked [0, 1, 2, 3] -> skipped
    user 3: test {9},       ranked [0, 1, 2, 3] -> no hit
    """
    test = matrix_from_rows([[0, 2, 5], [7], [], [9]], n_items=10)
    top_items = np.array([[0, 1, 2, 3], [1, 7, 3, 4], [0, 1, 2, 3], [0, 1, 2, 3]])
    return top_items, test, np.arange(4)


def test_ranking_metrics_hand_computed(hand_case):
    top_items, test, users = hand_case

    metrics = ranking_metrics(top_items, test, users, ks=(2, 4))

    # K=2. user 0: 1 hit (rank 1), recall 1/min(2, 3) = 1/2, DCG 1,
    #   ideal DCG of 2 hits = 1 + 1/log2(3), NDCG = 1 / (1 + 1/log2(3)).
    # user 1: hit at rank 2, recall 1/1, NDCG = (1/log2(3)) / 1.  user 3: all zero.
    assert metrics["hr@2"] == pytest.approx(2 / 3)
    assert metrics["recall@2"] == pytest.approx((1 / 2 + 1) / 3)
    assert metrics["ndcg@2"] == pytest.approx((1 / (1 + 1 / LOG2_3) + 1 / LOG2_3) / 3)

    # K=4. user 0: 2 hits (ranks 1 and 3), recall 2/min(4, 3) = 2/3,
    #   DCG = 1 + 1/log2(4) = 1.5, ideal DCG of 3 hits = 1 + 1/log2(3) + 1/2.
    # user 1: unchanged from K=2.  user 3: all zero.
    assert metrics["hr@4"] == pytest.approx(2 / 3)
    assert metrics["recall@4"] == pytest.approx((2 / 3 + 1) / 3)
    assert metrics["ndcg@4"] == pytest.approx((1.5 / (1.5 + 1 / LOG2_3) + 1 / LOG2_3) / 3)


def test_ranking_metrics_skips_users_without_test(hand_case):
    top_items, test, users = hand_case

    metrics = ranking_metrics(top_items, test, users, ks=(2,))
    only_user_2 = ranking_metrics(top_items[2:3], test, users[2:3], ks=(2,))

    assert metrics["users"] == 3
    assert only_user_2["users"] == 0
    assert math.isnan(only_user_2["hr@2"])
    assert math.isnan(only_user_2["ndcg@2"])


def test_ranking_metrics_key_order(hand_case):
    top_items, test, users = hand_case

    metrics = ranking_metrics(top_items, test, users)

    assert list(metrics) == [
        "hr@10",
        "recall@10",
        "ndcg@10",
        "hr@20",
        "recall@20",
        "ndcg@20",
        "users",
    ]


def test_ranking_metrics_k_beyond_ranked_columns():
    # Two ranked columns, K=5, |test| = 3: hits at ranks 1 and 2,
    # recall = 2/min(5, 3) = 2/3, NDCG = (1 + 1/log2(3)) / (1 + 1/log2(3) + 1/2).
    test = matrix_from_rows([[0, 1, 2]], n_items=6)

    metrics = ranking_metrics(np.array([[2, 0]]), test, np.array([0]), ks=(5,))

    assert metrics["hr@5"] == 1.0
    assert metrics["recall@5"] == pytest.approx(2 / 3)
    assert metrics["ndcg@5"] == pytest.approx((1 + 1 / LOG2_3) / (1.5 + 1 / LOG2_3))


def test_ranking_metrics_padding_never_hits():
    # Padding in user 1's row must not match user 0's last item (row * n_items - 1).
    test = matrix_from_rows([[3], [0]], n_items=4)
    top_items = np.array([[0, 1], [-1, -1]])

    metrics = ranking_metrics(top_items, test, np.array([0, 1]), ks=(2,))

    assert metrics["hr@2"] == 0.0
    assert metrics["ndcg@2"] == 0.0


def test_ranking_metrics_users_select_test_rows():
    # Row i of top_items belongs to test row users[i], not to test row i.
    test = matrix_from_rows([[1], [2], [3]], n_items=5)

    metrics = ranking_metrics(np.array([[3], [1]]), test, np.array([2, 0]), ks=(1,))

    assert metrics["hr@1"] == 1.0
    assert metrics["users"] == 2


@pytest.mark.parametrize("ks", [(), (0,), (10, 10), (5.0,)])
def test_ranking_metrics_rejects_invalid_ks(hand_case, ks):
    top_items, test, users = hand_case

    with pytest.raises(ValueError, match="ks"):
        ranking_metrics(top_items, test, users, ks=ks)


def test_ranking_metrics_rejects_out_of_range_items(hand_case):
    top_items, test, users = hand_case
    top_items = top_items.copy()
    top_items[0, 0] = 10

    with pytest.raises(ValueError, match=r"top_items must lie in \[-1, 10\)"):
        ranking_metrics(top_items, test, users)


def test_ranking_metrics_rejects_mismatched_users(hand_case):
    top_items, test, users = hand_case

    with pytest.raises(ValueError, match="users must have shape"):
        ranking_metrics(top_items, test, users[:3])


def test_ranking_metrics_rejects_out_of_range_users(hand_case):
    top_items, test, _ = hand_case

    with pytest.raises(ValueError, match=r"users must lie in \[0, 4\)"):
        ranking_metrics(top_items, test, np.array([0, 1, 2, 4]))


# ---------------------------------------------------------------- RankingAccumulator


def test_accumulator_sums_before_dividing(hand_case):
    top_items, test, users = hand_case
    accumulator = RankingAccumulator(ks=(2, 4))

    # Batches of 1 and 3 users: the mean of batch means would weight user 0 three times.
    accumulator.add(top_items[:1], test, users[:1])
    accumulator.add(top_items[1:], test, users[1:])

    assert accumulator.result() == pytest.approx(ranking_metrics(top_items, test, users, ks=(2, 4)))


def test_accumulator_empty_batch_changes_nothing(hand_case):
    top_items, test, users = hand_case
    accumulator = RankingAccumulator(ks=(2,))

    accumulator.add(top_items, test, users)
    accumulator.add(np.zeros((0, 4), dtype=np.int64), test, np.zeros(0, dtype=np.int64))

    assert accumulator.result() == pytest.approx(ranking_metrics(top_items, test, users, ks=(2,)))


# ---------------------------------------------------------------- evaluate_full_ranking


def fixed_scores(n_items: int):
    """Score function where item 0 is best and scores fall with the item index."""

    def score_batch(user_indices: np.ndarray) -> np.ndarray:
        row = np.arange(n_items, 0, -1, dtype=np.float32)
        return np.tile(row, (len(user_indices), 1))

    return score_batch


def test_full_ranking_masks_training_items():
    # user 0: train {0, 1}, test {2}: with 0 and 1 masked, item 2 ranks first.
    # user 1: train {2}, test {5}: ranking 0, 1, 3, 4, 5 puts item 5 at rank 5,
    #   so HR@1 = 0 and NDCG@5 = 1/log2(6).
    train = matrix_from_rows([[0, 1], [2]], n_items=6)
    test = matrix_from_rows([[2], [5]], n_items=6)

    metrics = evaluate_full_ranking(fixed_scores(6), train, test, ks=(1, 5))

    assert metrics["hr@1"] == pytest.approx(0.5)
    assert metrics["ndcg@1"] == pytest.approx(0.5)
    assert metrics["hr@5"] == 1.0
    assert metrics["ndcg@5"] == pytest.approx((1 + 1 / math.log2(6)) / 2)
    assert metrics["users"] == 2


def test_full_ranking_scores_only_users_with_test():
    train = matrix_from_rows([[0], [1], [2], [3]], n_items=8)
    test = matrix_from_rows([[4], [], [5], []], n_items=8)
    requested_users = []

    def score_batch(user_indices: np.ndarray) -> np.ndarray:
        requested_users.append(user_indices.copy())
        return fixed_scores(8)(user_indices)

    metrics = evaluate_full_ranking(score_batch, train, test, ks=(2,), batch_size=1)

    assert [batch.tolist() for batch in requested_users] == [[0], [2]]
    assert metrics["users"] == 2


def test_full_ranking_all_items_trained_user():
    # User 0 has every item in training, so the ranked list is all padding and never hits.
    train = matrix_from_rows([[0, 1, 2], [0]], n_items=3)
    test = matrix_from_rows([[1], [2]], n_items=3)

    metrics = evaluate_full_ranking(fixed_scores(3), train, test, ks=(2,))

    # user 1 ranks 1, 2: hit at rank 2, NDCG 1/log2(3).
    assert metrics["hr@2"] == pytest.approx(0.5)
    assert metrics["ndcg@2"] == pytest.approx(1 / LOG2_3 / 2)
    assert metrics["users"] == 2


def test_full_ranking_matches_one_shot_metrics():
    rng = np.random.default_rng(7)
    n_users, n_items = 23, 40
    scores = rng.random((n_users, n_items)).astype(np.float32)
    train = InteractionMatrix.from_pairs(
        rng.integers(0, n_users, 150), rng.integers(0, n_items, 150), n_users, n_items
    )
    test = InteractionMatrix.from_pairs(
        rng.integers(0, n_users, 40), rng.integers(0, n_items, 40), n_users, n_items
    )

    batched = evaluate_full_ranking(
        lambda user_indices: scores[user_indices], train, test, ks=(3, 10), batch_size=7
    )

    all_users = np.arange(n_users)
    top_items = top_k_items(scores, 10, train.to_dense_mask())
    assert batched == pytest.approx(ranking_metrics(top_items, test, all_users, ks=(3, 10)))


def test_full_ranking_rejects_wrong_score_shape():
    train = matrix_from_rows([[0]], n_items=4)
    test = matrix_from_rows([[1]], n_items=4)

    with pytest.raises(ValueError, match=r"expected \(1, 4\)"):
        evaluate_full_ranking(lambda user_indices: np.zeros((1, 3)), train, test)


def test_full_ranking_rejects_shape_mismatch():
    train = matrix_from_rows([[0]], n_items=4)
    test = matrix_from_rows([[1]], n_items=5)

    with pytest.raises(ValueError, match="train has shape"):
        evaluate_full_ranking(fixed_scores(4), train, test)


def test_full_ranking_rejects_invalid_batch_size():
    train = matrix_from_rows([[0]], n_items=4)

    with pytest.raises(ValueError, match="batch_size"):
        evaluate_full_ranking(fixed_scores(4), train, train, batch_size=0)


# ---------------------------------------------------------------- torchmetrics cross-check


@pytest.mark.parametrize("k", [1, 5, 10, 20, 60])
def test_metrics_match_torchmetrics(k):
    torch = pytest.importorskip("torch")
    retrieval = pytest.importorskip("torchmetrics.functional.retrieval")

    rng = np.random.default_rng(k)
    n_users, n_items = 50, 200
    # Scores stay positive because torchmetrics' retrieval_recall (1.9.0) counts only items
    # with a score above 0. Continuous scores have no ties, so both sides rank identically.
    scores = rng.uniform(0.01, 1.0, size=(n_users, n_items))
    train_rows, test_rows = [], []
    for user in range(n_users):
        items = rng.permutation(n_items)
        n_train = int(rng.integers(0, 30))
        n_test = 0 if user % 10 == 0 else int(rng.integers(1, 40))  # |test| above and below k
        train_rows.append(items[:n_train].tolist())
        test_rows.append(items[n_train : n_train + n_test].tolist())
    train = matrix_from_rows(train_rows, n_items)
    test = matrix_from_rows(test_rows, n_items)

    metrics = evaluate_full_ranking(lambda users: scores[users], train, test, ks=(k,))

    # torchmetrics ranks only the items outside the user's training set.
    hit_rates, recalls, ndcgs = [], [], []
    train_mask = train.to_dense_mask()
    test_mask = test.to_dense_mask()
    for user in range(n_users):
        if not test_rows[user]:
            continue
        candidates = ~train_mask[user]
        preds = torch.from_numpy(scores[user, candidates])
        target = torch.from_numpy(test_mask[user, candidates])
        n_test = len(test_rows[user])

        hit_rates.append(retrieval.retrieval_hit_rate(preds, target, top_k=k).item())
        # torchmetrics divides hits by |test|, so rescale to the min(k, |test|) denominator.
        tm_recall = retrieval.retrieval_recall(preds, target, top_k=k).item()
        recalls.append(tm_recall * n_test / min(k, n_test))
        # torchmetrics' ideal DCG sorts the targets and keeps the top k: min(k, |test|) hits.
        ndcgs.append(retrieval.retrieval_normalized_dcg(preds, target, top_k=k).item())

    assert metrics["users"] == len(hit_rates)
    assert metrics[f"hr@{k}"] == pytest.approx(np.mean(hit_rates), abs=1e-6)
    assert metrics[f"recall@{k}"] == pytest.approx(np.mean(recalls), abs=1e-6)
    assert metrics[f"ndcg@{k}"] == pytest.approx(np.mean(ndcgs), abs=1e-6)
