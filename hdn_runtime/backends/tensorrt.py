"""Stage backend that runs one serialized TensorRT engine on a CUDA device.

The engines come from `hdn export --format trt`; checking their manifest record against this
machine is left to `engine_record`. tensorrt and a CUDA package (cuda-python or CuPy, wrapped
by `cuda_runtime`) are imported when a backend is created, so importing this module needs
neither.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdn_runtime.backends.base import StageBackend, TensorSpec
from hdn_runtime.backends.cuda_runtime import (
    CudaRuntime,
    gpu_unavailable_reason,
    load_cuda_runtime,
    try_load_cuda_runtime,
)
from hdn_runtime.backends.engine_record import (
    REBUILD_HINT,
    check_engine_record,
    read_engine_record,
    verify_engine_checksums,
)
from hdn_runtime.errors import BackendUnavailableError, EngineMismatchError, ModelFormatError
from hdn_runtime.manifest import Manifest

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "Install the GPU extra with pip install 'hdn[gpu]' (it brings onnxruntime-gpu, tensorrt "
    "and cuda-python). onnxruntime and onnxruntime-gpu provide the same module and break each "
    "other, so run pip uninstall onnxruntime first."
)


def split_batches(num_rows: int, max_rows: int) -> list[slice]:
    """Split rows [0, num_rows) into consecutive slices of at most `max_rows` rows.

    An engine's optimisation profile caps its batch size, so a larger batch runs in chunks.

    Args:
        num_rows: Batch size, >= 0. Zero gives no slices.
        max_rows: Largest chunk, >= 1.

    Returns:
        Slices in order. All but the last have exactly `max_rows` rows.

    Raises:
        ValueError: `num_rows` is negative or `max_rows` is below 1.
    """
    if not _is_int(num_rows) or num_rows < 0:
        raise ValueError(f"num_rows must be an integer >= 0, got {num_rows!r}.")
    if not _is_int(max_rows) or max_rows < 1:
        raise ValueError(f"max_rows must be an integer >= 1, got {max_rows!r}.")
    return [slice(start, min(start + max_rows, num_rows)) for start in range(0, num_rows, max_rows)]


def import_tensorrt():
    """Import and return the tensorrt module.

    Raises:
        BackendUnavailableError: It cannot be imported. The message gives the install command.
    """
    try:
        import tensorrt
    except ImportError as err:
        raise BackendUnavailableError(
            f"The tensorrt package cannot be imported ({err}). {INSTALL_HINT}"
        ) from err
    return tensorrt


def tensorrt_unavailable_reason(device_id: int = 0) -> str | None:
    """Return why TensorRT engines cannot run here, or None when they can.

    Checks, without loading any engine, that tensorrt imports, that cuda-python or CuPy
    imports, and that CUDA device `device_id` is visible. The reason lists every failed check.
    """
    problems = []
    try:
        import tensorrt  # noqa: F401
    except ImportError as err:
        problems.append(f"the tensorrt package cannot be imported ({err})")
    cuda, cuda_problem = try_load_cuda_runtime()
    if cuda_problem is not None:
        problems.append(cuda_problem)
    else:
        gpu_problem = gpu_unavailable_reason(cuda, device_id)
        if gpu_problem is not None:
            problems.append(gpu_problem)
    return "; ".join(problems) if problems else None


def make_tensorrt_logger(trt):
    """Return a `trt.ILogger` that forwards TensorRT's messages to this module's logger.

    Errors are also kept in its `errors` list, so a failed call can quote them.
    """

    class ForwardingLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, message: str) -> None:
            levels = trt.ILogger.Severity
            if severity in (levels.INTERNAL_ERROR, levels.ERROR):
                self.errors.append(message)
                logger.error("TensorRT: %s", message)
            elif severity == levels.WARNING:
                logger.warning("TensorRT: %s", message)
            else:
                logger.debug("TensorRT: %s", message)

    return ForwardingLogger()


@dataclass
class _DeviceTensor:
    """An engine input or output with its device buffer, sized for the profile's max batch."""

    name: str
    is_input: bool
    spec: TensorSpec
    pointer: int


