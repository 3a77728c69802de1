"""Fixtures shared across packages: a small synthetic data set and one trained run on it."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

try:
    import torch
except ImportError:  # the runtime tests run without torch
    torch = None
else:
    # Tiny models gain nothing from intra-op threads, and OpenMP workers spinning against other
    # processes on a 2-core machine slow each step by an order of magnitude.
    torch.set_num_threads(1)

# MovieLens for the tests: the data home when one is set, else a ../shared/data folder beside the
# repository. Named data sets then resolve there, so no test downloads.
SHARED_DATA = Path(
    os.environ.get("HDN_DATA_HOME")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data"
)
if SHARED_DATA.is_dir():
    os.environ.setdefault("HDN_DATA_HOME", str(SHARED_DATA))


def write_synthetic_csv(
    path: Path, num_users: int = 60, num_items: int = 40, seed: int = 0
) -> Path:
    """Write interactions with two taste groups, so a model has something to learn.

    Users in group g mostly pick items of group g; ids are strings such as 'u7' and 'i12' so
    the id maps are exercised.
    """
    rng = np.random.default_rng(seed)
    lines = ["user_id,item_id"]
    for user in range(num_users):
        group = user % 2
        preferred = np.arange(group, num_items, 2)
        picks = rng.choice(preferred, size=8, replace=False).tolist()
        picks += rng.choice(num_items, size=2, replace=False).tolist()
        lines += [f"u{user},i{item}" for item in picks]
    path.write_text("\n".join(lines) + "\n")
    return path


TINY_EPOCHS = dict(mf_epochs=1, pretrain_epochs=1, teacher_epochs=2, student_epochs=15)


@pytest.fixture(scope="session")
def tiny_epochs() -> dict[str, int]:
    return dict(TINY_EPOCHS)


@pytest.fixture(scope="session")
def synthetic_csv(tmp_path_factory) -> Path:
    return write_synthetic_csv(tmp_path_factory.mktemp("data") / "interactions.csv")


@pytest.fixture(scope="session")
def trained_run(synthetic_csv, tmp_path_factory):
    """A TrainedRun on the synthetic data and its run directory, trained once per session."""
    from hdn_train.config import TrainConfig
    from hdn_train.pipeline import train_all, write_run

    # A learning rate of 0.01 lets the few epochs reach the rejection targets on this tiny set.
    config = TrainConfig(
        data=str(synthetic_csv),
        dim=8,
        hidden_dim=8,
        batch_size=64,
        learning_rate=0.01,
        **TINY_EPOCHS,
    )
    run = train_all(config)
    run_dir = write_run(run, tmp_path_factory.mktemp("runs") / "run")
    return run, run_dir


@pytest.fixture(scope="session")
def exported_model(trained_run, tmp_path_factory) -> Path:
    """The synthetic run exported to an ONNX model directory."""
    from hdn_export.onnx import export_onnx

    _, run_dir = trained_run
    model_dir = tmp_path_factory.mktemp("models") / "model"
    export_onnx(run_dir, model_dir)
    return model_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "ml-100k" / "u.data").is_file():
        pytest.skip(f"MovieLens copy not found at {SHARED_DATA}")
    return SHARED_DATA
