"""Read and validate the manifest of an exported model directory.

The manifest is the only contract between the exporter and the runtime: it lists the stage
files in cascade order, the rejection ratios (γ), the table sizes and a sha256 checksum for
every file. Loading the tables and running the stages is left to `tables` and `backends`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdn_runtime.errors import ModelFormatError

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FORMAT_NAME = "hdn-model"
SUPPORTED_FORMAT_VERSIONS = (1,)

# Tensor names fixed by format version 1 for every stage file.
USER_INPUT = "user_emb"
ITEM_INPUT = "item_emb"
HIDDEN_INPUT = "hidden_in"
DECISION_OUTPUT = "decision"
HIDDEN_OUTPUT = "hidden"
SCORE_OUTPUT = "score"

FILE_KEYS = ("tables", "user_ids", "item_ids")
REQUIRED_KEYS = (
    "format",
    "format_version",
    "hdn_version",
    "embedding_dim",
    "hidden_dim",
    "num_users",
    "num_items",
    "gammas",
    "stages",
    "files",
    "source_run",
    "created",
)

_REEXPORT_HINT = "Re-export the model with 'hdn export'."
_HASH_BLOCK_BYTES = 1 << 20


@dataclass(frozen=True)
class StageEntry:
    """One stage file of the cascade as the manifest describes it.

    Attributes:
        name: "decision_1" ... "decision_N", or "score".
        kind: "decision" or "score".
        path: Absolute path of the ONNX file.
        inputs: Input tensor names in manifest order.
        outputs: Output tensor names in manifest order.
        sha256: Hex digest of the file recorded at export.
    """

    name: str
    kind: str
    path: Path
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    sha256: str


@dataclass(frozen=True)
class FileEntry:
    """A non-stage file of the model directory (tables or id lists) and its checksum."""

    path: Path
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """Validated content of `manifest.json`.

    Attributes:
        model_dir: Directory that contains the manifest.
        format_version: Version of the directory layout.
        hdn_version: Version of hdn that wrote the directory.
        embedding_dim: Size d of the user and item embeddings.
        hidden_dim: Size h of the interaction embedding passed between stages.
        num_users: Number of rows U of the user table.
        num_items: Number of rows I of the item table, the catalogue size.
        rejection_ratios: rejection_ratios (γ), one per decision stage: the cumulative share
            of each user's candidates rejected once that stage has decided.
        stages: Decision stages in cascade order, then the scoring stage.
        files: Entries "tables", "user_ids" and "item_ids".
        source_run: Training run the export came from, if recorded.
        created: ISO 8601 time of the export.
    """

    model_dir: Path
    format_version: int
    hdn_version: str
    embedding_dim: int
    hidden_dim: int
    num_users: int
    num_items: int
    rejection_ratios: tuple[float, ...]
    stages: tuple[StageEntry, ...]
    files: dict[str, FileEntry]
    source_run: str | None
    created: str

    @property
    def decision_stages(self) -> tuple[StageEntry, ...]:
        return self.stages[:-1]

    @property
    def score_stage(self) -> StageEntry:
        return self.stages[-1]


def expected_stage_signature(
    stage_index: int, num_decision_stages: int
) -> tuple[str, str, tuple[str, ...], tuple[str, ...]]:
    """Return the name, kind, inputs and outputs that format version 1 fixes for a stage.

    Args:
        stage_index: 0-based position in the cascade, where the scoring stage comes last.
        num_decision_stages: Number N of decision stages.
    """
    if stage_index == num_decision_stages:
        return "score", "score", (USER_INPUT, ITEM_INPUT, HIDDEN_INPUT), (SCORE_OUTPUT,)
    inputs = (USER_INPUT, ITEM_INPUT)
    if stage_index > 0:
        inputs += (HIDDEN_INPUT,)
    return f"decision_{stage_index + 1}", "decision", inputs, (DECISION_OUTPUT, HIDDEN_OUTPUT)


def file_sha256(path: Path) -> str:
    """Return the hex sha256 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(model_dir: str | Path, verify_checksums: bool = True) -> Manifest:
    """Read `manifest.json`, validate every key and check that every listed file is intact.

    Args:
        model_dir: Exported model directory.
        verify_checksums: Hash every listed file and compare with the manifest. Hashing reads
            each file once. Turn it off only in tests.

    Returns:
        The validated manifest, with paths resolved inside `model_dir`.

    Raises:
        FileNotFoundError: `model_dir` does not exist or is not a directory.
        ModelFormatError: The manifest is missing or invalid, its format version is not
            supported, a listed file is missing, or a checksum does not match.
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"Model directory {str(model_dir)!r} does not exist or is not a directory. "
            "Pass the directory that 'hdn export' wrote."
        )

    manifest_path = model_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelFormatError(
            f"{manifest_path} is missing, so {str(model_dir)!r} is not an exported model "
            f"directory. {_REEXPORT_HINT}"
        )
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        message = f"{manifest_path} is not valid JSON ({err}). {_REEXPORT_HINT}"
        raise ModelFormatError(message) from err

    manifest = _parse_manifest(raw, manifest_path)
    if verify_checksums:
        for name, path, expected in _listed_files(manifest):
            _verify_checksum(name, path, expected)
    return manifest


def _parse_manifest(raw: Any, manifest_path: Path) -> Manifest:
    if not isinstance(raw, dict):
        problem = f"the top level is a {type(raw).__name__}, expected an object"
        raise _invalid(manifest_path, problem)
    if raw.get("format") == "hdn-run":
        raise ModelFormatError(
            f"{manifest_path.parent} is a training run directory, not an exported model. Export "
            f"it first: hdn export {manifest_path.parent} --format onnx --out MODEL_DIR"
        )
    missing = [key for key in REQUIRED_KEYS if key not in raw]
    if missing:
        raise _invalid(manifest_path, f"required keys are missing: {', '.join(missing)}")

    if raw["format"] != FORMAT_NAME:
        raise _invalid(manifest_path, f"'format' is {raw['format']!r}, expected {FORMAT_NAME!r}")
    format_version = raw["format_version"]
    is_int = isinstance(format_version, int) and not isinstance(format_version, bool)
    if not is_int or format_version not in SUPPORTED_FORMAT_VERSIONS:
        raise ModelFormatError(
            f"{manifest_path} has format_version {format_version!r}, but this hdn_runtime reads "
            f"only {list(SUPPORTED_FORMAT_VERSIONS)} (the model was written by hdn "
            f"{raw.get('hdn_version')!r}). Re-export the model with this version's 'hdn export', "
            "or install the hdn version that wrote it."
        )

    num_users = _require_int(raw, "num_users", manifest_path, minimum=0)
    num_items = _require_int(raw, "num_items", manifest_path, minimum=1)
    embedding_dim = _require_int(raw, "embedding_dim", manifest_path, minimum=1)
    hidden_dim = _require_int(raw, "hidden_dim", manifest_path, minimum=1)
    hdn_version = _require_str(raw, "hdn_version", manifest_path)
    created = _require_str(raw, "created", manifest_path)
    source_run = raw["source_run"]
    if source_run is not None and not isinstance(source_run, str):
        raise _invalid(manifest_path, f"'source_run' is {source_run!r}, expected a string or null")

    model_dir = manifest_path.parent
    stages = _parse_stages(raw["stages"], model_dir, manifest_path)
    rejection_ratios = _parse_rejection_ratios(raw["gammas"], len(stages) - 1, manifest_path)
    files = _parse_files(raw["files"], model_dir, manifest_path)

    return Manifest(
        model_dir=model_dir,
        format_version=format_version,
        hdn_version=hdn_version,
        embedding_dim=embedding_dim,
        hidden_dim=hidden_dim,
        num_users=num_users,
        num_items=num_items,
        rejection_ratios=rejection_ratios,
        stages=stages,
        files=files,
        source_run=source_run,
        created=created,
    )


def _parse_stages(raw_stages: Any, model_dir: Path, manifest_path: Path) -> tuple[StageEntry, ...]:
    if not isinstance(raw_stages, list) or len(raw_stages) < 2:
        raise _invalid(
            manifest_path,
            "'stages' must list at least one decision stage and then the score stage, "
            f"got {raw_stages!r}",
        )

    num_decision_stages = len(raw_stages) - 1
    stages = []
    for stage_index, raw_stage in enumerate(raw_stages):
        name, kind, inputs, outputs = expected_stage_signature(stage_index, num_decision_stages)
        where = f"stages[{stage_index}]"
        if not isinstance(raw_stage, dict):
            raise _invalid(manifest_path, f"{where} is {raw_stage!r}, expected an object")
        for key, expected in (("name", name), ("kind", kind)):
            if raw_stage.get(key) != expected:
                raise _invalid(
                    manifest_path,
                    f"{where}.{key} is {raw_stage.get(key)!r}, expected {expected!r} "
                    "(stages run decision_1 ... decision_N, then score)",
                )
        for key, expected in (("inputs", inputs), ("outputs", outputs)):
            value = raw_stage.get(key)
            if not isinstance(value, list) or tuple(value) != expected:
                raise _invalid(
                    manifest_path, f"{where}.{key} is {value!r}, expected {list(expected)!r}"
                )
        path, sha256 = _parse_file_entry(raw_stage, where, model_dir, manifest_path)
        stages.append(StageEntry(name, kind, path, inputs, outputs, sha256))
    return tuple(stages)


def _parse_rejection_ratios(
    raw_gammas: Any, num_decision_stages: int, manifest_path: Path
) -> tuple[float, ...]:
    if not isinstance(raw_gammas, list) or len(raw_gammas) != num_decision_stages:
        raise _invalid(
            manifest_path,
            f"'gammas' is {raw_gammas!r}, expected a list of {num_decision_stages} rejection "
            "ratios, one per decision stage",
        )
    for gamma in raw_gammas:
        is_number = isinstance(gamma, (int, float)) and not isinstance(gamma, bool)
        if not is_number or not math.isfinite(gamma) or not 0.0 <= gamma < 1.0:
            problem = f"'gammas' contains {gamma!r}, but every rejection ratio must be in [0, 1)"
            raise _invalid(manifest_path, problem)
    # Each ratio is the cumulative share rejected after its stage, so it cannot fall.
    if any(later < earlier for earlier, later in zip(raw_gammas, raw_gammas[1:])):
        raise _invalid(manifest_path, f"'gammas' {raw_gammas!r} must be non-decreasing")
    return tuple(float(gamma) for gamma in raw_gammas)


def _parse_files(raw_files: Any, model_dir: Path, manifest_path: Path) -> dict[str, FileEntry]:
    if not isinstance(raw_files, dict):
        raise _invalid(manifest_path, f"'files' is {raw_files!r}, expected an object")
    files = {}
    for key in FILE_KEYS:
        if not isinstance(raw_files.get(key), dict):
            raise _invalid(manifest_path, f"'files.{key}' is missing or not an object")
        path, sha256 = _parse_file_entry(raw_files[key], f"files.{key}", model_dir, manifest_path)
        files[key] = FileEntry(path, sha256)
    return files


def _parse_file_entry(
    raw_entry: dict, where: str, model_dir: Path, manifest_path: Path
) -> tuple[Path, str]:
    relative = raw_entry.get("path")
    if not isinstance(relative, str) or not relative:
        raise _invalid(manifest_path, f"{where}.path is {relative!r}, expected a relative path")
    # Paths must stay inside the model directory, so a manifest cannot point at other files.
    # The check is lexical, which still allows the exporter or a deployment to use symlinks.
    if Path(relative).is_absolute() or ".." in Path(relative).parts:
        raise _invalid(
            manifest_path, f"{where}.path {relative!r} points outside the model directory"
        )
    path = model_dir / relative
    if not path.is_file():
        raise ModelFormatError(
            f"{path} is listed in {manifest_path} ({where}) but does not exist. The model "
            f"directory is incomplete; copy it again or re-export the model with 'hdn export'."
        )

    sha256 = raw_entry.get("sha256")
    is_hex_digest = isinstance(sha256, str) and len(sha256) == 64
    if not is_hex_digest or any(char not in "0123456789abcdef" for char in sha256.lower()):
        raise _invalid(manifest_path, f"{where}.sha256 is {sha256!r}, expected 64 hex digits")
    return path, sha256.lower()


def _listed_files(manifest: Manifest) -> list[tuple[str, Path, str]]:
    listed = [(stage.name, stage.path, stage.sha256) for stage in manifest.stages]
    listed += [(key, entry.path, entry.sha256) for key, entry in manifest.files.items()]
    return listed


def _verify_checksum(name: str, path: Path, expected: str) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise ModelFormatError(
            f"Checksum mismatch for {path} ({name}): the manifest records sha256 {expected}, "
            f"the file has {actual}. The file changed after export or was copied incompletely. "
            f"{_REEXPORT_HINT}"
        )
    logger.debug("Checksum ok for %s", path)


def _require_int(raw: dict, key: str, manifest_path: Path, minimum: int) -> int:
    value = raw[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise _invalid(manifest_path, f"{key!r} is {value!r}, expected an integer >= {minimum}")
    return value


def _require_str(raw: dict, key: str, manifest_path: Path) -> str:
    value = raw[key]
    if not isinstance(value, str):
        raise _invalid(manifest_path, f"{key!r} is {value!r}, expected a string")
    return value


def _invalid(manifest_path: Path, problem: str) -> ModelFormatError:
    return ModelFormatError(f"Invalid manifest {manifest_path}: {problem}. {_REEXPORT_HINT}")
