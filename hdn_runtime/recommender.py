"""The public entry point of the runtime: load an exported model and recommend items.

`Recommender` maps external ids to dense indices, checks requests, and hands the work to a
`Cascade`. Reading files is left to `manifest` and `tables`, and running stages to `backends`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from hdn_runtime.backends.base import StageBackend, TensorSpec
from hdn_runtime.backends.select import BACKENDS, open_stage_backends
from hdn_runtime.cascade import DEFAULT_MAX_CANDIDATES, RULES, Cascade, CascadeStats
from hdn_runtime.errors import ModelFormatError, UnknownUserError
from hdn_runtime.fast_cascade import (
    FastCascade,
    OnnxRuntimeCpuStage,
    SessionSettings,
    read_first_decision_weight,
)
from hdn_runtime.manifest import (
    DECISION_OUTPUT,
    HIDDEN_INPUT,
    HIDDEN_OUTPUT,
    ITEM_INPUT,
    SCORE_OUTPUT,
    USER_INPUT,
    Manifest,
    StageEntry,
    read_manifest,
)
from hdn_runtime.tables import ModelTables, load_tables

logger = logging.getLogger(__name__)

UNKNOWN_USER_POLICIES = ("error", "popular")
CASCADES = ("fast", "plain")
_MAX_IDS_IN_MESSAGE = 5


@dataclass
class UserRecommendations:
    """The recommendations for one requested user.

    Attributes:
        user_id: External id of the user, as a string.
        item_ids: External ids of the recommended items, best first. Shorter than k when
            fewer items survived the cascade.
        scores: float32, shape (len(item_ids),). Scoring-stage outputs, descending. For a
            popularity fallback, each item's training interaction count.
        fallback: True when the user is unknown to the model and got the most popular items.
    """

    user_id: str
    item_ids: list[str]
    scores: np.ndarray
    fallback: bool


class Recommender:
    """Top-K recommender over an exported model directory, running without torch.

    Create it with `Recommender.load`. `last_stats` is stored per thread, so concurrent callers
    each read the statistics of their own latest request.
    """

    def __init__(
        self, manifest: Manifest, tables: ModelTables, cascade: Cascade, backend: str = "cpu"
    ) -> None:
        self.manifest = manifest
        self.backend = backend
        self._tables = tables
        self._cascade = cascade
        self._thread_state = threading.local()

        # Popularity order for unknown users: most interactions first, ties by lower index.
        popularity = tables.item_popularity
        self._popular_items = np.lexsort((np.arange(len(popularity)), -popularity))
        self._popular_scores = popularity[self._popular_items].astype(np.float32)
        self._item_id_array = np.asarray(tables.item_ids, dtype=object)

    @classmethod
    def load(
        cls,
        path: str | Path,
        backend: str = "cpu",
        rule: str = "sign",
        intra_op_threads: int | None = None,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
        device_id: int = 0,
        cascade: str = "fast",
        session_settings: SessionSettings | None = None,
    ) -> Recommender:
        """Load and verify an exported model directory.

        Args:
            path: Directory written by `hdn export`.
            backend: "cpu" runs every stage with ONNX Runtime on the CPU, "cuda" with ONNX
                Runtime's CUDA provider, "tensorrt" with the TensorRT engines that
                `hdn export --format trt` built. "auto" picks "tensorrt" when the model has
                engines that run here, else "cuda" when available, else "cpu". It logs the
                choice at INFO and each backend passed over at WARNING. The backend in use
                is stored in the `backend` attribute.
            rule: "sign" rejects where a decision is > 0, as trained. "quota" keeps exactly
                ceil((1 - γ_n) * c_u) of user u's c_u candidates at decision stage n, which
                makes the cost of a request predictable.
            intra_op_threads: Threads per operator for ONNX Runtime. None keeps its default.
            max_candidates: Maximum (user, item) pairs the cascade processes at once.
            device_id: CUDA device for the "cuda" and "tensorrt" backends.
            cascade: "fast" returns the same top-K as "plain", ties included, with less work:
                see `FastCascade`. On the "cpu" backend it rejects pairs for decision stage 1
                by one matrix product first. Other backends may compute in TF32 or float16,
                where its float32 error bound does not hold, so there stage 1 runs on every
                candidate. "plain" runs every stage on whole chunks and is the reference.
            session_settings: ONNX Runtime options of the fast cascade's CPU sessions. None
                uses `SessionSettings(intra_op_threads)`. Read only by cascade="fast" on the
                "cpu" backend.

        Raises:
            ValueError: `backend`, `rule` or `cascade` is not one of the valid values.
            BackendUnavailableError: An explicit backend cannot run here (package, GPU or
                engines missing); the message gives the reason.
            EngineMismatchError: backend="tensorrt" and the engines were built for another
                TensorRT version or GPU.
            FileNotFoundError: `path` is not a directory.
            ModelFormatError: The directory is incomplete, modified after export, or of an
                unsupported format version. With cascade="fast" on the "cpu" backend, also
                when decision stage 1 is not the inner product θ_1 . (u * v).
        """
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}.")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}.")
        if cascade not in CASCADES:
            raise ValueError(f"cascade must be one of {list(CASCADES)}, got {cascade!r}.")

        logger.info("Loading model %s", path)
        started = time.perf_counter()
        manifest = read_manifest(path)
        tables = load_tables(manifest)

        stage_backend_name, stage_backends = open_stage_backends(
            manifest, backend, intra_op_threads, device_id
        )
        try:
            for stage, stage_backend in zip(manifest.stages, stage_backends):
                _check_stage_signature(stage, stage_backend, manifest)
            if cascade == "plain":
                runner = Cascade(stage_backends, manifest.rejection_ratios, rule, max_candidates)
            else:
                settings = session_settings or SessionSettings(intra_op_threads)
                runner = _open_fast_cascade(
                    manifest,
                    tables,
                    stage_backends,
                    stage_backend_name,
                    rule,
                    max_candidates,
                    settings,
                )
        except BaseException:
            for stage_backend in stage_backends:
                stage_backend.close()
            raise

        logger.info(
            "Loaded model %s (%d users, %d items, %d decision stages) on backend %r with rule "
            "%r and the %s cascade in %.2fs",
            path,
            manifest.num_users,
            manifest.num_items,
            len(manifest.decision_stages),
            stage_backend_name,
            rule,
            cascade,
            time.perf_counter() - started,
        )
        return cls(manifest, tables, runner, stage_backend_name)

    @property
    def num_users(self) -> int:
        return self.manifest.num_users

    @property
    def num_items(self) -> int:
        return self.manifest.num_items

    @property
    def user_ids(self) -> list[str]:
        """External id of each dense user index."""
        return self._tables.user_ids

    @property
    def item_ids(self) -> list[str]:
        """External id of each dense item index."""
        return self._tables.item_ids

    @property
    def rule(self) -> str:
        return self._cascade.rule

    @property
    def cascade(self) -> str:
        """Name of the cascade that runs requests: "fast" or "plain"."""
        return "fast" if isinstance(self._cascade, FastCascade) else "plain"

    @property
    def last_stats(self) -> CascadeStats | None:
        """Stage statistics of this thread's most recent request, or None before the first."""
        return getattr(self._thread_state, "stats", None)

    def recommend(
        self,
        user_ids: Sequence[str | int],
        k: int = 20,
        exclude_seen: bool = True,
        unknown_users: str = "error",
    ) -> list[UserRecommendations]:
        """Recommend the top k items to each requested user.

        Args:
            user_ids: External user ids. They are matched as strings, so 42 and "42" are the
                same user.
            k: Items per user, 1 <= k <= num_items. A user gets fewer when fewer candidates
                survive the cascade, never padding.
            exclude_seen: Leave out each user's training items.
            unknown_users: "error" raises for ids the model does not know. "popular" gives
                them the k most popular items, with `fallback=True`.

        Returns:
            One entry per requested id, in request order.

        Raises:
            TypeError: `user_ids` is a single string instead of a sequence.
            ValueError: `k` or `unknown_users` is invalid.
            UnknownUserError: Some ids are unknown and `unknown_users="error"`.
        """
        if isinstance(user_ids, (str, bytes)):
            raise TypeError(
                f"user_ids must be a sequence of ids, got the single string {user_ids!r}. "
                "Wrap one id in a list."
            )
        self._check_k(k)
        if unknown_users not in UNKNOWN_USER_POLICIES:
            raise ValueError(
                f"unknown_users must be one of {list(UNKNOWN_USER_POLICIES)}, "
                f"got {unknown_users!r}."
            )

        external_ids = [str(user_id) for user_id in user_ids]
        user_index = self._tables.user_index
        dense_indices = np.array([user_index.get(x, -1) for x in external_ids], dtype=np.int64)
        is_known = dense_indices >= 0
        if unknown_users == "error" and not is_known.all():
            unknown_ids = [external_ids[row] for row in np.flatnonzero(~is_known)]
            message = _unknown_users_message(unknown_ids, len(external_ids))
            raise UnknownUserError(message, unknown_ids)

        items, scores, counts = self.recommend_indices(dense_indices[is_known], k, exclude_seen)
        results = []
        known_row = 0
        for external_id, known in zip(external_ids, is_known):
            if not known:
                results.append(self._popular_result(external_id, k))
                continue
            count = counts[known_row]
            row_items, row_scores = items[known_row, :count], scores[known_row, :count]
            results.append(self._user_result(external_id, row_items, row_scores))
            known_row += 1
        return results

    def recommend_indices(
        self, user_indices: np.ndarray, k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Recommend the top k items to users given by dense index.

        Args:
            user_indices: int, shape (B,). Dense user indices in [0, num_users).
            k: Items per user, 1 <= k <= num_items.
            exclude_seen: Leave out each user's training items.

        Returns:
            items: int64, shape (B, k). Dense item indices, best first, padded with -1.
            scores: float32, shape (B, k). Scores, descending, padded with -inf.
            counts: int64, shape (B,). Number of real entries in each row.

        Raises:
            ValueError: `k` is invalid, or `user_indices` is not 1-D or out of range.
        """
        self._check_k(k)
        user_indices = self._check_user_indices(user_indices)

        excluded_indptr = excluded_indices = None
        if exclude_seen:
            excluded_indptr, excluded_indices = self._tables.seen_items(user_indices)
        result = self._cascade.run(
            self._tables.user_embedding[user_indices],
            self._tables.item_embedding,
            k,
            excluded_indptr,
            excluded_indices,
        )
        self._thread_state.stats = result.stats
        logger.debug(
            "Recommended for %d users: %d candidates, survivors per stage %s",
            len(user_indices),
            result.stats.total_candidates,
            result.stats.total_survivors,
        )
        return result.item_indices, result.scores, result.counts

    def close(self) -> None:
        """Release every stage backend. Later requests raise RuntimeError."""
        self._cascade.close()

    def __enter__(self) -> Recommender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _user_result(
        self, external_id: str, item_indices: np.ndarray, scores: np.ndarray
    ) -> UserRecommendations:
        return UserRecommendations(
            user_id=external_id,
            item_ids=self._item_id_array[item_indices].tolist(),
            scores=scores.copy(),
            fallback=False,
        )

    def _popular_result(self, external_id: str, k: int) -> UserRecommendations:
        return UserRecommendations(
            user_id=external_id,
            item_ids=self._item_id_array[self._popular_items[:k]].tolist(),
            scores=self._popular_scores[:k].copy(),
            fallback=True,
        )

    def _check_k(self, k: int) -> None:
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool):
            raise TypeError(f"k must be an integer, got {k!r}.")
        if k <= 0:
            raise ValueError(f"k must be a positive integer, got {k}.")
        if k > self.num_items:
            raise ValueError(
                f"k = {k} exceeds the catalogue size num_items = {self.num_items}. "
                f"Pass k <= {self.num_items}."
            )

    def _check_user_indices(self, user_indices: np.ndarray) -> np.ndarray:
        user_indices = np.asarray(user_indices)
        if user_indices.size == 0:
            return np.zeros(0, dtype=np.int64)
        if user_indices.ndim != 1 or not np.issubdtype(user_indices.dtype, np.integer):
            raise ValueError(
                "user_indices must be a 1-D integer array, got dtype "
                f"{user_indices.dtype} and shape {user_indices.shape}."
            )
        out_of_range = (user_indices < 0) | (user_indices >= self.num_users)
        if out_of_range.any():
            shown = user_indices[out_of_range][:_MAX_IDS_IN_MESSAGE].tolist()
            raise ValueError(
                f"user_indices must lie in [0, {self.num_users}), got {shown} among "
                f"{int(out_of_range.sum())} out-of-range values. Pass external ids to "
                "recommend() instead."
            )
        return user_indices.astype(np.int64, copy=False)


def _open_fast_cascade(
    manifest: Manifest,
    tables: ModelTables,
    stage_backends: list[StageBackend],
    backend_name: str,
    rule: str,
    max_candidates: int,
    settings: SessionSettings,
) -> FastCascade:
    """Build the fast cascade; on "cpu", with tuned sessions and the matrix-product pre-rejection.

    The stages in `stage_backends` are replaced in place by the sessions that take them over,
    so the caller's cleanup closes whatever was opened.
    """
    weight = None
    if backend_name == "cpu":
        for index, stage_backend in enumerate(stage_backends):
            stage_backends[index] = OnnxRuntimeCpuStage(stage_backend, settings)
        weight = read_first_decision_weight(
            stage_backends[0], tables.user_embedding, tables.item_embedding
        )
    return FastCascade(
        stage_backends,
        manifest.rejection_ratios,
        rule,
        max_candidates,
        first_decision_weight=weight,
    )


def _check_stage_signature(stage: StageEntry, backend: StageBackend, manifest: Manifest) -> None:
    """Raise ModelFormatError unless the stage file's tensors match the manifest's contract."""
    embedding_spec = (manifest.embedding_dim,)
    hidden_spec = (manifest.hidden_dim,)
    trailing_shapes = {
        USER_INPUT: embedding_spec,
        ITEM_INPUT: embedding_spec,
        HIDDEN_INPUT: hidden_spec,
        DECISION_OUTPUT: (),
        HIDDEN_OUTPUT: hidden_spec,
        SCORE_OUTPUT: (),
    }
    for kind, specs, expected_names in (
        ("inputs", backend.input_specs, stage.inputs),
        ("outputs", backend.output_specs, stage.outputs),
    ):
        if set(specs) != set(expected_names):
            raise ModelFormatError(
                f"Stage file {stage.path} has {kind} {sorted(specs)}, but the manifest lists "
                f"{sorted(expected_names)}. Re-export the model with 'hdn export'."
            )
        for name, spec in specs.items():
            expected = TensorSpec(np.dtype(np.float32), (None, *trailing_shapes[name]))
            if spec != expected:
                raise ModelFormatError(
                    f"Tensor {name!r} of stage file {stage.path} has dtype {spec.dtype} and "
                    f"shape {spec.shape}, expected {expected.dtype} and {expected.shape} (None "
                    "is the dynamic batch axis). Re-export the model with 'hdn export'."
                )


def _unknown_users_message(unknown_ids: list[str], num_requested: int) -> str:
    shown = ", ".join(repr(user_id) for user_id in unknown_ids[:_MAX_IDS_IN_MESSAGE])
    if len(unknown_ids) > _MAX_IDS_IN_MESSAGE:
        shown += f", ... ({len(unknown_ids) - _MAX_IDS_IN_MESSAGE} more)"
    return (
        f"{len(unknown_ids)} of {num_requested} requested user ids are not in the model: "
        f"{shown}. Pass unknown_users='popular' to give them the most popular items instead."
    )
