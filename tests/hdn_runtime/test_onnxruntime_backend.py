"""ONNX Runtime stage backend: specs, runs, the empty-batch shortcut and load errors."""

from __future__ import annotations

import sys
from unittest import mock

import numpy as np
import pytest

from hdn_runtime import BackendUnavailableError, ModelFormatError
from hdn_runtime.backends.base import TensorSpec
from hdn_runtime.backends.onnxruntime import OnnxRuntimeBackend

FLOAT32 = np.dtype(np.float32)


@pytest.fixture
def decision_2(synthetic_model):
    model_dir, _ = synthetic_model
    with OnnxRuntimeBackend(model_dir / "stages" / "decision_2.onnx") as backend:
        yield backend


def _inputs(batch_size, d=8, h=8):
    rng = np.random.default_rng(0)
    return {
        "user_emb": rng.standard_normal((batch_size, d)).astype(np.float32),
        "item_emb": rng.standard_normal((batch_size, d)).astype(np.float32),
        "hidden_in": rng.standard_normal((batch_size, h)).astype(np.float32),
    }


def test_specs_describe_stage(decision_2):
    assert list(decision_2.input_specs) == ["user_emb", "item_emb", "hidden_in"]
    assert decision_2.input_specs["hidden_in"] == TensorSpec(FLOAT32, (None, 8))
    assert decision_2.output_specs == {
        "decision": TensorSpec(FLOAT32, (None,)),
        "hidden": TensorSpec(FLOAT32, (None, 8)),
    }


def test_run_matches_numpy(decision_2, synthetic_model):
    _, model = synthetic_model
    inputs = _inputs(5)

    outputs = decision_2.run(inputs)

    features = np.concatenate([inputs["user_emb"] * inputs["item_emb"], inputs["hidden_in"]], 1)
    np.testing.assert_allclose(outputs["decision"], features @ model.decision_weights[1], rtol=1e-5)
    expected_hidden = np.maximum(features @ model.hidden_weights[1].T, 0)
    np.testing.assert_allclose(outputs["hidden"], expected_hidden, rtol=1e-5, atol=1e-6)


def test_empty_batch_skips_session(decision_2):
    session = mock.Mock(wraps=decision_2._session)
    decision_2._session = session

    outputs = decision_2.run(_inputs(0))

    session.run.assert_not_called()
    assert outputs["decision"].shape == (0,)
    assert outputs["hidden"].shape == (0, 8)
    assert outputs["decision"].dtype == np.float32
    assert outputs["hidden"].dtype == np.float32

    decision_2.run(_inputs(2))
    session.run.assert_called_once()


def test_wrong_input_names_raise(decision_2):
    inputs = _inputs(2)
    inputs["hidden"] = inputs.pop("hidden_in")

    with pytest.raises(ValueError, match="takes inputs"):
        decision_2.run(inputs)


def test_mismatched_batch_sizes_raise(decision_2):
    inputs = _inputs(3)
    inputs["hidden_in"] = inputs["hidden_in"][:2]

    with pytest.raises(ValueError, match="must share the batch size"):
        decision_2.run(inputs)


def test_closed_backend_raises(synthetic_model):
    model_dir, _ = synthetic_model
    backend = OnnxRuntimeBackend(model_dir / "stages" / "score.onnx")
    backend.close()
    backend.close()

    assert backend.is_closed
    with pytest.raises(RuntimeError, match="is closed"):
        backend.run(_inputs(1))


def test_invalid_onnx_file_raises(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a protobuf")

    with pytest.raises(ModelFormatError, match="cannot load stage file .*broken.onnx"):
        OnnxRuntimeBackend(path)


def test_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.onnx"):
        OnnxRuntimeBackend(tmp_path / "absent.onnx")


def test_unavailable_provider_names_gpu_extra(synthetic_model):
    model_dir, _ = synthetic_model
    with pytest.raises(BackendUnavailableError, match="hdn\\[gpu\\]"):
        OnnxRuntimeBackend(
            model_dir / "stages" / "score.onnx", providers=("NoSuchExecutionProvider",)
        )


def test_missing_onnxruntime_names_cpu_extra(synthetic_model, monkeypatch):
    model_dir, _ = synthetic_model
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail

    with pytest.raises(BackendUnavailableError, match="pip install 'hdn\\[cpu\\]'"):
        OnnxRuntimeBackend(model_dir / "stages" / "score.onnx")


@pytest.mark.parametrize("threads", [0, -1, 1.5])
def test_invalid_thread_count_raises(synthetic_model, threads):
    model_dir, _ = synthetic_model
    with pytest.raises(ValueError, match="intra_op_threads must be a positive integer"):
        OnnxRuntimeBackend(model_dir / "stages" / "score.onnx", intra_op_threads=threads)
