"""The fast cascade: the plain cascade's exact top-K, with less work per candidate.

`FastCascade` returns what `Cascade` returns, ties and survivor counts included. It differs in
how the work is done:

1. Pre-rejection by one matrix product. The first decision is an inner product,
   d_1 = θ_1 . (u * v) = (θ_1 * u) . v, so `(user_emb * θ_1) @ item_emb.T` gives it for every
   candidate of a user chunk at once. This product rounds differently from the stage file,
   but by at most `decision_error_bound` per user, so the cascade drops only the pairs that
   stage 1 is certain to reject. The others run through stage 1, whose own output decides,
   exactly as in the plain cascade.
2. Stages run in blocks of at most `block_rows` pairs. Each block's inputs are gathered into
   buffers that every thread allocates once and reuses. On the CPU an ONNX Runtime session
   writes its outputs straight into those buffers through I/O binding.
3. With the "sign" rule, decision stages 1 and 2 run back to back on each gathered block,
   because after the pre-rejection stage 1 rejects almost nothing. Stage 2 then needs no
   gather or compaction of its own.
4. The per-user top-K selects by partition (`top_k_sorted_segments`) instead of a full sort.

Choosing the backend and reading the model directory is left to `recommender`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hdn_runtime.backends.base import StageBackend, TensorSpec
from hdn_runtime.cascade import (
    DEFAULT_MAX_CANDIDATES,
    Cascade,
    CascadeResult,
    CascadeStats,
    keep_mask,
    quota_counts,
)
from hdn_runtime.compaction import segment_counts
from hdn_runtime.errors import ModelFormatError
from hdn_runtime.manifest import (
    DECISION_OUTPUT,
    HIDDEN_INPUT,
    HIDDEN_OUTPUT,
    ITEM_INPUT,
    SCORE_OUTPUT,
    USER_INPUT,
)
from hdn_runtime.topk import top_k_sorted_segments

logger = logging.getLogger(__name__)

# Pairs per stage call. Small blocks keep the gathered inputs in cache. On a 2-core AMD EPYC VM
# (onnxruntime 1.32, one thread), the fast cascade over all MovieLens-100K users took 0.19 to
# 0.20 s with blocks of 4096 or 8192 pairs, 0.22 s at 16384, 0.25 s at 32768 and 0.29 s at 65536.
DEFAULT_BLOCK_ROWS = 1 << 13

# float32 unit roundoff, 2**-24.
_UNIT_ROUNDOFF = 2.0**-24
# Above this size a dot product of float32 values could overflow in some summation order.
_SAFE_MAGNITUDE = 2.0**100
# Pairs sampled from the model's own tables to check that stage 1 is the inner product.
_CHECK_USERS = 64
_CHECK_ITEMS = 256


@dataclass(frozen=True)
class SessionSettings:
    """ONNX Runtime options of the fast cascade's CPU sessions.

    Attributes:
        intra_op_threads: Threads per operator. None keeps ONNX Runtime's default, one per
            physical core.
        enable_mem_pattern: Plan each input shape's memory once and reuse the plan. Off by
            default, because the compacted batch size differs on every call. In
            benchmarks/ort_session_memory.py (onnxruntime 1.32, CPU arena on, 3,000 calls of
            1,000 to 65,536 rows), resident memory rose by 59 MiB over the first 300 calls and
            by 63 MiB over all of them with the pattern on. With it off it rose by 39 MiB over
            the first 300 calls and no further, at the same speed.
        allow_spinning: Let idle intra-op threads spin between operators. Off by default:
            with two threads on a 2-core machine that two other processes kept busy, spinning
            made the fast cascade over all MovieLens-100K users take 0.75 to 0.9 s in place of
            0.25 to 0.4 s, and single-user p99 latency 17 to 53 ms in place of under 1 ms.
            On an idle machine spinning may lower latency; measure with `hdn bench`.
    """

    intra_op_threads: int | None = None
    enable_mem_pattern: bool = False
    allow_spinning: bool = False


def session_options(settings: SessionSettings):
    """Return an `onnxruntime.SessionOptions` with `settings`, one inter-op thread, CPU arena on.

    Raises:
        ImportError: onnxruntime is not installed.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if settings.intra_op_threads is not None:
        options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.enable_mem_pattern = settings.enable_mem_pattern
    options.enable_cpu_mem_arena = True
    spinning = "1" if settings.allow_spinning else "0"
    options.add_session_config_entry("session.intra_op.allow_spinning", spinning)
    return options


