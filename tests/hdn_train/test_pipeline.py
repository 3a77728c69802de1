import json

import numpy as np
import pytest
import torch

from hdn_train.config import TrainConfig
from hdn_train.pipeline import load_run, train_all, write_run


def test_run_directory_round_trip(trained_run):
    run, run_dir = trained_run
    loaded = load_run(run_dir)
    assert loaded.user_ids == run.dataset.user_ids
    assert loaded.item_ids == run.dataset.item_ids
    np.testing.assert_array_equal(loaded.train.indices, run.train.indices)
    np.testing.assert_array_equal(loaded.test.indptr, run.test.indptr)
    for name, tensor in run.student.state_dict().items():
        torch.testing.assert_close(loaded.student.state_dict()[name], tensor)


def test_metrics_name_every_model_and_rejection(trained_run):
    _, run_dir = trained_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for model in ("poprank", "mf", "neumf", "hdn"):
        for key in ("ndcg@10", "hr@10", "recall@10", "ndcg@20", "hr@20", "recall@20"):
            assert 0.0 <= metrics[model][key] <= 1.0, (model, key)
    rejection = metrics["hdn"]["rejection"]
    assert [entry["target"] for entry in rejection] == [0.5, 0.75, 0.875]
    for entry in rejection:
        assert abs(entry["actual"] - entry["target"]) < 0.1, entry
    assert metrics["hdn"]["ndcg@20"] > 0.0


def test_training_repeats_under_seed(synthetic_csv, tiny_epochs):
    config = TrainConfig(data=str(synthetic_csv), dim=4, hidden_dim=4, batch_size=64, **tiny_epochs)
    first, second = train_all(config), train_all(config)
    for name, tensor in first.student.state_dict().items():
        torch.testing.assert_close(second.student.state_dict()[name], tensor, rtol=0, atol=0)
    assert first.metrics["hdn"]["ndcg@20"] == second.metrics["hdn"]["ndcg@20"]


def test_write_run_rejects_existing_directory(trained_run):
    run, run_dir = trained_run
    with pytest.raises(FileExistsError, match="already exists"):
        write_run(run, run_dir)


def test_load_run_detects_changed_file(trained_run, tmp_path):
    run, _ = trained_run
    run_dir = write_run(run, tmp_path / "run")
    with open(run_dir / "metrics.json", "a") as handle:
        handle.write(" ")
    with pytest.raises(ValueError, match="metrics.json does not match the SHA-256"):
        load_run(run_dir)


def test_load_run_names_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="hdn train"):
        load_run(tmp_path / "absent")


def test_preset_split_needs_train_and_test_files(synthetic_csv, tiny_epochs):
    config = TrainConfig(data=str(synthetic_csv), split="preset", **tiny_epochs)
    with pytest.raises(ValueError, match="has no train/test files"):
        train_all(config)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"split": "random"}, "split must be"),
        ({"test_share": 1.0}, "test_share"),
        ({"student_epochs": 0}, "at least one epoch"),
        ({"gammas": ()}, "gammas"),
    ],
)
def test_config_rejects_bad_settings(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings)


@pytest.mark.parametrize("teacher", ["als", "convncf"])
def test_other_teachers_train_and_reload(synthetic_csv, tiny_epochs, teacher, tmp_path):
    config = TrainConfig(
        data=str(synthetic_csv),
        teacher=teacher,
        dim=8,
        hidden_dim=8,
        batch_size=64,
        convncf_pretrain_epochs=1,
        **tiny_epochs,
    )
    run = train_all(config)
    assert teacher in run.metrics
    assert "neumf" not in run.metrics
    loaded = load_run(write_run(run, tmp_path / "run"))
    users = np.arange(3)
    np.testing.assert_allclose(
        loaded.teacher.score_users(users), run.teacher.score_users(users), rtol=1e-6
    )


def test_extra_models_are_evaluated(synthetic_csv, tiny_epochs):
    extras = ("mf-student", "two-stage", "hdn-nd", "hdn-nr-", "hdn-nr-nd")
    config = TrainConfig(
        data=str(synthetic_csv),
        dim=8,
        hidden_dim=8,
        batch_size=64,
        extra_models=extras,
        **tiny_epochs,
    )
    metrics = train_all(config).metrics
    for name in extras:
        assert 0.0 <= metrics[name]["ndcg@20"] <= 1.0, name
    assert "hdn-nr" in metrics


