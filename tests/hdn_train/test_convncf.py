import numpy as np
import pytest
import torch
from torch import nn

from hdn_train.bpr import bpr_loss, bpr_triples, fit_bpr
from hdn_train.interactions import InteractionMatrix
from hdn_train.models.baselines import MatrixFactorization
from hdn_train.models.convncf import ConvNCF
from hdn_train.teachers import FitOptions

USERS_PER_GROUP = 8
ITEMS_PER_GROUP = 12
HELD_OUT_PER_USER = 4


def two_group_data(seed: int = 0) -> tuple[InteractionMatrix, InteractionMatrix]:
    """Return (train, held_out) where users 0-7 like items 0-11 and users 8-15 like items 12-23.

    Each user trains on 8 of its group's 12 items, and the other 4 are held out. A model that learns
    the groups ranks every held-out item above every item of the other group.
    """
    rng = np.random.default_rng(seed)
    train_users, train_items, held_users, held_items = [], [], [], []
    for group in range(2):
        group_items = np.arange(group * ITEMS_PER_GROUP, (group + 1) * ITEMS_PER_GROUP)
        for user in range(group * USERS_PER_GROUP, (group + 1) * USERS_PER_GROUP):
            shuffled = rng.permutation(group_items)
            held_users += [user] * HELD_OUT_PER_USER
            held_items += list(shuffled[:HELD_OUT_PER_USER])
            train_users += [user] * (ITEMS_PER_GROUP - HELD_OUT_PER_USER)
            train_items += list(shuffled[HELD_OUT_PER_USER:])
    shape = (2 * USERS_PER_GROUP, 2 * ITEMS_PER_GROUP)
    train = InteractionMatrix.from_pairs(np.array(train_users), np.array(train_items), *shape)
    held_out = InteractionMatrix.from_pairs(np.array(held_users), np.array(held_items), *shape)
    return train, held_out


def held_out_auc(model: nn.Module, held_out: InteractionMatrix) -> float:
    """Return the mean over users of the share of (held-out, other-group) item pairs in order."""
    scores = model.score_all(torch.arange(held_out.n_users)).numpy()
    shares = []
    for user in range(held_out.n_users):
        group = user // USERS_PER_GROUP
        other_group = np.arange(ITEMS_PER_GROUP) + (1 - group) * ITEMS_PER_GROUP
        preferred = scores[user, held_out.items_of(user)]
        shares.append((preferred[:, None] > scores[user, other_group][None, :]).mean())
    return float(np.mean(shares))


# ----------------------------------------------------------------------------- ConvNCF


def test_convncf_forward_shape():
    torch.manual_seed(0)
    model = ConvNCF(5, 7, dim=8, channels=4)
    logits = model(torch.tensor([0, 4, 2]), torch.tensor([6, 0, 3]))
    assert logits.shape == (3,)
    assert logits.dtype == torch.float32


def test_convncf_interaction_map_is_outer_product():
    torch.manual_seed(0)
    model = ConvNCF(3, 4, dim=4, channels=2)
    interaction = model.interaction_map(torch.tensor([1]), torch.tensor([2]))
    expected = torch.outer(model.user_embedding.weight[1], model.item_embedding.weight[2])
    assert interaction.shape == (1, 1, 4, 4)
    torch.testing.assert_close(interaction[0, 0], expected)


def test_convncf_dim32_has_five_layers_down_to_1x1():
    model = ConvNCF(2, 3, dim=32, channels=32)
    assert len(model.conv_layers) == 5

    features = model.interaction_map(torch.tensor([0, 1]), torch.tensor([2, 0]))
    for layer in model.cnn:
        features = layer(features)
    assert features.shape == (2, 32, 1, 1)


def test_convncf_multiply_adds_per_pair():
    # Outer product 32 * 32, then convolutions on 16x16, 8x8, 4x4, 2x2 and 1x1 outputs with
    # 2x2 kernels, the first with 1 input channel, then the 32-wide output layer.
    convolutions = 4 * 32 * (16 * 16 * 1 + (8 * 8 + 4 * 4 + 2 * 2 + 1 * 1) * 32)
    expected = 32 * 32 + convolutions + 32
    assert ConvNCF(2, 3, dim=32, channels=32).multiply_adds_per_pair() == expected
    assert ConvNCF(2, 3, dim=2, channels=1).multiply_adds_per_pair() == 4 + 4 + 1


def test_convncf_score_all_matches_pairwise_forward():
    torch.manual_seed(0)
    model = ConvNCF(5, 9, dim=8, channels=4).eval()
    users = torch.tensor([0, 4, 2])
    full = model.score_all(users, item_batch=7)  # chunks cross user boundaries
    with torch.no_grad():
        pairwise = model(users.repeat_interleave(9), torch.arange(9).repeat(3)).view(3, 9)
    assert full.shape == (3, 9)
    torch.testing.assert_close(full, pairwise)


def test_convncf_score_all_no_users():
    model = ConvNCF(5, 9, dim=4, channels=2)
    assert model.score_all(torch.zeros(0, dtype=torch.int64)).shape == (0, 9)


