"""Backend choice, the TensorRT engine record, and the TensorRT and CUDA backends on fakes.

The TensorRT backend runs here against `fake_tensorrt`, whose engines are the ONNX stages run
by ONNX Runtime on the CPU, so its buffers, chunking and padding are checked against the CPU
backend on the synthetic model. Tests marked `gpu` need a real GPU with TensorRT.
"""

from __future__ import annotations

import itertools
import logging
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))

from fake_tensorrt import FAKE_GPU, FAKE_VERSION, FakeCuda, FakeTensorRT, fake_plan  # noqa: E402
from model_factory import NUM_USERS, read_manifest_json, write_manifest  # noqa: E402

import hdn_runtime.backends.tensorrt as tensorrt_backend  # noqa: E402
from hdn_runtime import BackendUnavailableError, ModelFormatError, Recommender  # noqa: E402
from hdn_runtime.backends import cuda_runtime, select  # noqa: E402
from hdn_runtime.backends.cuda_runtime import (  # noqa: E402
    CudaPythonRuntime,
    CupyRuntime,
    GpuProperties,
    gpu_unavailable_reason,
)
from hdn_runtime.backends.engine_record import (  # noqa: E402
    EngineEntry,
    EngineRecord,
    check_engine_record,
    engine_path,
    read_engine_record,
    verify_engine_checksums,
)
from hdn_runtime.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from hdn_runtime.backends.select import BACKENDS, choose_backend  # noqa: E402
from hdn_runtime.backends.tensorrt import TensorRTBackend, split_batches  # noqa: E402
from hdn_runtime.errors import EngineMismatchError  # noqa: E402
from hdn_runtime.manifest import file_sha256, read_manifest  # noqa: E402

PROFILE = {"min": 1, "opt": 64, "max": 100}


# ----------------------------------------------------------------------------- split_batches


@pytest.mark.parametrize(
    ("num_rows", "max_rows", "expected"),
    [
        (0, 4, []),
        (1, 4, [(0, 1)]),
        (4, 4, [(0, 4)]),
        (5, 4, [(0, 4), (4, 5)]),
        (12, 4, [(0, 4), (4, 8), (8, 12)]),
        (3, 1, [(0, 1), (1, 2), (2, 3)]),
    ],
)
def test_split_batches_covers_rows(num_rows, max_rows, expected):
    slices = split_batches(num_rows, max_rows)

    assert [(part.start, part.stop) for part in slices] == expected


@pytest.mark.parametrize(("num_rows", "max_rows"), [(-1, 4), (4, 0), (4, -2), (2.5, 4)])
def test_split_batches_rejects_invalid(num_rows, max_rows):
    with pytest.raises(ValueError, match="must be an integer"):
        split_batches(num_rows, max_rows)


# ----------------------------------------------------------------------------- choose_backend

TRT_PROBLEM = "tensorrt is missing"
CUDA_PROBLEM = "no CUDA provider"


def _expected_choice(requested, has_engines, trt_ok, cuda_ok):
    """The rule written out independently: (backend, number of reasons) or the error text."""
    if requested == "cpu":
        return "cpu", 0
    if requested == "tensorrt":
        if not has_engines:
            return "no TensorRT engines"
        return ("tensorrt", 0) if trt_ok else TRT_PROBLEM
    if requested == "cuda":
        return ("cuda", 0) if cuda_ok else CUDA_PROBLEM
    if has_engines and trt_ok:
        return "tensorrt", 0
    return ("cuda", 1) if cuda_ok else ("cpu", 2)


