"""The few CUDA runtime calls the TensorRT backend needs, over cuda-python or CuPy.

TensorRT's Python API runs engines on raw device pointers and stream handles but does not
allocate memory or copy data itself. This module wraps the CUDA runtime functions for that
(device queries, streams, allocation, copies), importing whichever of cuda-python or CuPy is
installed when `load_cuda_runtime` is called. Neither is needed to import `hdn_runtime`.
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass

import numpy as np

from hdn_runtime.errors import BackendUnavailableError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuProperties:
    """Identity of one CUDA device, as recorded next to the engines built on it.

    Attributes:
        name: Device name as the driver reports it, e.g. "NVIDIA H100 80GB HBM3".
        compute_capability: "major.minor", e.g. "9.0".
    """

    name: str
    compute_capability: str


class CudaRuntime(abc.ABC):
    """CUDA runtime functions on integer device pointers and integer stream handles.

    Every method raises RuntimeError naming the CUDA call when the call fails.
    """

    #: Name of the Python package behind the implementation, for messages.
    package: str = ""

    @abc.abstractmethod
    def device_count(self) -> int:
        """Return the number of visible CUDA devices."""

    @abc.abstractmethod
    def device_properties(self, device_id: int) -> GpuProperties:
        """Return the name and compute capability of a device."""

    @abc.abstractmethod
    def set_device(self, device_id: int) -> None:
        """Make `device_id` the current device of the calling thread."""

    @abc.abstractmethod
    def create_stream(self) -> int:
        """Create a stream on the current device and return its handle."""

    @abc.abstractmethod
    def destroy_stream(self, stream: int) -> None:
        """Destroy a stream created by `create_stream`."""

    @abc.abstractmethod
    def allocate(self, num_bytes: int) -> int:
        """Allocate device memory on the current device and return its address."""

    @abc.abstractmethod
    def free(self, pointer: int) -> None:
        """Release memory returned by `allocate`."""

    @abc.abstractmethod
    def copy_to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        """Queue a copy of a C-contiguous host array to `pointer` on `stream`.

        The array must stay alive and unchanged until the stream is synchronized.
        """

    @abc.abstractmethod
    def copy_to_host(self, array: np.ndarray, pointer: int, stream: int) -> None:
        """Queue a copy from `pointer` into a C-contiguous host array on `stream`."""

    @abc.abstractmethod
    def synchronize(self, stream: int) -> None:
        """Block until every operation queued on `stream` has finished."""


class CudaPythonRuntime(CudaRuntime):
    """`CudaRuntime` over the runtime bindings of NVIDIA's cuda-python package."""

    package = "cuda-python"

    def __init__(self, cudart) -> None:
        self._cudart = cudart
        self._success = cudart.cudaError_t.cudaSuccess

    def _check(self, call: str, result: tuple):
        """Raise RuntimeError unless the first element of a cuda-python result is success."""
        error, *values = result
        if error != self._success:
            _, description = self._cudart.cudaGetErrorString(error)
            raise RuntimeError(f"CUDA call {call} failed: {_decode(description)} ({error}).")
        return values[0] if len(values) == 1 else values

    def device_count(self) -> int:
        return int(self._check("cudaGetDeviceCount", self._cudart.cudaGetDeviceCount()))

    def device_properties(self, device_id: int) -> GpuProperties:
        properties = self._check(
            "cudaGetDeviceProperties", self._cudart.cudaGetDeviceProperties(device_id)
        )
        capability = f"{properties.major}.{properties.minor}"
        return GpuProperties(_decode(properties.name), capability)

    def set_device(self, device_id: int) -> None:
        self._check("cudaSetDevice", self._cudart.cudaSetDevice(device_id))

    def create_stream(self) -> int:
        return int(self._check("cudaStreamCreate", self._cudart.cudaStreamCreate()))

    def destroy_stream(self, stream: int) -> None:
        self._check("cudaStreamDestroy", self._cudart.cudaStreamDestroy(stream))

    def allocate(self, num_bytes: int) -> int:
        return int(self._check("cudaMalloc", self._cudart.cudaMalloc(num_bytes)))

    def free(self, pointer: int) -> None:
        self._check("cudaFree", self._cudart.cudaFree(pointer))

    def copy_to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        result = self._cudart.cudaMemcpyAsync(
            pointer, array.ctypes.data, array.nbytes, kind, stream
        )
        self._check("cudaMemcpyAsync", result)

    def copy_to_host(self, array: np.ndarray, pointer: int, stream: int) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        result = self._cudart.cudaMemcpyAsync(
            array.ctypes.data, pointer, array.nbytes, kind, stream
        )
        self._check("cudaMemcpyAsync", result)

    def synchronize(self, stream: int) -> None:
        self._check("cudaStreamSynchronize", self._cudart.cudaStreamSynchronize(stream))


