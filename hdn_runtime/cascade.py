"""Run the decision stages, the scoring stage and top-K over every candidate of a user batch.

The candidates of a user are all catalogue items minus the items excluded for that user.
Each decision stage receives the survivors of the previous one, packed densely on the host. Mapping
external ids and loading files is left to `recommender` and `tables`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np

from hdn_runtime.backends.base import StageBackend
from hdn_runtime.compaction import compact, segment_counts
from hdn_runtime.manifest import (
    DECISION_OUTPUT,
    HIDDEN_INPUT,
    HIDDEN_OUTPUT,
    ITEM_INPUT,
    SCORE_OUTPUT,
    USER_INPUT,
)
from hdn_runtime.topk import rank_within_segments, segmented_top_k

logger = logging.getLogger(__name__)

RULES = ("sign", "quota")
# With d = h = 32, one chunk of 2**20 pairs raised peak memory by about 1 GiB in a CPU run with
# ONNX Runtime 1.23: each per-pair float32 array takes 128 MiB, and a stage has several inputs,
# outputs and intermediates. Pass a smaller max_candidates on hosts with less memory.
DEFAULT_MAX_CANDIDATES = 1 << 20


@dataclass(frozen=True)
class CascadeStats:
    """How many candidates each stage passed on, per user of the batch.

    Attributes:
        candidate_counts: int64, shape (B,). Candidates entering the first decision stage.
        survivor_counts: int64, shape (N, B). Candidates kept by each decision stage, which
            is also what reaches the next stage (the last row reaches the scoring stage).
        stage_seconds: float64, shape (N + 1,). Time spent inside each stage's backend,
            summed over chunks; the last entry is the scoring stage.
        num_chunks: Number of user chunks the batch was split into.
        prefilter_survivors: int64, shape (B,). Pairs that the fast cascade's matrix-product
            pre-rejection passed on to decision stage 1, a superset of that stage's survivors.
            None for the plain cascade, where stage 1 runs on every candidate.
        phase_seconds: Wall time of the host-side steps between backend calls, summed over
            chunks, keyed by step name (for example "gather", "compaction", "top_k").
    """

    candidate_counts: np.ndarray
    survivor_counts: np.ndarray
    stage_seconds: np.ndarray
    num_chunks: int
    prefilter_survivors: np.ndarray | None = None
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_candidates(self) -> int:
        return int(self.candidate_counts.sum())

    @property
    def total_survivors(self) -> list[int]:
        """Survivors of each decision stage, summed over the batch."""
        return [int(count) for count in self.survivor_counts.sum(axis=1)]


@dataclass(frozen=True)
class CascadeResult:
    """Top-K of every user of a batch, and the stage statistics.

    Attributes:
        item_indices: int64, shape (B, k). Dense item indices, best first, padded with -1.
        scores: float32, shape (B, k). Scoring-stage outputs, padded with -inf.
        counts: int64, shape (B,). Number of real entries in each row.
        stats: Survivor counts and timings.
    """

    item_indices: np.ndarray
    scores: np.ndarray
    counts: np.ndarray
    stats: CascadeStats


class Cascade:
    """The ordered chain of stage backends that turns a user batch into top-K items.

    Args:
        stage_backends: N decision-stage backends in order, then the scoring-stage backend.
            The cascade owns them and closes them in `close()`.
        rejection_ratios: rejection_ratios (γ), one per decision stage. Only the "quota" rule
            reads them.
        rule: How a decision stage rejects. "sign" rejects every pair with decision > 0, as
            trained. "quota" makes stage n keep exactly ceil((1 - γ_n) * c_u) of user u's c_u
            initial candidates: those with the lowest decision, ties broken by lower item index.
        max_candidates: Maximum number of (user, item) pairs per chunk. Users are processed in
            chunks of max(1, max_candidates // num_items), which bounds memory.

    Raises:
        ValueError: The stage count does not match the ratios, or an argument is out of range.
    """

    def __init__(
        self,
        stage_backends: Sequence[StageBackend],
        rejection_ratios: Sequence[float],
        rule: str = "sign",
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
    ) -> None:
        if rule not in RULES:
            raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}.")
        if len(stage_backends) < 2 or len(stage_backends) != len(rejection_ratios) + 1:
            raise ValueError(
                "A cascade needs N >= 1 decision stages, one rejection ratio each, then the "
                f"scoring stage; got {len(stage_backends)} stage backends and "
                f"{len(rejection_ratios)} rejection ratios."
            )
        if not all(0.0 <= ratio < 1.0 for ratio in rejection_ratios):
            raise ValueError(
                f"rejection_ratios must lie in [0, 1), got {list(rejection_ratios)}. Each is the "
                "share of a user's candidates rejected once its stage has decided."
            )
        if not isinstance(max_candidates, int) or max_candidates < 1:
            raise ValueError(f"max_candidates must be a positive integer, got {max_candidates!r}.")

        self.stage_backends = list(stage_backends)
        self.rejection_ratios = tuple(float(ratio) for ratio in rejection_ratios)
        self.rule = rule
        self.max_candidates = max_candidates

    @property
    def num_decision_stages(self) -> int:
        return len(self.stage_backends) - 1

    def run(
        self,
        user_embeddings: np.ndarray,
        item_embeddings: np.ndarray,
        k: int,
        excluded_indptr: np.ndarray | None = None,
        excluded_indices: np.ndarray | None = None,
    ) -> CascadeResult:
        """Recommend the top k items to each user of a batch.

        Args:
            user_embeddings: float32, shape (B, d). One row per user of the batch.
            item_embeddings: float32, shape (I, d). The whole catalogue.
            k: Items to return per user, k >= 0. Users with fewer survivors get fewer.
            excluded_indptr: int64, shape (B + 1,). CSR row pointer of items that are not
                candidates for each user (typically their training items). None excludes
                nothing.
            excluded_indices: int64, shape (nnz,). Item indices of those rows.

        Returns:
            Top-K per user and the per-stage statistics.

        Raises:
            ValueError: Shapes disagree, k is negative, or only one excluded array is given.
        """
        user_embeddings = np.asarray(user_embeddings, dtype=np.float32)
        item_embeddings = np.asarray(item_embeddings, dtype=np.float32)
        check_run_arguments(user_embeddings, item_embeddings, k, excluded_indptr, excluded_indices)
        num_users, num_items = len(user_embeddings), len(item_embeddings)

        item_indices = np.full((num_users, k), -1, dtype=np.int64)
        scores = np.full((num_users, k), -np.inf, dtype=np.float32)
        counts = np.zeros(num_users, dtype=np.int64)
        candidate_counts = np.zeros(num_users, dtype=np.int64)
        survivor_counts = np.zeros((self.num_decision_stages, num_users), dtype=np.int64)
        stage_seconds = np.zeros(self.num_decision_stages + 1, dtype=np.float64)
        prefilter_survivors = None
        phase_seconds: Counter[str] = Counter()

        # NOTE: a chunk contains at least one user, so a catalogue larger than max_candidates
        #   still runs num_items pairs at a time.
        users_per_chunk = max(1, self.max_candidates // num_items)
        chunk_starts = range(0, num_users, users_per_chunk)
        for start in chunk_starts:
            rows = slice(start, min(start + users_per_chunk, num_users))
            excluded = slice_excluded(excluded_indptr, excluded_indices, rows)

            chunk = self._run_chunk(user_embeddings[rows], item_embeddings, k, excluded)
            item_indices[rows] = chunk.item_indices
            scores[rows] = chunk.scores
            counts[rows] = chunk.counts
            candidate_counts[rows] = chunk.stats.candidate_counts
            survivor_counts[:, rows] = chunk.stats.survivor_counts
            stage_seconds += chunk.stats.stage_seconds
            phase_seconds.update(chunk.stats.phase_seconds)
            if chunk.stats.prefilter_survivors is not None:
                if prefilter_survivors is None:
                    prefilter_survivors = np.zeros(num_users, dtype=np.int64)
                prefilter_survivors[rows] = chunk.stats.prefilter_survivors

        stats = CascadeStats(
            candidate_counts,
            survivor_counts,
            stage_seconds,
            len(chunk_starts),
            prefilter_survivors,
            dict(phase_seconds),
        )
        return CascadeResult(item_indices, scores, counts, stats)

    def close(self) -> None:
        """Close every stage backend."""
        for backend in self.stage_backends:
            backend.close()

    def __enter__(self) -> Cascade:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _run_chunk(
        self,
        user_embeddings: np.ndarray,
        item_embeddings: np.ndarray,
        k: int,
        excluded: tuple[np.ndarray, np.ndarray] | None,
    ) -> CascadeResult:
        num_users = len(user_embeddings)
        phase_seconds: Counter[str] = Counter()
        started = time.perf_counter()
        segment_ids, item_ids = _candidate_pairs(num_users, len(item_embeddings), excluded)
        candidate_counts = segment_counts(segment_ids, num_users)
        quotas = None
        if self.rule == "quota":
            quotas = quota_counts(self.rejection_ratios, candidate_counts)
        survivor_counts = np.zeros((self.num_decision_stages, num_users), dtype=np.int64)
        stage_seconds = np.zeros(self.num_decision_stages + 1, dtype=np.float64)
        phase_seconds["candidates"] += time.perf_counter() - started

        hidden = None
        for stage_index, backend in enumerate(self.stage_backends[:-1]):
            started = time.perf_counter()
            inputs = _embedding_inputs(user_embeddings, item_embeddings, segment_ids, item_ids)
            if stage_index > 0:
                inputs[HIDDEN_INPUT] = hidden
            phase_seconds["gather"] += time.perf_counter() - started

            started = time.perf_counter()
            outputs = backend.run(inputs)
            stage_seconds[stage_index] = time.perf_counter() - started

            started = time.perf_counter()
            stage_quotas = None if quotas is None else quotas[stage_index]
            keep = keep_mask(
                self.rule, outputs[DECISION_OUTPUT], segment_ids, item_ids, num_users, stage_quotas
            )
            segment_ids, item_ids, hidden = compact(
                keep, segment_ids, item_ids, outputs[HIDDEN_OUTPUT]
            )
            survivor_counts[stage_index] = segment_counts(segment_ids, num_users)
            phase_seconds["compaction"] += time.perf_counter() - started
            kept, offered = len(segment_ids), len(keep)
            logger.debug("Decision stage %d kept %d of %d pairs", stage_index + 1, kept, offered)

        started = time.perf_counter()
        score_inputs = _embedding_inputs(user_embeddings, item_embeddings, segment_ids, item_ids)
        score_inputs[HIDDEN_INPUT] = hidden
        phase_seconds["gather"] += time.perf_counter() - started
        started = time.perf_counter()
        pair_scores = self.stage_backends[-1].run(score_inputs)[SCORE_OUTPUT]
        stage_seconds[-1] = time.perf_counter() - started

        started = time.perf_counter()
        top = segmented_top_k(segment_ids, item_ids, pair_scores, num_users, k)
        phase_seconds["top_k"] += time.perf_counter() - started
        stats = CascadeStats(
            candidate_counts,
            survivor_counts,
            stage_seconds,
            num_chunks=1,
            phase_seconds=dict(phase_seconds),
        )
        return CascadeResult(*top, stats)


def quota_counts(rejection_ratios: Sequence[float], candidate_counts: np.ndarray) -> np.ndarray:
    """Return how many candidates each decision stage keeps per user under the "quota" rule.

    Stage n keeps ceil((1 - γ_n) * c_u) of user u's c_u initial candidates.

    Args:
        rejection_ratios: rejection_ratios (γ), one per decision stage.
        candidate_counts: int64, shape (B,). Initial candidates of each user.

    Returns:
        int64, shape (N, B).
    """
    keep_shares = 1.0 - np.asarray(rejection_ratios, dtype=np.float64)
    exact_quotas = keep_shares[:, None] * candidate_counts[None, :]
    # Round away float noise before the ceiling: (1 - 0.7) * 10 is 3.0000000000000004 in
    # float64, and its ceiling would keep one candidate too many.
    return np.ceil(np.round(exact_quotas, 6)).astype(np.int64)


def keep_mask(
    rule: str,
    decisions: np.ndarray,
    segment_ids: np.ndarray,
    item_ids: np.ndarray,
    num_users: int,
    quotas: np.ndarray | None,
) -> np.ndarray:
    """Decide which pairs a decision stage passes on.

    Args:
        rule: "sign" keeps pairs whose decision is not > 0, so NaN is kept rather than
            dropped. "quota" keeps the quotas[u] pairs of each user u with the lowest
            decision, ties broken by lower item index.
        decisions: float32, shape (M,). The stage's decision output.
        segment_ids: int64, shape (M,). Batch row of each pair.
        item_ids: int64, shape (M,). Item index of each pair.
        num_users: Batch size B.
        quotas: int64, shape (B,). Pairs kept per user; read only by the "quota" rule.

    Returns:
        bool, shape (M,).
    """
    if rule == "sign":
        return ~(decisions > 0)
    ranks = rank_within_segments(segment_ids, item_ids, decisions, num_users)
    return ranks < quotas[segment_ids]


def slice_excluded(
    excluded_indptr: np.ndarray | None, excluded_indices: np.ndarray | None, rows: slice
) -> tuple[np.ndarray, np.ndarray] | None:
    """Slice the excluded-items CSR arrays to a contiguous range of batch rows.

    Returns:
        (indptr, indices) of the rows, with indptr starting at 0, or None when nothing is
        excluded.
    """
    if excluded_indptr is None:
        return None
    first, last = excluded_indptr[rows.start], excluded_indptr[rows.stop]
    chunk_indptr = excluded_indptr[rows.start : rows.stop + 1] - first
    return chunk_indptr, excluded_indices[first:last]


def check_run_arguments(
    user_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    k: int,
    excluded_indptr: np.ndarray | None,
    excluded_indices: np.ndarray | None,
) -> None:
    """Raise ValueError unless the arguments of `Cascade.run` fit together."""
    if user_embeddings.ndim != 2 or item_embeddings.ndim != 2:
        raise ValueError(
            "user_embeddings and item_embeddings must be 2-D, got shapes "
            f"{user_embeddings.shape} and {item_embeddings.shape}."
        )
    if user_embeddings.shape[1] != item_embeddings.shape[1] or len(item_embeddings) == 0:
        raise ValueError(
            "user_embeddings (B, d) and item_embeddings (I, d) must share d and I must be "
            f"positive, got shapes {user_embeddings.shape} and {item_embeddings.shape}."
        )
    if not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}.")
    if (excluded_indptr is None) != (excluded_indices is None):
        raise ValueError("Pass both excluded_indptr and excluded_indices, or neither.")
    if excluded_indptr is not None and np.shape(excluded_indptr) != (len(user_embeddings) + 1,):
        raise ValueError(
            f"excluded_indptr must have shape ({len(user_embeddings) + 1},), one more than "
            f"the batch size, got {np.shape(excluded_indptr)}."
        )


def _embedding_inputs(
    user_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    segment_ids: np.ndarray,
    item_ids: np.ndarray,
) -> dict[str, np.ndarray]:
    """Gather the per-pair embedding inputs of a stage, float32 (M, d) each.

    Gathering from the tables at every stage replaces compacting two (M, d) copies, so only
    the hidden state is carried from one stage to the next.
    """
    return {
        USER_INPUT: np.take(user_embeddings, segment_ids, axis=0),
        ITEM_INPUT: np.take(item_embeddings, item_ids, axis=0),
    }


def _candidate_pairs(
    num_users: int, num_items: int, excluded: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (segment_ids, item_ids), both int64 (M,), sorted by segment then item."""
    is_candidate = np.ones((num_users, num_items), dtype=np.bool_)
    if excluded is not None:
        indptr, indices = excluded
        rows = np.repeat(np.arange(num_users), np.diff(indptr))
        is_candidate[rows, indices] = False
    segment_ids, item_ids = np.nonzero(is_candidate)
    return segment_ids.astype(np.int64, copy=False), item_ids.astype(np.int64, copy=False)
