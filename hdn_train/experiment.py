"""A resumable grid of training runs: data set x teacher x model x gamma setting x seed.

Every finished cell is one JSON file under `cells/`, written atomically, so an interrupted
experiment resumes where it stopped. Teachers and MF baselines are trained once per (data set,
seed) and saved under `models/`, because every student cell of that data set and seed reuses
them. `hdn_train.report` turns the cells into tables and plots.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
import tomllib
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hdn_train import checkpoint
from hdn_train.data import load_dataset, paper_split
from hdn_train.distill import (
    distill_dot_product,
    distill_hdn,
    fit_logit_calibration,
    rejection_shares,
    teacher_score_matrix,
)
from hdn_train.evaluate import dense_scorer, evaluate_ranking, hdn_scorer, two_stage_scorer
from hdn_train.interactions import InteractionMatrix
from hdn_train.models import convncf
from hdn_train.models.baselines import MatrixFactorization, PopRank
from hdn_train.models.hdn import HDN
from hdn_train.models.neumf import GMF, MLP, NeuMF
from hdn_train.protocols import leave_one_out_split, sample_candidates, sampled_ranking_metrics
from hdn_train.teachers import FitOptions, ProgressCallback, Teacher, TorchTeacher, fit_pointwise
from hdn_train.variants import (
    BASELINES,
    HDN_VARIANTS,
    TEACHER_MODEL,
    check_model_name,
    check_teacher_kind,
)

logger = logging.getLogger(__name__)

PROTOCOLS = ("paper", "loo")
LOO_HOLDOUTS = ("latest", "random")


@dataclass
class ExperimentConfig:
    """One experiment grid and the training settings shared by its cells.

    Attributes:
        datasets: Named data sets or paths.
        teachers: Teacher kinds: neumf, convncf, als.
        models: Models per teacher (see `hdn_train.variants.MODELS`).
        gamma_settings: Rejection ratios per HDN variant, one list per setting.
        seeds: Seeds; each seed re-splits the data and re-trains every model.
        protocol: "paper" (seeded 20% per user, full ranking) or "loo" (latest interaction held
            out, ranked among 99 sampled items).
        loo_holdout: Interaction held out per user under "loo": "latest" by timestamp (a random
            one when the data has no timestamps) or "random" even when it has them.
        ks: Cut-offs of the reported metrics.
        dim, hidden_dim, mlp_layers, negatives, learning_rate, batch_size: Model and optimiser
            settings, the HDN paper's by default.
        mf_epochs, pretrain_epochs, neumf_epochs, convncf_pretrain_epochs, convncf_epochs,
        student_epochs: Epochs of each training phase.
        convncf_learning_rate: Adam learning rate of ConvNCF's BPR training.
        trade_off_gammas: Extra gamma settings trained for the quality/cost curve only (HDN
            with the first teacher and seed of each data set).
        threads: Torch CPU threads (0 keeps torch's default).
    """

    datasets: list[str] = field(default_factory=lambda: ["ml-1m"])
    teachers: list[str] = field(default_factory=lambda: ["neumf"])
    models: list[str] = field(default_factory=lambda: ["poprank", "mf", "teacher", "hdn"])
    gamma_settings: list[list[float]] = field(default_factory=lambda: [[0.5, 0.75, 0.875]])
    seeds: list[int] = field(default_factory=lambda: [0])
    protocol: str = "paper"
    loo_holdout: str = "latest"
    ks: list[int] = field(default_factory=lambda: [10, 20])
    dim: int = 32
    hidden_dim: int = 32
    mlp_layers: list[int] = field(default_factory=lambda: [64, 32, 16, 8])
    negatives: int = 5
    learning_rate: float = 1e-3
    batch_size: int = 512
    mf_epochs: int = 20
    pretrain_epochs: int = 10
    neumf_epochs: int = 20
    convncf_pretrain_epochs: int = 20
    convncf_epochs: int = 3
    convncf_learning_rate: float = 1e-3
    student_epochs: int = 30
    trade_off_gammas: list[list[float]] = field(default_factory=list)
    threads: int = 0

    def __post_init__(self) -> None:
        for teacher in self.teachers:
            check_teacher_kind(teacher)
        for model in self.models:
            check_model_name(model)
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}.")
        if self.loo_holdout not in LOO_HOLDOUTS:
            raise ValueError(
                f"loo_holdout must be one of {LOO_HOLDOUTS}, got {self.loo_holdout!r}."
            )
        if not self.datasets or not self.seeds:
            raise ValueError("An experiment needs at least one data set and one seed.")
        self._check_values()

    def _check_values(self) -> None:
        """Raise a ValueError naming the first setting of the wrong type or range."""

        def whole(value: Any) -> bool:
            return isinstance(value, int) and not isinstance(value, bool)

        def number(value: Any) -> bool:
            return isinstance(value, int | float) and not isinstance(value, bool)

        def fail(name: str, value: Any, expected: str) -> None:
            raise ValueError(f"Invalid {name} = {value!r}: expected {expected}.")

        for name in ("datasets", "teachers", "models", "seeds", "ks", "mlp_layers"):
            if not isinstance(getattr(self, name), list):
                fail(name, getattr(self, name), "a list")
        if not all(whole(seed) and seed >= 0 for seed in self.seeds):
            fail("seeds", self.seeds, "non-negative integers")
        if len(set(self.seeds)) != len(self.seeds):
            fail("seeds", self.seeds, "each seed once")
        for name in ("dim", "hidden_dim", "negatives", "batch_size"):
            if not whole(getattr(self, name)) or getattr(self, name) < 1:
                fail(name, getattr(self, name), "a positive integer")
        for name in (
            "mf_epochs",
            "pretrain_epochs",
            "neumf_epochs",
            "convncf_pretrain_epochs",
            "convncf_epochs",
            "student_epochs",
            "threads",
        ):
            if not whole(getattr(self, name)) or getattr(self, name) < 0:
                fail(name, getattr(self, name), "a non-negative integer")
        if self.student_epochs == 0:
            fail("student_epochs", 0, "at least 1 epoch")
        if "neumf" in self.teachers and self.pretrain_epochs + self.neumf_epochs == 0:
            fail("neumf_epochs", 0, "at least 1 epoch of NeuMF or of pre-training")
        if "convncf" in self.teachers and self.convncf_epochs == 0:
            fail("convncf_epochs", 0, "at least 1 epoch for the ConvNCF teacher")
        for name in ("learning_rate", "convncf_learning_rate"):
            if not number(getattr(self, name)) or not getattr(self, name) > 0:
                fail(name, getattr(self, name), "a positive number")
        if not all(whole(k) and k >= 1 for k in self.ks):
            fail("ks", self.ks, "positive integers")
        if not all(whole(width) and width >= 1 for width in self.mlp_layers):
            fail("mlp_layers", self.mlp_layers, "positive integers")
        for name in ("gamma_settings", "trade_off_gammas"):
            settings = getattr(self, name)
            valid = isinstance(settings, list) and all(
                isinstance(gammas, list)
                and gammas
                and all(number(g) and 0 <= g < 1 for g in gammas)
                and all(a <= b for a, b in itertools.pairwise(gammas))
                for gammas in settings
            )
            if not valid:
                fail(name, settings, "lists of non-decreasing ratios in [0, 1)")
        if "convncf" in self.teachers and not convncf.is_valid_dim(self.dim):
            fail("dim", self.dim, "a power of two >= 2 for the ConvNCF teacher")

    @classmethod
    def from_file(cls, path: str | Path) -> ExperimentConfig:
        """Read a TOML or JSON experiment file; unknown keys raise a ValueError naming them."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Experiment file {path} not found.")
        if path.suffix == ".toml":
            try:
                payload = tomllib.loads(path.read_text())
            except tomllib.TOMLDecodeError as err:
                raise ValueError(f"{path} is not valid TOML: {err}.") from err
        else:
            payload = checkpoint.read_json(path)
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(payload) - known)
        if unknown:
            raise ValueError(
                f"{path}: unknown settings {unknown}. Valid settings: {sorted(known)}."
            )
        try:
            return cls(**payload)
        except ValueError as err:
            raise ValueError(f"{path}: {err} Fix the setting and run again.") from err


