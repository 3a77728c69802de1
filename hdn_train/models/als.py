"""Matrix factorisation by alternating least squares on implicit feedback, usable as a teacher.

Training is delegated to the CPU solver of the `implicit` package (Hu, Koren and Volinsky,
"Collaborative Filtering for Implicit Feedback Datasets", 2008). This module turns an
`InteractionMatrix` into that solver's input, keeps the factors as numpy arrays, scores pairs
and users from them, and saves and loads them. Distillation itself lives in `hdn_train.distill`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
from implicit.cpu.als import AlternatingLeastSquares
from safetensors.numpy import load_file
from threadpoolctl import threadpool_limits

from hdn_train.checkpoint import save_arrays
from hdn_train.interactions import InteractionMatrix

logger = logging.getLogger(__name__)


@dataclass
class ALSOptions:
    """Settings of one ALS fit.

    The defaults gave the best NDCG@20 (0.397) of six settings tried on ML-1M with the 80/20
    `paper_split` (seed 0) and 32 factors. The penalty is not scaled by the number of
    interactions, so a much larger or smaller data set may want another `regularization`.

    Attributes:
        factors: Width f of the user and item factors.
        regularization: L2 penalty on both factor matrices, at least 0.
        alpha: Confidence weight of each observed pair. Unobserved pairs weigh 1 and have
            target 0, so alpha > 1 trusts the interactions more than their absence.
        iterations: Number of sweeps, each solving all user factors and then all item factors.
        seed: Seed of the random initial factors.
        num_threads: Solver threads; 0 uses every core. With 1 thread, the same seed and data
            give bit-identical factors.
    """

    factors: int = 32
    regularization: float = 30.0
    alpha: float = 2.0
    iterations: int = 15
    seed: int = 0
    num_threads: int = 0

    def validate(self) -> None:
        """Check every field.

        Raises:
            ValueError: If a field is out of range; the message names the field and its value.
        """
        if self.factors < 1:
            raise ValueError(
                f"factors must be at least 1, got {self.factors}. It is the width of the user "
                "and item factors."
            )
        if self.iterations < 1:
            raise ValueError(
                f"iterations must be at least 1, got {self.iterations}. Each iteration solves "
                "all user factors and then all item factors."
            )
        if self.regularization < 0:
            raise ValueError(
                f"regularization must be at least 0, got {self.regularization}. It is the L2 "
                "penalty on the factors."
            )
        # implicit reads a negative confidence as a disliked item, and 0 drops the pair.
        if not self.alpha > 0:
            raise ValueError(
                f"alpha must be positive, got {self.alpha}. It is the confidence weight of an "
                "observed interaction."
            )
        if self.num_threads < 0:
            raise ValueError(
                f"num_threads must be at least 0, got {self.num_threads}. Pass 0 to use every core."
            )


def confidence_matrix(train: InteractionMatrix, alpha: float) -> scipy.sparse.csr_matrix:
    """Build the users x items confidence matrix that the ALS solver takes.

    Args:
        train: Training interactions.
        alpha: Value stored for every observed pair.

    Returns:
        float32 CSR matrix of shape (n_users, n_items) with `alpha` at each training pair.
    """
    data = np.full(train.nnz, alpha, dtype=np.float32)
    return scipy.sparse.csr_matrix(
        (data, train.indices.astype(np.int32), train.indptr.astype(np.int32)),
        shape=(train.n_users, train.n_items),
    )


class ALSTeacher:
    """Dot-product scorer over ALS factors, implementing the `Teacher` protocol.

    Args:
        user_factors: Shape (n_users, f), cast to float32.
        item_factors: Shape (n_items, f), cast to float32.
        seconds: Wall-clock seconds the fit took, or 0.0 when unknown.
        batch_pairs: Upper bound on pairs gathered at once in `score_pairs`, which bounds its
            temporary memory to about 2 * batch_pairs * f * 4 bytes.

    Raises:
        ValueError: If the factors are not 2-D or their widths differ.
    """

    # Dot products of ALS factors are not logits: distillation calibrates them first.
    scores_are_logits = False

    def __init__(
        self,
        user_factors: np.ndarray,
        item_factors: np.ndarray,
        seconds: float = 0.0,
        batch_pairs: int = 1 << 18,
    ) -> None:
        user_factors = np.ascontiguousarray(user_factors, dtype=np.float32)
        item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
        if user_factors.ndim != 2 or item_factors.ndim != 2:
            raise ValueError(
                f"Factors must be 2-D, got user factors of shape {user_factors.shape} and item "
                f"factors of shape {item_factors.shape}."
            )
        if user_factors.shape[1] != item_factors.shape[1]:
            raise ValueError(
                f"User and item factors must have the same width, got {user_factors.shape[1]} "
                f"and {item_factors.shape[1]}."
            )
        self.user_factors = user_factors
        self.item_factors = item_factors
        self.seconds = float(seconds)
        self.batch_pairs = batch_pairs
        self.num_items = item_factors.shape[0]

    @property
    def num_users(self) -> int:
        return self.user_factors.shape[0]

    @property
    def factors(self) -> int:
        return self.user_factors.shape[1]

    @classmethod
    def fit(cls, train: InteractionMatrix, options: ALSOptions | None = None) -> ALSTeacher:
        """Train ALS on the training interactions with implicit's CPU solver.

        Every observed pair gets confidence `options.alpha` and target 1. Every other pair has
        confidence 1 and target 0. The solver is the conjugate-gradient one, in float32.

        Args:
            train: Training interactions.
            options: Fit settings; the `ALSOptions` defaults when None.

        Returns:
            The fitted teacher, with user factors of shape (n_users, f), item factors of shape
            (n_items, f), and the fit time in `seconds`.

        Raises:
            ValueError: If an option is out of range.
        """
        options = ALSOptions() if options is None else options
        options.validate()
        user_items = confidence_matrix(train, options.alpha)

        logger.info(
            "Fitting ALS on %d users x %d items (%d pairs): factors=%d, regularization=%g, "
            "alpha=%g, iterations=%d",
            train.n_users,
            train.n_items,
            train.nnz,
            options.factors,
            options.regularization,
            options.alpha,
            options.iterations,
        )
        started = time.perf_counter()
        # implicit advises a single BLAS thread because its solver threads already use every
        # core. Its constructor checks the BLAS setting, so it is built inside the limit too.
        with threadpool_limits(limits=1, user_api="blas"):
            # The confidence matrix already contains alpha, and implicit 0.7 multiplies its input
            # by its own alpha, so the model's alpha stays 1.
            model = AlternatingLeastSquares(
                factors=options.factors,
                regularization=options.regularization,
                alpha=1.0,
                dtype=np.float32,
                iterations=options.iterations,
                num_threads=options.num_threads,
                random_state=options.seed,
            )
            model.fit(user_items, show_progress=False)
        seconds = time.perf_counter() - started

        user_factors = np.asarray(model.user_factors)
        item_factors = np.asarray(model.item_factors)
        expected_users = (train.n_users, options.factors)
        expected_items = (train.n_items, options.factors)
        # The CPU solver adds no bias columns, unlike implicit's GPU models. An upgrade that
        # changed this would make the dot products wrong, so the shapes are checked.
        if user_factors.shape != expected_users or item_factors.shape != expected_items:
            raise RuntimeError(
                f"implicit returned user factors of shape {user_factors.shape} and item factors "
                f"of shape {item_factors.shape}, expected {expected_users} and "
                f"{expected_items}. Check the installed implicit version (tested with 0.7.3)."
            )
        logger.info("Fitted ALS in %.1fs", seconds)
        return cls(user_factors, item_factors, seconds)

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Return the dot products of user and item factors, float32 shape (P,).

        Args:
            users: int, shape (P,). User indices in [0, num_users).
            items: int, shape (P,). Item indices in [0, num_items).
        """
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError(
                f"users and items must be 1-D arrays of the same length, got shapes "
                f"{users.shape} and {items.shape}."
            )
        scores = np.empty(len(users), dtype=np.float32)
        for start in range(0, len(users), self.batch_pairs):
            batch = slice(start, start + self.batch_pairs)
            user_rows = self.user_factors[users[batch]]  # (b, f)
            item_rows = self.item_factors[items[batch]]  # (b, f)
            scores[batch] = np.einsum("ij,ij->i", user_rows, item_rows)
        return scores

    def score_users(self, users: np.ndarray) -> np.ndarray:
        """Return the scores of every item for each user, float32 shape (len(users), num_items).

        Args:
            users: int, shape (B,). User indices in [0, num_users).
        """
        users = np.asarray(users, dtype=np.int64)
        return self.user_factors[users] @ self.item_factors.T

    def save(self, path: str | Path) -> None:
        """Write the factors and the fit time to one safetensors file, atomically."""
        save_arrays(
            path,
            {
                "user_factors": self.user_factors,
                "item_factors": self.item_factors,
                "seconds": np.array([self.seconds], dtype=np.float64),
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> ALSTeacher:
        """Read a teacher written by `save`.

        Raises:
            FileNotFoundError: If `path` does not exist.
            ValueError: If the file does not contain the user and item factors.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ALS factors file {path} not found. Fit and save it first.")
        arrays = load_file(str(path))
        missing = [name for name in ("user_factors", "item_factors") if name not in arrays]
        if missing:
            raise ValueError(
                f"{path} does not contain {', '.join(missing)}, only {sorted(arrays)}. Load a "
                "file written by ALSTeacher.save."
            )
        seconds = float(arrays["seconds"][0]) if "seconds" in arrays else 0.0
        return cls(arrays["user_factors"], arrays["item_factors"], seconds)
