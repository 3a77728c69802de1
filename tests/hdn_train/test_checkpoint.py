import json
import os
import stat

import pytest

from hdn_train import checkpoint


def test_overwrite_refuses_foreign_directory(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not an hdn-run directory"):
        with checkpoint.staged_directory(target, overwrite=True):
            pass
    assert (target / "notes.txt").read_text() == "keep me"


def test_overwrite_refuses_other_format(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "manifest.json").write_text(json.dumps({"format": "hdn-model"}))
    with pytest.raises(FileExistsError, match="not an hdn-run directory"):
        checkpoint.check_output_directory(target, True, checkpoint.RUN_FORMAT)


def test_overwrite_replaces_same_format(tmp_path):
    target = tmp_path / "run"
    target.mkdir()
    (target / "manifest.json").write_text(json.dumps({"format": "hdn-run"}))
    with checkpoint.staged_directory(target, overwrite=True) as staging:
        (staging / "new.txt").write_text("new")
    assert (target / "new.txt").is_file()
    assert not (target / "manifest.json").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["run"]


def test_output_cannot_be_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileExistsError, match="current directory"):
        checkpoint.check_output_directory(".", True, checkpoint.RUN_FORMAT)


def test_output_under_a_file_fails_early(tmp_path):
    data_file = tmp_path / "data.csv"
    data_file.write_text("user_id,item_id\n")
    with pytest.raises(NotADirectoryError, match="data.csv is a file"):
        checkpoint.check_output_directory(data_file / "run", False, checkpoint.RUN_FORMAT)


def test_failed_build_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with checkpoint.staged_directory(tmp_path / "run") as staging:
            (staging / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_outputs_are_readable_by_others(tmp_path):
    old_mask = os.umask(0o022)
    try:
        with checkpoint.staged_directory(tmp_path / "run") as staging:
            checkpoint.write_json(staging / "config.json", {"a": 1})
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "run" / "config.json").stat().st_mode) == 0o644


def test_read_json_names_file_and_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(ValueError, match=r"broken.json is not valid JSON \(line 3"):
        checkpoint.read_json(path)


def test_load_weights_names_unreadable_file(tmp_path):
    import torch

    path = tmp_path / "teacher.safetensors"
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable safetensors file") as info:
        checkpoint.load_weights(path, torch.nn.Linear(2, 1))
    assert str(path) in str(info.value)
    assert "Delete it" in str(info.value)
