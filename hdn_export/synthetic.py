"""Write model directories and teachers with random weights, to benchmark at a given scale.

The model directory is written by the same code as `hdn export`, so the runtime cannot tell it
from a trained model. Only the weights and the training interactions are made up:

- Embeddings are drawn from N(0, 1/d), except that column 0 of both tables is 1. Then
  (u * v)[0] = 1 for every pair, so θ_n[0] acts as a bias of decision module n. Each bias is
  set on a sample of pairs so that the "sign" rule keeps about the configured share, 1 - γ_n of
  the catalogue after module n.
- Each user's training items are drawn from a Zipf-like item popularity, with a log-normal
  count per user around the requested mean (MovieLens-20M: 20,000,263 ratings of 138,493
  users, so about 115 per user in an 80% training split).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from hdn_export.onnx import MODEL_FORMAT, _write_model_directory
from hdn_export.teacher import TeacherExport, export_teacher_model_onnx
from hdn_export.verify import verify_stages
from hdn_train import checkpoint
from hdn_train.config import TrainConfig
from hdn_train.interactions import InteractionMatrix
from hdn_train.models.convncf import ConvNCF
from hdn_train.models.hdn import HDN
from hdn_train.models.neumf import NeuMF
from hdn_train.pipeline import LoadedRun

logger = logging.getLogger(__name__)

SYNTHETIC_GAMMAS = (0.75, 0.875, 0.9375)
# MovieLens-20M has 20,000,263 ratings of 138,493 users. An 80% training split keeps about 115
# per user.
MEAN_TRAINING_ITEMS = 0.8 * 20_000_263 / 138_493
_CALIBRATION_PAIRS = 1 << 18
_POPULARITY_EXPONENT = 0.8
_POPULARITY_OFFSET = 10


def parse_shape(text: str) -> tuple[int, int]:
    """Parse "USERSxITEMS", for example "138493x26744", into (num_users, num_items).

    Raises:
        ValueError: The text is not two positive integers joined by "x".
    """
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise ValueError(
            f"A synthetic shape is USERSxITEMS, for example 138493x26744, got {text!r}."
        )
    num_users, num_items = (int(part) for part in parts)
    if num_users < 1 or num_items < 2:
        raise ValueError(f"A synthetic shape needs >= 1 user and >= 2 items, got {text!r}.")
    return num_users, num_items


def write_synthetic_model(
    out_dir: str | Path,
    num_users: int,
    num_items: int,
    dim: int = 32,
    hidden_dim: int = 32,
    gammas: tuple[float, ...] = SYNTHETIC_GAMMAS,
    mean_training_items: float = MEAN_TRAINING_ITEMS,
    seed: int = 0,
    overwrite: bool = False,
) -> dict:
    """Write an exported model directory with random weights in the given shape.

    Args:
        out_dir: Directory to create.
        num_users: Users U.
        num_items: Items I, the catalogue.
        dim: Embedding width d, at least 2.
        hidden_dim: Width of the interaction embeddings.
        gammas: rejection_ratios (γ), one per decision module.
        mean_training_items: Mean training items per user, capped at half the catalogue.
        seed: Seed of every random draw.
        overwrite: Replace an existing model directory at `out_dir`.

    Returns:
        The manifest as written. Its "synthetic" entry records these arguments and the
        share of the sampled pairs that the "sign" rule keeps after each module.

    Raises:
        FileExistsError: `out_dir` exists and `overwrite` is False.
        ValueError: An argument is out of range.
    """
    if dim < 2:
        raise ValueError(f"dim must be at least 2 (column 0 carries the bias), got {dim}.")
    started = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    student = _random_student(num_users, num_items, dim, hidden_dim, len(gammas), generator)
    kept_shares = _calibrate_biases(student, gammas, rng)
    train = _training_items(num_users, num_items, mean_training_items, rng)

    config = TrainConfig(
        data=f"synthetic:{num_users}x{num_items}",
        dim=dim,
        hidden_dim=hidden_dim,
        gammas=tuple(gammas),
        seed=seed,
    )
    empty = InteractionMatrix(
        np.zeros(num_users + 1, dtype=np.int64), np.zeros(0, np.int64), num_items
    )
    run = LoadedRun(
        path=Path(out_dir),
        config=config,
        user_ids=[str(user) for user in range(num_users)],
        item_ids=[str(item) for item in range(num_items)],
        train=train,
        test=empty,
        mf=None,
        teacher=None,
        student=student,
        metrics={},
    )
    with checkpoint.staged_directory(
        out_dir, overwrite=overwrite, expected_format=MODEL_FORMAT
    ) as staging:
        manifest = _write_model_directory(run, staging)
        manifest["source_run"] = None
        manifest["parity"] = verify_stages(student, staging, manifest, num_users=4, seed=seed)
        manifest["synthetic"] = {
            "seed": seed,
            "mean_training_items": mean_training_items,
            "training_interactions": train.nnz,
            "sign_rule_kept_shares": kept_shares,
        }
        checkpoint.write_json(staging / "manifest.json", manifest)
    logger.info(
        "Wrote a synthetic %dx%d model to %s in %.1fs",
        num_users,
        num_items,
        out_dir,
        time.perf_counter() - started,
    )
    return manifest


def write_synthetic_teachers(
    out_dir: str | Path,
    num_users: int,
    num_items: int,
    dim: int = 32,
    seed: int = 0,
    kinds: tuple[str, ...] = ("neumf", "convncf"),
    label_random: bool = False,
) -> list[TeacherExport]:
    """Export teachers with random weights, one `KIND.onnx` per kind, neumf and convncf.

    NeuMF has the HDN experiments' MLP widths (64, 32, 16, 8) and ConvNCF 32 channels. Their
    speed does not depend on the weights.

    Args:
        out_dir: Existing folder to write into.
        num_users: Users U.
        num_items: Items I.
        dim: Embedding width; ConvNCF needs a power of two.
        seed: Seed of the weights.
        kinds: Teachers to write.
        label_random: Mark the files as random in their metadata, so that `hdn bench` names
            them "... (random weights)" beside a trained model.

    Raises:
        ValueError: A kind is neither neumf nor convncf.
    """
    makers = {"neumf": NeuMF, "convncf": ConvNCF}
    unknown = sorted(set(kinds) - set(makers))
    if unknown:
        raise ValueError(
            f"Unknown teacher kind {unknown[0]!r}. Random teachers can be: neumf, convncf."
        )
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    return [
        export_teacher_model_onnx(
            makers[kind](num_users, num_items, dim), kind, out_dir / f"{kind}.onnx", label_random
        )
        for kind in kinds
    ]


def _random_student(
    num_users: int,
    num_items: int,
    dim: int,
    hidden_dim: int,
    num_decisions: int,
    generator: torch.Generator,
) -> HDN:
    student = HDN(num_users, num_items, dim, hidden_dim, num_decisions)
    with torch.no_grad():
        for table in (student.user_embedding.weight, student.item_embedding.weight):
            table.normal_(0.0, dim**-0.5, generator=generator)
            table[:, 0] = 1.0
        layers = [student.score]
        for module in student.decisions:
            layers += [module.decision, module.transform]
        for layer in layers:
            bound = layer.in_features**-0.5
            layer.weight.uniform_(-bound, bound, generator=generator)
    return student.eval()


@torch.no_grad()
def _calibrate_biases(student: HDN, gammas: tuple[float, ...], rng: np.random.Generator) -> list:
    """Set θ_n[0] so that module n keeps (1 - γ_n) / (1 - γ_{n-1}) of the pairs reaching it.

    Returns the cumulative share of the sampled pairs kept after each module.
    """
    num_users = student.user_embedding.num_embeddings
    num_items = student.item_embedding.num_embeddings
    users = torch.from_numpy(rng.integers(0, num_users, _CALIBRATION_PAIRS))
    items = torch.from_numpy(rng.integers(0, num_items, _CALIBRATION_PAIRS))
    product = student.user_embedding(users) * student.item_embedding(items)

    features = product
    reaching = torch.ones(_CALIBRATION_PAIRS, dtype=torch.bool)
    previous_keep = 1.0
    kept_shares = []
    for module, gamma in zip(student.decisions, gammas):
        weight = module.decision.weight  # (1, width); column 0 multiplies (u * v)[0] = 1
        weight[0, 0] = 0.0
        unbiased = module.decision(features).squeeze(-1)
        share_within = (1.0 - gamma) / previous_keep
        weight[0, 0] = -torch.quantile(unbiased[reaching], share_within).item()
        decision = module.decision(features).squeeze(-1)
        reaching &= ~(decision > 0)
        kept_shares.append(round(reaching.float().mean().item(), 4))
        previous_keep = 1.0 - gamma
        features = torch.cat([product, torch.relu(module.transform(features))], dim=-1)
    return kept_shares


def _training_items(
    num_users: int, num_items: int, mean_items: float, rng: np.random.Generator
) -> InteractionMatrix:
    """Draw each user's training items: log-normal counts, Zipf-like popularity, no repeats."""
    mean_items = min(mean_items, num_items / 2)
    sigma = 1.0
    counts = rng.lognormal(np.log(mean_items) - sigma**2 / 2, sigma, num_users)
    counts = np.clip(np.round(counts), 1, num_items // 2).astype(np.int64)

    popularity = 1.0 / (np.arange(num_items) + _POPULARITY_OFFSET) ** _POPULARITY_EXPONENT
    popularity = popularity[rng.permutation(num_items)]
    items = rng.choice(num_items, size=int(counts.sum()), p=popularity / popularity.sum())
    users = np.repeat(np.arange(num_users, dtype=np.int64), counts)
    # Repeated draws of one item count once, so some users end up with fewer items.
    return InteractionMatrix.from_pairs(users, items, num_users, num_items)