@pytest.mark.parametrize(
    ("requested", "has_engines", "trt_ok", "cuda_ok"),
    list(itertools.product(["cpu", "auto", "cuda", "tensorrt"], *[[True, False]] * 3)),
)
def test_choose_backend_table(requested, has_engines, trt_ok, cuda_ok):
    expected = _expected_choice(requested, has_engines, trt_ok, cuda_ok)
    arguments = (
        requested,
        has_engines,
        None if trt_ok else TRT_PROBLEM,
        None if cuda_ok else CUDA_PROBLEM,
    )

    if isinstance(expected, str):
        with pytest.raises(BackendUnavailableError, match=expected) as caught:
            choose_backend(*arguments)
        assert f"backend={requested!r} cannot run" in str(caught.value)
        return
    backend, reasons = choose_backend(*arguments)
    assert backend == expected[0]
    assert len(reasons) == expected[1]


def test_choose_backend_auto_reasons_explain_fallback():
    backend, reasons = choose_backend("auto", True, TRT_PROBLEM, CUDA_PROBLEM)

    assert backend == "cpu"
    assert reasons == [f"not 'tensorrt': {TRT_PROBLEM}", f"not 'cuda': {CUDA_PROBLEM}"]


def test_choose_backend_auto_without_engines_names_export():
    _, reasons = choose_backend("auto", False, None, None)

    assert "--format trt" in reasons[0]


def test_choose_backend_rejects_unknown():
    with pytest.raises(ValueError, match=r"backend must be one of \['cpu', 'auto', 'cuda'"):
        choose_backend("tpu", False, None, None)


def test_backends_constant_order():
    assert BACKENDS == ("cpu", "auto", "cuda", "tensorrt")


# ----------------------------------------------------------------------------- this machine

needs_no_cuda_provider = pytest.mark.skipif(
    select.cuda_unavailable_reason() is None, reason="onnxruntime has the CUDA provider here"
)
needs_no_tensorrt = pytest.mark.skipif(
    tensorrt_backend.tensorrt_unavailable_reason() is None, reason="TensorRT can run here"
)


@needs_no_cuda_provider
def test_cuda_backend_unavailable_message(synthetic_model):
    model_dir, _ = synthetic_model

    with pytest.raises(BackendUnavailableError) as caught:
        Recommender.load(model_dir, backend="cuda")

    message = str(caught.value)
    assert "backend='cuda' cannot run" in message
    assert "CUDAExecutionProvider" in message
    assert "pip install 'hdn[gpu]'" in message
    assert "backend='cpu'" in message


def test_tensorrt_backend_without_engines_message(synthetic_model):
    model_dir, _ = synthetic_model

    with pytest.raises(BackendUnavailableError) as caught:
        Recommender.load(model_dir, backend="tensorrt")

    assert "no TensorRT engines" in str(caught.value)
    assert "hdn export RUN --format trt --out DIR" in str(caught.value)


@needs_no_tensorrt
def test_tensorrt_unavailable_reason_names_packages():
    reason = tensorrt_backend.tensorrt_unavailable_reason()

    assert "tensorrt package cannot be imported" in reason


@needs_no_tensorrt
def test_tensorrt_backend_with_engines_unavailable_here(trt_model_dir):
    with pytest.raises(BackendUnavailableError) as caught:
        Recommender.load(trt_model_dir, backend="tensorrt")

    assert "tensorrt package cannot be imported" in str(caught.value)


@needs_no_cuda_provider
@needs_no_tensorrt
def test_auto_falls_back_to_cpu_with_warnings(trt_model_dir, caplog):
    with caplog.at_level(logging.INFO, logger="hdn_runtime"):
        with Recommender.load(trt_model_dir, backend="auto") as recommender:
            assert recommender.backend == "cpu"

    warnings = [record.message for record in caplog.records if record.levelno == logging.WARNING]
    assert any("not 'tensorrt'" in message for message in warnings)
    assert any("not 'cuda'" in message for message in warnings)
    assert "backend='auto' selected 'cpu'" in caplog.text


def test_cpu_backend_ignores_engine_record(trt_model_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="hdn_runtime"):
        with Recommender.load(trt_model_dir, backend="cpu") as recommender:
            assert recommender.backend == "cpu"

    assert caplog.records == []


