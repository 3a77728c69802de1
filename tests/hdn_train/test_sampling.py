import numpy as np
import pytest

from hdn_train.interactions import InteractionMatrix
from hdn_train.sampling import sample_negatives, training_pairs


@pytest.fixture
def dense_train():
    # User 0 has 8 of 10 items, so most first draws collide and must be redrawn.
    users = np.array([0] * 8 + [1, 1])
    items = np.array(list(range(8)) + [3, 9])
    return InteractionMatrix.from_pairs(users, items, 2, 10)


def test_negatives_avoid_training_items(dense_train):
    rng = np.random.default_rng(0)
    users = np.array([0] * 500 + [1] * 500)
    items = sample_negatives(dense_train, users, rng)
    assert set(items[users == 0].tolist()) == {8, 9}
    assert not set(items[users == 1].tolist()) & {3, 9}


def test_negatives_fail_for_user_with_every_item():
    train = InteractionMatrix.from_pairs(np.array([0, 0]), np.array([0, 1]), 1, 2)
    with pytest.raises(ValueError, match="interacted with all 2 items"):
        sample_negatives(train, np.array([0]), np.random.default_rng(0))


def test_training_pairs_have_ratio_and_labels(dense_train):
    users, items, labels = training_pairs(dense_train, 5, np.random.default_rng(0))
    assert len(users) == dense_train.nnz * 6
    assert labels.sum() == dense_train.nnz
    positives = set(zip(*dense_train.to_pairs()))
    for user, item, label in zip(users.tolist(), items.tolist(), labels.tolist()):
        assert ((user, item) in positives) == (label == 1.0)


def test_training_pairs_repeat_under_seed(dense_train):
    first = training_pairs(dense_train, 3, np.random.default_rng(7))
    second = training_pairs(dense_train, 3, np.random.default_rng(7))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
