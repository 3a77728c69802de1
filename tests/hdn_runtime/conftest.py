"""Shared fixtures: one synthetic model directory per session, and writable copies of it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from model_factory import SyntheticModel, write_synthetic_model

NUM_USERS = 12
NUM_ITEMS = 40


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SyntheticModel]:
    """A read-only model directory with 12 users, 40 items and 3 decision stages."""
    model_dir = tmp_path_factory.mktemp("synthetic_model")
    model = write_synthetic_model(model_dir, num_users=NUM_USERS, num_items=NUM_ITEMS)
    return model_dir, model


@pytest.fixture
def model_dir_copy(synthetic_model: tuple[Path, SyntheticModel], tmp_path: Path) -> Path:
    """A private copy of the synthetic model directory that a test may modify."""
    source_dir, _ = synthetic_model
    return Path(shutil.copytree(source_dir, tmp_path / "model"))