def test_missing_tensorrt_module_names_gpu_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)

    with pytest.raises(BackendUnavailableError, match=r"pip install 'hdn\[gpu\]'"):
        tensorrt_backend.import_tensorrt()


def test_missing_cuda_packages_reason(monkeypatch):
    for name in ("cuda", "cuda.bindings", "cupy", "cupy.cuda", "cupy.cuda.runtime"):
        monkeypatch.setitem(sys.modules, name, None)

    runtime, reason = cuda_runtime.try_load_cuda_runtime()

    assert runtime is None
    assert "neither cuda-python nor cupy can be imported" in reason
    with pytest.raises(BackendUnavailableError, match=r"pip install 'hdn\[gpu\]'"):
        cuda_runtime.load_cuda_runtime()


# ----------------------------------------------------------------------------- engine record


@pytest.fixture
def trt_model_dir(synthetic_model, tmp_path) -> Path:
    """A copy of the synthetic model with fake engines and a `"tensorrt"` record."""
    source_dir, _ = synthetic_model
    model_dir = Path(shutil.copytree(source_dir, tmp_path / "model"))
    add_fake_engines(model_dir, PROFILE)
    return model_dir


def add_fake_engines(
    model_dir: Path,
    profile: dict[str, int],
    version: str = FAKE_VERSION,
    gpu: GpuProperties = FAKE_GPU,
) -> EngineRecord:
    """Write a fake engine per stage and record them in the manifest, as the exporter does."""
    raw = read_manifest_json(model_dir)
    engines = []
    for stage in raw["stages"]:
        path = engine_path(model_dir, stage["name"])
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(fake_plan((model_dir / stage["path"]).read_bytes(), profile))
        engines.append(EngineEntry(stage["name"], path, file_sha256(path)))
    record = EngineRecord(
        version, gpu.name, gpu.compute_capability, "fp32", dict(profile), tuple(engines), parity={}
    )
    raw["tensorrt"] = record.to_json(model_dir)
    write_manifest(model_dir, raw)
    return record


def test_engine_record_round_trip(trt_model_dir):
    record = read_engine_record(read_manifest(trt_model_dir))

    assert record.version == FAKE_VERSION
    assert record.gpu_name == FAKE_GPU.name
    assert record.compute_capability == FAKE_GPU.compute_capability
    assert record.profile == PROFILE
    assert [entry.name for entry in record.engines] == [
        "decision_1",
        "decision_2",
        "decision_3",
        "score",
    ]
    assert record.engines[0].path == trt_model_dir / "engines" / "decision_1.plan"
    raw = read_manifest_json(trt_model_dir)["tensorrt"]
    assert raw["engines"][0]["path"] == "engines/decision_1.plan"


def test_engine_record_absent_for_onnx_model(synthetic_model):
    model_dir, _ = synthetic_model

    assert read_engine_record(read_manifest(model_dir)) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda raw: raw.update(precision="int8"), "'precision' is 'int8'"),
        (lambda raw: raw.update(version=10), "'version' is 10"),
        (lambda raw: raw["profile"].update(min=200), "must satisfy 1 <= min <= opt <= max"),
        (lambda raw: raw["profile"].pop("opt"), "expected integers 'min', 'opt' and 'max'"),
        (lambda raw: raw["engines"].pop(), "expected one engine per stage"),
        (lambda raw: raw["engines"][0].update(path="../x.plan"), "must be relative"),
        (lambda raw: raw["engines"][0].update(sha256="abc"), "must be 64 hex digits"),
    ],
)
def test_engine_record_invalid(trt_model_dir, change, message):
    raw = read_manifest_json(trt_model_dir)
    change(raw["tensorrt"])
    write_manifest(trt_model_dir, raw)

    with pytest.raises(ModelFormatError, match="Invalid 'tensorrt' record") as caught:
        read_engine_record(read_manifest(trt_model_dir, verify_checksums=False))
    assert message in str(caught.value)
    assert "--format trt" in str(caught.value)


