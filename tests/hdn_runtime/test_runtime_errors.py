"""Error hierarchy: base classes, messages and pickling of the extra attributes."""

from __future__ import annotations

import pickle

import pytest

from hdn_runtime import (
    BackendUnavailableError,
    ExportError,
    HDNError,
    ModelFormatError,
    ParityError,
    UnknownUserError,
)


@pytest.mark.parametrize(
    "error_class",
    [ModelFormatError, UnknownUserError, ExportError, ParityError, BackendUnavailableError],
)
def test_every_error_is_hdn_error(error_class):
    assert issubclass(error_class, HDNError)


def test_unknown_user_error_message_is_not_quoted():
    error = UnknownUserError("2 ids are unknown", ["a", "b"])

    assert str(error) == "2 ids are unknown"
    assert error.user_ids == ("a", "b")
    assert isinstance(error, KeyError)


def test_unknown_user_error_pickles():
    error = pickle.loads(pickle.dumps(UnknownUserError("unknown", ["a"])))

    assert str(error) == "unknown"
    assert error.user_ids == ("a",)


def test_parity_error_carries_max_abs_diff():
    error = pickle.loads(pickle.dumps(ParityError("stage 1 differs", {"decision": 0.25})))

    assert str(error) == "stage 1 differs"
    assert error.max_abs_diff == {"decision": 0.25}
