"""One training run end to end: data, split, baselines, teacher, HDN, metrics, run directory.

Run directory layout (format `hdn-run`, version 1), the contract `hdn_export` reads:

    config.json           TrainConfig
    user_ids.json         external id of each dense user index
    item_ids.json         external id of each dense item index
    split.safetensors     train_indptr, train_indices, test_indptr, test_indices (CSR, int64)
    models/mf.safetensors, models/hdn.safetensors
    models/teacher.safetensors  NeuMF, ConvNCF or ALS, as config.json's `teacher` names
    metrics.json          model name -> {"ndcg@20": ..., ...}, plus the HDN rejection shares
    history.json          per-epoch losses and times of every model
    manifest.json         every file above with its size and SHA-256
"""

from __future__ import annotations

import logging
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hdn_train import checkpoint
from hdn_train.config import TrainConfig
from hdn_train.data import Dataset, load_dataset, paper_split
from hdn_train.distill import keep_counts, rejection_shares
from hdn_train.evaluate import dense_scorer, evaluate_ranking, hdn_scorer
from hdn_train.experiment import (
    ExperimentConfig,
    Workspace,
    grid_cells,
    load_teacher,
    run_cell,
    save_teacher,
)
from hdn_train.interactions import InteractionMatrix
from hdn_train.models.baselines import MatrixFactorization, PopRank
from hdn_train.models.hdn import HDN
from hdn_train.teachers import ProgressCallback, Teacher
from hdn_train.variants import TEACHER_MODEL

logger = logging.getLogger(__name__)


@dataclass
class TrainedRun:
    """Models, split and metrics of a finished run in memory, the objects a run directory stores."""

    config: TrainConfig
    dataset: Dataset
    train: InteractionMatrix
    test: InteractionMatrix
    mf: MatrixFactorization
    teacher: Teacher
    student: HDN
    metrics: dict
    history: dict


def split_dataset(
    dataset: Dataset, config: TrainConfig
) -> tuple[InteractionMatrix, InteractionMatrix]:
    """Return (train, test) by the configured split."""
    if config.split == "preset":
        if dataset.preset_split is None:
            raise ValueError(
                f"split='preset' but data set {dataset.name!r} has no train/test files. "
                "Use split='paper', or point --data at a folder with train.txt and test.txt."
            )
        return dataset.preset_split
    return paper_split(dataset.interactions, config.test_share, config.seed)


def experiment_settings(config: TrainConfig) -> ExperimentConfig:
    """Express a run's settings as a one-cell experiment, which trains every model kind."""
    return ExperimentConfig(
        datasets=[config.data],
        teachers=[config.teacher],
        models=["poprank", "mf", "teacher", "hdn", "hdn-nr", *config.extra_models],
        gamma_settings=[list(config.gammas)],
        seeds=[config.seed],
        ks=list(config.ks),
        dim=config.dim,
        hidden_dim=config.hidden_dim,
        mlp_layers=list(config.mlp_layers),
        negatives=config.negatives,
        learning_rate=config.learning_rate,
        batch_size=config.batch_size,
        mf_epochs=config.mf_epochs,
        pretrain_epochs=config.pretrain_epochs,
        neumf_epochs=config.teacher_epochs,
        convncf_pretrain_epochs=config.convncf_pretrain_epochs,
        convncf_epochs=config.teacher_epochs,
        student_epochs=config.student_epochs,
        threads=config.threads,
    )