def test_engine_record_missing_file(trt_model_dir):
    (trt_model_dir / "engines" / "score.plan").unlink()

    with pytest.raises(ModelFormatError, match="score.plan is listed .* but does not exist"):
        read_engine_record(read_manifest(trt_model_dir))


def test_engine_checksum_mismatch(trt_model_dir):
    with open(trt_model_dir / "engines" / "decision_2.plan", "ab") as stream:
        stream.write(b"x")
    record = read_engine_record(read_manifest(trt_model_dir))

    with pytest.raises(ModelFormatError, match="Checksum mismatch for engine .*decision_2"):
        verify_engine_checksums(record)


def test_check_engine_record_accepts_same_setup(trt_model_dir):
    record = read_engine_record(read_manifest(trt_model_dir))

    check_engine_record(record, FAKE_VERSION, FAKE_GPU)


@pytest.mark.parametrize(
    ("version", "gpu", "expected"),
    [
        ("10.1.0", FAKE_GPU, f"TensorRT {FAKE_VERSION} built them, this process has 10.1.0"),
        (
            FAKE_VERSION,
            GpuProperties(FAKE_GPU.name, "8.6"),
            "compute capability 9.0, this GPU has 8.6",
        ),
        (FAKE_VERSION, GpuProperties("Other GPU", "9.0"), "this GPU is 'Other GPU'"),
    ],
)
def test_check_engine_record_mismatch(trt_model_dir, version, gpu, expected):
    record = read_engine_record(read_manifest(trt_model_dir))

    with pytest.raises(EngineMismatchError) as caught:
        check_engine_record(record, version, gpu)

    assert expected in str(caught.value)
    assert "hdn export RUN --format trt --out DIR" in str(caught.value)


# ----------------------------------------------------------------------------- TensorRT backend