class TensorRTBackend(StageBackend):
    """Stage backend that runs one serialized TensorRT engine on a CUDA device.

    Device buffers for every input and output are allocated once, at the profile's maximum
    batch, and reused by every call. A larger batch runs in chunks of that size. A chunk
    smaller than the profile's minimum is padded with zero rows, whose outputs are dropped.
    Calls are serialized with a lock, because the execution context and the buffers are
    shared.

    Args:
        path: The stage's `.plan` file.
        device_id: CUDA device to run on.
        tensorrt_module: The tensorrt module. None imports it.
        cuda_runtime: CUDA runtime wrapper. None loads cuda-python or CuPy.

    Raises:
        BackendUnavailableError: tensorrt, cuda-python and CuPy, or the GPU is missing.
        FileNotFoundError: `path` does not exist.
        EngineMismatchError: TensorRT cannot deserialize the engine, which happens when it was
            built by another TensorRT version or for another GPU.
        ModelFormatError: The engine has more than one optimisation profile, or a tensor with
            a dynamic axis other than the batch axis.
    """

    def __init__(
        self,
        path: str | Path,
        device_id: int = 0,
        tensorrt_module=None,
        cuda_runtime: CudaRuntime | None = None,
    ) -> None:
        super().__init__(path)
        trt = tensorrt_module if tensorrt_module is not None else import_tensorrt()
        cuda = cuda_runtime if cuda_runtime is not None else load_cuda_runtime()
        gpu_problem = gpu_unavailable_reason(cuda, device_id)
        if gpu_problem is not None:
            raise BackendUnavailableError(
                f"The TensorRT backend cannot run: {gpu_problem}. Run on a machine with an "
                "NVIDIA GPU, or load the model with backend='cpu'."
            )
        if not self.path.is_file():
            raise FileNotFoundError(f"Engine file {self.path} does not exist.")

        self._trt = trt
        self._cuda = cuda
        self._device_id = device_id
        self._lock = threading.Lock()
        self._tensors: list[_DeviceTensor] = []
        self._stream: int | None = None
        self.min_rows = 1  # batch bounds of the engine's profile, set by _describe_tensors
        self.max_rows = 1

        cuda.set_device(device_id)
        self._trt_logger = make_tensorrt_logger(trt)
        self._runtime = trt.Runtime(self._trt_logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            reported = " ".join(self._trt_logger.errors) or "no error was reported"
            raise EngineMismatchError(
                f"TensorRT {trt.__version__} cannot load engine {self.path}: {reported}. "
                f"Engines run only with the TensorRT version and GPU they were built for. "
                f"{REBUILD_HINT}"
            )
        if self._engine.num_optimization_profiles != 1:
            raise ModelFormatError(
                f"Engine {self.path} has {self._engine.num_optimization_profiles} optimisation "
                "profiles, expected 1. Rebuild with 'hdn export RUN --format trt --out DIR'."
            )

        try:
            self._describe_tensors()
            self._allocate_buffers()
        except BaseException:
            self._close()
            raise
        logger.debug(
            "Loaded engine %s on device %d: batch %d..%d",
            self.path,
            device_id,
            self.min_rows,
            self.max_rows,
        )

    @property
    def input_specs(self) -> dict[str, TensorSpec]:
        return self._input_specs

    @property
    def output_specs(self) -> dict[str, TensorSpec]:
        return self._output_specs

    def _describe_tensors(self) -> None:
        trt, engine = self._trt, self._engine
        self._input_specs: dict[str, TensorSpec] = {}
        self._output_specs: dict[str, TensorSpec] = {}
        min_rows, max_rows = 1, None
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(None if size < 0 else int(size) for size in engine.get_tensor_shape(name))
            if any(size is None for size in shape[1:]):
                raise ModelFormatError(
                    f"Tensor {name!r} of engine {self.path} has shape {shape}; only the batch "
                    "axis may be dynamic. Rebuild with 'hdn export RUN --format trt --out DIR'."
                )
            spec = TensorSpec(np.dtype(trt.nptype(engine.get_tensor_dtype(name))), shape)
            (self._input_specs if is_input else self._output_specs)[name] = spec
            if is_input:
                profile_min, _, profile_max = engine.get_tensor_profile_shape(name, 0)
                min_rows = max(min_rows, int(profile_min[0]))
                max_rows = (
                    int(profile_max[0]) if max_rows is None else min(max_rows, int(profile_max[0]))
                )
        if max_rows is None or max_rows < min_rows:
            raise ModelFormatError(
                f"Engine {self.path} has no usable batch profile (min {min_rows}, max "
                f"{max_rows}). Rebuild with 'hdn export RUN --format trt --out DIR'."
            )
        self.min_rows = min_rows
        self.max_rows = max_rows

    def _allocate_buffers(self) -> None:
        self._context = self._engine.create_execution_context()
        self._stream = self._cuda.create_stream()
        for is_input, specs in ((True, self._input_specs), (False, self._output_specs)):
            for name, spec in specs.items():
                row_elements = int(np.prod(spec.shape[1:], dtype=np.int64))
                num_bytes = max(1, self.max_rows * row_elements * spec.dtype.itemsize)
                pointer = self._cuda.allocate(num_bytes)
                self._tensors.append(_DeviceTensor(name, is_input, spec, pointer))
                # Addresses stay bound to the context, so they are set once, not per call.
                self._context.set_tensor_address(name, pointer)

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        num_rows = len(next(iter(inputs.values())))
        host_inputs = {
            name: np.ascontiguousarray(inputs[name], dtype=spec.dtype)
            for name, spec in self._input_specs.items()
        }
        for name, array in host_inputs.items():
            expected = (num_rows, *self._input_specs[name].shape[1:])
            if array.shape != expected:
                raise ValueError(
                    f"Input {name!r} of stage {self.path.name} has shape {array.shape}, "
                    f"expected {expected}."
                )
        outputs = {
            name: np.empty((num_rows, *spec.shape[1:]), dtype=spec.dtype)
            for name, spec in self._output_specs.items()
        }
        with self._lock:
            self._cuda.set_device(self._device_id)
            for rows in split_batches(num_rows, self.max_rows):
                self._run_chunk(host_inputs, outputs, rows)
        return outputs

    def _run_chunk(
        self, host_inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray], rows: slice
    ) -> None:
        num_rows = rows.stop - rows.start
        padded_rows = max(num_rows, self.min_rows)
        # Host arrays must outlive the asynchronous copies, until the stream synchronizes.
        staged: list[np.ndarray] = []
        for tensor in self._tensors:
            if not tensor.is_input:
                continue
            chunk = _padded(host_inputs[tensor.name][rows], padded_rows)
            staged.append(chunk)
            if not self._context.set_input_shape(tensor.name, chunk.shape):
                self._cuda.synchronize(self._stream)
                raise RuntimeError(
                    f"TensorRT rejected shape {chunk.shape} for input {tensor.name!r} of engine "
                    f"{self.path}, whose profile allows {self.min_rows} to {self.max_rows} rows."
                )
            self._cuda.copy_to_device(tensor.pointer, chunk, self._stream)

        if not self._context.execute_async_v3(self._stream):
            self._cuda.synchronize(self._stream)
            reported = " ".join(self._trt_logger.errors[-3:]) or "no error was reported"
            raise RuntimeError(f"TensorRT failed to run engine {self.path}: {reported}")

        padded_outputs = {}
        for tensor in self._tensors:
            if tensor.is_input:
                continue
            target = outputs[tensor.name][rows]  # a view: rows of a C-contiguous array
            if padded_rows != num_rows:
                target = np.empty((padded_rows, *tensor.spec.shape[1:]), tensor.spec.dtype)
                padded_outputs[tensor.name] = target
            self._cuda.copy_to_host(target, tensor.pointer, self._stream)
        self._cuda.synchronize(self._stream)

        for name, padded_output in padded_outputs.items():
            outputs[name][rows] = padded_output[:num_rows]

    def _close(self) -> None:
        # The context uses the engine and the buffers, so it goes first.
        for attribute in ("_context", "_engine", "_runtime"):
            if hasattr(self, attribute):
                delattr(self, attribute)
        for tensor in self._tensors:
            self._cuda.free(tensor.pointer)
        self._tensors = []
        if self._stream is not None:
            self._cuda.destroy_stream(self._stream)
            self._stream = None


