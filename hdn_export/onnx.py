"""Write a run's ONNX model directory: one model per stage, tables, id maps and a manifest.

Model directory layout (format `hdn-model`, version 1), the only thing `hdn_runtime` reads:

    manifest.json            shapes, gammas, stages and the SHA-256 of every file
    stages/decision_<n>.onnx (user_emb, item_emb[, hidden_in]) -> (decision, hidden)
    stages/score.onnx        (user_emb, item_emb, hidden_in) -> score
    tables.safetensors       user_embedding, item_embedding (float32); seen_indptr, seen_indices
                             (each user's training items, CSR int64); item_popularity (int64)
    user_ids.json, item_ids.json
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from hdn_export.stages import StageSpec, split_stages
from hdn_export.verify import verify_stages
from hdn_runtime.errors import ExportError
from hdn_train import checkpoint
from hdn_train.pipeline import LoadedRun, load_run

logger = logging.getLogger(__name__)

MODEL_FORMAT = "hdn-model"
MODEL_FORMAT_VERSION = 1
EXAMPLE_BATCH = 64


def _hdn_version() -> str:
    try:
        return metadata.version("hdn")
    except metadata.PackageNotFoundError:
        return "unknown"


def export_stage_onnx(
    spec: StageSpec, module: torch.nn.Module, dim: int, hidden_dim: int, path: Path
) -> None:
    """Export one stage with a dynamic batch axis named `batch` on every input and output."""
    widths = {"user_emb": dim, "item_emb": dim, "hidden_in": hidden_dim}
    example = tuple(torch.randn(EXAMPLE_BATCH, widths[name]) for name in spec.inputs)
    batch = torch.export.Dim("batch", min=0)
    # The exporter prints progress and version warnings; the CLI reports the outcome instead.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            example,
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            dynamic_shapes={name: {0: batch} for name in spec.inputs},
            dynamo=True,
            verbose=False,
        )
    if program is None:
        raise ExportError(f"torch.onnx.export returned no program for stage {spec.name}.")
    program.save(str(path))


def export_onnx(
    run_dir: str | Path,
    out_dir: str | Path,
    overwrite: bool = False,
    verify_users: int = 64,
    seed: int = 0,
) -> dict:
    """Export a run's HDN to an ONNX model directory and check every stage before finishing.

    Every stage is run in onnxruntime on real embeddings of `verify_users` users and all items
    and compared with PyTorch; the directory appears only if every stage matches.

    Args:
        run_dir: A run directory written by `hdn train`.
        out_dir: Directory to create; it must not exist unless `overwrite`.
        overwrite: Replace an existing `out_dir`.
        verify_users: Users whose (user, item) pairs feed the parity check.
        seed: Seed for choosing those users.

    Returns:
        The manifest as written, with the parity report under `"parity"`.

    Raises:
        FileExistsError: If `out_dir` exists and `overwrite` is False.
        ParityError: If a stage's onnxruntime output differs from PyTorch beyond tolerance.
    """
    if verify_users < 1:
        raise ValueError(
            f"--verify-users must be at least 1, got {verify_users}: the parity check needs real "
            "pairs to compare."
        )
    out_dir = checkpoint.check_output_directory(out_dir, overwrite, MODEL_FORMAT)
    run = load_run(run_dir)
    started = time.perf_counter()
    with checkpoint.staged_directory(
        out_dir, overwrite=overwrite, expected_format=MODEL_FORMAT
    ) as staging:
        manifest = _write_model_directory(run, staging)
        manifest["parity"] = verify_stages(run.student, staging, manifest, verify_users, seed)
        checkpoint.write_json(staging / "manifest.json", manifest)
    logger.info("Exported %s to %s in %.1fs", run_dir, out_dir, time.perf_counter() - started)
    return manifest


def _write_model_directory(run: LoadedRun, staging: Path) -> dict:
    config = run.config
    (staging / "stages").mkdir()
    stage_entries = []
    for spec, module in split_stages(run.student):
        relative = f"stages/{spec.name}.onnx"
        export_stage_onnx(spec, module, config.dim, config.hidden_dim, staging / relative)
        stage_entries.append(
            {
                "name": spec.name,
                "kind": spec.kind,
                "path": relative,
                "inputs": list(spec.inputs),
                "outputs": list(spec.outputs),
                "sha256": checkpoint.sha256_file(staging / relative),
            }
        )
        logger.info("Exported stage %s", spec.name)

    student = run.student
    checkpoint.save_arrays(
        staging / "tables.safetensors",
        {
            "user_embedding": student.user_embedding.weight.detach().numpy().astype(np.float32),
            "item_embedding": student.item_embedding.weight.detach().numpy().astype(np.float32),
            "seen_indptr": run.train.indptr.astype(np.int64),
            "seen_indices": run.train.indices.astype(np.int64),
            "item_popularity": run.train.item_counts(),
        },
    )
    checkpoint.write_json(staging / "user_ids.json", run.user_ids)
    checkpoint.write_json(staging / "item_ids.json", run.item_ids)
    files = {
        key: {"path": name, "sha256": checkpoint.sha256_file(staging / name)}
        for key, name in (
            ("tables", "tables.safetensors"),
            ("user_ids", "user_ids.json"),
            ("item_ids", "item_ids.json"),
        )
    }
    return {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "hdn_version": _hdn_version(),
        "embedding_dim": config.dim,
        "hidden_dim": config.hidden_dim,
        "num_users": len(run.user_ids),
        "num_items": len(run.item_ids),
        "gammas": list(config.gammas),
        "stages": stage_entries,
        "files": files,
        "source_run": str(Path(run.path).resolve()),
        "data": config.data,
        "torch_version": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
