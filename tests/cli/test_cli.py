"""End-to-end tests of the `hdn` commands through Typer's CliRunner, on the synthetic data set."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

# Under pytest's default "prepend" import mode, tests/ is on sys.path for tests/conftest.py.
# tests/cli and tests/hdn_runtime would then be imported as namespace packages in place of the
# real `cli` and `hdn_runtime`, because the editable install finds packages only after sys.path.
# Putting the repository root first makes the real packages win.
# NOTE: redundant under --import-mode=importlib or with pythonpath = ["."] in pyproject.toml.
_REPO_ROOT = str(Path(__file__).resolve().parents[2])
if sys.path[0] != _REPO_ROOT:
    sys.path.insert(0, _REPO_ROOT)

from cli.main import NOISY_LOGGERS, app  # noqa: E402

# Rich sizes its tables from COLUMNS. A wide console keeps every table row on one line, so the
# tests can parse it. HDN_DEBUG is unset so that errors print one line instead of a traceback.
RUNNER = CliRunner(env={"COLUMNS": "200", "HDN_DEBUG": None})

TINY_TRAIN_OPTIONS = (
    "--dim",
    "8",
    "--mf-epochs",
    "1",
    "--pretrain-epochs",
    "1",
    "--teacher-epochs",
    "1",
    "--student-epochs",
    "1",
    "--batch-size",
    "64",
)
MODEL_KEYS = ("poprank", "mf", "neumf", "hdn")
METRIC_KEYS = ("ndcg@20", "hr@20", "recall@20", "ndcg@10")
RUN_FILES = ("config.json", "metrics.json", "manifest.json")


def invoke(*args: object) -> Result:
    return RUNNER.invoke(app, [str(arg) for arg in args])


def table_rows(output: str) -> list[list[str]]:
    """Return the stripped cells of every body row of the Rich tables in `output`."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.strip().startswith("│")
    ]


def table_header(output: str) -> list[str]:
    """Return the stripped column names of the first Rich table in `output`."""
    for line in output.splitlines():
        if line.strip().startswith("┃"):
            return [cell.strip() for cell in line.strip().strip("┃").split("┃")]
    raise AssertionError(f"no table header in the output:\n{output}")