@pytest.fixture
def fake_gpu(monkeypatch) -> FakeTensorRT:
    """Make the runtime find `FakeTensorRT` and `FakeCuda` in place of tensorrt and CUDA."""
    trt = FakeTensorRT(FakeCuda())
    monkeypatch.setattr(tensorrt_backend, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(tensorrt_backend, "load_cuda_runtime", lambda: trt.cuda)
    monkeypatch.setattr(tensorrt_backend, "tensorrt_unavailable_reason", lambda device_id=0: None)
    return trt


def _stage_inputs(batch_size: int, with_hidden: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch_size)
    inputs = {
        "user_emb": rng.integers(-2, 3, (batch_size, 8)).astype(np.float32),
        "item_emb": rng.integers(-2, 3, (batch_size, 8)).astype(np.float32),
    }
    if with_hidden:
        inputs["hidden_in"] = rng.integers(0, 3, (batch_size, 8)).astype(np.float32)
    return inputs


def _open_pair(model_dir: Path, stage: str, profile: dict[str, int], trt: FakeTensorRT):
    onnx_path = model_dir / "stages" / f"{stage}.onnx"
    plan_path = model_dir / f"{stage}-{profile['min']}-{profile['max']}.plan"
    plan_path.write_bytes(fake_plan(onnx_path.read_bytes(), profile))
    return OnnxRuntimeBackend(onnx_path), TensorRTBackend(plan_path, 0, trt, trt.cuda)


@pytest.mark.parametrize("batch_size", [1, 7, 100, 101, 350])
def test_tensorrt_backend_matches_cpu(synthetic_model, tmp_path, batch_size):
    model_dir, _ = synthetic_model
    trt = FakeTensorRT(FakeCuda())
    local_dir = Path(shutil.copytree(model_dir, tmp_path / "model"))
    cpu, backend = _open_pair(local_dir, "decision_2", PROFILE, trt)
    inputs = _stage_inputs(batch_size)

    with cpu, backend:
        expected = cpu.run(inputs)
        actual = backend.run(inputs)

    assert set(actual) == {"decision", "hidden"}
    np.testing.assert_array_equal(actual["decision"], expected["decision"])
    np.testing.assert_array_equal(actual["hidden"], expected["hidden"])
    chunks = trt.engines[0].contexts[0].executed_batches
    assert chunks == [part.stop - part.start for part in split_batches(batch_size, 100)]


def test_tensorrt_backend_allocates_once(synthetic_model, tmp_path):
    model_dir, _ = synthetic_model
    trt = FakeTensorRT(FakeCuda())
    local_dir = Path(shutil.copytree(model_dir, tmp_path / "model"))
    _, backend = _open_pair(local_dir, "score", PROFILE, trt)

    with backend:
        allocations = trt.cuda.calls["allocate"]
        for batch_size in (3, 250, 40):
            backend.run(_stage_inputs(batch_size))

        assert allocations == 4  # 3 inputs and 1 output, each at the profile's max batch
        assert trt.cuda.calls["allocate"] == allocations
        sizes = sorted(len(buffer) for buffer in trt.cuda.memory.values())
        assert sizes == [100 * 4, 100 * 8 * 4, 100 * 8 * 4, 100 * 8 * 4]
    assert trt.cuda.memory == {}
    assert trt.cuda.streams == set()


def test_tensorrt_backend_pads_below_profile_min(synthetic_model, tmp_path):
    model_dir, _ = synthetic_model
    trt = FakeTensorRT(FakeCuda())
    local_dir = Path(shutil.copytree(model_dir, tmp_path / "model"))
    cpu, backend = _open_pair(local_dir, "decision_1", {"min": 8, "opt": 16, "max": 16}, trt)
    inputs = _stage_inputs(3, with_hidden=False)

    with cpu, backend:
        expected = cpu.run(inputs)
        actual = backend.run(inputs)

    assert actual["decision"].shape == (3,)
    np.testing.assert_array_equal(actual["decision"], expected["decision"])
    np.testing.assert_array_equal(actual["hidden"], expected["hidden"])
    assert trt.engines[0].contexts[0].executed_batches == [8]


def test_tensorrt_backend_empty_batch_skips_engine(synthetic_model, tmp_path):
    model_dir, _ = synthetic_model
    trt = FakeTensorRT(FakeCuda())
    local_dir = Path(shutil.copytree(model_dir, tmp_path / "model"))
    _, backend = _open_pair(local_dir, "decision_2", PROFILE, trt)

    with backend:
        outputs = backend.run(_stage_inputs(0))

    assert outputs["decision"].shape == (0,)
    assert outputs["hidden"].shape == (0, 8)
    assert outputs["decision"].dtype == np.float32
    assert trt.engines[0].contexts[0].executed_batches == []
    assert trt.cuda.calls["copy_to_device"] == 0


def test_tensorrt_backend_specs_match_onnx(synthetic_model, tmp_path):
    model_dir, _ = synthetic_model
    trt = FakeTensorRT(FakeCuda())
    local_dir = Path(shutil.copytree(model_dir, tmp_path / "model"))
    cpu, backend = _open_pair(local_dir, "decision_3", PROFILE, trt)

    with cpu, backend:
        assert backend.input_specs == cpu.input_specs
        assert backend.output_specs == cpu.output_specs
        assert (backend.min_rows, backend.max_rows) == (1, 100)


def test_tensorrt_backend_incompatible_engine(tmp_path):
    trt = FakeTensorRT(FakeCuda())
    path = tmp_path / "stage.plan"
    path.write_bytes(b"an engine of another TensorRT version")

    with pytest.raises(EngineMismatchError) as caught:
        TensorRTBackend(path, 0, trt, trt.cuda)

    message = str(caught.value)
    assert "The engine plan file is not compatible" in message
    assert "hdn export RUN --format trt --out DIR" in message


def test_tensorrt_backend_without_gpu(tmp_path):
    trt = FakeTensorRT(FakeCuda(num_devices=0))

    with pytest.raises(BackendUnavailableError, match="no CUDA GPU is visible"):
        TensorRTBackend(tmp_path / "stage.plan", 0, trt, trt.cuda)


def test_tensorrt_backend_missing_file(tmp_path):
    trt = FakeTensorRT(FakeCuda())

    with pytest.raises(FileNotFoundError, match="absent.plan"):
        TensorRTBackend(tmp_path / "absent.plan", 0, trt, trt.cuda)


@pytest.mark.parametrize("rule", ["sign", "quota"])
def test_recommender_tensorrt_matches_cpu(trt_model_dir, fake_gpu, rule):
    users = np.arange(NUM_USERS)
    with Recommender.load(trt_model_dir, backend="cpu", rule=rule) as cpu:
        expected = cpu.recommend_indices(users, k=10)
    with Recommender.load(trt_model_dir, backend="tensorrt", rule=rule) as recommender:
        assert recommender.backend == "tensorrt"
        actual = recommender.recommend_indices(users, k=10)

    for want, got in zip(expected, actual):
        np.testing.assert_array_equal(got, want)


def test_recommender_auto_picks_tensorrt(trt_model_dir, fake_gpu, caplog):
    with caplog.at_level(logging.INFO, logger="hdn_runtime"):
        with Recommender.load(trt_model_dir, backend="auto") as recommender:
            assert recommender.backend == "tensorrt"

    assert "backend='auto' selected 'tensorrt'" in caplog.text
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_recommender_tensorrt_version_mismatch(trt_model_dir, fake_gpu):
    fake_gpu.__version__ = "10.0.1"

    with pytest.raises(EngineMismatchError, match="this process has 10.0.1"):
        Recommender.load(trt_model_dir, backend="tensorrt")


@needs_no_cuda_provider
def test_auto_passes_over_mismatched_engines(trt_model_dir, fake_gpu, caplog):
    fake_gpu.cuda.gpu = GpuProperties("Other GPU", "8.9")

    with caplog.at_level(logging.WARNING, logger="hdn_runtime"):
        with Recommender.load(trt_model_dir, backend="auto") as recommender:
            assert recommender.backend == "cpu"

    assert "loading the engines failed" in caplog.text
    assert "compute capability 9.0, this GPU has 8.9" in caplog.text


def test_recommender_tensorrt_rejects_modified_engine(trt_model_dir, fake_gpu):
    with open(trt_model_dir / "engines" / "score.plan", "ab") as stream:
        stream.write(b"x")

    with pytest.raises(ModelFormatError, match="Checksum mismatch for engine"):
        Recommender.load(trt_model_dir, backend="tensorrt")


# ----------------------------------------------------------------------------- CUDA provider


class _SessionWithoutCuda:
    """An InferenceSession stand-in whose CUDA provider failed to start."""

    def __init__(self, path, sess_options=None, providers=None, provider_options=None):
        self.provider_options = provider_options

    def get_providers(self):
        return ["CPUExecutionProvider"]


def test_cuda_provider_fallback_detected(synthetic_model, monkeypatch):
    import onnxruntime

    model_dir, _ = synthetic_model
    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    monkeypatch.setattr(onnxruntime, "InferenceSession", _SessionWithoutCuda)

    with pytest.raises(BackendUnavailableError) as caught:
        OnnxRuntimeBackend(
            model_dir / "stages" / "score.onnx",
            providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
        )

    assert "runs on ['CPUExecutionProvider'] without it" in str(caught.value)
    assert "backend='cpu'" in str(caught.value)


def test_cuda_provider_gets_device_id(synthetic_model, monkeypatch):
    import onnxruntime

    sessions = []

    class RecordingSession(_SessionWithoutCuda):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            sessions.append(self)

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def get_inputs(self):
            return []

        def get_outputs(self):
            return []

    model_dir, _ = synthetic_model
    monkeypatch.setattr(
        onnxruntime,
        "get_available_providers",
        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"],
    )
    monkeypatch.setattr(onnxruntime, "InferenceSession", RecordingSession)

    OnnxRuntimeBackend(
        model_dir / "stages" / "score.onnx",
        providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
        device_id=2,
    )

    assert sessions[0].provider_options == [{"device_id": "2"}, {}]


# ----------------------------------------------------------------------------- CUDA wrappers


def _fake_cudart(error_code: int = 0):
    """A stand-in for cuda-python's runtime module: calls return (error, value) tuples."""
    success = 0
    memory_copies = []

    def result(*values):
        return (error_code, *values)

    properties = types.SimpleNamespace(name=b"Fake GPU 80GB\0\0\0", major=9, minor=0)
    return types.SimpleNamespace(
        cudaError_t=types.SimpleNamespace(cudaSuccess=success),
        cudaMemcpyKind=types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2),
        cudaGetErrorString=lambda error: (success, b"out of memory"),
        cudaGetDeviceCount=lambda: result(2),
        cudaGetDeviceProperties=lambda device: result(properties),
        cudaMalloc=lambda size: result(4096),
        cudaMemcpyAsync=lambda *args: memory_copies.append(args) or result(),
        memory_copies=memory_copies,
    )