@dataclass(frozen=True)
class Cell:
    """One result of the grid."""

    dataset: str
    teacher: str  # "-" for models that need no teacher
    model: str
    gammas: tuple[float, ...] | None
    seed: int

    @property
    def key(self) -> str:
        gammas = "-" if self.gammas is None else "_".join(f"{g:g}" for g in self.gammas)
        name = Path(self.dataset).name or self.dataset
        return f"{name}__{self.teacher}__{self.model}__g{gammas}__seed{self.seed}"


def grid_cells(config: ExperimentConfig, seeds: Collection[int] | None = None) -> list[Cell]:
    """List every cell of the grid in the order they run: per data set and seed, then teacher.

    Args:
        config: The grid.
        seeds: Keep only the cells of these seeds (all when None).

    Raises:
        ValueError: If `seeds` names a seed that is not in `config.seeds`.
    """
    if seeds is not None:
        unknown = sorted(set(seeds) - set(config.seeds))
        if unknown:
            raise ValueError(
                f"Seed {unknown[0]} is not in the experiment's seeds {list(config.seeds)}. "
                "Pick seeds from that list, or add the seed to the experiment file."
            )
    cells: list[Cell] = []
    for dataset in config.datasets:
        for seed in config.seeds:
            for model in config.models:
                if model in BASELINES:
                    cells.append(Cell(dataset, "-", model, None, seed))
            for teacher in config.teachers:
                for model in config.models:
                    if model in BASELINES:
                        continue
                    if model in ("hdn", "hdn-nr"):
                        for gammas in config.gamma_settings:
                            cells.append(Cell(dataset, teacher, model, tuple(gammas), seed))
                    elif model in HDN_VARIANTS:
                        # The ablations are compared at the first gamma setting only.
                        gammas = tuple(config.gamma_settings[0])
                        cells.append(Cell(dataset, teacher, model, gammas, seed))
                    else:
                        cells.append(Cell(dataset, teacher, model, None, seed))
        first_teacher = config.teachers[0] if config.teachers else "neumf"
        for gammas in config.trade_off_gammas:
            cell = Cell(dataset, first_teacher, "hdn", tuple(gammas), config.seeds[0])
            if cell not in cells:
                cells.append(cell)
    if seeds is not None:
        cells = [cell for cell in cells if cell.seed in seeds]
    return cells


