"""The interface every stage backend implements: load one stage file, run batches, close.

Concrete backends (ONNX Runtime today) live in sibling modules and import their optional
packages there, so importing this module never needs them.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from hdn_runtime.errors import ModelFormatError


@dataclass(frozen=True)
class TensorSpec:
    """Dtype and shape of one stage input or output.

    Attributes:
        dtype: Element type, e.g. float32.
        shape: Full shape with the batch axis first. None marks a dimension the stage file
            leaves dynamic, which is expected only for the batch axis.
    """

    dtype: np.dtype
    shape: tuple[int | None, ...]


class StageBackend(abc.ABC):
    """One loaded stage of the cascade that maps named input batches to named output batches.

    Subclasses load the stage file in `__init__`, describe it through `input_specs` and
    `output_specs`, and implement `_run` and `_close`. The public `run` validates the batch and
    returns empty outputs for an empty batch without calling `_run`, so no runtime has to handle
    the zero-sized tensors that the cascade produces whenever a stage rejects every candidate.

    Use it as a context manager, or call `close()`, to release the session at a known point.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._is_closed = False

    @property
    @abc.abstractmethod
    def input_specs(self) -> dict[str, TensorSpec]:
        """Specs of the inputs, keyed by tensor name, in the stage file's order."""

    @property
    @abc.abstractmethod
    def output_specs(self) -> dict[str, TensorSpec]:
        """Specs of the outputs, keyed by tensor name, in the stage file's order."""

    @property
    def is_closed(self) -> bool:
        return self._is_closed

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the stage on one batch.

        Args:
            inputs: One array per input name, all with the same batch size B on axis 0.

        Returns:
            One array per output name, each with B rows. For B = 0 the outputs are empty arrays
            of the declared dtype and trailing shape, and the underlying session is not called.

        Raises:
            ValueError: Input names differ from `input_specs`, or batch sizes differ.
            RuntimeError: The backend was closed.
        """
        if self._is_closed:
            raise RuntimeError(f"The backend for {self.path} is closed. Load the model again.")

        expected_names = set(self.input_specs)
        if set(inputs) != expected_names:
            raise ValueError(
                f"Stage {self.path.name} takes inputs {sorted(expected_names)}, "
                f"got {sorted(inputs)}."
            )
        batch_sizes = {name: np.shape(array)[0] for name, array in inputs.items()}
        if len(set(batch_sizes.values())) != 1:
            raise ValueError(
                f"Inputs of stage {self.path.name} must share the batch size, got {batch_sizes}."
            )

        if next(iter(batch_sizes.values())) == 0:
            return self._empty_outputs()
        return self._run(inputs)

    def close(self) -> None:
        """Release the session. Calling it again does nothing."""
        if not self._is_closed:
            self._close()
            self._is_closed = True

    def __enter__(self) -> StageBackend:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @abc.abstractmethod
    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run a non-empty, validated batch through the session."""

    @abc.abstractmethod
    def _close(self) -> None:
        """Release the session and any device memory."""

    def _empty_outputs(self) -> dict[str, np.ndarray]:
        outputs = {}
        for name, spec in self.output_specs.items():
            trailing_shape = spec.shape[1:]
            if any(size is None for size in trailing_shape):
                raise ModelFormatError(
                    f"Output {name!r} of {self.path} has shape {spec.shape}, whose dimensions "
                    "after the batch axis must be fixed. Re-export the model with 'hdn export'."
                )
            outputs[name] = np.empty((0, *trailing_shape), dtype=spec.dtype)
        return outputs
