"""TensorRT export: profile arithmetic, availability checks, and the export flow on fakes.

The flow tests replace tensorrt and the CUDA runtime with `fake_tensorrt`, whose engines are
the ONNX stages run by ONNX Runtime, so everything except TensorRT's own kernels runs here.
Tests marked `gpu` build real engines; run them with `pytest -m gpu` on a machine with an
NVIDIA GPU and the GPU extra.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

from fake_tensorrt import FAKE_GPU, FAKE_VERSION, FakeCuda, FakeTensorRT  # noqa: E402

import hdn_export.tensorrt as tensorrt_export  # noqa: E402
import hdn_runtime.backends.tensorrt as tensorrt_backend  # noqa: E402
from hdn_export.tensorrt import (  # noqa: E402
    MAX_BATCH_CAP,
    OPT_USERS,
    check_trt_available,
    default_timing_cache_path,
    export_tensorrt,
    profile_shapes,
)
from hdn_runtime import BackendUnavailableError, ParityError, Recommender  # noqa: E402
from hdn_runtime.backends.cuda_runtime import GpuProperties  # noqa: E402
from hdn_runtime.cascade import DEFAULT_MAX_CANDIDATES  # noqa: E402
from hdn_runtime.parity import Tolerance, verify_model  # noqa: E402

TRT_UNAVAILABLE = tensorrt_backend.tensorrt_unavailable_reason()


# ----------------------------------------------------------------------------- profile_shapes


@pytest.mark.parametrize(
    ("num_items", "expected"),
    [
        (40, {"min": 1, "opt": 40 * OPT_USERS, "max": DEFAULT_MAX_CANDIDATES}),
        (1682, {"min": 1, "opt": 1682 * OPT_USERS, "max": DEFAULT_MAX_CANDIDATES}),
        (100_000, {"min": 1, "opt": DEFAULT_MAX_CANDIDATES, "max": DEFAULT_MAX_CANDIDATES}),
        (3_000_000, {"min": 1, "opt": 3_000_000, "max": 3_000_000}),
        (10_000_000, {"min": 1, "opt": MAX_BATCH_CAP, "max": MAX_BATCH_CAP}),
    ],
)
def test_profile_defaults(num_items, expected):
    assert profile_shapes(num_items) == expected


@pytest.mark.parametrize(
    ("batches", "expected"),
    [
        ((4, 8, 16), {"min": 4, "opt": 8, "max": 16}),
        ((None, None, 100), {"min": 1, "opt": 100, "max": 100}),
        ((None, 5000, None), {"min": 1, "opt": 5000, "max": DEFAULT_MAX_CANDIDATES}),
        ((None, 1 << 21, None), {"min": 1, "opt": 1 << 21, "max": 1 << 21}),
        ((1000, None, None), {"min": 1000, "opt": 1000, "max": DEFAULT_MAX_CANDIDATES}),
        ((7, None, 7), {"min": 7, "opt": 7, "max": 7}),
    ],
)
def test_profile_explicit_values(batches, expected):
    assert profile_shapes(40, *batches) == expected


@pytest.mark.parametrize(
    ("batches", "message"),
    [
        ((8, 4, 16), "got min=8, opt=4, max=16"),
        ((None, 64, 32), "got opt=64, max=32"),
        ((20, None, 10), "got min=20, max=10"),
        ((0, None, None), "min batch .* must be a positive integer, got 0"),
        ((None, -5, None), "opt batch .* must be a positive integer, got -5"),
        ((None, None, 2.5), "max batch .* must be a positive integer, got 2.5"),
    ],
)
def test_profile_invalid_values(batches, message):
    with pytest.raises(ValueError, match=message):
        profile_shapes(40, *batches)


def test_profile_invalid_catalogue():
    with pytest.raises(ValueError, match="num_items must be a positive integer, got 0"):
        profile_shapes(0)


def test_default_timing_cache_path(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))

    path = default_timing_cache_path("10.3.0", GpuProperties("NVIDIA H200", "9.0"))

    assert path == tmp_path / "hdn" / "tensorrt" / "timing-10.3.0-sm90.cache"


# ----------------------------------------------------------------------------- without a GPU


@pytest.mark.skipif(TRT_UNAVAILABLE is None, reason="TensorRT and a GPU are available here")
def test_check_trt_available_message():
    with pytest.raises(BackendUnavailableError) as caught:
        check_trt_available()

    message = str(caught.value)
    assert "--format trt needs TensorRT and a CUDA GPU" in message
    assert "tensorrt package cannot be imported" in message
    assert "pip install 'hdn[gpu]'" in message
    assert "pip uninstall onnxruntime" in message
    assert "--format onnx" in message


@pytest.mark.skipif(TRT_UNAVAILABLE is None, reason="TensorRT and a GPU are available here")
def test_export_fails_before_reading_run(tmp_path):
    out_dir = tmp_path / "out" / "model"

    # The run directory does not exist: the availability check must come first.
    with pytest.raises(BackendUnavailableError, match="--format trt needs TensorRT"):
        export_tensorrt(tmp_path / "no-such-run", out_dir)

    assert not out_dir.exists()
    assert not (tmp_path / "out").exists()


def test_export_rejects_bad_precision_first(tmp_path):
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'fp16'\]"):
        export_tensorrt(tmp_path / "run", tmp_path / "model", precision="int8")


def test_export_rejects_bad_profile_first(tmp_path):
    with pytest.raises(ValueError, match="got min=8, max=4"):
        export_tensorrt(tmp_path / "run", tmp_path / "model", min_batch=8, max_batch=4)


# ----------------------------------------------------------------------------- flow on fakes


@pytest.fixture
def fake_gpu(monkeypatch) -> FakeTensorRT:
    """Make the exporter and the runtime use `FakeTensorRT` and `FakeCuda`."""
    trt = FakeTensorRT(FakeCuda())
    for module in (tensorrt_export, tensorrt_backend):
        monkeypatch.setattr(module, "import_tensorrt", lambda: trt)
        monkeypatch.setattr(module, "load_cuda_runtime", lambda: trt.cuda)
        monkeypatch.setattr(module, "tensorrt_unavailable_reason", lambda device_id=0: None)
    return trt


@pytest.fixture
def fake_export(trained_run, fake_gpu, tmp_path):
    """An fp32 export of the session run with fake engines, and its timing cache file."""
    _, run_dir = trained_run
    cache_path = tmp_path / "cache" / "timing.cache"
    model_dir = tmp_path / "model"
    manifest = export_tensorrt(
        run_dir, model_dir, timing_cache=cache_path, max_batch=500, verify_users=8
    )
    return manifest, model_dir, cache_path


def test_export_writes_engines_and_record(fake_export):
    manifest, model_dir, _ = fake_export
    record = manifest["tensorrt"]

    assert record["version"] == FAKE_VERSION
    assert record["gpu_name"] == FAKE_GPU.name
    assert record["compute_capability"] == FAKE_GPU.compute_capability
    assert record["precision"] == "fp32"
    assert record["profile"] == {"min": 1, "opt": 500, "max": 500}
    names = [stage["name"] for stage in manifest["stages"]]
    assert [engine["name"] for engine in record["engines"]] == names
    for engine in record["engines"]:
        assert engine["path"] == f"engines/{engine['name']}.plan"
        assert (model_dir / engine["path"]).is_file()
    written = json.loads((model_dir / "manifest.json").read_text())
    assert written["tensorrt"] == record
    assert set(written["parity"]) == set(names)


def test_export_records_engine_parity(fake_export):
    manifest, _, _ = fake_export
    parity = manifest["tensorrt"]["parity"]

    assert list(parity) == [stage["name"] for stage in manifest["stages"]]
    for stage, report in parity.items():
        assert report["max_abs_diff"] == 0.0, stage
        assert report["passed"], stage
        assert report["pairs"] == 8 * manifest["num_items"]


def test_export_builds_fp32_without_tf32(fake_export, fake_gpu):
    manifest, _, _ = fake_export

    assert len(fake_gpu.builds) == len(manifest["stages"])
    for build in fake_gpu.builds:
        assert build["flags"] == set()
    dim, hidden = manifest["embedding_dim"], manifest["hidden_dim"]
    decision_2 = fake_gpu.builds[1]["shapes"]
    assert decision_2["user_emb"] == ((1, dim), (500, dim), (500, dim))
    assert decision_2["hidden_in"] == ((1, hidden), (500, hidden), (500, hidden))


def test_export_reuses_timing_cache(fake_export, fake_gpu, trained_run, tmp_path):
    manifest, _, cache_path = fake_export
    num_stages = len(manifest["stages"])
    assert cache_path.read_bytes() == b"t" * num_stages

    _, run_dir = trained_run
    export_tensorrt(
        run_dir, tmp_path / "fp16", precision="fp16", timing_cache=cache_path, verify_users=2
    )

    assert cache_path.read_bytes() == b"t" * 2 * num_stages
    assert all(build["flags"] == {"fp16", "tf32"} for build in fake_gpu.builds[num_stages:])


def test_exported_engines_serve_like_cpu(fake_export):
    manifest, model_dir, _ = fake_export
    users = np.arange(manifest["num_users"])

    with Recommender.load(model_dir, backend="cpu") as cpu:
        expected = cpu.recommend_indices(users, k=10)
    with Recommender.load(model_dir, backend="tensorrt") as recommender:
        actual = recommender.recommend_indices(users, k=10)

    for want, got in zip(expected, actual):
        np.testing.assert_array_equal(got, want)


def test_verify_model_on_fake_engines(fake_export):
    _, model_dir, _ = fake_export

    report = verify_model(model_dir, backend="tensorrt", num_users=6, k=5)

    assert report.backend == "tensorrt"
    assert report.precision == "fp32"
    assert report.passed
    assert report.top_k.identical_users == 6
    assert all(stage.max_abs_diff == 0.0 for stage in report.stages)


def test_export_engine_parity_failure(trained_run, fake_gpu, tmp_path, monkeypatch):
    _, run_dir = trained_run
    # A negative tolerance turns every output into a mismatch, as a broken engine would.
    monkeypatch.setitem(tensorrt_export.TOLERANCES, "fp32", Tolerance(-1.0, 0.0))

    with pytest.raises(ParityError, match="fp32 TensorRT engines differ") as caught:
        export_tensorrt(
            run_dir, tmp_path / "model", timing_cache=tmp_path / "timing.cache", verify_users=2
        )

    assert "decision_1" in caught.value.max_abs_diff
    assert not (tmp_path / "model").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["timing.cache"]


def test_export_existing_directory_untouched(trained_run, fake_gpu, tmp_path):
    _, run_dir = trained_run
    model_dir = tmp_path / "model"
    model_dir.mkdir()

    with pytest.raises(FileExistsError, match="already exists"):
        export_tensorrt(run_dir, model_dir)
    assert fake_gpu.builds == []


# ----------------------------------------------------------------------------- real GPU


@pytest.mark.gpu
@pytest.mark.skipif(TRT_UNAVAILABLE is not None, reason=f"TensorRT cannot run: {TRT_UNAVAILABLE}")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_engines_match_cpu(trained_run, tmp_path, precision):
    _, run_dir = trained_run
    model_dir = tmp_path / "model"

    manifest = export_tensorrt(
        run_dir, model_dir, precision=precision, timing_cache=tmp_path / "timing.cache"
    )
    report = verify_model(model_dir, backend="tensorrt", num_users=32, k=10)

    assert manifest["tensorrt"]["precision"] == precision
    assert all(entry["passed"] for entry in manifest["tensorrt"]["parity"].values())
    assert report.backend == "tensorrt"
    assert all(stage.passed for stage in report.stages), report.stages
    if precision == "fp32":
        assert report.top_k.agrees, report.top_k
    assert report.top_k.mean_overlap > 0.5, report.top_k


@pytest.mark.gpu
@pytest.mark.skipif(TRT_UNAVAILABLE is not None, reason=f"TensorRT cannot run: {TRT_UNAVAILABLE}")
def test_real_engines_split_large_batches(trained_run, tmp_path):
    _, run_dir = trained_run
    model_dir = tmp_path / "model"
    # A max batch below one user's catalogue makes every stage-1 call run in chunks.
    export_tensorrt(
        run_dir,
        model_dir,
        min_batch=4,
        opt_batch=8,
        max_batch=16,
        timing_cache=tmp_path / "timing.cache",
    )

    with Recommender.load(model_dir, backend="cpu") as cpu:
        expected = cpu.recommend_indices(np.arange(20), k=10)
    with Recommender.load(model_dir, backend="tensorrt") as recommender:
        actual = recommender.recommend_indices(np.arange(20), k=10)
        empty = recommender.recommend_indices(np.zeros(0, dtype=np.int64), k=10)

    np.testing.assert_array_equal(actual[2], expected[2])
    np.testing.assert_allclose(actual[1], expected[1], rtol=1e-4, atol=1e-4)
    assert empty[0].shape == (0, 10)