def assert_reported_error(result: Result) -> None:
    """Assert that a command failed with exit code 1 and an 'Error:' message, not a traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Error: " in result.stderr, result.output
    assert "Traceback" not in result.output


@pytest.fixture(autouse=True)
def _restore_logging():
    # Every command calls logging.basicConfig(force=True) with a handler on the runner's stderr,
    # which is closed after the call. Restoring the root logger keeps later tests unaffected.
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    noisy_levels = {name: logging.getLogger(name).level for name in NOISY_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, noisy_level in noisy_levels.items():
        logging.getLogger(name).setLevel(noisy_level)


# ----------------------------------------------------------------------------- hdn train


@pytest.fixture(scope="module")
def cli_train(synthetic_csv, tmp_path_factory) -> tuple[Result, Path]:
    """The result of one small `hdn train` on the synthetic CSV, and its run directory."""
    run_dir = tmp_path_factory.mktemp("cli_runs") / "run"
    result = invoke("train", "--data", synthetic_csv, "--out", run_dir, *TINY_TRAIN_OPTIONS)
    return result, run_dir


def test_train_exits_zero(cli_train):
    result, _ = cli_train
    assert result.exit_code == 0, result.output


def test_train_writes_run_files(cli_train):
    _, run_dir = cli_train
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name


def test_train_config_records_options(cli_train):
    _, run_dir = cli_train
    config = json.loads((run_dir / "config.json").read_text())
    assert config["dim"] == 8
    assert config["batch_size"] == 64
    assert config["student_epochs"] == 1


def test_train_metrics_keys(cli_train):
    _, run_dir = cli_train
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for model in MODEL_KEYS:
        assert model in metrics, model
        for key in METRIC_KEYS:
            assert key in metrics[model], f"{model}: {key}"


def test_train_rejection_entries(cli_train):
    _, run_dir = cli_train
    rejection = json.loads((run_dir / "metrics.json").read_text())["hdn"]["rejection"]
    assert len(rejection) == 3  # one entry per default gamma: 0.5, 0.75, 0.875
    for entry in rejection:
        assert "target" in entry, entry
        assert "actual" in entry, entry


def test_train_prints_metrics_table(cli_train):
    result, _ = cli_train
    assert "Full-ranking metrics on the test split" in result.stdout
    assert "ndcg@20" in table_header(result.stdout)
    labels = {row[0] for row in table_rows(result.stdout)}
    assert {"PopRank", "MF", "NeuMF (teacher)", "HDN"} <= labels, labels


def test_train_existing_out(synthetic_csv, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    result = invoke("train", "--data", synthetic_csv, "--out", run_dir, *TINY_TRAIN_OPTIONS)
    assert_reported_error(result)
    assert str(run_dir) in result.stderr
    assert "--overwrite" in result.stderr


def test_train_missing_data(tmp_path):
    data = tmp_path / "missing.csv"
    result = invoke("train", "--data", data, "--out", tmp_path / "run", *TINY_TRAIN_OPTIONS)
    assert_reported_error(result)
    assert str(data) in result.stderr
    assert not (tmp_path / "run").exists()


def test_train_empty_data(tmp_path):
    data = tmp_path / "empty.csv"
    data.write_text("")
    result = invoke("train", "--data", data, "--out", tmp_path / "run", *TINY_TRAIN_OPTIONS)
    assert_reported_error(result)
    assert str(data) in result.stderr
    assert "empty" in result.stderr


def test_train_malformed_u_data(tmp_path):
    data = tmp_path / "u.data"
    data.write_text("1\t10\t5\t881250949\n2\t20\t4\t881250950\n3\t30\n4\t40\t3\t881250951\n")
    result = invoke("train", "--data", data, "--out", tmp_path / "run", *TINY_TRAIN_OPTIONS)
    assert_reported_error(result)
    assert "u.data" in result.stderr
    assert "line 3" in result.stderr


def test_train_csv_without_item_column(tmp_path):
    data = tmp_path / "no_items.csv"
    data.write_text("user_id,product\nu0,i0\nu1,i1\n")
    result = invoke("train", "--data", data, "--out", tmp_path / "run", *TINY_TRAIN_OPTIONS)
    assert_reported_error(result)
    assert str(data) in result.stderr
    assert "'item_id'" in result.stderr


# ----------------------------------------------------------------------------- hdn evaluate


def test_evaluate_prints_model_rows(trained_run):
    _, run_dir = trained_run
    result = invoke("evaluate", run_dir)
    assert result.exit_code == 0, result.output
    labels = {row[0] for row in table_rows(result.stdout)}
    for label in ("PopRank", "MF", "NeuMF (teacher)", "HDN"):
        assert label in labels, labels


def test_evaluate_prints_both_cutoffs(trained_run):
    _, run_dir = trained_run
    result = invoke("evaluate", run_dir)
    header = table_header(result.stdout)
    for column in ("ndcg@10", "hr@10", "recall@10", "ndcg@20", "hr@20", "recall@20"):
        assert column in header, header


def test_evaluate_matches_metrics_json(trained_run):
    _, run_dir = trained_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    result = invoke("evaluate", run_dir)
    header = table_header(result.stdout)
    rows = {row[0]: row for row in table_rows(result.stdout)}
    column = header.index("ndcg@20")
    assert rows["PopRank"][column] == f"{metrics['poprank']['ndcg@20']:.4f}"
    assert rows["HDN"][column] == f"{metrics['hdn']['ndcg@20']:.4f}"


def test_evaluate_missing_run(tmp_path):
    run_dir = tmp_path / "no_such_run"
    result = invoke("evaluate", run_dir)
    assert_reported_error(result)
    assert str(run_dir) in result.stderr


# ----------------------------------------------------------------------------- hdn export


@pytest.fixture(scope="module")
def cli_export(trained_run, tmp_path_factory) -> tuple[Result, Path]:
    """The result of `hdn export --format onnx` on the session run, and its model directory."""
    _, run_dir = trained_run
    model_dir = tmp_path_factory.mktemp("cli_models") / "model"
    result = invoke("export", run_dir, "--format", "onnx", "--out", model_dir, "--verify-users", 4)
    return result, model_dir


def test_export_exits_zero(cli_export):
    result, _ = cli_export
    assert result.exit_code == 0, result.output


def test_export_writes_stages(cli_export):
    _, model_dir = cli_export
    manifest = json.loads((model_dir / "manifest.json").read_text())
    stage_files = sorted(path.name for path in (model_dir / "stages").glob("*.onnx"))
    manifest_files = sorted(Path(stage["path"]).name for stage in manifest["stages"])
    assert stage_files, f"no ONNX files in {model_dir / 'stages'}"
    assert stage_files == manifest_files


def test_export_prints_parity_table(cli_export):
    result, _ = cli_export
    stages = {row[0] for row in table_rows(result.stdout)}
    assert "score" in stages, result.stdout
    assert "decision_1" in stages, result.stdout


def test_export_existing_out(cli_export, trained_run):
    _, run_dir = trained_run
    _, model_dir = cli_export
    result = invoke("export", run_dir, "--format", "onnx", "--out", model_dir)
    assert_reported_error(result)
    assert str(model_dir) in result.stderr


def test_export_trt_unavailable(trained_run, tmp_path):
    _, run_dir = trained_run
    model_dir = tmp_path / "model"
    result = invoke("export", run_dir, "--format", "trt", "--out", model_dir)
    assert_reported_error(result)
    assert "--format trt" in result.stderr
    assert "--format onnx" in result.stderr
    assert not model_dir.exists()


def test_export_unknown_format(trained_run, tmp_path):
    _, run_dir = trained_run
    model_dir = tmp_path / "model"
    result = invoke("export", run_dir, "--format", "xyz", "--out", model_dir)
    assert_reported_error(result)
    assert "'xyz'" in result.stderr
    assert not model_dir.exists()


# ----------------------------------------------------------------------------- hdn recommend


def model_ids(model_dir: Path) -> tuple[list[str], list[str]]:
    """Return the external user ids and item ids of a model directory."""
    user_ids = json.loads((model_dir / "user_ids.json").read_text())
    item_ids = json.loads((model_dir / "item_ids.json").read_text())
    return user_ids, item_ids


def test_recommend_known_user(exported_model):
    user_ids, item_ids = model_ids(exported_model)
    result = invoke("recommend", exported_model, "--user", user_ids[0], "--k", 5)
    assert result.exit_code == 0, result.output
    assert f"user {user_ids[0]}" in result.stdout
    rows = table_rows(result.stdout)
    assert len(rows) <= 5, rows
    assert [row[0] for row in rows] == [str(rank) for rank in range(1, len(rows) + 1)]
    for _, item, _ in rows:
        assert item in item_ids, item


def test_recommend_quota_rule(exported_model):
    # The quota rule keeps ceil((1 - 0.875) * 40) = 5 of the 40 items at the last decision
    # stage, whatever the weights, so with seen items allowed k = 5 fills every row. The sign
    # rule gives no such bound, and the tiny session model can reject every item under it.
    user_ids, item_ids = model_ids(exported_model)
    assert len(item_ids) == 40
    result = invoke(
        "recommend",
        exported_model,
        "--user",
        user_ids[0],
        "--k",
        5,
        "--rule",
        "quota",
        "--include-seen",
    )
    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    assert len(rows) == 5, rows
    for _, item, _ in rows:
        assert item in item_ids, item


def test_recommend_unknown_user(exported_model):
    result = invoke("recommend", exported_model, "--user", "nobody", "--k", 5)
    assert_reported_error(result)
    assert "'nobody'" in result.stderr
    assert "popular" in result.stderr


# NOTE: the message comes from Recommender.recommend and names its Python argument
# unknown_users='popular', which a command-line user cannot pass.
def test_recommend_unknown_user_hint(exported_model):
    result = invoke("recommend", exported_model, "--user", "nobody", "--k", 5)
    assert "--popular-fallback" in result.stderr


def test_recommend_popular_fallback(exported_model):
    _, item_ids = model_ids(exported_model)
    result = invoke("recommend", exported_model, "--user", "nobody", "--k", 5, "--popular-fallback")
    assert result.exit_code == 0, result.output
    # Rich wraps a title wider than its table, so compare with whitespace collapsed.
    assert "user nobody (popularity fallback)" in " ".join(result.stdout.split())
    rows = table_rows(result.stdout)
    assert len(rows) == 5, rows
    for _, item, _ in rows:
        assert item in item_ids, item


def test_recommend_zero_k(exported_model):
    user_ids, _ = model_ids(exported_model)
    result = invoke("recommend", exported_model, "--user", user_ids[0], "--k", 0)
    assert_reported_error(result)
    assert "positive" in result.stderr


def test_recommend_k_above_catalogue(exported_model):
    user_ids, item_ids = model_ids(exported_model)
    k = len(item_ids) + 1
    result = invoke("recommend", exported_model, "--user", user_ids[0], "--k", k)
    assert_reported_error(result)
    assert str(k) in result.stderr
    assert str(len(item_ids)) in result.stderr