def test_convncf_load_pretrained_embeddings_copies():
    torch.manual_seed(0)
    mf = MatrixFactorization(6, 10, dim=8)
    model = ConvNCF(6, 10, dim=8, channels=4)
    model.load_pretrained_embeddings(mf)
    torch.testing.assert_close(model.user_embedding.weight, mf.user_embedding.weight)
    torch.testing.assert_close(model.item_embedding.weight, mf.item_embedding.weight)

    # A copy, not shared storage: training one must not move the other.
    with torch.no_grad():
        mf.user_embedding.weight.add_(1.0)
    assert not torch.equal(model.user_embedding.weight, mf.user_embedding.weight)


def test_convncf_load_pretrained_rejects_other_dim():
    mf = MatrixFactorization(6, 10, dim=16)
    with pytest.raises(ValueError, match="dim=8"):
        ConvNCF(6, 10, dim=8, channels=4).load_pretrained_embeddings(mf)


@pytest.mark.parametrize("dim", [0, 1, 3, 12, 48])
def test_convncf_rejects_dim_not_power_of_two(dim):
    with pytest.raises(ValueError, match=f"power of two >= 2, got {dim}"):
        ConvNCF(2, 2, dim=dim)


def test_convncf_rejects_zero_channels():
    with pytest.raises(ValueError, match="channels must be >= 1"):
        ConvNCF(2, 2, dim=4, channels=0)


# ----------------------------------------------------------------------------- BPR


def test_bpr_triples_cover_positives_once():
    train, _ = two_group_data()
    users, positives, negatives = bpr_triples(train, np.random.default_rng(0))
    assert len(users) == train.nnz

    train_keys = set(zip(*train.to_pairs()))
    assert set(zip(users, positives)) == train_keys
    assert not train_keys & set(zip(users, negatives))


def test_bpr_loss_adds_embedding_penalty():
    torch.manual_seed(0)
    model = MatrixFactorization(4, 6, dim=3)
    users, positives, negatives = torch.tensor([0, 3]), torch.tensor([1, 2]), torch.tensor([5, 4])
    plain = bpr_loss(model, users, positives, negatives)
    penalised = bpr_loss(model, users, positives, negatives, weight_decay=0.5)

    user_vectors = model.user_embedding(users)
    norms = (
        user_vectors.pow(2).sum(-1)
        + model.item_embedding(positives).pow(2).sum(-1)
        + model.item_embedding(negatives).pow(2).sum(-1)
    )
    torch.testing.assert_close(penalised, plain + 0.5 * norms.mean())


def test_bpr_loss_weight_decay_needs_embeddings():
    class PairScorer(nn.Module):
        def forward(self, users, items):
            return (users + items).float()

    triple = torch.tensor([0]), torch.tensor([1]), torch.tensor([2])
    bpr_loss(PairScorer(), *triple)  # no penalty, no tables needed
    with pytest.raises(ValueError, match="user_embedding and item_embedding"):
        bpr_loss(PairScorer(), *triple, weight_decay=0.1)


@pytest.mark.parametrize(
    ("make_model", "learning_rate"),
    [
        (lambda: MatrixFactorization(16, 24, dim=8), 0.05),
        (lambda: ConvNCF(16, 24, dim=8, channels=8), 0.01),
    ],
    ids=["mf", "convncf"],
)
def test_fit_bpr_learns_two_groups(make_model, learning_rate):
    train, held_out = two_group_data()
    torch.manual_seed(0)
    model = make_model()
    options = FitOptions(epochs=20, batch_size=32, learning_rate=learning_rate)
    history = fit_bpr(model, train, options, np.random.default_rng(0), "bpr")

    assert [record["epoch"] for record in history] == list(range(1, 21))
    assert history[0]["loss"] > 0.6  # near log(2) while scores are still close to zero
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert held_out_auc(model, held_out) > 0.9
    assert not model.training


def test_fit_bpr_repeatable_with_same_seeds():
    train, _ = two_group_data()
    options = FitOptions(epochs=3, batch_size=32, learning_rate=0.01)
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        model = ConvNCF(16, 24, dim=4, channels=4)
        history = fit_bpr(model, train, options, np.random.default_rng(7), "bpr")
        runs.append((model.state_dict(), [record["loss"] for record in history]))

    (first_state, first_losses), (second_state, second_losses) = runs
    assert first_losses == second_losses
    for name, tensor in first_state.items():
        torch.testing.assert_close(tensor, second_state[name], rtol=0, atol=0)


def test_fit_bpr_reports_progress():
    train, _ = two_group_data()  # 128 positives, so 4 steps of 32 per epoch
    calls = []
    fit_bpr(
        MatrixFactorization(16, 24, dim=4),
        train,
        FitOptions(epochs=2, batch_size=32),
        np.random.default_rng(0),
        "mf-bpr",
        on_step=lambda phase, done, total: calls.append((phase, done, total)),
    )
    assert calls == [("mf-bpr", done, 8) for done in range(1, 9)]


def test_fit_bpr_rejects_negative_weight_decay():
    train, _ = two_group_data()
    with pytest.raises(ValueError, match="weight_decay must be >= 0, got -0.1"):
        fit_bpr(
            MatrixFactorization(16, 24),
            train,
            FitOptions(epochs=1),
            np.random.default_rng(0),
            "mf",
            weight_decay=-0.1,
        )


def test_fit_bpr_rejects_empty_train():
    empty = InteractionMatrix.from_pairs(np.zeros(0), np.zeros(0), 3, 4)
    with pytest.raises(ValueError, match="no interactions"):
        fit_bpr(
            MatrixFactorization(3, 4), empty, FitOptions(epochs=1), np.random.default_rng(0), "mf"
        )
