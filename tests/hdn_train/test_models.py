import numpy as np
import pytest
import torch

from hdn_train.interactions import InteractionMatrix
from hdn_train.models.baselines import MatrixFactorization, PopRank
from hdn_train.models.hdn import HDN
from hdn_train.models.neumf import GMF, MLP, NeuMF


def test_poprank_scores_are_train_counts():
    train = InteractionMatrix.from_pairs(np.array([0, 1, 1, 2]), np.array([2, 2, 0, 2]), 3, 4)
    scores = PopRank(train).score_users(np.array([0, 2]))
    assert scores.shape == (2, 4)
    np.testing.assert_array_equal(scores[0], [1, 0, 3, 0])
    np.testing.assert_array_equal(scores[1], scores[0])


def test_mf_score_all_matches_pairwise_forward():
    torch.manual_seed(0)
    model = MatrixFactorization(5, 7, dim=4)
    users = torch.tensor([1, 3])
    full = model.score_all(users)
    pairwise = model(users.repeat_interleave(7), torch.arange(7).repeat(2)).view(2, 7)
    torch.testing.assert_close(full, pairwise.detach())


def test_neumf_score_all_matches_pairwise_forward():
    torch.manual_seed(0)
    model = NeuMF(5, 9, dim=4, mlp_layers=(8, 4, 2)).eval()
    users = torch.tensor([0, 4, 2])
    full = model.score_all(users, item_batch=10)  # forces several chunks
    with torch.no_grad():
        pairwise = model(users.repeat_interleave(9), torch.arange(9).repeat(3)).view(3, 9)
    torch.testing.assert_close(full, pairwise)


def test_neumf_pretrained_blend_is_weighted_sum_of_branches():
    torch.manual_seed(0)
    gmf, mlp = GMF(4, 6, 4), MLP(4, 6, (8, 4))
    model = NeuMF(4, 6, dim=4, mlp_layers=(8, 4))
    model.load_pretrained(gmf, mlp, alpha=0.5)
    users, items = torch.tensor([0, 1, 3]), torch.tensor([5, 2, 0])
    with torch.no_grad():
        expected = 0.5 * gmf(users, items) + 0.5 * mlp(users, items)
        actual = model(users, items)
    torch.testing.assert_close(actual, expected)


def test_mlp_rejects_odd_input_width():
    with pytest.raises(ValueError, match="even input width"):
        MLP(3, 3, (7, 4))


def test_hdn_first_decision_is_inner_product():
    torch.manual_seed(0)
    model = HDN(6, 10, dim=4, hidden_dim=3, num_decisions=3)
    decisions, _ = model.score_all(torch.arange(6))
    theta = model.decisions[0].decision.weight.detach()[0]  # (d,)
    user_side = model.user_embedding.weight.detach() * theta  # (U, d)
    expected = user_side @ model.item_embedding.weight.detach().T
    torch.testing.assert_close(decisions[..., 0], expected, rtol=1e-5, atol=1e-6)


def test_hdn_shapes_and_chunked_score_all():
    torch.manual_seed(0)
    model = HDN(5, 11, dim=4, hidden_dim=6, num_decisions=2)
    decisions, scores = model(torch.tensor([0, 1, 2]), torch.tensor([3, 4, 10]))
    assert decisions.shape == (3, 2)
    assert scores.shape == (3,)
    full_decisions, full_scores = model.score_all(torch.arange(5), item_batch=12)
    assert full_decisions.shape == (5, 11, 2)
    torch.testing.assert_close(full_scores[1, 4], scores[1].detach())


def test_hdn_needs_one_decision_module():
    with pytest.raises(ValueError, match="num_decisions"):
        HDN(2, 2, num_decisions=0)