class Workspace:
    """Data, split and trained models of one (data set, seed), built on first use.

    Args:
        config: Training settings.
        directory: Experiment directory whose `models/` caches trained MF baselines and
            teachers across processes; None keeps them in memory only.
        dataset: Named data set or path.
        seed: Seed of the split and of every model.
        split: (train, test) to use instead of loading and splitting `dataset`.
        on_step: Progress callback passed to every training loop.
    """

    def __init__(
        self,
        config: ExperimentConfig,
        directory: Path | None,
        dataset: str,
        seed: int,
        split: tuple[InteractionMatrix, InteractionMatrix] | None = None,
        on_step: ProgressCallback | None = None,
    ) -> None:
        self.config = config
        self.directory = directory
        self.dataset_name = dataset
        self.seed = seed
        self.on_step = on_step
        self.holdout: str | None = None  # "latest" or "random" under the loo protocol
        if split is not None:
            self.train, self.test = split
        else:
            data = load_dataset(dataset)
            if config.protocol == "paper":
                self.train, self.test = paper_split(data.interactions, 0.2, seed)
            else:
                timestamps = data.timestamps if config.loo_holdout == "latest" else None
                if config.loo_holdout == "latest" and timestamps is None:
                    logger.warning(
                        "%s has no timestamps, so each user's held-out interaction is a random "
                        "one, not the latest. A CSV or TSV file gives timestamps in a column named "
                        "'timestamp'.",
                        dataset,
                    )
                self.holdout = "random" if timestamps is None else "latest"
                self.train, self.test = leave_one_out_split(data.interactions, timestamps, seed)
        self.num_users, self.num_items = self.train.n_users, self.train.n_items
        self._teachers: dict[str, tuple[Teacher, dict]] = {}
        self._teacher_scores: dict[str, np.ndarray] = {}
        self._mf: MatrixFactorization | None = None
        self._mf_seconds = 0.0
        self._students: dict[tuple, tuple[HDN, list, float]] = {}
        self._loo_candidates: tuple[np.ndarray, np.ndarray] | None = None

    def _path(self, name: str) -> Path | None:
        if self.directory is None:
            return None
        stem = Path(self.dataset_name).name or self.dataset_name
        return self.directory / "models" / f"{stem}-seed{self.seed}-{name}"

    def _rng(self, offset: int) -> np.random.Generator:
        torch.manual_seed(self.seed * 1000 + offset)
        return np.random.default_rng([self.seed, offset])

    def _options(self, epochs: int, learning_rate: float | None = None) -> FitOptions:
        return FitOptions(
            epochs=epochs,
            batch_size=self.config.batch_size,
            learning_rate=self.config.learning_rate if learning_rate is None else learning_rate,
            negatives=self.config.negatives,
        )

    def mf(self) -> MatrixFactorization:
        """The MF baseline, trained with cross-entropy on sampled negatives."""
        if self._mf is None:
            path = self._path("mf.safetensors")
            if path is not None and path.is_file():
                model = MatrixFactorization(self.num_users, self.num_items, self.config.dim)
                self._mf = checkpoint.load_weights(path, model)
                self._mf_seconds = checkpoint.read_json(path.with_suffix(".json"))["train_seconds"]
            else:
                # Seed torch before the model draws its initial weights.
                rng = self._rng(1)
                model = MatrixFactorization(self.num_users, self.num_items, self.config.dim)
                started = time.perf_counter()
                fit_pointwise(
                    model,
                    self.train,
                    self._options(self.config.mf_epochs),
                    rng,
                    "mf",
                    self.on_step,
                )
                self._mf_seconds = time.perf_counter() - started
                if path is not None:
                    checkpoint.save_weights(path, model)
                    checkpoint.write_json(
                        path.with_suffix(".json"), {"train_seconds": self._mf_seconds}
                    )
                self._mf = model.eval()
        return self._mf

    def teacher(self, kind: str) -> tuple[Teacher, dict]:
        """Return the trained teacher of `kind` and its training record, training it once."""
        if kind not in self._teachers:
            path = self._path(f"teacher-{kind}.safetensors")
            if path is not None and path.is_file() and path.with_suffix(".json").is_file():
                teacher = load_teacher(kind, path, self.num_users, self.num_items, self.config)
                record = checkpoint.read_json(path.with_suffix(".json"))
            else:
                started = time.perf_counter()
                teacher, history = self._train_teacher(kind)
                record = {"train_seconds": time.perf_counter() - started, "history": history}
                if path is not None:
                    save_teacher(teacher, path)
                    checkpoint.write_json(path.with_suffix(".json"), record)
            self._teachers[kind] = (teacher, record)
        return self._teachers[kind]

    def _train_teacher(self, kind: str) -> tuple[Teacher, Any]:
        config = self.config
        rng = self._rng(2)
        on_step = self.on_step
        if kind == "neumf":
            model = NeuMF(self.num_users, self.num_items, config.dim, tuple(config.mlp_layers))
            history: dict = {}
            if config.pretrain_epochs > 0:
                gmf = GMF(self.num_users, self.num_items, config.dim)
                options = self._options(config.pretrain_epochs)
                history["gmf"] = fit_pointwise(gmf, self.train, options, rng, "gmf", on_step)
                mlp = MLP(self.num_users, self.num_items, tuple(config.mlp_layers))
                history["mlp"] = fit_pointwise(mlp, self.train, options, rng, "mlp", on_step)
                model.load_pretrained(gmf, mlp)
            history["neumf"] = fit_pointwise(
                model, self.train, self._options(config.neumf_epochs), rng, "neumf", on_step
            )
            return TorchTeacher(model), history
        if kind == "convncf":
            from hdn_train.bpr import fit_bpr

            # ConvNCF's authors start from MF embeddings trained with BPR.
            mf_bpr = MatrixFactorization(self.num_users, self.num_items, config.dim)
            pretrain = self._options(config.convncf_pretrain_epochs)
            history = {"mf_bpr": fit_bpr(mf_bpr, self.train, pretrain, rng, "mf-bpr", on_step)}
            model = convncf.ConvNCF(self.num_users, self.num_items, config.dim)
            model.load_pretrained_embeddings(mf_bpr)
            options = self._options(config.convncf_epochs, config.convncf_learning_rate)
            history["convncf"] = fit_bpr(model, self.train, options, rng, "convncf", on_step)
            return TorchTeacher(model, scores_are_logits=False), history
        from hdn_train.models.als import ALSOptions, ALSTeacher

        teacher = ALSTeacher.fit(self.train, ALSOptions(factors=config.dim, seed=self.seed))
        return teacher, {"als_seconds": teacher.seconds}

    def teacher_scores(self, kind: str) -> np.ndarray:
        """Teacher logits for every (user, item) pair, float32 (U, I), computed once.

        Scores of a teacher that declares `scores_are_logits = False` are mapped to logits by a
        Platt fit on sampled training pairs (`fit_logit_calibration`).
        """
        if kind not in self._teacher_scores:
            teacher, _ = self.teacher(kind)
            scores = teacher_score_matrix(teacher.score_users, self.num_users)
            if not getattr(teacher, "scores_are_logits", True):
                a, b = fit_logit_calibration(
                    scores, self.train, self.config.negatives, self._rng(5)
                )
                logger.info("Calibrated %s scores to logits: %.4f * score + %.4f", kind, a, b)
                scores *= np.float32(a)
                scores += np.float32(b)
            self._teacher_scores[kind] = scores
        return self._teacher_scores[kind]

    def student(
        self, teacher: str, model: str, gammas: tuple[float, ...]
    ) -> tuple[HDN, list, float]:
        """Train (once) the HDN network behind `model` and return it, its history and seconds."""
        variant = HDN_VARIANTS[model]
        key = (teacher, variant.training_key, gammas)
        if key not in self._students:
            config = self.config
            needs_teacher = "teacher" in (variant.decision_targets, variant.score_target)
            scores = self.teacher_scores(teacher) if needs_teacher else None
            rng = self._rng(3)
            student = HDN(
                self.num_users, self.num_items, config.dim, config.hidden_dim, len(gammas)
            )
            monitor = np.sort(rng.choice(self.num_users, min(300, self.num_users), replace=False))
            started = time.perf_counter()
            history = distill_hdn(
                student,
                self.train,
                scores,
                gammas,
                self._options(config.student_epochs),
                rng,
                monitor,
                self.on_step,
                decision_targets=variant.decision_targets,
                score_target=variant.score_target,
            )
            self._students[key] = (student, history, time.perf_counter() - started)
        return self._students[key]

    def loo_candidates(self) -> tuple[np.ndarray, np.ndarray]:
        if self._loo_candidates is None:
            self._loo_candidates = sample_candidates(self.train, self.test, 99, self.seed)
        return self._loo_candidates


