"""Tests of `hdn experiment` through Typer's CliRunner, and of the example experiment files."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cli.main import NOISY_LOGGERS, app
from hdn_train.experiment import ExperimentConfig, grid_cells

# A wide console keeps every Rich table row on one line. HDN_DEBUG is unset so that errors print
# one line instead of a traceback.
RUNNER = CliRunner(env={"COLUMNS": "200", "HDN_DEBUG": None})
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "experiments"
EXAMPLE_FILES = (
    "ml1m_paper.toml",
    "ml1m_ablations.toml",
    "ml100k_paper.toml",
    "ml1m_loo.toml",
    "tradeoff_ml1m.toml",
)
ABLATIONS = {"hdn-nd", "hdn-nr", "hdn-nr-", "hdn-nr-nd"}
TINY_SETTINGS = """\
teachers = ["neumf"]
models = ["poprank", "mf", "teacher", "hdn"]
gamma_settings = [[0.5, 0.75, 0.875]]
seeds = [0]
dim = 8
hidden_dim = 8
mlp_layers = [16, 8]
batch_size = 64
learning_rate = 0.01
mf_epochs = 1
pretrain_epochs = 1
neumf_epochs = 1
student_epochs = 2
"""
NUM_CELLS = 4  # poprank, mf, teacher, hdn: one data set, teacher, gamma setting and seed


def invoke(*args: object) -> Result:
    return RUNNER.invoke(app, [str(arg) for arg in args])


def table_rows(output: str) -> list[list[str]]:
    """Return the stripped cells of every body row of the Rich tables in `output`."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.strip().startswith("│")
    ]


