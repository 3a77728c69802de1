"""Manifest reading: validation of every key, file presence and checksums."""

from __future__ import annotations

import onnx
import pytest
from model_factory import read_manifest_json, refresh_checksums, write_manifest

from hdn_runtime import ModelFormatError, Recommender
from hdn_runtime.manifest import read_manifest


def test_reads_valid_manifest(synthetic_model):
    model_dir, model = synthetic_model
    manifest = read_manifest(model_dir)

    assert manifest.format_version == 1
    assert manifest.num_users == model.num_users
    assert manifest.num_items == model.num_items
    assert manifest.embedding_dim == 8
    assert manifest.hidden_dim == 8
    assert manifest.rejection_ratios == (0.5, 0.75, 0.875)
    assert [stage.name for stage in manifest.stages] == [
        "decision_1",
        "decision_2",
        "decision_3",
        "score",
    ]
    assert manifest.score_stage.inputs == ("user_emb", "item_emb", "hidden_in")
    assert manifest.decision_stages[0].inputs == ("user_emb", "item_emb")
    assert manifest.files["tables"].path == model_dir / "tables.safetensors"


def test_missing_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_manifest(tmp_path / "absent")


def test_missing_manifest_raises(model_dir_copy):
    (model_dir_copy / "manifest.json").unlink()

    with pytest.raises(ModelFormatError, match="manifest.json is missing.*hdn export"):
        Recommender.load(model_dir_copy)


def test_invalid_json_raises(model_dir_copy):
    (model_dir_copy / "manifest.json").write_text("{not json")

    with pytest.raises(ModelFormatError, match="not valid JSON"):
        read_manifest(model_dir_copy)


@pytest.mark.parametrize(
    "relative_path", ["tables.safetensors", "stages/decision_2.onnx", "item_ids.json"]
)
def test_tampered_file_fails_checksum(model_dir_copy, relative_path):
    tampered = model_dir_copy / relative_path
    content = bytearray(tampered.read_bytes())
    content[-1] ^= 0x01
    tampered.write_bytes(bytes(content))

    with pytest.raises(ModelFormatError, match="Checksum mismatch") as caught:
        Recommender.load(model_dir_copy)

    assert relative_path.split("/")[-1] in str(caught.value)
    assert "hdn export" in str(caught.value)


def test_checksums_can_be_skipped(model_dir_copy):
    ids_path = model_dir_copy / "user_ids.json"
    ids_path.write_text(ids_path.read_text() + " ")

    manifest = read_manifest(model_dir_copy, verify_checksums=False)

    assert manifest.num_users == 12


def test_missing_listed_file_raises(model_dir_copy):
    (model_dir_copy / "stages" / "score.onnx").unlink()

    with pytest.raises(ModelFormatError, match=r"score\.onnx is listed .* but does not exist"):
        read_manifest(model_dir_copy)


def test_unsupported_format_version(model_dir_copy):
    manifest = read_manifest_json(model_dir_copy)
    manifest["format_version"] = 2
    write_manifest(model_dir_copy, manifest)

    with pytest.raises(ModelFormatError, match="format_version 2.*reads only \\[1\\]"):
        read_manifest(model_dir_copy)


def _edit_manifest(model_dir, edit):
    manifest = read_manifest_json(model_dir)
    edit(manifest)
    write_manifest(model_dir, manifest)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.pop("gammas"), "required keys are missing: gammas"),
        (lambda m: m.update(format="onnx"), "'format' is 'onnx'"),
        (lambda m: m.update(num_items=0), "'num_items' is 0"),
        (lambda m: m.update(embedding_dim=True), "'embedding_dim' is True"),
        (lambda m: m.update(hdn_version=1), "'hdn_version' is 1"),
        (lambda m: m.update(source_run=5), "'source_run' is 5"),
        (lambda m: m.update(gammas=[0.5, 0.75]), "expected a list of 3 rejection ratios"),
        (lambda m: m.update(gammas=[0.5, 1.0, 0.875]), "must be in \\[0, 1\\)"),
        (lambda m: m.update(gammas=[0.75, 0.5, 0.875]), "must be non-decreasing"),
        (lambda m: m["stages"].reverse(), "stages\\[0\\].name is 'score'"),
        (lambda m: m["stages"][1].update(kind="score"), "stages\\[1\\].kind is 'score'"),
        (lambda m: m["stages"][0]["inputs"].append("hidden_in"), "stages\\[0\\].inputs"),
        (lambda m: m["stages"][3].update(outputs=["logit"]), "stages\\[3\\].outputs"),
        (lambda m: m.update(stages=m["stages"][-1:]), "at least one decision stage"),
        (lambda m: m["files"].pop("item_ids"), "'files.item_ids' is missing"),
        (lambda m: m["files"]["tables"].update(sha256="abc"), "expected 64 hex digits"),
        (lambda m: m["files"]["tables"].update(path="../tables.safetensors"), "outside the"),
        (lambda m: m["files"]["tables"].update(path="/etc/hostname"), "outside the"),
    ],
)
def test_invalid_manifest_content(model_dir_copy, edit, message):
    _edit_manifest(model_dir_copy, edit)

    with pytest.raises(ModelFormatError, match=message) as caught:
        read_manifest(model_dir_copy)

    assert "hdn export" in str(caught.value)


def test_renamed_stage_tensor_fails_signature_check(model_dir_copy):
    # The manifest still lists "decision", but the stage file now has another output.
    stage_path = model_dir_copy / "stages" / "decision_1.onnx"
    stage = onnx.load(str(stage_path))
    for node in stage.graph.node:
        node.output[:] = ["reject" if name == "decision" else name for name in node.output]
    stage.graph.output[0].name = "reject"
    onnx.save(stage, str(stage_path))
    refresh_checksums(model_dir_copy)

    with pytest.raises(ModelFormatError, match="has outputs \\['hidden', 'reject'\\]"):
        Recommender.load(model_dir_copy)


def test_hidden_dim_mismatch_fails_signature_check(model_dir_copy):
    _edit_manifest(model_dir_copy, lambda m: m.update(hidden_dim=16))

    with pytest.raises(
        ModelFormatError, match="Tensor 'hidden' .* expected float32 and \\(None, 16\\)"
    ):
        Recommender.load(model_dir_copy)
