import numpy as np
import onnxruntime
import pytest
import torch

from hdn_export.teacher import (
    ITEMS_INPUT,
    USERS_INPUT,
    export_teacher_model_onnx,
    teacher_multiply_adds_per_pair,
)
from hdn_train.models.convncf import ConvNCF
from hdn_train.models.neumf import NeuMF


@pytest.mark.parametrize(
    ("kind", "make_model"),
    [
        ("neumf", lambda: NeuMF(30, 40, dim=8, mlp_layers=(16, 8, 4))),
        ("convncf", lambda: ConvNCF(30, 40, dim=8)),
    ],
)
def test_exported_teacher_matches_pytorch(kind, make_model, tmp_path):
    torch.manual_seed(0)
    model = make_model().eval()
    export = export_teacher_model_onnx(model, kind, tmp_path / f"{kind}.onnx")
    session = onnxruntime.InferenceSession(str(export.path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 500)
    items = rng.integers(0, 40, 500)

    (scores,) = session.run(None, {USERS_INPUT: users, ITEMS_INPUT: items})
    with torch.no_grad():
        expected = model(torch.from_numpy(users), torch.from_numpy(items)).numpy()

    assert scores.shape == (500,)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-5)
    assert export.multiply_adds_per_pair == teacher_multiply_adds_per_pair(model)


def test_exported_teacher_scores_an_empty_batch(tmp_path):
    model = NeuMF(30, 40, dim=8, mlp_layers=(16, 8, 4)).eval()
    export = export_teacher_model_onnx(model, "neumf", tmp_path / "neumf.onnx")
    session = onnxruntime.InferenceSession(str(export.path), providers=["CPUExecutionProvider"])
    empty = np.zeros(0, dtype=np.int64)

    (scores,) = session.run(None, {USERS_INPUT: empty, ITEMS_INPUT: empty})

    assert scores.shape == (0,)


def test_stage_modules_match_the_student():
    from hdn_export.stages import split_stages
    from hdn_train.models.hdn import HDN

    torch.manual_seed(0)
    student = HDN(10, 12, dim=8, hidden_dim=6, num_decisions=2).eval()
    users = torch.arange(10).repeat_interleave(12)
    items = torch.arange(12).repeat(10)
    user_emb, item_emb = student.user_embedding(users), student.item_embedding(items)

    with torch.no_grad():
        decisions, scores = student.forward_embeddings(user_emb, item_emb)
        (_, first), (_, second), (_, score) = split_stages(student)
        decision_1, hidden_1 = first(user_emb, item_emb)
        decision_2, hidden_2 = second(user_emb, item_emb, hidden_1)
        stage_scores = score(user_emb, item_emb, hidden_2)

    torch.testing.assert_close(decision_1, decisions[:, 0])
    torch.testing.assert_close(decision_2, decisions[:, 1])
    torch.testing.assert_close(stage_scores, scores)
