"""One training run end to end: data, split, baselines, teacher, distilled HDN, metrics, run directory.

Run directory layout (format `hdn-run`, version 1), the contract `hdn_export` reads:

    config.json           TrainConfig
    user_ids.json         external id of each dense user index
    item_ids.json         external id of each dense item index
    split.safetensors     train_indptr, train_indices, test_indptr, test_indices (CSR, int64)
    models/mf.safetensors, models/neumf.safetensors, models/hdn.safetensors
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
from hdn_train.distill import distill_hdn, keep_counts, rejection_shares, teacher_score_matrix
from hdn_train.evaluate import dense_scorer, evaluate_ranking, hdn_scorer
from hdn_train.interactions import InteractionMatrix
from hdn_train.models.baselines import MatrixFactorization, PopRank
from hdn_train.models.hdn import HDN
from hdn_train.models.neumf import GMF, MLP, NeuMF
from hdn_train.teachers import FitOptions, ProgressCallback, fit_pointwise

logger = logging.getLogger(__name__)

MONITOR_USERS = 500
"""Users on whom the rejection shares are measured after each distillation epoch."""


@dataclass
class TrainedRun:
    """Models, split and metrics of a finished run in memory, the objects a run directory stores."""

    config: TrainConfig
    dataset: Dataset
    train: InteractionMatrix
    test: InteractionMatrix
    mf: MatrixFactorization
    teacher: NeuMF
    student: HDN
    metrics: dict
    history: dict


def split_dataset(dataset: Dataset, config: TrainConfig) -> tuple[InteractionMatrix, InteractionMatrix]:
    """Return (train, test) by the configured split."""
    if config.split == "preset":
        if dataset.preset_split is None:
            raise ValueError(
                f"split='preset' but data set {dataset.name!r} has no train/test files. "
                "Use split='paper', or point --data at a folder with train.txt and test.txt."
            )
        return dataset.preset_split
    return paper_split(dataset.interactions, config.test_share, config.seed)


def _torch_scores(model: torch.nn.Module):
    def score_all(users: np.ndarray) -> np.ndarray:
        return model.score_all(torch.from_numpy(np.asarray(users, np.int64))).numpy()

    return score_all


def _seeded(config: TrainConfig, offset: int) -> np.random.Generator:
    # Separate streams per model, so changing one model's epochs leaves the others unchanged.
    torch.manual_seed(config.seed * 1000 + offset)
    return np.random.default_rng([config.seed, offset])


def train_teacher(
    config: TrainConfig, train: InteractionMatrix, on_step: ProgressCallback | None
) -> tuple[NeuMF, dict]:
    """Train NeuMF, from GMF and MLP pre-training when `pretrain_epochs` > 0."""
    num_users, num_items = train.n_users, train.n_items
    options = FitOptions(
        epochs=config.pretrain_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        negatives=config.negatives,
    )
    history: dict = {}
    rng = _seeded(config, 2)
    teacher = NeuMF(num_users, num_items, config.dim, config.mlp_layers)
    if config.pretrain_epochs > 0:
        gmf = GMF(num_users, num_items, config.dim)
        history["gmf"] = fit_pointwise(gmf, train, options, rng, "gmf", on_step)
        mlp = MLP(num_users, num_items, config.mlp_layers)
        history["mlp"] = fit_pointwise(mlp, train, options, rng, "mlp", on_step)
        teacher.load_pretrained(gmf, mlp)

    options.epochs = config.teacher_epochs
    history["neumf"] = fit_pointwise(teacher, train, options, rng, "neumf", on_step)
    return teacher, history


def train_all(config: TrainConfig, on_step: ProgressCallback | None = None) -> TrainedRun:
    """Train PopRank, MF, the NeuMF teacher and the HDN student, then evaluate each of them."""
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    dataset = load_dataset(config.data, user_col=config.user_col, item_col=config.item_col)
    train, test = split_dataset(dataset, config)
    logger.info(
        "Data %s: %d users, %d items, %d train and %d test interactions",
        dataset.name, train.n_users, train.n_items, train.nnz, test.nnz,
    )
    options = FitOptions(
        epochs=config.mf_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        negatives=config.negatives,
    )
    history: dict = {}
    seconds: dict[str, float] = {}

    started = time.perf_counter()
    mf_rng = _seeded(config, 1)
    mf = MatrixFactorization(train.n_users, train.n_items, config.dim)
    history["mf"] = fit_pointwise(mf, train, options, mf_rng, "mf", on_step)
    seconds["mf"] = time.perf_counter() - started

    started = time.perf_counter()
    teacher, teacher_history = train_teacher(config, train, on_step)
    history.update(teacher_history)
    seconds["neumf"] = time.perf_counter() - started

    started = time.perf_counter()
    teacher_scores = teacher_score_matrix(_torch_scores(teacher), train.n_users)
    student_rng = _seeded(config, 3)
    student = HDN(train.n_users, train.n_items, config.dim, config.hidden_dim, len(config.gammas))
    monitor = np.sort(
        student_rng.choice(train.n_users, min(MONITOR_USERS, train.n_users), replace=False)
    )
    options.epochs = config.student_epochs
    history["hdn"] = distill_hdn(
        student, train, teacher_scores, config.gammas, options, student_rng, monitor, on_step
    )
    seconds["hdn"] = time.perf_counter() - started
    del teacher_scores

    metrics = evaluate_models(config, train, test, mf, teacher, student)
    for name, value in seconds.items():
        metrics[name]["train_seconds"] = round(value, 2)
    return TrainedRun(config, dataset, train, test, mf, teacher, student, metrics, history)


def evaluate_models(
    config: TrainConfig,
    train: InteractionMatrix,
    test: InteractionMatrix,
    mf: MatrixFactorization,
    teacher: NeuMF,
    student: HDN,
) -> dict:
    """Return `{model name: metrics}` for PopRank, MF, NeuMF, HDN and HDN without rejection."""
    logger.info("Evaluating on %d test users", int((test.row_lengths() > 0).sum()))
    popularity = PopRank(train)
    scorers = {
        "poprank": dense_scorer(popularity.score_users),
        "mf": dense_scorer(_torch_scores(mf)),
        "neumf": dense_scorer(_torch_scores(teacher)),
        "hdn": hdn_scorer(student, reject=True),
        "hdn_no_rejection": hdn_scorer(student, reject=False),
    }
    metrics = {
        name: evaluate_ranking(scorer, train, test, config.ks) for name, scorer in scorers.items()
    }

    all_users = np.arange(train.n_users)
    cumulative, per_module = rejection_shares(student, all_users)
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
        checkpoint.save_weights(staging / "models" / "neumf.safetensors", run.teacher)
        checkpoint.save_weights(staging / "models" / "hdn.safetensors", run.student)
        checkpoint.write_json(staging / "metrics.json", run.metrics)
        checkpoint.write_json(staging / "history.json", run.history)
        files = [
            "config.json", "user_ids.json", "item_ids.json", "split.safetensors",
            "models/mf.safetensors", "models/neumf.safetensors", "models/hdn.safetensors",
            "metrics.json", "history.json",
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
    teacher: NeuMF
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
    manifest = checkpoint.read_json(run_dir / "manifest.json")
    if manifest.get("format") != checkpoint.RUN_FORMAT:
        raise ValueError(
            f"{run_dir / 'manifest.json'} has format {manifest.get('format')!r}, expected "
            f"{checkpoint.RUN_FORMAT!r}. Is {run_dir} a training run directory?"
        )
    if manifest.get("format_version") != checkpoint.RUN_FORMAT_VERSION:
        raise ValueError(
            f"{run_dir} has run format version {manifest.get('format_version')}, this hdn reads "
            f"version {checkpoint.RUN_FORMAT_VERSION}. Re-train with this version of hdn."
        )
    if verify:
        for name, entry in manifest["files"].items():
            path = run_dir / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} listed in the run manifest is missing.")
            if checkpoint.sha256_file(path) != entry["sha256"]:
                raise ValueError(
                    f"{path} does not match the SHA-256 in {run_dir / 'manifest.json'}: the file "
                    "changed after training. Restore it or re-train."
                )

    config = TrainConfig.from_dict(checkpoint.read_json(run_dir / "config.json"))
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
    teacher = checkpoint.load_weights(
        models / "neumf.safetensors", NeuMF(num_users, num_items, config.dim, config.mlp_layers)
    )
    student = checkpoint.load_weights(
        models / "hdn.safetensors",
        HDN(num_users, num_items, config.dim, config.hidden_dim, len(config.gammas)),
    )
    metrics = checkpoint.read_json(run_dir / "metrics.json")
    return LoadedRun(
        run_dir, config, user_ids, item_ids, train, test, mf, teacher, student, metrics
    )
