"""The `"tensorrt"` record of a model manifest: which engines exist and what they were built for.

`hdn export --format trt` writes `engines/<stage>.plan` and this record (TensorRT version, GPU,
precision, batch profile, engine checksums, export parity). The exporter builds it with
`EngineRecord.to_json`. The runtime reads it with `read_engine_record` and checks it against the
machine with `check_engine_record` before loading any engine. Running engines is left to
`tensorrt`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hdn_runtime.backends.cuda_runtime import GpuProperties
from hdn_runtime.errors import EngineMismatchError, ModelFormatError
from hdn_runtime.manifest import MANIFEST_NAME, Manifest, file_sha256

ENGINE_DIR = "engines"
ENGINE_SUFFIX = ".plan"
PRECISIONS = ("fp32", "fp16")
REBUILD_HINT = (
    "Rebuild the engines on this machine with 'hdn export RUN --format trt --out DIR', or "
    "load the model with backend='cuda' or 'cpu'."
)


@dataclass(frozen=True)
class EngineEntry:
    """One engine file listed in the manifest's `"tensorrt"` record.

    Attributes:
        name: Stage name, e.g. "decision_1" or "score".
        path: Absolute path of the `.plan` file.
        sha256: Hex digest recorded at export.
    """

    name: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class EngineRecord:
    """Exporter's description of the TensorRT engines of a model directory.

    Attributes:
        version: TensorRT version that built the engines, e.g. "10.3.0".
        gpu_name: Name of the GPU they were built on.
        compute_capability: "major.minor" of that GPU.
        precision: "fp32" or "fp16".
        profile: Batch sizes of the optimisation profile, keys "min", "opt" and "max".
        engines: One entry per stage, in cascade order.
        parity: Per-stage comparison against ONNX Runtime made at export, as written there.
    """

    version: str
    gpu_name: str
    compute_capability: str
    precision: str
    profile: dict[str, int]
    engines: tuple[EngineEntry, ...]
    parity: dict[str, Any]

    def to_json(self, model_dir: Path) -> dict[str, Any]:
        """Return the manifest form, with engine paths relative to `model_dir`."""
        return {
            "version": self.version,
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "precision": self.precision,
            "profile": dict(self.profile),
            "engines": [
                {
                    "name": entry.name,
                    "path": entry.path.relative_to(model_dir).as_posix(),
                    "sha256": entry.sha256,
                }
                for entry in self.engines
            ],
            "parity": self.parity,
        }


def engine_path(model_dir: Path, stage_name: str) -> Path:
    """Return where the engine of a stage lives: `engines/<stage>.plan`."""
    return Path(model_dir) / ENGINE_DIR / f"{stage_name}{ENGINE_SUFFIX}"


def read_engine_record(manifest: Manifest) -> EngineRecord | None:
    """Read and validate the `"tensorrt"` record of a model's manifest.

    Args:
        manifest: The model's manifest, already validated by `read_manifest`.

    Returns:
        The record, or None when the model was exported without engines.

    Raises:
        ModelFormatError: The record is malformed, lists other stages than the manifest, or
            names an engine file that is missing.
    """
    manifest_path = manifest.model_dir / MANIFEST_NAME
    raw = json.loads(manifest_path.read_text(encoding="utf-8")).get("tensorrt")
    if raw is None:
        return None
    return parse_engine_record(raw, manifest, manifest_path)


def parse_engine_record(raw: Any, manifest: Manifest, manifest_path: Path) -> EngineRecord:
    """Validate the manifest form of an `EngineRecord`; see `read_engine_record`."""

    def invalid(problem: str) -> ModelFormatError:
        return ModelFormatError(
            f"Invalid 'tensorrt' record in {manifest_path}: {problem}. Rebuild the engines "
            "with 'hdn export RUN --format trt --out DIR'."
        )

    if not isinstance(raw, dict):
        raise invalid(f"expected an object, got {raw!r}")
    for key in ("version", "gpu_name", "compute_capability", "precision"):
        if not isinstance(raw.get(key), str):
            raise invalid(f"{key!r} is {raw.get(key)!r}, expected a string")
    if raw["precision"] not in PRECISIONS:
        raise invalid(f"'precision' is {raw['precision']!r}, expected one of {list(PRECISIONS)}")

    profile = raw.get("profile")
    keys = ("min", "opt", "max")
    if not isinstance(profile, dict) or not all(_is_int(profile.get(key)) for key in keys):
        raise invalid(f"'profile' is {profile!r}, expected integers 'min', 'opt' and 'max'")
    if not 1 <= profile["min"] <= profile["opt"] <= profile["max"]:
        raise invalid(f"'profile' {profile!r} must satisfy 1 <= min <= opt <= max")

    expected_names = [stage.name for stage in manifest.stages]
    raw_engines = raw.get("engines")
    names = [entry.get("name") for entry in raw_engines or [] if isinstance(entry, dict)]
    if not isinstance(raw_engines, list) or names != expected_names:
        raise invalid(
            f"'engines' lists stages {names}, expected one engine per stage {expected_names}"
        )
    engines = []
    for entry in raw_engines:
        relative, sha256 = entry.get("path"), entry.get("sha256")
        if (
            not isinstance(relative, str)
            or Path(relative).is_absolute()
            or ".." in Path(relative).parts
        ):
            raise invalid(f"engine path {relative!r} must be relative to the model directory")
        if not isinstance(sha256, str) or len(sha256) != 64:
            raise invalid(f"engine sha256 {sha256!r} must be 64 hex digits")
        path = manifest.model_dir / relative
        if not path.is_file():
            raise ModelFormatError(
                f"Engine file {path} is listed in {manifest_path} but does not exist. Copy "
                "the model directory again, or rebuild with 'hdn export RUN --format trt "
                "--out DIR'."
            )
        engines.append(EngineEntry(entry["name"], path, sha256.lower()))

    return EngineRecord(
        version=raw["version"],
        gpu_name=raw["gpu_name"],
        compute_capability=raw["compute_capability"],
        precision=raw["precision"],
        profile={key: profile[key] for key in keys},
        engines=tuple(engines),
        parity=dict(raw.get("parity") or {}),
    )


def check_engine_record(record: EngineRecord, tensorrt_version: str, gpu: GpuProperties) -> None:
    """Raise EngineMismatchError unless the engines were built for this TensorRT and GPU.

    TensorRT engines run only under the TensorRT version that built them, unless built with
    its version-compatible flag, which the exporter does not set. They are tuned for the
    build GPU, and TensorRT does not load them on another compute capability. A GPU of
    another name with the same compute capability may load them, but TensorRT warns that
    this can fail or run slowly, so any difference is treated as a mismatch.

    Args:
        record: The model's engine record.
        tensorrt_version: `tensorrt.__version__` of this process.
        gpu: The device the engines would run on.

    Raises:
        EngineMismatchError: Any of the three differs. The message lists each difference
            and how to rebuild.
    """
    differences = []
    if record.version != tensorrt_version:
        differences.append(
            f"TensorRT {record.version} built them, this process has {tensorrt_version}"
        )
    if record.compute_capability != gpu.compute_capability:
        differences.append(
            f"they target compute capability {record.compute_capability}, this GPU has "
            f"{gpu.compute_capability}"
        )
    if record.gpu_name != gpu.name:
        differences.append(f"they were built on {record.gpu_name!r}, this GPU is {gpu.name!r}")
    if differences:
        raise EngineMismatchError(
            "The model's TensorRT engines were built for another setup: "
            + "; ".join(differences)
            + f". {REBUILD_HINT}"
        )


def verify_engine_checksums(record: EngineRecord) -> None:
    """Raise ModelFormatError if an engine file differs from the checksum recorded at export."""
    for entry in record.engines:
        actual = file_sha256(entry.path)
        if actual != entry.sha256:
            raise ModelFormatError(
                f"Checksum mismatch for engine {entry.path} ({entry.name}): the manifest "
                f"records sha256 {entry.sha256}, the file has {actual}. The file changed after "
                "export or was copied incompletely. Copy the model directory again, or rebuild "
                "with 'hdn export RUN --format trt --out DIR'."
            )


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def has_engine_record(manifest: Manifest) -> bool:
    """Return whether the model's manifest has a `"tensorrt"` record, without validating it."""
    raw = json.loads((manifest.model_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    return raw.get("tensorrt") is not None
