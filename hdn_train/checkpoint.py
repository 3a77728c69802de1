"""Atomic writes of JSON, weights and whole directories, and the run directory's manifest.

A reader never sees a half-written file: each file goes to a temporary name in the same folder
and is moved over the target with `os.replace`, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import save_file as save_numpy_file
from safetensors.torch import load_file, save_file

RUN_FORMAT = "hdn-run"
RUN_FORMAT_VERSION = 1


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    temp_path = Path(temp_name)
    try:
        yield temp_path
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)


def write_json(path: str | Path, payload: Any) -> None:
    """Write `payload` as indented JSON, atomically."""
    with _atomic_path(Path(path)) as temp_path:
        temp_path.write_text(json.dumps(payload, indent=2) + "\n")


def read_json(path: str | Path) -> Any:
    """Read a JSON file, naming the file in the error when it is missing or invalid."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path} is not valid JSON (line {err.lineno}: {err.msg}). "
            "Rewrite it, or re-run the command that produced it."
        ) from err


def save_weights(path: str | Path, module: torch.nn.Module) -> None:
    """Write a module's state dict as safetensors, atomically."""
    state = {name: tensor.detach().contiguous() for name, tensor in module.state_dict().items()}
    with _atomic_path(Path(path)) as temp_path:
        save_file(state, str(temp_path))


def load_weights(path: str | Path, module: torch.nn.Module) -> torch.nn.Module:
    """Load safetensors weights into `module` and return it in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Weights file {path} not found. Re-run 'hdn train'.")
    module.load_state_dict(load_file(str(path)))
    return module.eval()


def save_arrays(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Write numpy arrays as one safetensors file, atomically."""
    contiguous = {name: np.ascontiguousarray(value) for name, value in arrays.items()}
    with _atomic_path(Path(path)) as temp_path:
        save_numpy_file(contiguous, str(temp_path))


def sha256_file(path: str | Path) -> str:
    """Return the hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextmanager
def staged_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to `target` only on success.

    On an exception the partial directory is removed and `target` is untouched.

    Raises:
        FileExistsError: If `target` exists and `overwrite` is False.
    """
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"{target} already exists. Choose another output directory, remove it, or pass "
            "--overwrite."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    if target.exists():
        retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, retired / target.name)
        os.replace(staging, target)
        shutil.rmtree(retired)
    else:
        os.replace(staging, target)


def write_file_manifest(directory: Path, files: list[str], extra: dict[str, Any]) -> None:
    """Write `manifest.json` listing each file with its size and SHA-256."""
    entries = {
        name: {"size": (directory / name).stat().st_size, "sha256": sha256_file(directory / name)}
        for name in files
    }
    write_json(
        directory / "manifest.json",
        {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, **extra, "files": entries},
    )