def save_teacher(teacher: Teacher, path: Path) -> None:
    """Write a teacher's weights: a PyTorch state dict, or the ALS factor arrays."""
    if isinstance(teacher, TorchTeacher):
        checkpoint.save_weights(path, teacher.model)
    else:
        teacher.save(path)


def load_teacher(kind: str, path: Path, num_users: int, num_items: int, config: Any) -> Teacher:
    """Rebuild a teacher of `kind` from `save_teacher` output; `config` gives the shapes."""
    if kind == "neumf":
        model = NeuMF(num_users, num_items, config.dim, tuple(config.mlp_layers))
        return TorchTeacher(checkpoint.load_weights(path, model))
    if kind == "convncf":
        # BPR fixes only score differences. On ML-1M the median ConvNCF score was +3 to +4, so
        # raw scores read as logits would call most items positives.
        return TorchTeacher(
            checkpoint.load_weights(path, convncf.ConvNCF(num_users, num_items, config.dim)),
            scores_are_logits=False,
        )
    from hdn_train.models.als import ALSTeacher

    return ALSTeacher.load(path)


def _pair_scorer(score_users: Callable[[np.ndarray], np.ndarray]):
    """Adapt a full-catalogue scorer to (users, items) pairs for the sampled protocol."""

    def score_pairs(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        unique, inverse = np.unique(users, return_inverse=True)
        return score_users(unique)[inverse, items]

    return score_pairs


def _masked_users(scorer):
    def score_users(users: np.ndarray) -> np.ndarray:
        scores, rejected = scorer(users)
        return scores if rejected is None else np.where(rejected, -np.inf, scores)

    return score_users


def run_cell(workspace: Workspace, cell: Cell) -> dict[str, Any]:
    """Train what `cell` needs (reusing the workspace's models) and evaluate it."""
    config = workspace.config
    train, test = workspace.train, workspace.test
    result: dict[str, Any] = {"cell": asdict(cell), "protocol": config.protocol}
    if config.protocol == "loo":
        result["holdout"] = workspace.holdout
    started = time.perf_counter()
    train_seconds = 0.0

    if cell.model == "poprank":
        scorer = dense_scorer(PopRank(train).score_users)
    elif cell.model == "mf":
        mf = workspace.mf()
        scorer = dense_scorer(lambda users: mf.score_all(torch.from_numpy(users)).numpy())
        train_seconds = workspace._mf_seconds
    elif cell.model == TEACHER_MODEL:
        _, record = workspace.teacher(cell.teacher)
        # Rows of the score matrix that distillation needs anyway: a slow teacher such as
        # ConvNCF then scores every pair once per run, not once per cell.
        teacher_matrix = workspace.teacher_scores(cell.teacher)
        scorer = dense_scorer(lambda users: teacher_matrix[users])
        train_seconds = record["train_seconds"]
    elif cell.model == "two-stage":
        mf = workspace.mf()
        teacher_matrix = workspace.teacher_scores(cell.teacher)
        scorer = two_stage_scorer(
            lambda users: mf.score_all(torch.from_numpy(users)).numpy(),
            lambda users: teacher_matrix[users],
            train,
            shortlist=100,
        )
    elif cell.model == "mf-student":
        scores = workspace.teacher_scores(cell.teacher)
        rng = workspace._rng(4)  # seeds torch before the student draws its initial weights
        student = MatrixFactorization(workspace.num_users, workspace.num_items, config.dim)
        begun = time.perf_counter()
        result["history"] = distill_dot_product(
            student, train, scores, workspace._options(config.student_epochs), rng
        )
        train_seconds = time.perf_counter() - begun
        scorer = dense_scorer(lambda users: student.score_all(torch.from_numpy(users)).numpy())
    else:
        variant = HDN_VARIANTS[cell.model]
        student, history, train_seconds = workspace.student(cell.teacher, cell.model, cell.gammas)
        scorer = hdn_scorer(student, variant.rule, cell.gammas, seen=train)
        result["history"] = history
        if variant.rule == "sign":
            cumulative, per_module = rejection_shares(student, np.arange(workspace.num_users))
            result["rejection"] = [
                {
                    "module": n + 1,
                    "target": cell.gammas[n],
                    "actual": float(cumulative[n]),
                    "module_share": float(per_module[n]),
                }
                for n in range(len(cell.gammas))
            ]
            result["reach_share"] = float(1.0 - cumulative[-1])
        elif variant.rule == "quota":
            result["reach_share"] = float(1.0 - cell.gammas[-1])
        else:
            result["reach_share"] = 1.0

    if config.protocol == "paper":
        result["metrics"] = evaluate_ranking(scorer, train, test, tuple(config.ks))
    else:
        users, candidates = workspace.loo_candidates()
        result["metrics"] = sampled_ranking_metrics(
            _pair_scorer(_masked_users(scorer)), users, candidates, ks=(10,)
        )
    result["train_seconds"] = round(train_seconds, 2)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def run_experiment(
    config: ExperimentConfig,
    directory: str | Path,
    on_cell: Callable[[Cell, dict | None, int, int], None] | None = None,
    seeds: Collection[int] | None = None,
) -> list[dict]:
    """Run every unfinished cell of the grid and return all cell results.

    Args:
        config: The grid.
        directory: Experiment directory; created on first use. A directory made for another
            grid raises, so results of different settings never mix.
        on_cell: Called as `on_cell(cell, result_or_None_if_skipped, index, total)`.
        seeds: Run only the cells of these seeds of the grid (all when None). Cells and cached
            models of different seeds never share a file, so one process per seed can run on
            the same directory at once.

    Raises:
        ValueError: If `directory` contains an experiment with other settings, or `seeds`
            names a seed the grid does not have.
    """
    directory = Path(directory)
    cells = grid_cells(config, seeds)
    config_path = directory / "experiment.json"
    if config_path.is_file():
        changed = _changed_settings(checkpoint.read_json(config_path), config)
        if changed:
            raise ValueError(
                f"{directory} already contains an experiment with other settings ({changed}; "
                f"see {config_path}). Use a new directory, or restore the original settings "
                "to resume."
            )
    else:
        checkpoint.write_json(config_path, asdict(config))
    if config.threads > 0:
        torch.set_num_threads(config.threads)

    results = []
    workspaces: dict[tuple[str, int], Workspace] = {}
    for index, cell in enumerate(cells):
        path = directory / "cells" / f"{cell.key}.json"
        if path.is_file():
            results.append(checkpoint.read_json(path))
            if on_cell is not None:
                on_cell(cell, None, index, len(cells))
            continue
        workspace_key = (cell.dataset, cell.seed)
        if workspace_key not in workspaces:
            workspaces.clear()  # one data set and seed in memory at a time
            workspaces[workspace_key] = Workspace(config, directory, cell.dataset, cell.seed)
        logger.info("Cell %d/%d: %s", index + 1, len(cells), cell.key)
        result = run_cell(workspaces[workspace_key], cell)
        checkpoint.write_json(path, result)
        results.append(result)
        if on_cell is not None:
            on_cell(cell, result, index, len(cells))
    return results


def _changed_settings(saved: dict, config: ExperimentConfig) -> str:
    """Describe the settings of `config` that differ from `saved`, or return "" when none do.

    A setting missing from `saved` counts as its default, so directories written before the
    setting existed still resume.
    """
    current = json.loads(json.dumps(asdict(config)))
    defaults = json.loads(json.dumps(asdict(ExperimentConfig())))
    saved = {**defaults, **saved}
    names = sorted(set(saved) | set(current))
    return ", ".join(
        f"{name}: {saved.get(name)!r} saved, {current.get(name)!r} now"
        for name in names
        if saved.get(name) != current.get(name)
    )


def load_results(directory: str | Path) -> list[dict]:
    """Read every finished cell of an experiment directory."""
    cells = sorted((Path(directory) / "cells").glob("*.json"))
    return [checkpoint.read_json(path) for path in cells]
