"""Shared fixtures: one synthetic model directory per session, and writable copies of it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

# pytest runs with --import-mode=importlib, which leaves sys.path alone, so the test modules
# could not import the helper module next to them without this.
_HELPER_DIR = str(Path(__file__).resolve().parent)
if _HELPER_DIR not in sys.path:
    sys.path.insert(0, _HELPER_DIR)

from model_factory import NUM_ITEMS, NUM_USERS, SyntheticModel, write_synthetic_model  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticModel]:
    """A read-only model directory with NUM_USERS users, NUM_ITEMS items and 3 decision stages."""
    model_dir = tmp_path_factory.mktemp("synthetic_model")
    model = write_synthetic_model(model_dir, num_users=NUM_USERS, num_items=NUM_ITEMS)
    return model_dir, model


@pytest.fixture
def model_dir_copy(synthetic_model: tuple[Path, SyntheticModel], tmp_path: Path) -> Path:
    """A private copy of the synthetic model directory that a test may modify."""
    source_dir, _ = synthetic_model
    return Path(shutil.copytree(source_dir, tmp_path / "model"))
