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
from safetensors import SafetensorError
from safetensors.numpy import save_file as save_numpy_file
from safetensors.torch import load_file, save_file

RUN_FORMAT = "hdn-run"
# Version 2 stores the teacher of any kind as models/teacher.safetensors (version 1 had NeuMF only).
RUN_FORMAT_VERSION = 2


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _make_shareable(path: Path, directory: bool = False) -> None:
    # mkstemp and mkdtemp create private entries (0600, 0700); outputs are meant to be read by
    # other users, such as a service account, so give them the usual umask-based mode.
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    temp_path = Path(temp_name)
    try:
        yield temp_path
        _make_shareable(temp_path)
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
    try:
        state = load_file(str(path))
    except SafetensorError as err:
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}). Delete it and re-run the "
            "command that wrote it."
        ) from err
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(
            f"Weights in {path} do not fit the model its run config describes ({err}). The run "
            "directory is inconsistent; re-train."
        ) from err
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


def check_output_directory(
    target: str | Path, overwrite: bool, expected_format: str, option: str = "--out"
) -> Path:
    """Check before any work that `target` can be created, or replaced when `overwrite` is set.

    Only a directory whose manifest says `expected_format` (an earlier run or model of the same
    kind) may be replaced, so a mistyped path never deletes unrelated files.

    Raises:
        FileExistsError: If `target` exists and may not be replaced.
        NotADirectoryError: If a parent of `target` is a file.
        PermissionError: If the parent directory cannot be written.
    """
    target = Path(target)
    resolved = target.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise FileExistsError(
            f"{option} {target} is the current directory or one of its parents. Choose a new "
            "directory to create."
        )
    if target.exists():
        if not overwrite:
            raise FileExistsError(
                f"{option} {target} already exists. Choose another directory, remove it, or pass "
                "--overwrite."
            )
        manifest = target / "manifest.json"
        try:
            found = json.loads(manifest.read_text()).get("format") if manifest.is_file() else None
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            found = None
        is_empty_dir = target.is_dir() and not any(target.iterdir())
        if not is_empty_dir and (not target.is_dir() or found != expected_format):
            raise FileExistsError(
                f"{option} {target} exists and is not an {expected_format} directory, so "
                "--overwrite will not replace it. Remove it yourself or choose another directory."
            )
    parent = resolved.parent
    for ancestor in [parent, *parent.parents]:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise NotADirectoryError(
                    f"{option} {target}: {ancestor} is a file, not a directory. Choose another "
                    "path."
                )
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise PermissionError(
                    f"{option} {target}: cannot create it because {ancestor} is not writable. "
                    "Choose a directory you can write to."
                )
            break
    return target


@contextmanager
def staged_directory(
    target: str | Path, overwrite: bool = False, expected_format: str = RUN_FORMAT
) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to `target` only on success.

    On an exception the partial directory is removed and `target` is untouched. An existing
    `target` is replaced only with `overwrite` and only if it is a directory of
    `expected_format` (see `check_output_directory`).

    Raises:
        FileExistsError: If `target` exists and may not be replaced.
    """
    target = check_output_directory(target, overwrite, expected_format)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    _make_shareable(staging, directory=True)
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
