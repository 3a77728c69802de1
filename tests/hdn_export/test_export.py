import json

import numpy as np
import onnx
import pytest

import hdn_export.verify as verify
from hdn_export.onnx import export_onnx
from hdn_runtime.errors import ParityError


def test_export_writes_one_model_per_stage(exported_model):
    manifest = json.loads((exported_model / "manifest.json").read_text())
    names = [stage["name"] for stage in manifest["stages"]]
    assert names == ["decision_1", "decision_2", "decision_3", "score"]
    for stage in manifest["stages"]:
        assert (exported_model / stage["path"]).is_file()
    assert manifest["format"] == "hdn-model"
    assert manifest["format_version"] == 1
    assert manifest["gammas"] == [0.5, 0.75, 0.875]


def test_exported_stages_have_dynamic_batch_axis(exported_model):
    model = onnx.load(exported_model / "stages" / "decision_2.onnx")
    for value in list(model.graph.input) + list(model.graph.output):
        first_axis = value.type.tensor_type.shape.dim[0]
        assert first_axis.dim_param, f"{value.name} has a fixed batch size"
    assert [value.name for value in model.graph.input] == ["user_emb", "item_emb", "hidden_in"]
    assert [value.name for value in model.graph.output] == ["decision", "hidden"]


def test_export_records_parity_within_tolerance(exported_model):
    parity = json.loads((exported_model / "manifest.json").read_text())["parity"]
    for stage, report in parity.items():
        assert report["max_abs_diff"] < 1e-4, stage
        assert report["pairs"] > 0


def test_export_rejects_existing_directory(trained_run, exported_model):
    _, run_dir = trained_run
    with pytest.raises(FileExistsError, match="already exists"):
        export_onnx(run_dir, exported_model)


def test_export_fails_loudly_on_mismatch(trained_run, tmp_path, monkeypatch):
    _, run_dir = trained_run
    # A negative tolerance turns every output into a mismatch, as a broken export would.
    monkeypatch.setattr(verify, "ABSOLUTE_TOLERANCE", -1.0)
    with pytest.raises(ParityError, match="differs from PyTorch") as caught:
        export_onnx(run_dir, tmp_path / "model")
    assert "decision_1.decision" in caught.value.max_abs_diff
    assert not (tmp_path / "model").exists()
    assert list(tmp_path.iterdir()) == []


def test_export_tables_match_run(trained_run, exported_model):
    from safetensors.numpy import load_file

    run, _ = trained_run
    tables = load_file(str(exported_model / "tables.safetensors"))
    np.testing.assert_array_equal(tables["seen_indices"], run.train.indices)
    np.testing.assert_allclose(
        tables["item_embedding"], run.student.item_embedding.weight.detach().numpy()
    )
    assert json.loads((exported_model / "item_ids.json").read_text()) == run.dataset.item_ids


def test_export_needs_verify_users(trained_run, tmp_path):
    _, run_dir = trained_run
    with pytest.raises(ValueError, match="--verify-users must be at least 1, got 0"):
        export_onnx(run_dir, tmp_path / "model", verify_users=0)
    assert not (tmp_path / "model").exists()


def test_runtime_names_training_run(trained_run):
    from hdn_runtime import ModelFormatError, Recommender

    _, run_dir = trained_run
    with pytest.raises(ModelFormatError, match="is a training run directory"):
        Recommender.load(run_dir)