def train_all(config: TrainConfig, on_step: ProgressCallback | None = None) -> TrainedRun:
    """Train PopRank, MF, the teacher, the HDN student and any extra models, then evaluate them.

    Metrics are keyed by model name: `poprank`, `mf`, the teacher kind (`neumf`, `convncf` or
    `als`), `hdn`, `hdn-nr` (the same network without rejection) and each extra model.
    """
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    dataset = load_dataset(config.data, user_col=config.user_col, item_col=config.item_col)
    train, test = split_dataset(dataset, config)
    logger.info(
        "Data %s: %d users, %d items, %d train and %d test interactions",
        dataset.name,
        train.n_users,
        train.n_items,
        train.nnz,
        test.nnz,
    )
    settings = experiment_settings(config)
    workspace = Workspace(settings, None, config.data, config.seed, (train, test), on_step)

    metrics: dict = {}
    history: dict = {}
    gammas = tuple(config.gammas)
    for cell in grid_cells(settings):
        result = run_cell(workspace, cell)
        name = config.teacher if cell.model == TEACHER_MODEL else cell.model
        metrics[name] = {**result["metrics"], "train_seconds": result["train_seconds"]}
        if "rejection" in result:
            metrics[name]["rejection"] = result["rejection"]
        if "history" in result:
            history[name] = result["history"]
        logger.info("%s: ndcg@20 %.4f", name, metrics[name].get("ndcg@20", float("nan")))

    teacher, record = workspace.teacher(config.teacher)
    history["teacher"] = record.get("history")
    student, _, _ = workspace.student(config.teacher, "hdn", gammas)
    keep_ranks = keep_counts(train.n_items, config.gammas)
    for entry, rank in zip(metrics["hdn"]["rejection"], keep_ranks):
        entry["threshold_rank"] = rank
    warn_about_full_rejection(metrics["hdn"]["rejection"], train.n_items)
    return TrainedRun(
        config, dataset, train, test, workspace.mf(), teacher, student, metrics, history
    )


def warn_about_full_rejection(rejection: list[dict], num_items: int) -> bool:
    """Log a warning for each decision module that rejects the whole catalogue.

    Args:
        rejection: Entries with "module", "target" and "actual" (cumulative share rejected).
        num_items: Catalogue size; a share within half an item of 1 counts as everything.

    Returns:
        True if some module rejects everything.
    """
    found = False
    for entry in rejection:
        if entry["actual"] >= 1.0 - 0.5 / num_items:
            found = True
            logger.warning(
                "Decision module %d rejects the whole catalogue (target %.4f), so the HDN "
                "recommends nothing to most users. Train the student longer (--student-epochs).",
                entry["module"],
                entry["target"],
            )
    return found


def evaluate_models(
    config: TrainConfig,
    train: InteractionMatrix,
    test: InteractionMatrix,
    mf: MatrixFactorization,
    teacher: Teacher,
    student: HDN,
) -> dict:
    """Re-evaluate saved models: PopRank, MF, the teacher, HDN and HDN without rejection."""
    logger.info("Evaluating on %d test users", int((test.row_lengths() > 0).sum()))
    scorers = {
        "poprank": dense_scorer(PopRank(train).score_users),
        "mf": dense_scorer(lambda users: mf.score_all(torch.from_numpy(users)).numpy()),
        config.teacher: dense_scorer(teacher.score_users),
        "hdn": hdn_scorer(student, "sign"),
        "hdn-nr": hdn_scorer(student, "none"),
    }
    metrics = {
        name: evaluate_ranking(scorer, train, test, config.ks) for name, scorer in scorers.items()
    }
    cumulative, per_module = rejection_shares(student, np.arange(train.n_users))
    keep_ranks = keep_counts(train.n_items, config.gammas)
    metrics["hdn"]["rejection"] = [
        {
            "module": index + 1,
            "target": config.gammas[index],
            "actual": round(float(cumulative[index]), 4),
            "module_share": round(float(per_module[index]), 4),
            "threshold_rank": keep_ranks[index],
        }
        for index in range(len(config.gammas))
    ]
    return metrics


