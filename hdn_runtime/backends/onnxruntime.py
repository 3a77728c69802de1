"""Stage backend that runs one ONNX stage file in an ONNX Runtime inference session.

onnxruntime is imported when a backend is created, not when this module is imported, so
`hdn_runtime` stays importable on machines without it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from hdn_runtime.backends.base import StageBackend, TensorSpec
from hdn_runtime.errors import BackendUnavailableError, ModelFormatError

logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
CUDA_PROVIDERS = (CUDA_PROVIDER, CPU_PROVIDER)

# ONNX Runtime reports element types as strings such as "tensor(float)".
_DTYPE_FROM_ORT_TYPE = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(bool)": np.dtype(np.bool_),
}


def _import_onnxruntime(providers: Sequence[str]):
    extra = "cpu" if list(providers) == [CPU_PROVIDER] else "gpu"
    try:
        import onnxruntime
    except ImportError as err:
        raise BackendUnavailableError(
            f"The onnxruntime package cannot be imported ({err}). Install it with "
            f"pip install 'hdn[{extra}]'."
        ) from err
    return onnxruntime


class OnnxRuntimeBackend(StageBackend):
    """Stage backend that runs one stage file with ONNX Runtime.

    Args:
        path: The stage's `.onnx` file.
        intra_op_threads: Threads ONNX Runtime uses inside one operator. None keeps ONNX
            Runtime's default.
        providers: Execution providers in order of preference. Pass `CUDA_PROVIDERS` to run
            on the GPU with the CPU provider for operators CUDA lacks.
        device_id: CUDA device for the CUDA provider; ignored without it.

    Raises:
        BackendUnavailableError: onnxruntime is not installed, a requested provider is not
            part of the installed build, or the session left out the first requested provider.
            ONNX Runtime drops the CUDA provider with an error in its log when the CUDA or
            cuDNN libraries or the GPU are missing.
        FileNotFoundError: `path` does not exist.
        ModelFormatError: ONNX Runtime cannot load the file.
        ValueError: `intra_op_threads` is not a positive integer.
    """

    def __init__(
        self,
        path: str | Path,
        intra_op_threads: int | None = None,
        providers: Sequence[str] = (CPU_PROVIDER,),
        device_id: int = 0,
    ) -> None:
        super().__init__(path)
        ort = _import_onnxruntime(providers)

        available_providers = ort.get_available_providers()
        missing_providers = [name for name in providers if name not in available_providers]
        if missing_providers:
            raise BackendUnavailableError(
                f"ONNX Runtime providers {missing_providers} are not available in this "
                f"installation (available: {available_providers}). For CUDA, install "
                "pip install 'hdn[gpu]' instead of 'hdn[cpu]'."
            )
        if intra_op_threads is not None and (
            not isinstance(intra_op_threads, int) or intra_op_threads < 1
        ):
            raise ValueError(
                f"intra_op_threads must be a positive integer or None, got {intra_op_threads!r}."
            )
        if not self.path.is_file():
            raise FileNotFoundError(f"Stage file {self.path} does not exist.")

        options = ort.SessionOptions()
        if intra_op_threads is not None:
            options.intra_op_num_threads = intra_op_threads
        provider_options = [
            {"device_id": str(device_id)} if name == CUDA_PROVIDER else {} for name in providers
        ]
        try:
            self._session = ort.InferenceSession(
                str(self.path),
                sess_options=options,
                providers=list(providers),
                provider_options=provider_options,
            )
        except Exception as err:
            # onnxruntime's load errors (InvalidProtobuf, InvalidGraph, Fail, ...) share no
            # base class below Exception, as of onnxruntime 1.23.
            raise ModelFormatError(
                f"ONNX Runtime cannot load stage file {self.path}: {err}. "
                "Re-export the model with 'hdn export'."
            ) from err

        active_providers = self._session.get_providers()
        if providers and providers[0] not in active_providers:
            raise BackendUnavailableError(
                f"ONNX Runtime lists {providers[0]} as available, but the session for "
                f"{self.path} runs on {active_providers} without it. For CUDA this means the "
                "CUDA or cuDNN libraries that onnxruntime-gpu needs, or the GPU itself, are "
                "missing, and ONNX Runtime's own log names the library it could not load. Load "
                "the model with backend='cpu' to run on the CPU."
            )

        self._input_specs = {
            node.name: _spec_from_node(node, self.path) for node in self._session.get_inputs()
        }
        self._output_specs = {
            node.name: _spec_from_node(node, self.path) for node in self._session.get_outputs()
        }
        self._output_names = list(self._output_specs)
        logger.debug("Loaded %s with providers %s", self.path, self._session.get_providers())

    @property
    def input_specs(self) -> dict[str, TensorSpec]:
        return self._input_specs

    @property
    def output_specs(self) -> dict[str, TensorSpec]:
        return self._output_specs

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: np.ascontiguousarray(array) for name, array in inputs.items()}
        outputs = self._session.run(self._output_names, feed)
        return dict(zip(self._output_names, outputs))

    def _close(self) -> None:
        # Dropping the last reference releases the ONNX Runtime session.
        del self._session


def _spec_from_node(node, path: Path) -> TensorSpec:
    dtype = _DTYPE_FROM_ORT_TYPE.get(node.type)
    if dtype is None:
        raise ModelFormatError(
            f"Tensor {node.name!r} of {path} has type {node.type}, which hdn_runtime does not "
            f"handle (supported: {sorted(_DTYPE_FROM_ORT_TYPE)}). Re-export the model with "
            "'hdn export'."
        )
    # Symbolic dimensions come back as strings and unknown ones as None.
    shape = tuple(size if isinstance(size, int) else None for size in node.shape)
    return TensorSpec(dtype=dtype, shape=shape)