class CupyRuntime(CudaRuntime):
    """`CudaRuntime` over `cupy.cuda.runtime`, which raises its own error on failure."""

    package = "cupy"

    def __init__(self, runtime) -> None:
        self._runtime = runtime

    def _call(self, call: str, function, *args):
        try:
            return function(*args)
        except self._runtime.CUDARuntimeError as err:
            raise RuntimeError(f"CUDA call {call} failed: {err}.") from err

    def device_count(self) -> int:
        return int(self._call("cudaGetDeviceCount", self._runtime.getDeviceCount))

    def device_properties(self, device_id: int) -> GpuProperties:
        properties = self._call(
            "cudaGetDeviceProperties", self._runtime.getDeviceProperties, device_id
        )
        capability = f"{properties['major']}.{properties['minor']}"
        return GpuProperties(_decode(properties["name"]), capability)

    def set_device(self, device_id: int) -> None:
        self._call("cudaSetDevice", self._runtime.setDevice, device_id)

    def create_stream(self) -> int:
        return int(self._call("cudaStreamCreate", self._runtime.streamCreate))

    def destroy_stream(self, stream: int) -> None:
        self._call("cudaStreamDestroy", self._runtime.streamDestroy, stream)

    def allocate(self, num_bytes: int) -> int:
        return int(self._call("cudaMalloc", self._runtime.malloc, num_bytes))

    def free(self, pointer: int) -> None:
        self._call("cudaFree", self._runtime.free, pointer)

    def copy_to_device(self, pointer: int, array: np.ndarray, stream: int) -> None:
        kind = self._runtime.memcpyHostToDevice
        args = (pointer, array.ctypes.data, array.nbytes, kind, stream)
        self._call("cudaMemcpyAsync", self._runtime.memcpyAsync, *args)

    def copy_to_host(self, array: np.ndarray, pointer: int, stream: int) -> None:
        kind = self._runtime.memcpyDeviceToHost
        args = (array.ctypes.data, pointer, array.nbytes, kind, stream)
        self._call("cudaMemcpyAsync", self._runtime.memcpyAsync, *args)

    def synchronize(self, stream: int) -> None:
        self._call("cudaStreamSynchronize", self._runtime.streamSynchronize, stream)


def try_load_cuda_runtime() -> tuple[CudaRuntime | None, str | None]:
    """Import cuda-python, else CuPy, and wrap its CUDA runtime bindings.

    Returns:
        (runtime, None) on success, or (None, reason) when neither package imports.
    """
    errors = []
    try:
        from cuda.bindings import runtime as cudart  # cuda-python 12.6 and later
    except ImportError as err:
        try:
            from cuda import cudart  # cuda-python before 12.6
        except ImportError:
            errors.append(f"cuda-python: {err}")
        else:
            return CudaPythonRuntime(cudart), None
    else:
        return CudaPythonRuntime(cudart), None

    try:
        import cupy.cuda.runtime
    except ImportError as err:
        errors.append(f"cupy: {err}")
    else:
        return CupyRuntime(cupy.cuda.runtime), None

    return None, "neither cuda-python nor cupy can be imported (" + "; ".join(errors) + ")"


def load_cuda_runtime() -> CudaRuntime:
    """Return the CUDA runtime wrapper of `try_load_cuda_runtime`.

    Raises:
        BackendUnavailableError: Neither cuda-python nor CuPy can be imported.
    """
    runtime, reason = try_load_cuda_runtime()
    if runtime is None:
        raise BackendUnavailableError(
            f"TensorRT needs cuda-python or cupy for device memory, but {reason}. Install "
            "cuda-python with pip install 'hdn[gpu]'."
        )
    return runtime


def gpu_unavailable_reason(runtime: CudaRuntime, device_id: int = 0) -> str | None:
    """Return why CUDA device `device_id` cannot be used, or None when it can."""
    try:
        count = runtime.device_count()
    except RuntimeError as err:
        return f"no CUDA GPU is usable ({err})"
    if count == 0:
        return "no CUDA GPU is visible to this process"
    if not 0 <= device_id < count:
        return f"CUDA device {device_id} does not exist; this machine has {count}"
    return None


def _decode(value: bytes | str) -> str:
    if isinstance(value, bytes):
        return value.split(b"\0", 1)[0].decode(errors="replace")
    return str(value)