def write_run(run: TrainedRun, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write the run directory atomically: it appears complete or not at all."""
    with checkpoint.staged_directory(out_dir, overwrite=overwrite) as staging:
        checkpoint.write_json(staging / "config.json", run.config.to_dict())
        run.dataset.save_id_maps(staging)
        checkpoint.save_arrays(
            staging / "split.safetensors",
            {
                "train_indptr": run.train.indptr,
                "train_indices": run.train.indices,
                "test_indptr": run.test.indptr,
                "test_indices": run.test.indices,
            },
        )
        checkpoint.save_weights(staging / "models" / "mf.safetensors", run.mf)
        save_teacher(run.teacher, staging / "models" / "teacher.safetensors")
        checkpoint.save_weights(staging / "models" / "hdn.safetensors", run.student)
        checkpoint.write_json(staging / "metrics.json", run.metrics)
        checkpoint.write_json(staging / "history.json", run.history)
        files = [
            "config.json",
            "user_ids.json",
            "item_ids.json",
            "split.safetensors",
            "models/mf.safetensors",
            "models/teacher.safetensors",
            "models/hdn.safetensors",
            "metrics.json",
            "history.json",
        ]
        checkpoint.write_file_manifest(
            staging,
            files,
            {
                "data": run.dataset.name,
                "num_users": run.train.n_users,
                "num_items": run.train.n_items,
                "gammas": list(run.config.gammas),
                "torch_version": torch.__version__,
                "python_version": platform.python_version(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    logger.info("Wrote run directory %s", out_dir)
    return Path(out_dir)


@dataclass
class LoadedRun:
    """A run directory read back: config, id maps, split and models in eval mode."""

    path: Path
    config: TrainConfig
    user_ids: list[str]
    item_ids: list[str]
    train: InteractionMatrix
    test: InteractionMatrix
    mf: MatrixFactorization
    teacher: Teacher
    student: HDN
    metrics: dict


def load_run(run_dir: str | Path, verify: bool = True) -> LoadedRun:
    """Read a run directory written by `write_run`.

    Raises:
        FileNotFoundError: If the directory or one of its files is missing.
        ValueError: If the manifest has another format or a file's checksum differs.
    """
    from safetensors.numpy import load_file as load_numpy_file

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(
            f"Run directory {run_dir} not found. Create one with 'hdn train --out {run_dir}'."
        )
    manifest_path = run_dir / "manifest.json"
    manifest = checkpoint.read_json(manifest_path)
    if not isinstance(manifest, dict) or manifest.get("format") != checkpoint.RUN_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        hint = " It is an exported model; 'hdn recommend' reads it." if found == "hdn-model" else ""
        raise ValueError(
            f"{manifest_path} has format {found!r}, expected {checkpoint.RUN_FORMAT!r}, so "
            f"{run_dir} is not a training run directory.{hint}"
        )
    if manifest.get("format_version") != checkpoint.RUN_FORMAT_VERSION:
        raise ValueError(
            f"{run_dir} has run format version {manifest.get('format_version')}, this hdn reads "
            f"version {checkpoint.RUN_FORMAT_VERSION}. Re-train with this version of hdn."
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(entry, dict) and isinstance(entry.get("sha256"), str) for entry in files.values()
    ):
        raise ValueError(
            f"{manifest_path} has no valid 'files' table (name -> {{size, sha256}}). The run "
            "directory is damaged; re-train."
        )
    if verify:
        for name, entry in files.items():
            path = run_dir / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} listed in the run manifest is missing.")
            if checkpoint.sha256_file(path) != entry["sha256"]:
                raise ValueError(
                    f"{path} does not match the SHA-256 in {manifest_path}: the file "
                    "changed after training. Restore it or re-train."
                )

    try:
        config = TrainConfig.from_dict(checkpoint.read_json(run_dir / "config.json"))
    except TypeError as err:
        raise ValueError(f"{run_dir / 'config.json'} is not a valid run config: {err}.") from err
    user_ids = checkpoint.read_json(run_dir / "user_ids.json")
    item_ids = checkpoint.read_json(run_dir / "item_ids.json")
    split = load_numpy_file(str(run_dir / "split.safetensors"))
    num_items = len(item_ids)
    train = InteractionMatrix(split["train_indptr"], split["train_indices"], num_items)
    test = InteractionMatrix(split["test_indptr"], split["test_indices"], num_items)

    num_users = len(user_ids)
    models = run_dir / "models"
    mf = checkpoint.load_weights(
        models / "mf.safetensors", MatrixFactorization(num_users, num_items, config.dim)
    )
    teacher = load_teacher(
        config.teacher, models / "teacher.safetensors", num_users, num_items, config
    )
    student = checkpoint.load_weights(
        models / "hdn.safetensors",
        HDN(num_users, num_items, config.dim, config.hidden_dim, len(config.gammas)),
    )
    metrics = checkpoint.read_json(run_dir / "metrics.json")
    return LoadedRun(
        run_dir, config, user_ids, item_ids, train, test, mf, teacher, student, metrics
    )
