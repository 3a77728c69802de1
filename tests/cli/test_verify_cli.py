"""`hdn verify` and the TensorRT options of `hdn export`, through Typer's CliRunner."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner, Result

from cli.main import NOISY_LOGGERS, app
from hdn_runtime.backends.select import cuda_unavailable_reason
from hdn_runtime.backends.tensorrt import tensorrt_unavailable_reason

# A wide console keeps every Rich table row on one line. HDN_DEBUG is unset so that errors print
# one line instead of a traceback.
RUNNER = CliRunner(env={"COLUMNS": "200", "HDN_DEBUG": None})


def invoke(*args: object) -> Result:
    return RUNNER.invoke(app, [str(arg) for arg in args])


def assert_reported_error(result: Result) -> None:
    """Assert that a command failed with exit code 1 and an 'Error:' message, not a traceback."""
    assert result.exit_code == 1, result.output
    assert "Error: " in result.stderr, result.output
    assert "Traceback" not in result.output


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


def test_verify_cpu_prints_stage_table(exported_model):
    result = invoke("verify", exported_model, "--backend", "cpu", "--users", 5, "--k", 5)

    assert result.exit_code == 0, result.output
    rows = table_rows(result.stdout)
    assert [row[0] for row in rows] == ["decision_1", "decision_2", "decision_3", "score"]
    for row in rows:
        assert row[1] == "0.00e+00", row
        assert row[4] == "yes", row
    assert "Top-5 for 5 users: 5 identical" in result.stdout
    assert "Backend 'cpu' matches the CPU." in result.stdout


def test_verify_auto_reports_chosen_backend(exported_model):
    result = invoke("verify", exported_model, "--users", 3, "--k", 3, "-q")

    assert result.exit_code == 0, result.output
    expected = "'cpu'" if cuda_unavailable_reason() is not None else "'cuda'"
    assert f"Backend {expected}" in result.stdout


@pytest.mark.skipif(cuda_unavailable_reason() is None, reason="the CUDA provider is available")
def test_verify_cuda_unavailable(exported_model):
    result = invoke("verify", exported_model, "--backend", "cuda")

    assert_reported_error(result)
    assert "backend='cuda' cannot run" in result.stderr
    assert "CUDAExecutionProvider" in result.stderr


def test_verify_tensorrt_without_engines(exported_model):
    result = invoke("verify", exported_model, "--backend", "tensorrt")

    assert_reported_error(result)
    assert "no TensorRT engines" in result.stderr


def test_verify_unknown_backend(exported_model):
    result = invoke("verify", exported_model, "--backend", "tpu")

    assert_reported_error(result)
    assert "'tpu'" in result.stderr


def test_verify_invalid_k(exported_model):
    result = invoke("verify", exported_model, "--backend", "cpu", "--k", 0)

    assert_reported_error(result)
    assert "k must be in [1," in result.stderr


def test_verify_missing_model(tmp_path):
    result = invoke("verify", tmp_path / "absent", "--backend", "cpu")

    assert_reported_error(result)
    assert "does not exist" in result.stderr


@pytest.mark.skipif(tensorrt_unavailable_reason() is None, reason="TensorRT can run here")
def test_export_trt_fails_fast_with_install_hint(trained_run, tmp_path):
    _, run_dir = trained_run
    model_dir = tmp_path / "out" / "model"

    result = invoke(
        "export",
        run_dir,
        "--format",
        "trt",
        "--out",
        model_dir,
        "--precision",
        "fp16",
        "--max-batch",
        4096,
    )

    assert_reported_error(result)
    assert "pip install 'hdn[gpu]'" in result.stderr
    assert "tensorrt package cannot be imported" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "option", [("--precision", "fp16"), ("--max-batch", "64"), ("--timing-cache", "x.cache")]
)
def test_export_onnx_rejects_trt_options(trained_run, tmp_path, option):
    _, run_dir = trained_run
    model_dir = tmp_path / "model"

    result = invoke("export", run_dir, "--format", "onnx", "--out", model_dir, *option)

    assert_reported_error(result)
    assert "apply to --format trt only" in result.stderr
    assert not model_dir.exists()


def test_export_trt_rejects_bad_profile(trained_run, tmp_path):
    _, run_dir = trained_run

    result = invoke(
        "export",
        run_dir,
        "--format",
        "trt",
        "--out",
        tmp_path / "model",
        "--min-batch",
        64,
        "--opt-batch",
        8,
    )

    assert_reported_error(result)
    assert "got min=64, opt=8" in result.stderr
