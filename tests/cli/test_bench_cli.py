"""`hdn bench` through Typer's CliRunner, on the session's exported model and a tiny synthetic one."""

from __future__ import annotations

import json
import logging

import pytest
from typer.testing import CliRunner, Result

from cli.main import NOISY_LOGGERS, app

# A wide console keeps every Rich table row on one line. HDN_DEBUG is unset so that errors print
# one line instead of a traceback.
RUNNER = CliRunner(env={"COLUMNS": "250", "HDN_DEBUG": None})
QUICK = ("--repeats", 1, "--latency-repeats", 2, "--threads", 1, "--time-limit", 30, "-q")


def invoke(*args: object) -> Result:
    return RUNNER.invoke(app, [str(arg) for arg in args])


def table_rows(output: str) -> list[list[str]]:
    """Return the stripped cells of every body row of the Rich tables in `output`."""
    return [
        [cell.strip() for cell in line.strip().strip("│").split("│")]
        for line in output.splitlines()
        if line.strip().startswith("│")
    ]


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


def test_bench_model_prints_every_method(exported_model, tmp_path):
    out = tmp_path / "bench"

    result = invoke(
        "bench", exported_model, "--users", 12, "--batch-sizes", "1,4", *QUICK, "--out", out
    )

    assert result.exit_code == 0, result.output
    methods = {row[0] for row in table_rows(result.stdout)}
    assert {"dot-product floor", "HDN fast", "HDN plain", "NeuMF teacher"} <= methods
    assert "Peak resident memory" in result.stdout
    assert "GMAC/s" in result.stdout
    assert (out / "stages.png").stat().st_size > 0

    report = json.loads((out / "report.json").read_text())
    passes = [figure for figure in report["figures"] if figure["batch_size"] is None]
    assert len(passes) == 4
    assert all(figure["users_timed"] == 12 and not figure["extrapolated"] for figure in passes)
    sizes = {figure["batch_size"] for figure in report["figures"]} - {None}
    assert sizes == {1, 4}
    fast_stages = [stage[0] for stage in report["stage_profiles"]["HDN fast"]["stages"]]
    assert fast_stages[0] == "decision_1 (matrix product)"
    assert fast_stages[-1] == "score"
    assert report["multiply_adds"]["dot-product floor"] == report["model"]["embedding_dim"]


def test_bench_reference_sample_is_extrapolated(exported_model, tmp_path):
    result = invoke(
        "bench",
        exported_model,
        "--reference-users",
        3,
        "--batch-sizes",
        "2",
        *QUICK,
        "--out",
        tmp_path / "bench",
    )

    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "bench" / "report.json").read_text())
    by_method = {
        figure["method"]: figure for figure in report["figures"] if figure["batch_size"] is None
    }
    assert by_method["HDN plain"]["users_timed"] == 3
    assert by_method["HDN plain"]["extrapolated"]
    assert not by_method["HDN fast"]["extrapolated"]
    assert "*" in result.stdout


def test_bench_synthetic_writes_model_and_teachers(tmp_path):
    out = tmp_path / "bench"

    result = invoke(
        "bench",
        "--synthetic",
        "40x30",
        "--batch-sizes",
        "1",
        "--reference-users",
        8,
        *QUICK,
        "--out",
        out,
    )

    assert result.exit_code == 0, result.output
    assert "Synthetic model with random weights" in result.stdout
    methods = {row[0] for row in table_rows(result.stdout)}
    assert {"NeuMF teacher", "ConvNCF teacher"} <= methods
    folder = out / "synthetic-40x30-seed0"
    manifest = json.loads((folder / "model" / "manifest.json").read_text())
    assert manifest["gammas"] == [0.75, 0.875, 0.9375]
    assert manifest["num_users"] == 40
    assert len(manifest["synthetic"]["sign_rule_kept_shares"]) == 3
    report = json.loads((out / "report.json").read_text())
    assert report["multiply_adds"]["ConvNCF teacher"] == 381984


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--users", "some"), "--users takes 'all' or a positive number"),
        (("--batch-sizes", "1,x"), "--batch-sizes takes comma-separated positive numbers"),
        (("--repeats", 0), "repeats must be >= 1"),
    ],
)
def test_bench_invalid_options(exported_model, tmp_path, args, message):
    result = invoke("bench", exported_model, *args, "--out", tmp_path / "bench", "-q")

    assert result.exit_code == 1, result.output
    assert message in result.stderr


def test_bench_needs_model_or_synthetic(tmp_path):
    result = invoke("bench", "--out", tmp_path / "bench")

    assert result.exit_code == 1, result.output
    assert "A MODEL directory is missing" in result.stderr


def test_bench_rejects_model_and_synthetic(exported_model, tmp_path):
    result = invoke("bench", exported_model, "--synthetic", "10x10", "--out", tmp_path / "bench")

    assert result.exit_code == 1, result.output
    assert "not both" in result.stderr


def test_bench_invalid_synthetic_shape(tmp_path):
    result = invoke("bench", "--synthetic", "100by20", "--out", tmp_path / "bench")

    assert result.exit_code == 1, result.output
    assert "USERSxITEMS, for example 138493x26744" in result.stderr


def test_bench_times_random_teachers(exported_model, tmp_path):
    out = tmp_path / "bench"

    result = invoke(
        "bench",
        exported_model,
        "--random-teacher",
        "convncf",
        "--users",
        4,
        "--batch-sizes",
        "1",
        *QUICK,
        "--out",
        out,
    )

    assert result.exit_code == 0, result.output
    methods = {row[0] for row in table_rows(result.stdout)}
    assert "NeuMF teacher" in methods
    assert "ConvNCF teacher (random weights)" in methods
    assert (out / "random-teachers" / "convncf.onnx").is_file()


def test_bench_rejects_unknown_random_teacher(exported_model, tmp_path):
    result = invoke("bench", exported_model, "--random-teacher", "als", "--out", tmp_path / "b")

    assert result.exit_code == 1, result.output
    assert "Invalid --random-teacher 'als'" in result.stderr


def test_bench_names_missing_model_directory(tmp_path):
    out = tmp_path / "bench"

    result = invoke("bench", tmp_path / "absent", "--out", out)

    assert result.exit_code == 1, result.output
    assert "has no manifest.json" in result.stderr
    assert not out.exists()


def test_bench_rejects_out_that_is_a_file(exported_model, tmp_path):
    out = tmp_path / "file"
    out.write_text("")

    result = invoke("bench", exported_model, "--out", out)

    assert result.exit_code == 1, result.output
    assert "is a file" in result.stderr


def test_bench_rejects_run_with_synthetic(trained_run, tmp_path):
    _, run_dir = trained_run

    result = invoke("bench", "--synthetic", "10x10", "--run", run_dir, "--out", tmp_path / "b")

    assert result.exit_code == 1, result.output
    assert "--run is for a MODEL directory" in result.stderr