def test_config_rejects_unknown_extra_model():
    with pytest.raises(ValueError, match="Unknown extra model 'hdn-xyz'"):
        TrainConfig(extra_models=("hdn-xyz",))


def test_load_run_rejects_model_directory(exported_model):
    with pytest.raises(ValueError, match="not a training run directory"):
        load_run(exported_model)


def test_load_run_rejects_manifest_without_files(trained_run, tmp_path):
    run, _ = trained_run
    run_dir = write_run(run, tmp_path / "run")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    del manifest["files"]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="no valid 'files' table"):
        load_run(run_dir)


@pytest.mark.parametrize("kind", ["als", "convncf"])
def test_teacher_scores_are_calibrated(synthetic_csv, kind):
    from hdn_train.data import load_dataset, paper_split
    from hdn_train.experiment import ExperimentConfig, Workspace
    from hdn_train.sampling import training_pairs

    data = load_dataset(str(synthetic_csv))
    train, test = paper_split(data.interactions, seed=0)
    config = ExperimentConfig(
        datasets=[str(synthetic_csv)],
        teachers=[kind],
        models=["hdn"],
        dim=8,
        convncf_pretrain_epochs=3,
        convncf_epochs=1,
    )
    workspace = Workspace(config, None, str(synthetic_csv), 0, (train, test))
    teacher, _ = workspace.teacher(kind)
    raw = teacher.score_users(np.arange(train.n_users))

    logits = workspace.teacher_scores(kind)

    assert not teacher.scores_are_logits

    # The map is monotone and affine, and sigmoid(logit) averages to the sampled share of
    # positives, 1 / (1 + negatives), as a logistic fit does on its own pairs.
    assert np.corrcoef(raw.ravel(), logits.ravel())[0, 1] > 0.999
    # Monotone per user: in the raw order the logits never decrease. Float32 rounding may turn
    # two close raw scores into equal logits, so argsort orders are not compared.
    order = np.argsort(raw, axis=1)
    assert np.all(np.diff(np.take_along_axis(logits, order, axis=1), axis=1) >= 0)
    users, items, _ = training_pairs(train, config.negatives, np.random.default_rng(9))
    mean_label = (1.0 / (1.0 + np.exp(-logits[users, items]))).mean()
    assert mean_label == pytest.approx(1.0 / (1.0 + config.negatives), abs=0.02)


def test_full_rejection_is_warned(caplog):
    from hdn_train.pipeline import warn_about_full_rejection

    rejection = [
        {"module": 1, "target": 0.5, "actual": 0.51},
        {"module": 2, "target": 0.75, "actual": 1.0},
    ]

    with caplog.at_level("WARNING", logger="hdn_train.pipeline"):
        found = warn_about_full_rejection(rejection, num_items=100)

    assert found
    assert "Decision module 2 rejects the whole catalogue" in caplog.text
    assert "Decision module 1" not in caplog.text


def test_partial_rejection_is_not_warned(caplog):
    from hdn_train.pipeline import warn_about_full_rejection

    with caplog.at_level("WARNING", logger="hdn_train.pipeline"):
        found = warn_about_full_rejection([{"module": 1, "target": 0.5, "actual": 0.99}], 100)

    assert not found
    assert caplog.text == ""


def test_mf_models_repeat_across_processes(synthetic_csv):
    # A new process starts torch from a random seed, so every model must seed torch itself
    # before drawing its initial weights. Different global seeds stand in for two processes.
    from hdn_train.data import load_dataset, paper_split
    from hdn_train.experiment import Cell, ExperimentConfig, Workspace, run_cell

    data = load_dataset(str(synthetic_csv))
    split = paper_split(data.interactions, seed=0)
    config = ExperimentConfig(
        datasets=[str(synthetic_csv)],
        models=["mf", "mf-student"],
        dim=8,
        mf_epochs=1,
        pretrain_epochs=1,
        neumf_epochs=1,
        student_epochs=1,
    )
    cell = Cell(str(synthetic_csv), "neumf", "mf-student", None, 0)
    weights, metrics = [], []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        workspace = Workspace(config, None, str(synthetic_csv), 0, split)
        weights.append(workspace.mf().item_embedding.weight.detach().clone())
        metrics.append(run_cell(workspace, cell)["metrics"])

    assert torch.equal(weights[0], weights[1])
    assert metrics[0] == metrics[1]