class OnnxRuntimeCpuStage(StageBackend):
    """One stage in an ONNX Runtime CPU session that can write outputs into caller buffers.

    It takes over an opened `OnnxRuntimeBackend`: it copies the tensor specs, closes that
    backend's session and opens its own with `settings`.

    Args:
        source: The stage opened by `open_stage_backends` on the "cpu" backend.
        settings: Session options.

    Raises:
        ModelFormatError: ONNX Runtime cannot load the stage file.
    """

    def __init__(self, source: StageBackend, settings: SessionSettings) -> None:
        super().__init__(source.path)
        import onnxruntime

        self._input_specs = dict(source.input_specs)
        self._output_specs = dict(source.output_specs)
        self._output_names = list(self._output_specs)
        self.settings = settings
        source.close()

        options = session_options(settings)
        try:
            self._session = onnxruntime.InferenceSession(
                str(self.path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:
            # onnxruntime's load errors share no base class below Exception.
            raise ModelFormatError(
                f"ONNX Runtime cannot load stage file {self.path}: {err}. "
                "Re-export the model with 'hdn export'."
            ) from err
        self._thread_state = threading.local()

    @property
    def input_specs(self) -> dict[str, TensorSpec]:
        return self._input_specs

    @property
    def output_specs(self) -> dict[str, TensorSpec]:
        return self._output_specs

    def run_into(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]) -> None:
        """Run one non-empty batch and write every output into the given arrays.

        Args:
            inputs: C-contiguous float32 arrays with the batch size M on axis 0.
            outputs: One C-contiguous float32 array per output name, of the output's shape
                for M rows. The session writes into them, so they must stay alive and
                unused by other threads until the call returns.
        """
        if self._is_closed:
            raise RuntimeError(f"The backend for {self.path} is closed. Load the model again.")
        # An I/O binding keeps references to the bound arrays, so each thread needs its own.
        binding = getattr(self._thread_state, "binding", None)
        if binding is None:
            binding = self._session.io_binding()
            self._thread_state.binding = binding
        for name, array in inputs.items():
            binding.bind_cpu_input(name, array)
        for name, array in outputs.items():
            binding.bind_output(name, "cpu", 0, np.float32, array.shape, array.ctypes.data)
        self._session.run_with_iobinding(binding)

    def _run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {name: np.ascontiguousarray(array) for name, array in inputs.items()}
        return dict(zip(self._output_names, self._session.run(self._output_names, feed)))

    def _close(self) -> None:
        del self._session


def run_stage_into(
    backend: StageBackend, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
) -> None:
    """Run a stage on a non-empty batch and store its outputs in `outputs`, for any backend."""
    if isinstance(backend, OnnxRuntimeCpuStage):
        backend.run_into(inputs, outputs)
        return
    results = backend.run(inputs)
    for name, array in outputs.items():
        array[...] = results[name]


@dataclass(frozen=True)
class _ItemBounds:
    """Per-table constants of `decision_error_bound`, cached for one item table."""

    table: np.ndarray
    max_norm: float
    max_abs: float


@dataclass(frozen=True)
class _StagePairs:
    """The pairs entering a stage, sorted by user and then item.

    Attributes:
        segment_ids: int64, shape (M,). Row of each pair in the user chunk.
        item_ids: int64, shape (M,). Item index of each pair.
        hidden: float32, shape (M_previous, h). The previous stage's hidden output, or None
            before decision stage 1.
        source_rows: int64, shape (M,). Row of each pair in `hidden`. Gathering the hidden
            state block by block replaces compacting it as a whole.
    """

    segment_ids: np.ndarray
    item_ids: np.ndarray
    hidden: np.ndarray | None = None
    source_rows: np.ndarray | None = None


@dataclass(frozen=True)
class _Timings:
    """Seconds of one chunk: inside each stage's backend, and in each host-side step."""

    stage_seconds: np.ndarray
    phase_seconds: Counter


class _Workspace:
    """Named buffers of one thread, grown on demand and reused across chunks and requests."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}
        self._grid_items = 0

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """Return a C-contiguous array of `shape` backed by the buffer `name`."""
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.size < size:
            # Grow by a quarter beyond the request, so slowly rising sizes reallocate rarely.
            previous = 0 if buffer is None else buffer.size
            buffer = np.empty(max(size, previous + previous // 4), dtype=dtype)
            self._buffers[name] = buffer
        return buffer[:size].reshape(shape)

    def item_grid(self, num_rows: int, num_items: int) -> np.ndarray:
        """Return int64 item indices 0 .. num_items - 1 repeated num_rows times, flat."""
        grid = self._buffers.get("item_grid")
        if grid is None or self._grid_items != num_items or grid.size < num_rows * num_items:
            grid = np.tile(np.arange(num_items, dtype=np.int64), num_rows)
            self._buffers["item_grid"] = grid
            self._grid_items = num_items
        return grid[: num_rows * num_items]

    @property
    def nbytes(self) -> int:
        return sum(buffer.nbytes for buffer in self._buffers.values())


class FastCascade(Cascade):
    """A `Cascade` that returns the same results with less work per candidate.

    Args:
        stage_backends: As for `Cascade`. An `OnnxRuntimeCpuStage` writes into reused buffers.
            Any other backend's outputs are copied into them.
        rejection_ratios: As for `Cascade`.
        rule: As for `Cascade`.
        max_candidates: As for `Cascade`: users are processed in chunks of
            max(1, max_candidates // num_items), which bounds memory. Per thread, the
            pre-rejection takes 13 bytes per (user, item) pair of a chunk for float32
            decisions, a bool mask and int64 item indices, and the "quota" rule adds 4 for a
            partition buffer.
            Each pair that reaches decision stage 1 takes about 8 h + 56 bytes, for hidden
            width h: its ids, two stages' hidden outputs, decisions, scores and compacted ids.
            Only the index arrays of `np.nonzero` and the keep masks are allocated per chunk;
            in `hdn bench` runs the system CPU time, which counts page faults, stayed below
            0.1% of the wall time.
        first_decision_weight: θ_1, float32, shape (d,). With it, decision stage 1 runs only
            on the pairs that the matrix-product pre-rejection keeps. Pass it only when stage 1
            computes its decision in float32 as θ_1 . (u * v), as `read_first_decision_weight`
            checks. None runs stage 1 on every candidate.
        block_rows: Maximum pairs per stage call.

    Raises:
        ValueError: As for `Cascade`, or `first_decision_weight` or `block_rows` is invalid.
    """

    def __init__(
        self,
        stage_backends: Sequence[StageBackend],
        rejection_ratios: Sequence[float],
        rule: str = "sign",
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
        first_decision_weight: np.ndarray | None = None,
        block_rows: int = DEFAULT_BLOCK_ROWS,
    ) -> None:
        super().__init__(stage_backends, rejection_ratios, rule, max_candidates)
        if not isinstance(block_rows, int) or block_rows < 1:
            raise ValueError(f"block_rows must be a positive integer, got {block_rows!r}.")
        if first_decision_weight is not None:
            first_decision_weight = np.asarray(first_decision_weight, dtype=np.float32)
            if first_decision_weight.ndim != 1 or not np.all(np.isfinite(first_decision_weight)):
                raise ValueError(
                    "first_decision_weight must be a finite 1-D array (θ_1, one weight per "
                    f"embedding dimension), got shape {first_decision_weight.shape}."
                )
        self.first_decision_weight = first_decision_weight
        self.block_rows = block_rows
        self._thread_state = threading.local()
        self._item_bounds: _ItemBounds | None = None

    @property
    def workspace_bytes(self) -> int:
        """Bytes of the buffers that the calling thread holds for reuse."""
        return self._workspace().nbytes

    def _workspace(self) -> _Workspace:
        workspace = getattr(self._thread_state, "workspace", None)
        if workspace is None:
            workspace = _Workspace()
            self._thread_state.workspace = workspace
        return workspace

    def _bounds_for(self, item_embeddings: np.ndarray) -> _ItemBounds:
        # NOTE: the cache is keyed on the table object, so a table changed in place after
        #   the first request keeps its old norms. The runtime's tables are never changed.
        cached = self._item_bounds
        if cached is not None and cached.table is item_embeddings:
            return cached
        table = item_embeddings.astype(np.float64)
        norms = np.sqrt(np.einsum("ij,ij->i", table, table))
        cached = _ItemBounds(item_embeddings, float(norms.max()), float(np.abs(table).max()))
        self._item_bounds = cached
        return cached

    def _run_chunk(
        self,
        user_embeddings: np.ndarray,
        item_embeddings: np.ndarray,
        k: int,
        excluded: tuple[np.ndarray, np.ndarray] | None,
    ) -> CascadeResult:
        num_users, num_items = len(user_embeddings), len(item_embeddings)
        workspace = self._workspace()
        timings = _Timings(np.zeros(self.num_decision_stages + 1, dtype=np.float64), Counter())
        survivor_counts = np.zeros((self.num_decision_stages, num_users), dtype=np.int64)

        started = time.perf_counter()
        excluded_rows, excluded_items = _unique_excluded_pairs(excluded, num_users, num_items)
        candidate_counts = num_items - np.bincount(excluded_rows, minlength=num_users)
        quotas = None
        if self.rule == "quota":
            quotas = quota_counts(self.rejection_ratios, candidate_counts)
        first_quotas = None if quotas is None else quotas[0]
        pairs = _StagePairs(
            *self._prefilter(
                workspace,
                user_embeddings,
                item_embeddings,
                excluded_rows,
                excluded_items,
                first_quotas,
            )
        )
        prefilter_survivors = segment_counts(pairs.segment_ids, num_users)
        timings.phase_seconds["first_decision_product"] += time.perf_counter() - started

        first_stage = 0
        if self._fuses_first_two_stages() and len(pairs.segment_ids) > 0:
            pairs = self._decide_first_two(
                workspace, user_embeddings, item_embeddings, pairs, timings, survivor_counts
            )
            first_stage = 2
        for stage_index in range(first_stage, self.num_decision_stages):
            stage_quotas = None if quotas is None else quotas[stage_index]
            pairs = self._decide(
                workspace,
                stage_index,
                user_embeddings,
                item_embeddings,
                pairs,
                stage_quotas,
                timings,
            )
            survivor_counts[stage_index] = segment_counts(pairs.segment_ids, num_users)

        scores = workspace.get("scores", (len(pairs.segment_ids),), np.float32)
        self._run_stage(
            workspace,
            self.num_decision_stages,
            user_embeddings,
            item_embeddings,
            pairs,
            {SCORE_OUTPUT: scores},
            timings,
        )

        started = time.perf_counter()
        top = top_k_sorted_segments(pairs.segment_ids, pairs.item_ids, scores, num_users, k)
        timings.phase_seconds["top_k"] += time.perf_counter() - started
        stats = CascadeStats(
            candidate_counts.astype(np.int64),
            survivor_counts,
            timings.stage_seconds,
            num_chunks=1,
            prefilter_survivors=prefilter_survivors,
            phase_seconds=dict(timings.phase_seconds),
        )
        return CascadeResult(*top, stats)

    def _fuses_first_two_stages(self) -> bool:
        # After the pre-rejection, decision stage 1 rejects almost nothing: only pairs whose
        # product decision lay within the rounding bound of zero. Stage 2 can then run on the
        # same gathered blocks, and the few pairs that stage 1 rejects are dropped afterwards.
        # The quota rule ranks each stage's pairs per user, so it keeps the staged path.
        return (
            self.rule == "sign"
            and self.first_decision_weight is not None
            and self.num_decision_stages >= 2
        )

    def _decide_first_two(
        self,
        workspace: _Workspace,
        user_embeddings: np.ndarray,
        item_embeddings: np.ndarray,
        pairs: _StagePairs,
        timings: _Timings,
        survivor_counts: np.ndarray,
    ) -> _StagePairs:
        """Run decision stages 1 and 2 on each gathered block and return the pairs both keep.

        A stage's output rows depend only on their own input rows, which the block-wise staged
        path and its tests rely on too, so the survivors and their outputs are the same. Stage 2
        also runs on the pairs that stage 1 rejects, a few per million after the pre-rejection,
        and they are dropped with stage 2's own rejections. Fills survivor_counts[0] and [1].
        """
        num_users = len(user_embeddings)
        num_pairs = len(pairs.segment_ids)
        first, second = self.stage_backends[0], self.stage_backends[1]
        first_width = first.output_specs[HIDDEN_OUTPUT].shape[1]
        second_width = second.output_specs[HIDDEN_OUTPUT].shape[1]
        block_rows = min(self.block_rows, num_pairs)
        dim = user_embeddings.shape[1]
        user_block = workspace.get("user_block", (block_rows, dim), np.float32)
        item_block = workspace.get("item_block", (block_rows, dim), np.float32)
        first_hidden = workspace.get("first_hidden_block", (block_rows, first_width), np.float32)
        first_decisions = workspace.get("first_stage_decision", (num_pairs,), np.float32)
        second_decisions = workspace.get("decision", (num_pairs,), np.float32)
        # Stage index 1 writes the buffer that the staged path would give it.
        second_hidden = workspace.get("hidden_1", (num_pairs, second_width), np.float32)

        for start in range(0, num_pairs, block_rows):
            stop = min(start + block_rows, num_pairs)
            count = stop - start
            started = time.perf_counter()
            users, items = _gather_embeddings(
                user_embeddings, item_embeddings, pairs, start, stop, user_block, item_block
            )
            gathered = time.perf_counter()
            run_stage_into(
                first,
                {USER_INPUT: users, ITEM_INPUT: items},
                {DECISION_OUTPUT: first_decisions[start:stop], HIDDEN_OUTPUT: first_hidden[:count]},
            )
            first_done = time.perf_counter()
            run_stage_into(
                second,
                {USER_INPUT: users, ITEM_INPUT: items, HIDDEN_INPUT: first_hidden[:count]},
                {
                    DECISION_OUTPUT: second_decisions[start:stop],
                    HIDDEN_OUTPUT: second_hidden[start:stop],
                },
            )
            timings.phase_seconds["gather"] += gathered - started
            timings.stage_seconds[0] += first_done - gathered
            timings.stage_seconds[1] += time.perf_counter() - first_done

        started = time.perf_counter()
        keep = ~(first_decisions > 0)
        survivor_counts[0] = np.bincount(
            pairs.segment_ids, weights=keep, minlength=num_users
        ).astype(np.int64)
        keep &= ~(second_decisions > 0)
        kept = _compact(workspace, pairs, keep, second_hidden, parity=1)
        survivor_counts[1] = segment_counts(kept.segment_ids, num_users)
        timings.phase_seconds["compaction"] += time.perf_counter() - started
        return kept

    def _decide(
        self,
        workspace: _Workspace,
        stage_index: int,
        user_embeddings: np.ndarray,
        item_embeddings: np.ndarray,
        pairs: _StagePairs,
        quotas: np.ndarray | None,
        timings: _Timings,
    ) -> _StagePairs:
        """Run decision stage `stage_index` on `pairs` and return the pairs it keeps."""
        num_pairs = len(pairs.segment_ids)
        hidden_width = self.stage_backends[stage_index].output_specs[HIDDEN_OUTPUT].shape[1]
        # Two hidden buffers take turns: this stage reads one and writes the other.
        parity = stage_index % 2
        outputs = {
            DECISION_OUTPUT: workspace.get("decision", (num_pairs,), np.float32),
            HIDDEN_OUTPUT: workspace.get(f"hidden_{parity}", (num_pairs, hidden_width), np.float32),
        }
        self._run_stage(
            workspace, stage_index, user_embeddings, item_embeddings, pairs, outputs, timings
        )

        started = time.perf_counter()
        keep = keep_mask(
            self.rule,
            outputs[DECISION_OUTPUT],
            pairs.segment_ids,
            pairs.item_ids,
            len(user_embeddings),
            quotas,
        )
        kept = _compact(workspace, pairs, keep, outputs[HIDDEN_OUTPUT], parity)
        timings.phase_seconds["compaction"] += time.perf_counter() - started
        logger.debug(
            "Decision stage %d kept %d of %d pairs",
            stage_index + 1,
            len(kept.segment_ids),
            num_pairs,
        )
        return kept

    def _prefilter(
        self,
        workspace: _Workspace,
        user_embeddings: np.ndarray,
        item_embeddings: np.ndarray,
        excluded_rows: np.ndarray,
        excluded_items: np.ndarray,
        first_quotas: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the (segment_ids, item_ids) that decision stage 1 must see, both int64 (M,).

        They are the candidates minus the pairs that stage 1 rejects for certain, sorted by
        user and then item.
        """
        num_users, num_items = len(user_embeddings), len(item_embeddings)
        mask = workspace.get("prefilter_mask", (num_users, num_items), np.bool_)
        weight = self.first_decision_weight
        if weight is None:
            mask.fill(True)
        else:
            weighted_users = user_embeddings * weight  # (B, d), θ_1 * u
            decisions = workspace.get("first_decisions", (num_users, num_items), np.float32)
            np.matmul(weighted_users, item_embeddings.T, out=decisions)
            error_bound = decision_error_bound(
                weighted_users, user_embeddings, weight, self._bounds_for(item_embeddings)
            )
            threshold = error_bound
            if first_quotas is not None:
                kth_decisions = self._kth_decisions(
                    workspace, decisions, excluded_rows, excluded_items, first_quotas
                )
                threshold = kth_decisions + 2.0 * error_bound
            np.less_equal(decisions, _float32_at_least(threshold)[:, None], out=mask)
            # Users whose decisions could overflow or are not finite get no pre-rejection.
            mask[~np.isfinite(error_bound)] = True
        mask[excluded_rows, excluded_items] = False
        # np.nonzero of a 2-D mask is slow: for 282 x 3,706 pairs of which half are kept it
        # took 6.3 ms, and this form 1.2 ms (numpy 2.4, one core of an AMD EPYC VM).
        counts = np.count_nonzero(mask, axis=1)
        item_ids = np.compress(
            mask.reshape(-1),
            workspace.item_grid(num_users, num_items),
            out=workspace.get("prefilter_items", (int(counts.sum()),), np.int64),
        )
        segment_ids = np.repeat(np.arange(num_users, dtype=np.int64), counts)
        return segment_ids, item_ids

    def _kth_decisions(
        self,
        workspace: _Workspace,
        decisions: np.ndarray,
        excluded_rows: np.ndarray,
        excluded_items: np.ndarray,
        first_quotas: np.ndarray,
    ) -> np.ndarray:
        """Return each user's q-th smallest product decision, q the chunk's largest quota.

        Stage 1 keeps q_u <= q candidates of user u. Any pair whose product decision exceeds
        this value by more than twice the error bound has at least q candidates with a
        strictly smaller stage decision, so stage 1 rejects it. One partition with the same
        q for every row is cheaper than a selection per user.
        """
        largest_quota = int(first_quotas.max(initial=0))
        if largest_quota == 0:
            return np.full(len(decisions), -np.inf)
        ordered = workspace.get("partition", decisions.shape, np.float32)
        np.copyto(ordered, decisions)
        ordered[excluded_rows, excluded_items] = np.inf  # excluded items sort last
        ordered.partition(largest_quota - 1, axis=1)
        return ordered[:, largest_quota - 1].astype(np.float64)

    def _run_stage(
        self,
        workspace: _Workspace,
        stage_index: int,
        user_embeddings: np.ndarray,
        item_embeddings: np.ndarray,
        pairs: _StagePairs,
        outputs: dict[str, np.ndarray],
        timings: _Timings,
    ) -> None:
        """Run one stage block by block and write its outputs for every pair of `pairs`."""
        num_pairs = len(pairs.segment_ids)
        if num_pairs == 0:
            return
        backend = self.stage_backends[stage_index]
        block_rows = min(self.block_rows, num_pairs)
        dim = user_embeddings.shape[1]
        user_block = workspace.get("user_block", (block_rows, dim), np.float32)
        item_block = workspace.get("item_block", (block_rows, dim), np.float32)
        hidden_block = None
        if pairs.hidden is not None:
            shape = (block_rows, pairs.hidden.shape[1])
            hidden_block = workspace.get("hidden_block", shape, np.float32)

        for start in range(0, num_pairs, block_rows):
            stop = min(start + block_rows, num_pairs)
            count = stop - start
            started = time.perf_counter()
            users, items = _gather_embeddings(
                user_embeddings, item_embeddings, pairs, start, stop, user_block, item_block
            )
            inputs = {USER_INPUT: users, ITEM_INPUT: items}
            if hidden_block is not None:
                inputs[HIDDEN_INPUT] = np.take(
                    pairs.hidden,
                    pairs.source_rows[start:stop],
                    axis=0,
                    out=hidden_block[:count],
                    mode="clip",
                )
            block_outputs = {name: array[start:stop] for name, array in outputs.items()}
            gathered = time.perf_counter()
            run_stage_into(backend, inputs, block_outputs)
            timings.phase_seconds["gather"] += gathered - started
            timings.stage_seconds[stage_index] += time.perf_counter() - gathered


def _gather_embeddings(
    user_embeddings: np.ndarray,
    item_embeddings: np.ndarray,
    pairs: _StagePairs,
    start: int,
    stop: int,
    user_block: np.ndarray,
    item_block: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Copy the user and item rows of pairs[start:stop] into the blocks and return those views."""
    count = stop - start
    users = np.take(
        user_embeddings,
        pairs.segment_ids[start:stop],
        axis=0,
        out=user_block[:count],
        mode="clip",
    )
    items = np.take(
        item_embeddings,
        pairs.item_ids[start:stop],
        axis=0,
        out=item_block[:count],
        mode="clip",
    )
    return users, items


def _compact(
    workspace: _Workspace,
    pairs: _StagePairs,
    keep: np.ndarray,
    hidden: np.ndarray,
    parity: int,
) -> _StagePairs:
    """Return the pairs where `keep` is true, with `hidden` as the next stage's hidden source.

    The ids go into the workspace buffers of `parity`, the stage index modulo 2, so a stage
    never overwrites the ids that it reads.
    """
    source_rows = np.flatnonzero(keep)
    num_kept = len(source_rows)
    return _StagePairs(
        segment_ids=np.take(
            pairs.segment_ids,
            source_rows,
            out=workspace.get(f"segments_{parity}", (num_kept,), np.int64),
            mode="clip",
        ),
        item_ids=np.take(
            pairs.item_ids,
            source_rows,
            out=workspace.get(f"items_{parity}", (num_kept,), np.int64),
            mode="clip",
        ),
        hidden=hidden,
        source_rows=source_rows,
    )


def decision_error_bound(
    weighted_users: np.ndarray,
    user_embeddings: np.ndarray,
    first_decision_weight: np.ndarray,
    item_bounds: _ItemBounds,
) -> np.ndarray:
    """Bound, per user, how far the product decision can lie from stage 1's own decision.

    Both (θ * u) . v, computed by a matrix product, and θ . (u * v), computed by the stage,
    round d + 1 times in float32 in some order, FMA or not. Each therefore lies within
    γ_{d+1} * Σ|θ_i u_i v_i| of the exact value, where γ_n = n u / (1 - n u) and u = 2**-24
    (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., section 3.1). The sum
    is at most ||θ * u|| * max_v ||v|| by Cauchy-Schwarz. The bound doubles 2 γ_{d+1}, to
    cover the rounding of θ * u and of the norms, and adds an absolute term for underflow
    (below 2**-126 per rounding, times the largest factor, even with flush-to-zero).

    Args:
        weighted_users: float32, shape (B, d). θ * u of each user.
        user_embeddings: float32, shape (B, d).
        first_decision_weight: float32, shape (d,). θ.
        item_bounds: Largest norm and largest absolute entry of the item table.

    Returns:
        float64, shape (B,). inf for a user whose sums could overflow or whose values are not
        finite, so that no pair of that user is rejected early.
    """
    dim = weighted_users.shape[1]
    weighted_norms = np.linalg.norm(weighted_users.astype(np.float64), axis=1)
    user_norms = np.linalg.norm(user_embeddings.astype(np.float64), axis=1)
    user_abs_max = np.abs(user_embeddings).max(axis=1, initial=0.0).astype(np.float64)
    weight_abs_max = float(np.abs(first_decision_weight).max(initial=0.0))

    relative = 4.0 * (dim + 2) * _UNIT_ROUNDOFF
    absolute = (
        (2 * dim + 4)
        * 2.0**-126
        * (1.0 + weight_abs_max)
        * (1.0 + item_bounds.max_abs)
        * (1.0 + user_abs_max)
    )
    bound = relative * weighted_norms * item_bounds.max_norm + absolute
    # NaN fails both comparisons, so users with non-finite values also get inf.
    is_safe = (weighted_norms * item_bounds.max_norm < _SAFE_MAGNITUDE) & (
        user_norms * item_bounds.max_norm * max(1.0, weight_abs_max) < _SAFE_MAGNITUDE
    )
    return np.where(is_safe, bound, np.inf)


def _float32_at_least(values: np.ndarray) -> np.ndarray:
    """Round float64 values to the nearest float32 that is not below them (NaN stays NaN)."""
    rounded = values.astype(np.float32)
    is_below = rounded.astype(np.float64) < values
    rounded[is_below] = np.nextafter(rounded[is_below], np.float32(np.inf))
    return rounded


def _unique_excluded_pairs(
    excluded: tuple[np.ndarray, np.ndarray] | None, num_users: int, num_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return the distinct excluded (row, item) pairs of a chunk as two int64 arrays."""
    if excluded is None:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    indptr, indices = excluded
    rows = np.repeat(np.arange(num_users, dtype=np.int64), np.diff(indptr))
    flat = rows * num_items + np.asarray(indices, dtype=np.int64)
    # A row may list an item twice, and the candidate count must drop it once. Rows of
    # strictly increasing items, as the runtime's tables store them, need no sort.
    if np.any(flat[1:] <= flat[:-1]):
        flat = np.unique(flat)
    return flat // num_items, flat % num_items


def read_first_decision_weight(
    stage: StageBackend, user_embedding: np.ndarray, item_embedding: np.ndarray
) -> np.ndarray:
    """Read θ_1 from decision stage 1 and check that the stage's decision is θ_1 . (u * v).

    The weight is probed with d pairs (u = e_i, v = 1), whose decisions are θ_1's entries
    exactly. The check then compares the stage with the matrix product on up to
    64 x 256 pairs of the model's own users and items, within `decision_error_bound`.

    Args:
        stage: Decision stage 1.
        user_embedding: float32, shape (U, d). The model's user table.
        item_embedding: float32, shape (I, d). The model's item table.

    Returns:
        float32, shape (d,).

    Raises:
        ModelFormatError: The stage's decision is not that inner product in float32, for
            example because it has another architecture or computes in lower precision.
    """
    dim = item_embedding.shape[1]
    probe = {
        USER_INPUT: np.eye(dim, dtype=np.float32),
        ITEM_INPUT: np.ones((dim, dim), dtype=np.float32),
    }
    weight = np.asarray(stage.run(probe)[DECISION_OUTPUT], dtype=np.float32).reshape(dim)

    users = user_embedding[np.linspace(0, len(user_embedding) - 1, _CHECK_USERS).astype(int)]
    items = item_embedding[np.linspace(0, len(item_embedding) - 1, _CHECK_ITEMS).astype(int)]
    stage_decisions = stage.run(
        {
            USER_INPUT: np.repeat(users, len(items), axis=0),
            ITEM_INPUT: np.tile(items, (len(users), 1)),
        }
    )[DECISION_OUTPUT].reshape(len(users), len(items))
    weighted_users = users * weight
    table = item_embedding.astype(np.float64)
    item_bounds = _ItemBounds(
        item_embedding,
        float(np.sqrt(np.einsum("ij,ij->i", table, table)).max()),
        float(np.abs(table).max()),
    )
    error_bound = decision_error_bound(weighted_users, users, weight, item_bounds)
    differences = np.abs((weighted_users @ items.T).astype(np.float64) - stage_decisions)
    is_within = (differences <= error_bound[:, None]) | ~np.isfinite(error_bound)[:, None]
    if not np.all(np.isfinite(weight)) or not np.all(is_within):
        raise ModelFormatError(
            f"Decision stage 1 ({stage.path}) does not compute its decision as the float32 "
            f"inner product θ_1 . (u * v): on the model's own pairs it differs from that "
            f"product by up to {float(np.nanmax(differences)):.3g}. Load the model with "
            "cascade='plain'."
        )
    return weight