def assert_reported_error(result: Result) -> None:
    """Assert that a command failed with exit code 1 and an 'Error:' message, not a traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Error: " in result.stderr, result.output
    assert "Traceback" not in result.output


def write_config(path: Path, csv_path: Path, extra: str = "") -> Path:
    path.write_text(f"datasets = [{json.dumps(str(csv_path))}]\n" + TINY_SETTINGS + extra)
    return path


def cell_mtimes(directory: Path) -> dict[str, int]:
    return {path.name: path.stat().st_mtime_ns for path in (directory / "cells").glob("*.json")}


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


@pytest.fixture(scope="module")
def first_run(synthetic_csv, tmp_path_factory) -> tuple[Result, Path, Path]:
    """One `hdn experiment` run of the tiny grid: its result, config file and directory."""
    root = tmp_path_factory.mktemp("cli_experiment")
    config = write_config(root / "tiny.toml", synthetic_csv)
    out = root / "experiment"
    result = invoke("experiment", config, "--out", out, "--quiet")
    return result, config, out


# ----------------------------------------------------------------------------- a full run


def test_experiment_exits_zero(first_run):
    result, _, _ = first_run
    assert result.exit_code == 0, result.output


def test_experiment_writes_cells_and_report(first_run):
    _, _, out = first_run
    assert len(cell_mtimes(out)) == NUM_CELLS
    assert (out / "report" / "results.md").is_file()
    assert (out / "report" / "tradeoff_interactions.csv_neumf.png").is_file()


def test_experiment_counts_trained_cells(first_run):
    result, _, _ = first_run
    assert f"Cells trained: {NUM_CELLS}, resumed: 0." in result.stdout


def test_experiment_prints_table1_rows(first_run):
    result, _, out = first_run
    assert "NDCG and HR at K = 20" in result.stdout
    labels = [row[1] for row in table_rows(result.stdout)]
    assert labels == ["PopRank", "MF", "NeuMF (teacher)", "HDN (γ = 0.5/0.75/0.875)"]
    assert str(out / "report" / "results.md") in result.stdout.replace("\n", "")


def test_experiment_second_run_resumes(first_run):
    _, config, out = first_run
    before = cell_mtimes(out)
    result = invoke("experiment", config, "--out", out, "--quiet")
    assert result.exit_code == 0, result.output
    assert f"Cells trained: 0, resumed: {NUM_CELLS}." in result.stdout
    assert cell_mtimes(out) == before


def test_experiment_progress_shows_resumed(first_run):
    _, config, out = first_run
    result = invoke("experiment", config, "--out", out)
    assert result.exit_code == 0, result.output
    assert "resumed" in result.stderr


def test_experiment_resumes_without_new_setting(first_run):
    # A directory written before a setting existed resumes while the setting is at its default.
    _, config, out = first_run
    settings_path = out / "experiment.json"
    original = settings_path.read_text()
    settings = json.loads(original)
    del settings["loo_holdout"]
    settings_path.write_text(json.dumps(settings))
    try:
        result = invoke("experiment", config, "--out", out, "--quiet")
    finally:
        settings_path.write_text(original)
    assert result.exit_code == 0, result.output
    assert f"Cells trained: 0, resumed: {NUM_CELLS}." in result.stdout


def test_experiment_report_only(first_run):
    _, config, out = first_run
    before = cell_mtimes(out)
    (out / "report" / "results.md").unlink()
    result = invoke("experiment", config, "--out", out, "--report-only", "--quiet")
    assert result.exit_code == 0, result.output
    assert (out / "report" / "results.md").is_file()
    assert "Cells trained" not in result.stdout
    assert cell_mtimes(out) == before


# ----------------------------------------------------------------------------- errors


def test_experiment_report_only_without_cells(synthetic_csv, tmp_path):
    config = write_config(tmp_path / "tiny.toml", synthetic_csv)
    result = invoke("experiment", config, "--out", tmp_path / "empty", "--report-only")
    assert_reported_error(result)
    assert "No finished cells" in result.stderr
    assert "--report-only" in result.stderr


def test_experiment_unknown_key(synthetic_csv, tmp_path):
    config = write_config(tmp_path / "bad.toml", synthetic_csv, extra="student_epoch = 3\n")
    result = invoke("experiment", config, "--out", tmp_path / "experiment")
    assert_reported_error(result)
    assert "student_epoch" in result.stderr
    assert not (tmp_path / "experiment").exists()


def test_experiment_unknown_model(synthetic_csv, tmp_path):
    config = tmp_path / "bad_model.toml"
    config.write_text(
        write_config(tmp_path / "base.toml", synthetic_csv)
        .read_text()
        .replace('"hdn"]', '"hdn-xx"]')
    )
    result = invoke("experiment", config, "--out", tmp_path / "experiment")
    assert_reported_error(result)
    assert "hdn-xx" in result.stderr


def test_experiment_missing_config(tmp_path):
    config = tmp_path / "missing.toml"
    result = invoke("experiment", config, "--out", tmp_path / "experiment")
    assert_reported_error(result)
    assert str(config) in result.stderr


def test_experiment_changed_settings(first_run, tmp_path):
    _, config, out = first_run
    changed = tmp_path / "changed.toml"
    changed.write_text(config.read_text().replace("student_epochs = 2", "student_epochs = 3"))
    result = invoke("experiment", changed, "--out", out, "--quiet")
    assert_reported_error(result)
    assert "other settings" in result.stderr
    assert "student_epochs: 2 saved, 3 now" in result.stderr.replace("\n", " ")


def test_experiment_seed_with_report_only(first_run):
    _, config, out = first_run
    result = invoke("experiment", config, "--out", out, "--seed", 0, "--report-only")
    assert_reported_error(result)
    assert "--seed" in result.stderr
    assert "--report-only" in result.stderr


# ----------------------------------------------------------------------------- example files


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_example_experiment_loads(name):
    config = ExperimentConfig.from_file(EXAMPLES / name)
    assert config.datasets, name
    assert grid_cells(config), name


def test_example_directory_fully_tested():
    assert sorted(path.name for path in EXAMPLES.glob("*.toml")) == sorted(EXAMPLE_FILES)


def test_example_paper_grid_excludes_ablations():
    config = ExperimentConfig.from_file(EXAMPLES / "ml1m_paper.toml")
    assert config.teachers == ["neumf", "convncf", "als"]
    assert not ABLATIONS & set(config.models)
    assert config.gamma_settings == [[0.5, 0.75, 0.875], [0.75, 0.875, 0.9375]]
    assert config.seeds == [0, 1, 2]


def test_example_ablation_grid_models():
    config = ExperimentConfig.from_file(EXAMPLES / "ml1m_ablations.toml")
    assert set(config.models) == {"teacher", "hdn"} | ABLATIONS
    assert len(config.gamma_settings) == 1


def test_example_loo_protocol():
    config = ExperimentConfig.from_file(EXAMPLES / "ml1m_loo.toml")
    assert config.protocol == "loo"
    assert config.seeds == [0]


# ----------------------------------------------------------------------------- one seed per process


def test_experiment_seed_runs_one_seed(synthetic_csv, tmp_path):
    config = write_config(tmp_path / "two_seeds.toml", synthetic_csv)
    config.write_text(config.read_text().replace("seeds = [0]", "seeds = [0, 1]"))
    out = tmp_path / "experiment"

    result = invoke("experiment", config, "--out", out, "--seed", 1, "--quiet")
    assert result.exit_code == 0, result.output
    assert f"Cells trained: {NUM_CELLS}, resumed: 0." in result.stdout
    assert all(name.endswith("__seed1.json") for name in cell_mtimes(out))

    result = invoke("experiment", config, "--out", out, "--seed", 0, "--quiet")
    assert result.exit_code == 0, result.output
    assert f"Cells trained: {NUM_CELLS}, resumed: 0." in result.stdout
    assert len(cell_mtimes(out)) == 2 * NUM_CELLS

    # Without --seed the whole grid is finished, and the report covers both seeds.
    result = invoke("experiment", config, "--out", out, "--quiet")
    assert f"Cells trained: 0, resumed: {2 * NUM_CELLS}." in result.stdout
    assert re.search(r"\d\.\d+ ± \d\.\d+", (out / "report" / "results.md").read_text())


def test_experiment_unknown_seed(synthetic_csv, tmp_path):
    config = write_config(tmp_path / "tiny.toml", synthetic_csv)
    result = invoke("experiment", config, "--out", tmp_path / "experiment", "--seed", 7)
    assert_reported_error(result)
    assert "Seed 7" in result.stderr
    assert "[0]" in result.stderr
    assert not (tmp_path / "experiment").exists()


# ----------------------------------------------------------------------------- invalid values


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("seeds = [0.5]", "seeds"),
        ("seeds = 3", "seeds"),
        ("seeds = [-1]", "seeds"),
        ("seeds = [0, 0]", "seeds"),
        ('dim = "8"', "dim"),
        ("student_epochs = 0", "student_epochs"),
        ("learning_rate = 0.0", "learning_rate"),
        ("gamma_settings = [[0.9, 0.5]]", "gamma_settings"),
        ("ks = [0]", "ks"),
    ],
)
def test_experiment_invalid_value(synthetic_csv, tmp_path, line, key):
    config = write_config(tmp_path / "bad.toml", synthetic_csv)
    settings = [
        existing for existing in config.read_text().splitlines() if not existing.startswith(key)
    ]
    config.write_text("\n".join([*settings, line]) + "\n")

    result = invoke("experiment", config, "--out", tmp_path / "experiment")

    assert_reported_error(result)
    assert f"Invalid {key} = " in result.stderr
    assert str(config) in result.stderr.replace("\n", "")
    assert not (tmp_path / "experiment").exists()


@pytest.mark.parametrize(
    ("lines", "key"),
    [
        (["dim = 12"], "dim"),
        (["convncf_epochs = 0"], "convncf_epochs"),
        (["convncf_learning_rate = -1.0"], "convncf_learning_rate"),
    ],
)
def test_experiment_invalid_convncf_value(synthetic_csv, tmp_path, lines, key):
    config = write_config(tmp_path / "bad.toml", synthetic_csv)
    text = config.read_text().replace('teachers = ["neumf"]', 'teachers = ["convncf"]')
    settings = [existing for existing in text.splitlines() if not existing.startswith(key)]
    config.write_text("\n".join([*settings, *lines]) + "\n")

    result = invoke("experiment", config, "--out", tmp_path / "experiment")

    assert_reported_error(result)
    assert f"Invalid {key} = " in result.stderr
    assert not (tmp_path / "experiment").exists()
