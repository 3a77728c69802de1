"""Torch-free runtime that serves recommendations from an exported HDN model directory.

Needs numpy, safetensors and onnxruntime only. Start with `Recommender.load(path)`.
"""

from hdn_runtime.cascade import Cascade, CascadeStats
from hdn_runtime.errors import (
    BackendUnavailableError,
    EngineMismatchError,
    ExportError,
    HDNError,
    ModelFormatError,
    ParityError,
    UnknownUserError,
)
from hdn_runtime.recommender import Recommender, UserRecommendations

__all__ = [
    "BackendUnavailableError",
    "Cascade",
    "CascadeStats",
    "EngineMismatchError",
    "ExportError",
    "HDNError",
    "ModelFormatError",
    "ParityError",
    "Recommender",
    "UnknownUserError",
    "UserRecommendations",
]
