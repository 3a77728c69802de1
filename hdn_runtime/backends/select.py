"""Choose the stage backend for a model on this machine and open one backend per stage.

`choose_backend` is the pure decision. `open_stage_backends` probes what this machine can run,
applies the decision, and for `backend="auto"` falls back to the next backend when one fails
to load.
"""

from __future__ import annotations

import logging

from hdn_runtime.backends.base import StageBackend
from hdn_runtime.backends.engine_record import has_engine_record
from hdn_runtime.backends.onnxruntime import CUDA_PROVIDER, CUDA_PROVIDERS, OnnxRuntimeBackend
from hdn_runtime.errors import BackendUnavailableError, EngineMismatchError, ModelFormatError
from hdn_runtime.manifest import Manifest

logger = logging.getLogger(__name__)

BACKENDS = ("cpu", "auto", "cuda", "tensorrt")
NO_ENGINES_REASON = (
    "the model has no TensorRT engines (build them with 'hdn export RUN --format trt --out DIR')"
)


def choose_backend(
    requested: str,
    has_engines: bool,
    tensorrt_problem: str | None,
    cuda_problem: str | None,
) -> tuple[str, list[str]]:
    """Pick the backend that runs the stages.

    "auto" prefers TensorRT when the model has engines and TensorRT can run them, then ONNX
    Runtime's CUDA provider, then the CPU. An explicit backend is used as requested or not at
    all.

    Args:
        requested: One of `BACKENDS`.
        has_engines: The model directory has TensorRT engines.
        tensorrt_problem: Why TensorRT cannot run here, or None when it can. Read only when
            TensorRT is a candidate.
        cuda_problem: Why ONNX Runtime's CUDA provider cannot run here, or None when it can.
            Read only when CUDA is a candidate.

    Returns:
        The backend ("cpu", "cuda" or "tensorrt") and, for "auto", the reason each preferred
        backend was passed over, in order of preference.

    Raises:
        ValueError: `requested` is not one of `BACKENDS`.
        BackendUnavailableError: An explicit backend cannot run; the message gives the reason.
    """
    if requested not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {requested!r}.")
    if requested == "cpu":
        return "cpu", []

    if requested == "tensorrt":
        problem = NO_ENGINES_REASON if not has_engines else tensorrt_problem
        if problem is not None:
            raise BackendUnavailableError(
                f"backend='tensorrt' cannot run: {problem}. Pass backend='auto' to fall back "
                "to the best available backend."
            )
        return "tensorrt", []

    if requested == "cuda":
        if cuda_problem is not None:
            raise BackendUnavailableError(
                f"backend='cuda' cannot run: {cuda_problem}. Pass backend='cpu' to run on the CPU."
            )
        return "cuda", []

    reasons = []
    if has_engines and tensorrt_problem is None:
        return "tensorrt", reasons
    reasons.append(f"not 'tensorrt': {tensorrt_problem if has_engines else NO_ENGINES_REASON}")
    if cuda_problem is None:
        return "cuda", reasons
    reasons.append(f"not 'cuda': {cuda_problem}")
    return "cpu", reasons


def cuda_unavailable_reason() -> str | None:
    """Return why ONNX Runtime cannot offer its CUDA provider here, or None when it can.

    The check reads onnxruntime's provider list and loads nothing. A provider that is listed
    but cannot start (missing CUDA libraries, no GPU) is detected only when a session is
    created, where `OnnxRuntimeBackend` raises.
    """
    try:
        import onnxruntime
    except ImportError as err:
        return f"the onnxruntime package cannot be imported ({err})"
    available = onnxruntime.get_available_providers()
    if CUDA_PROVIDER not in available:
        return (
            f"the installed onnxruntime has no {CUDA_PROVIDER} (available: {available}); "
            "install onnxruntime-gpu with pip install 'hdn[gpu]' in place of onnxruntime"
        )
    return None


def open_stage_backends(
    manifest: Manifest,
    backend: str = "cpu",
    intra_op_threads: int | None = None,
    device_id: int = 0,
) -> tuple[str, list[StageBackend]]:
    """Choose the backend for `manifest`'s model and load every stage with it.

    With "auto", the choice is logged at INFO and each backend passed over at WARNING, with
    its reason. A backend that passes the availability checks but fails to load (an engine
    built for another GPU, a CUDA provider that cannot start) is passed over the same way.

    Args:
        manifest: The model's validated manifest.
        backend: One of `BACKENDS`.
        intra_op_threads: Threads per operator for ONNX Runtime. None keeps its default.
        device_id: CUDA device for the "cuda" and "tensorrt" backends.

    Returns:
        The backend used and one stage backend per stage, in cascade order. The caller closes
        them.

    Raises:
        ValueError: `backend` is not one of `BACKENDS`.
        BackendUnavailableError: An explicit backend cannot run here.
        EngineMismatchError: backend="tensorrt" and the engines were built for another
            TensorRT version or GPU.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}.")
    has_engines = backend in ("auto", "tensorrt") and has_engine_record(manifest)
    tensorrt_problem = None
    if has_engines:
        from hdn_runtime.backends.tensorrt import tensorrt_unavailable_reason

        tensorrt_problem = tensorrt_unavailable_reason(device_id)
    cuda_problem = cuda_unavailable_reason() if backend in ("auto", "cuda") else None

    while True:
        name, reasons = choose_backend(backend, has_engines, tensorrt_problem, cuda_problem)
        try:
            stage_backends = _open(name, manifest, intra_op_threads, device_id)
        except (BackendUnavailableError, EngineMismatchError, ModelFormatError) as err:
            # Only "auto" moves on to the next backend. The CPU backend has none after it, and
            # an invalid ONNX file fails on every ONNX Runtime backend.
            is_onnx_error = isinstance(err, ModelFormatError) and name != "tensorrt"
            if backend != "auto" or name == "cpu" or is_onnx_error:
                raise
            if name == "tensorrt":
                tensorrt_problem = f"loading the engines failed: {err}"
            else:
                cuda_problem = f"creating a CUDA session failed: {err}"
            continue
        break

    if backend == "auto":
        for reason in reasons:
            logger.warning("backend='auto' passed over a backend: %s", reason)
        logger.info("backend='auto' selected %r", name)
    return name, stage_backends


def _open(
    name: str, manifest: Manifest, intra_op_threads: int | None, device_id: int
) -> list[StageBackend]:
    if name == "tensorrt":
        from hdn_runtime.backends.tensorrt import open_tensorrt_stages

        return list(open_tensorrt_stages(manifest, device_id))

    providers = CUDA_PROVIDERS if name == "cuda" else CUDA_PROVIDERS[1:]
    stage_backends: list[StageBackend] = []
    try:
        for stage in manifest.stages:
            stage_backends.append(
                OnnxRuntimeBackend(stage.path, intra_op_threads, providers, device_id)
            )
    except BaseException:
        for stage_backend in stage_backends:
            stage_backend.close()
        raise
    return stage_backends
