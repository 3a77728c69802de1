"""Exception hierarchy shared by the runtime, the exporter and the CLI.

Every domain failure derives from `HDNError`, so a service can catch all of them in one
clause. Bad arguments raise built-in errors (`ValueError`, `TypeError`) instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class HDNError(Exception):
    """Base class of every domain error raised by hdn."""


class ModelFormatError(HDNError):
    """An exported model directory is missing, malformed, tampered with or of another version."""


class UnknownUserError(HDNError, KeyError):
    """A request names user ids that the model has no embedding for.

    Attributes:
        user_ids: The unknown external ids, as strings, in request order.
    """

    def __init__(self, message: str, user_ids: Sequence[str]) -> None:
        super().__init__(message)
        self.user_ids = tuple(user_ids)

    def __str__(self) -> str:
        # KeyError.__str__ would quote the message as if it were a key.
        return str(self.args[0])

    def __reduce__(self):
        return type(self), (self.args[0], self.user_ids)


class ExportError(HDNError):
    """Exporting a trained run to a model directory failed."""


class ParityError(HDNError):
    """Exported stages disagree with the reference implementation beyond the tolerance.

    Attributes:
        max_abs_diff: Maximum absolute difference seen for each output name.
    """

    def __init__(self, message: str, max_abs_diff: Mapping[str, float]) -> None:
        super().__init__(message)
        self.max_abs_diff = dict(max_abs_diff)

    def __reduce__(self):
        return type(self), (self.args[0], self.max_abs_diff)


class BackendUnavailableError(HDNError):
    """The requested stage backend cannot run here: a package or device is missing."""


class EngineMismatchError(HDNError):
    """A TensorRT engine was built for another TensorRT version or GPU and cannot run here.

    Engines are specific to the TensorRT version and the GPU they were built with, so the fix
    is to rebuild them on the deployment machine with 'hdn export RUN --format trt --out DIR'.
    """
