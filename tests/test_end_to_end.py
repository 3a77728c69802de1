"""Train on MovieLens-100K, export, and check the runtime against the PyTorch cascade."""

import numpy as np
import pytest

from hdn_export.onnx import export_onnx
from hdn_runtime import Recommender
from hdn_train.config import TrainConfig
from hdn_train.evaluate import cascade_top_k
from hdn_train.pipeline import train_all, write_run

SCORE_TIE = 1e-5  # float32 scores closer than this may swap order between backends


@pytest.fixture(scope="module")
def movielens_model(shared_data, tmp_path_factory):
    config = TrainConfig(
        data=str(shared_data / "ml-100k"),
        mf_epochs=1,
        pretrain_epochs=0,
        teacher_epochs=2,
        student_epochs=4,
    )
    run = train_all(config)
    root = tmp_path_factory.mktemp("ml100k")
    write_run(run, root / "run")
    export_onnx(root / "run", root / "model")
    return run, root / "model"


def _assert_same_ranking(runtime_items, runtime_scores, torch_items, torch_scores):
    np.testing.assert_allclose(runtime_scores, torch_scores, atol=SCORE_TIE, rtol=0)
    differs = runtime_items != torch_items
    # Any position where the items differ must be a float tie of neighbouring scores.
    assert np.all(np.abs(runtime_scores - torch_scores)[differs] <= SCORE_TIE)
    assert differs.sum() <= 2, f"{differs.sum()} positions differ"


def test_runtime_top20_equals_torch_cascade(movielens_model):
    run, model_dir = movielens_model
    users = np.sort(np.random.default_rng(0).choice(run.train.n_users, 100, replace=False))
    expected_items, expected_scores = cascade_top_k(run.student, users, 20, run.train)
    with Recommender.load(model_dir) as recommender:
        items, scores, counts = recommender.recommend_indices(users, 20)
    np.testing.assert_array_equal(counts, (expected_items >= 0).sum(axis=1))
    _assert_same_ranking(items, scores, expected_items, expected_scores)


def test_runtime_never_returns_training_items(movielens_model):
    run, model_dir = movielens_model
    users = np.arange(run.train.n_users)
    with Recommender.load(model_dir) as recommender:
        items, _, _ = recommender.recommend_indices(users, 20)
        seen = run.train.to_dense_mask(users)
        returned = items >= 0
        rows = np.repeat(users, 20).reshape(-1, 20)
        assert not seen[rows[returned], items[returned]].any()

        external = recommender.recommend([run.dataset.user_ids[0]], k=20)[0]
        train_ids = {run.dataset.item_ids[i] for i in run.train.items_of(0)}
        assert not train_ids & set(external.item_ids)


def test_runtime_may_return_seen_items_when_asked(movielens_model):
    run, model_dir = movielens_model
    heavy_user = int(np.argmax(run.train.row_lengths()))
    with Recommender.load(model_dir) as recommender:
        items, _, counts = recommender.recommend_indices(np.array([heavy_user]), 50, False)
    expected, _ = cascade_top_k(run.student, np.array([heavy_user]), 50, None)
    np.testing.assert_array_equal(items[0, : counts[0]], expected[0, : counts[0]])


def test_runtime_quota_rule_equals_torch(movielens_model):
    run, model_dir = movielens_model
    users = np.sort(np.random.default_rng(1).choice(run.train.n_users, 50, replace=False))
    gammas = run.config.gammas
    expected_items, expected_scores = cascade_top_k(
        run.student, users, 20, run.train, rule="quota", gammas=gammas
    )
    with Recommender.load(model_dir, rule="quota") as recommender:
        items, scores, counts = recommender.recommend_indices(users, 20)
        survivors = recommender.last_stats.survivor_counts[-1]
    np.testing.assert_array_equal(counts, (expected_items >= 0).sum(axis=1))
    _assert_same_ranking(items, scores, expected_items, expected_scores)
    candidates = run.train.n_items - run.train.row_lengths()[users]
    np.testing.assert_array_equal(survivors, np.ceil(np.round((1 - gammas[-1]) * candidates, 6)))