def test_cuda_python_runtime_wraps_results():
    cudart = _fake_cudart()
    runtime = CudaPythonRuntime(cudart)
    host = np.zeros(4, dtype=np.float32)

    assert runtime.device_count() == 2
    assert runtime.device_properties(0) == GpuProperties("Fake GPU 80GB", "9.0")
    assert runtime.allocate(16) == 4096
    runtime.copy_to_device(4096, host, stream=7)
    assert cudart.memory_copies == [(4096, host.ctypes.data, 16, 1, 7)]


def test_cuda_python_runtime_raises_on_error():
    runtime = CudaPythonRuntime(_fake_cudart(error_code=2))

    with pytest.raises(RuntimeError, match="cudaMalloc failed: out of memory"):
        runtime.allocate(16)
    assert "no CUDA GPU is usable" in gpu_unavailable_reason(runtime)


def test_cupy_runtime_wraps_errors():
    class CUDARuntimeError(Exception):
        pass

    def failing_count():
        raise CUDARuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected")

    runtime_module = types.SimpleNamespace(
        CUDARuntimeError=CUDARuntimeError,
        getDeviceCount=failing_count,
        getDeviceProperties=lambda device: {"name": b"Fake GPU", "major": 8, "minor": 6},
    )
    runtime = CupyRuntime(runtime_module)

    assert runtime.device_properties(0) == GpuProperties("Fake GPU", "8.6")
    with pytest.raises(RuntimeError, match="cudaGetDeviceCount failed: cudaErrorNoDevice"):
        runtime.device_count()


def test_gpu_unavailable_reason_cases():
    assert gpu_unavailable_reason(FakeCuda()) is None
    assert gpu_unavailable_reason(FakeCuda(num_devices=0)) == (
        "no CUDA GPU is visible to this process"
    )
    assert "device 3 does not exist" in gpu_unavailable_reason(FakeCuda(num_devices=2), 3)


# ----------------------------------------------------------------------------- real GPU


@pytest.mark.gpu
@pytest.mark.skipif(
    select.cuda_unavailable_reason() is not None,
    reason=f"ONNX Runtime CUDA provider unavailable: {select.cuda_unavailable_reason()}",
)
def test_cuda_backend_matches_cpu_on_gpu(synthetic_model):
    model_dir, _ = synthetic_model
    users = np.arange(NUM_USERS)
    with Recommender.load(model_dir, backend="cpu") as cpu:
        expected = cpu.recommend_indices(users, k=10)
    with Recommender.load(model_dir, backend="cuda") as recommender:
        actual = recommender.recommend_indices(users, k=10)

    # The synthetic model's sums are exact in float32, so any correct backend agrees exactly.
    for want, got in zip(expected, actual):
        np.testing.assert_array_equal(got, want)