def _padded(array: np.ndarray, num_rows: int) -> np.ndarray:
    """Return `array` with zero rows appended up to `num_rows`, as a C-contiguous array."""
    if len(array) == num_rows:
        return np.ascontiguousarray(array)
    padded = np.zeros((num_rows, *array.shape[1:]), dtype=array.dtype)
    padded[: len(array)] = array
    return padded


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def open_tensorrt_stages(manifest: Manifest, device_id: int = 0) -> list[TensorRTBackend]:
    """Check a model's engine record against this machine and load one backend per stage.

    Args:
        manifest: The model's validated manifest.
        device_id: CUDA device to run on.

    Returns:
        One backend per stage, in cascade order. The caller closes them.

    Raises:
        BackendUnavailableError: The model has no engines, or TensorRT or the GPU is missing.
        EngineMismatchError: The engines were built for another TensorRT version or GPU.
        ModelFormatError: The record is malformed or an engine file was modified.
    """
    record = read_engine_record(manifest)
    if record is None:
        raise BackendUnavailableError(
            f"The model in {manifest.model_dir} has no TensorRT engines. Build them with "
            "'hdn export RUN --format trt --out DIR', or load it with backend='cuda' or 'cpu'."
        )
    trt = import_tensorrt()
    cuda = load_cuda_runtime()
    gpu_problem = gpu_unavailable_reason(cuda, device_id)
    if gpu_problem is not None:
        raise BackendUnavailableError(f"The TensorRT backend cannot run: {gpu_problem}.")
    check_engine_record(record, trt.__version__, cuda.device_properties(device_id))
    verify_engine_checksums(record)

    backends: list[TensorRTBackend] = []
    try:
        for entry in record.engines:
            backends.append(TensorRTBackend(entry.path, device_id, trt, cuda))
    except BaseException:
        for backend in backends:
            backend.close()
        raise
    return backends
