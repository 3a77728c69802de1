"""Stage backends: one module per inference runtime, all implementing `StageBackend`."""

from hdn_runtime.backends.base import StageBackend, TensorSpec

__all__ = ["StageBackend", "TensorSpec"]
