"""Time top-K over the whole catalogue: the HDN cascades, the teachers and a dot-product floor.

`run_benchmark` measures in this process and returns a `BenchReport`. It needs numpy and
onnxruntime only: the teachers arrive as ONNX files written by `hdn_export.teacher`, and
matplotlib is imported only by `plot_stage_profile`. Rendering the report is left to
`cli.bench`.

Every method answers the same question: the top k items of each requested user over every
item the user has not trained on. Methods:

- "HDN fast" and "HDN plain": `Recommender` with cascade="fast" and cascade="plain".
- One teacher per ONNX file (NeuMF, ConvNCF): scores every candidate pair in blocks, then the
  same exclusion and top-K as the floor.
- "dot-product floor": the HDN's own user and item embeddings, one matrix product per user
  chunk and `np.argpartition`. No model that scores all items can need less work than this.
"""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hdn_runtime.cascade import DEFAULT_MAX_CANDIDATES, RULES, CascadeStats
from hdn_runtime.fast_cascade import SessionSettings, session_options
from hdn_runtime.recommender import Recommender
from hdn_runtime.tables import ModelTables

logger = logging.getLogger(__name__)

FLOOR = "dot-product floor"
FAST = "HDN fast"
PLAIN = "HDN plain"
# Users per request in a timed pass over many users, as a batch job would send them.
PASS_USERS_PER_CALL = 1024
# Pairs per teacher call. ConvNCF's first convolution writes 32 KiB per pair at dim 32, so 256
# pairs keep each layer's buffer near 8 MiB. NeuMF's layers are narrow.
TEACHER_BLOCK_PAIRS = {"neumf": 8192, "convncf": 256}
_DEFAULT_TEACHER_BLOCK_PAIRS = 1024
_MATMUL_SIZE = 2048


@dataclass(frozen=True)
class BenchSettings:
    """Settings of `run_benchmark`: users, request sizes, repeats, threads and limits.

    Attributes:
        k: Items per user.
        users: Users in the pass over many users, drawn at random; None takes every user.
        reference_users: Users on which the plain cascade and the teachers are timed, the
            first of the drawn users; None takes all of them. Figures for more users are
            scaled by the candidate pairs and marked as extrapolated.
        batch_sizes: Request sizes whose latency is measured.
        repeats: Timed passes over the users; the figure is their median.
        latency_repeats: Maximum timed requests per batch size; p50 and p99 are over them.
        threads: Threads for ONNX Runtime and, when threadpoolctl is installed, for numpy's
            BLAS. None keeps the libraries' defaults.
        candidate_budget: Maximum (user, item) pairs per chunk, for every method.
        time_limit: Seconds after which a method stops repeating one figure. A request whose
            estimated time exceeds it is not run; its latency is extrapolated.
        rule: Rejection rule of the HDN cascades, "sign" or "quota".
        seed: Seed for drawing users.
    """

    k: int = 20
    users: int | None = None
    reference_users: int | None = None
    batch_sizes: tuple[int, ...] = (1, 64, 1024)
    repeats: int = 3
    latency_repeats: int = 30
    threads: int | None = None
    candidate_budget: int = DEFAULT_MAX_CANDIDATES
    time_limit: float = 120.0
    rule: str = "sign"
    seed: int = 0

    def __post_init__(self) -> None:
        _check_settings(self)


@dataclass
class Figure:
    """One timed figure of one method.

    Attributes:
        method: Method name.
        batch_size: Users per request, or None for the pass over many users.
        seconds: Median wall time of the pass, or p50 latency of a request.
        p99_seconds: p99 latency of a request (linear interpolation over the timed requests);
            None for the pass.
        user_seconds: Median user CPU time per pass or request, all threads of the process.
        system_seconds: Median system CPU time per pass or request.
        repeats: Timed passes or requests.
        users_timed: Users in each timed pass or request.
        extrapolated: The figure was scaled from fewer users than it stands for.
    """

    method: str
    batch_size: int | None
    seconds: float
    p99_seconds: float | None
    user_seconds: float
    system_seconds: float
    repeats: int
    users_timed: int
    extrapolated: bool


@dataclass
class StageProfile:
    """Pairs entering each stage and time spent there, per pass over the users.

    Attributes:
        stages: (name, pairs entering, seconds) in cascade order. For the fast cascade the
            first row is the matrix-product pre-rejection, which covers every candidate.
        phases: Host-side seconds between stage calls, by step.
        candidates: Candidate pairs of the pass.
        extrapolated: The profile was scaled from a sample of the users.
    """

    stages: list[tuple[str, int, float]]
    phases: dict[str, float]
    candidates: int
    extrapolated: bool = False

    def scaled(self, factor: float) -> StageProfile:
        """Return the profile with pairs and seconds multiplied by `factor`, as extrapolated."""
        return StageProfile(
            [
                (name, round(pairs * factor), seconds * factor)
                for name, pairs, seconds in self.stages
            ],
            {name: seconds * factor for name, seconds in self.phases.items()},
            round(self.candidates * factor),
            extrapolated=True,
        )


@dataclass
class BenchReport:
    """Everything `run_benchmark` measured, ready for printing or JSON.

    Attributes:
        machine: CPU model, cores, Python and library versions.
        model: Model directory, sizes and rejection ratios.
        settings: The `BenchSettings`, as a dict.
        figures: Every timed figure.
        stage_profiles: Per HDN cascade.
        multiply_adds: Multiply-adds per candidate pair of each method, from its layer shapes.
            The HDN entries weight each stage by the share of candidates reaching it.
        stage_multiply_adds: Multiply-adds per pair of each HDN stage.
        useful_gmacs: Multiply-adds per candidate times candidates, per second of the pass.
        matmul_gmacs: Rate of one float32 2048x2048x2048 numpy matrix product, the same threads.
        peak_rss_mib: Peak resident memory of the process after each phase, in run order.
        workspace_mib: Buffers the fast cascade keeps for reuse, per thread.
        notes: Conditions of the run a reader needs, such as skipped teachers.
    """

    machine: dict
    model: dict
    settings: dict
    figures: list[Figure] = field(default_factory=list)
    stage_profiles: dict[str, StageProfile] = field(default_factory=dict)
    multiply_adds: dict[str, float] = field(default_factory=dict)
    stage_multiply_adds: dict[str, int] = field(default_factory=dict)
    useful_gmacs: dict[str, float] = field(default_factory=dict)
    matmul_gmacs: float = 0.0
    peak_rss_mib: list[tuple[str, float]] = field(default_factory=list)
    workspace_mib: float = 0.0
    notes: list[str] = field(default_factory=list)

    def figure(self, method: str, batch_size: int | None) -> Figure | None:
        """Return the figure of `method` for `batch_size` (None: the pass), if measured."""
        for figure in self.figures:
            if figure.method == method and figure.batch_size == batch_size:
                return figure
        return None

    def to_dict(self) -> dict:
        return asdict(self)


def run_benchmark(
    model_dir: str | Path,
    teacher_paths: Sequence[str | Path] = (),
    settings: BenchSettings | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> BenchReport:
    """Time every method on the model in this process and return the report.

    Args:
        model_dir: Exported model directory.
        teacher_paths: Teacher ONNX files from `hdn_export.teacher`, for the same users and
            items as the model.
        settings: What to time; None takes the `BenchSettings` defaults.
        on_phase: Called with a description before each phase, for progress output.

    Raises:
        ValueError: A setting is invalid, or a teacher's tables do not match the model.
    """
    settings = settings or BenchSettings()
    notify = on_phase or (lambda text: None)
    with _thread_limit(settings.threads):
        session_settings = SessionSettings(settings.threads)
        fast = Recommender.load(
            model_dir,
            rule=settings.rule,
            intra_op_threads=settings.threads,
            max_candidates=settings.candidate_budget,
            cascade="fast",
            session_settings=session_settings,
        )
        loaded_rss_mib = _peak_rss_mib()
        with fast:
            # The bench belongs to the runtime package and reads the loaded tables directly.
            tables = fast._tables
            users = _draw_users(fast.num_users, settings)
            reference_users = users[: settings.reference_users or len(users)]
            is_sample = len(reference_users) < len(users)
            report = _new_report(fast, settings, users)
            report.peak_rss_mib.append(("loading the model", loaded_rss_mib))
            timer = _Timer(settings, tables, report, users)

            notify(f"{FLOOR}: {len(users)} users")
            with _FloorMethod(tables, settings) as floor:
                timer.time_method(FLOOR, floor, users)
            report.peak_rss_mib.append((FLOOR, _peak_rss_mib()))

            notify(f"{FAST}: {len(users)} users")
            timer.time_method(FAST, _CascadeMethod(fast, settings.k), users)
            report.workspace_mib = fast._cascade.workspace_bytes / 2**20
            report.peak_rss_mib.append((FAST, _peak_rss_mib()))

        with Recommender.load(
            model_dir,
            rule=settings.rule,
            intra_op_threads=settings.threads,
            max_candidates=settings.candidate_budget,
            cascade="plain",
        ) as plain:
            notify(f"{PLAIN}: {len(reference_users)} users")
            method = _CascadeMethod(plain, settings.k)
            timer.time_method(PLAIN, method, reference_users, is_sample)
        report.peak_rss_mib.append((PLAIN, _peak_rss_mib()))

        for path in teacher_paths:
            with _TeacherMethod(path, tables, settings, session_settings) as teacher:
                notify(f"{teacher.name}: {len(reference_users)} users")
                timer.time_method(teacher.name, teacher, reference_users, is_sample)
                report.multiply_adds[teacher.name] = teacher.multiply_adds_per_pair
            report.peak_rss_mib.append((teacher.name, _peak_rss_mib()))

        notify("numpy float32 matrix product")
        report.matmul_gmacs = _matmul_gmacs()
    _fill_rates(report)
    return report


def hdn_stage_multiply_adds(dim: int, hidden_dim: int, num_decisions: int) -> dict[str, int]:
    """Return the multiply-adds per pair of each HDN stage, from the layer shapes.

    Decision module 1 costs d for u * v, d for θ_1 and h * d for W_1. Module n > 1 costs d for
    u * v, d + h for θ_n and h * (d + h) for W_n. The scoring module costs d + (d + h). The
    matrix-product pre-rejection costs d per pair, because θ_1 * u is computed once per user.
    """
    stages = {"prefilter": dim, "decision_1": dim * (2 + hidden_dim)}
    for index in range(2, num_decisions + 1):
        stages[f"decision_{index}"] = dim + (dim + hidden_dim) * (1 + hidden_dim)
    stages["score"] = dim + dim + hidden_dim
    return stages


def plot_stage_profile(report: BenchReport, path: str | Path) -> Path:
    """Draw each HDN cascade's time and pairs per stage with matplotlib and save it to `path`.

    Raises:
        ImportError: matplotlib is not installed (it comes with the train extra).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, (time_axis, pairs_axis) = pyplot.subplots(1, 2, figsize=(12, 4.5))
    seconds_by_method = {
        method: {name: seconds for name, _, seconds in profile.stages}
        | {f"host: {name}": seconds for name, seconds in profile.phases.items()}
        for method, profile in report.stage_profiles.items()
    }
    row_names = list(dict.fromkeys(name for rows in seconds_by_method.values() for name in rows))
    width = 0.8 / max(1, len(seconds_by_method))
    for offset, (method, seconds_of) in enumerate(seconds_by_method.items()):
        positions = np.arange(len(row_names)) + offset * width
        values = [seconds_of.get(name, 0.0) for name in row_names]
        time_axis.barh(positions, values, height=width, label=method)
    time_axis.set_yticks(np.arange(len(row_names)) + width * (len(seconds_by_method) - 1) / 2)
    time_axis.set_yticklabels(row_names, fontsize=7)

    for method, profile in report.stage_profiles.items():
        shares = [pairs / max(1, profile.candidates) for _, pairs, _ in profile.stages]
        pairs_axis.plot([name for name, _, _ in profile.stages], shares, marker="o", label=method)
    time_axis.set_xlabel("seconds per pass over the users")
    time_axis.set_title("Time per stage and host step")
    time_axis.invert_yaxis()
    time_axis.legend()
    pairs_axis.set_yscale("log")
    pairs_axis.set_ylabel("pairs entering / candidates")
    pairs_axis.set_title("Pairs reaching each stage")
    pairs_axis.tick_params(axis="x", labelrotation=30, labelsize=7)
    pairs_axis.legend()
    figure.tight_layout()
    path = Path(path)
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return path


class _FloorMethod:
    """Top-K by the plain dot product of the HDN's user and item embeddings."""

    def __init__(self, tables: ModelTables, settings: BenchSettings) -> None:
        self._tables = tables
        self._k = settings.k
        num_items = len(tables.item_embedding)
        self._users_per_chunk = max(1, settings.candidate_budget // num_items)
        self._scores = np.empty((self._users_per_chunk, num_items), dtype=np.float32)

    def run(self, user_indices: np.ndarray) -> None:
        tables = self._tables
        for start in range(0, len(user_indices), self._users_per_chunk):
            chunk = user_indices[start : start + self._users_per_chunk]
            scores = self._scores[: len(chunk)]
            np.matmul(tables.user_embedding[chunk], tables.item_embedding.T, out=scores)
            _top_k_excluding_seen(scores, tables, chunk, self._k)

    def __enter__(self) -> _FloorMethod:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._scores = None


class _CascadeMethod:
    """A Recommender's top-K, recording the stage statistics of every request."""

    def __init__(self, recommender: Recommender, k: int) -> None:
        self._recommender = recommender
        self._k = k
        self.recorded: list[CascadeStats] = []
        self.is_recording = False

    def run(self, user_indices: np.ndarray) -> None:
        self._recommender.recommend_indices(user_indices, self._k)
        if self.is_recording:
            self.recorded.append(self._recommender.last_stats)


class _TeacherMethod:
    """A teacher ONNX model scoring every (user, candidate) pair, then top-K."""

    def __init__(
        self,
        path: str | Path,
        tables: ModelTables,
        settings: BenchSettings,
        session_settings: SessionSettings,
    ) -> None:
        import onnxruntime

        self._session = onnxruntime.InferenceSession(
            str(path),
            sess_options=session_options(session_settings),
            providers=["CPUExecutionProvider"],
        )
        metadata = self._session.get_modelmeta().custom_metadata_map
        self.kind = metadata.get("hdn.teacher_kind", Path(path).stem)
        self.name = {"neumf": "NeuMF teacher", "convncf": "ConvNCF teacher"}.get(
            self.kind, f"{self.kind} teacher"
        )
        if metadata.get("hdn.random_weights") == "1":
            self.name += " (random weights)"
        self.multiply_adds_per_pair = float(metadata.get("hdn.multiply_adds_per_pair", "nan"))
        num_users, num_items = len(tables.user_embedding), len(tables.item_embedding)
        shape = (int(metadata.get("hdn.num_users", -1)), int(metadata.get("hdn.num_items", -1)))
        if shape != (num_users, num_items):
            raise ValueError(
                f"Teacher {path} has tables of {shape[0]} users and {shape[1]} items, but the "
                f"model has {num_users} and {num_items}. Export the teacher of the run that "
                "the model came from."
            )
        self._tables = tables
        self._k = settings.k
        self._block_pairs = TEACHER_BLOCK_PAIRS.get(self.kind, _DEFAULT_TEACHER_BLOCK_PAIRS)
        self._users_per_chunk = max(1, settings.candidate_budget // num_items)
        self._scores = np.empty(self._users_per_chunk * num_items, dtype=np.float32)

    def run(self, user_indices: np.ndarray) -> None:
        num_items = len(self._tables.item_embedding)
        for start in range(0, len(user_indices), self._users_per_chunk):
            chunk = user_indices[start : start + self._users_per_chunk]
            num_pairs = len(chunk) * num_items
            for first in range(0, num_pairs, self._block_pairs):
                stop = min(first + self._block_pairs, num_pairs)
                positions = np.arange(first, stop)
                feed = {"users": chunk[positions // num_items], "items": positions % num_items}
                self._scores[first:stop] = self._session.run(None, feed)[0]
            scores = self._scores[:num_pairs].reshape(len(chunk), num_items)
            _top_k_excluding_seen(scores, self._tables, chunk, self._k)

    def __enter__(self) -> _TeacherMethod:
        return self

    def __exit__(self, *exc_info: object) -> None:
        del self._session


def _top_k_excluding_seen(
    scores: np.ndarray, tables: ModelTables, user_indices: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Return the k best items of each row, training items excluded, best first.

    Ties at the k-th score are broken by `np.argpartition`, not by item index: the floor and
    the teachers only set the time to beat.
    """
    indptr, indices = tables.seen_items(user_indices)
    rows = np.repeat(np.arange(len(user_indices)), np.diff(indptr))
    scores[rows, indices] = -np.inf
    k = min(k, scores.shape[1])
    best = np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]
    best_scores = np.take_along_axis(scores, best, axis=1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best, order, axis=1), np.take_along_axis(best_scores, order, axis=1)


class _Timer:
    """Times methods on passes and on batches of users and adds the figures to a report.

    Args:
        settings: What to time.
        tables: The model's tables, for each user's candidate count.
        report: Receives the figures and the stage profiles.
        drawn_users: The users of the pass. A method timed on fewer users is scaled to them.
    """

    def __init__(
        self,
        settings: BenchSettings,
        tables: ModelTables,
        report: BenchReport,
        drawn_users: np.ndarray,
    ) -> None:
        self._settings = settings
        num_items = len(tables.item_embedding)
        self._candidates = num_items - np.diff(tables.seen_indptr)  # per user
        self._drawn_candidates = int(self._candidates[drawn_users].sum())
        self._num_drawn = len(drawn_users)
        self._report = report
        self._rng = np.random.default_rng(settings.seed + 1)
        self._batch_samples: dict[tuple[str, int], list] = {}

    def time_method(self, name: str, method, users: np.ndarray, is_sample: bool = False) -> None:
        """Time a pass over `users`, then requests of every batch size.

        A method timed on a sample of the users gets requests of at most len(users) users,
        and larger batch sizes are scaled from them. Other methods get requests of the full
        size, drawn with repetition when the model has fewer users.
        """
        per_candidate = self._time_pass(name, method, users, is_sample)
        max_batch = len(users) if is_sample else max(self._settings.batch_sizes)
        for batch_size in self._settings.batch_sizes:
            self._time_batches(name, method, batch_size, per_candidate, max_batch)

    def _time_pass(self, name: str, method, users: np.ndarray, is_sample: bool) -> float:
        """Add the pass figure and return the measured seconds per candidate pair."""
        settings = self._settings
        # Warm-up, not counted: one full call allocates every buffer. A method timed on a
        # sample warms up on a quarter of it, so a slow teacher does not run it twice.
        warm_up_users = len(users) // 4 if is_sample else PASS_USERS_PER_CALL
        _run_in_calls(method, users[: max(1, min(warm_up_users, PASS_USERS_PER_CALL))])
        if isinstance(method, _CascadeMethod):
            method.is_recording = True
        samples = []
        spent = 0.0
        while len(samples) < settings.repeats and (not samples or spent < settings.time_limit):
            sample = _measure(lambda: _run_in_calls(method, users))
            samples.append(sample)
            spent += sample[0]
        seconds, user_seconds, system_seconds = np.median(np.array(samples), axis=0)
        timed_candidates = int(self._candidates[users].sum())
        # Users differ in candidates, so a sample is scaled by pairs, not by users.
        scale = self._drawn_candidates / max(1, timed_candidates)
        if isinstance(method, _CascadeMethod):
            method.is_recording = False
            profile = _stage_profile(method.recorded, len(samples))
            self._report.stage_profiles[name] = profile.scaled(scale) if is_sample else profile
        self._report.figures.append(
            Figure(
                method=name,
                batch_size=None,
                seconds=float(seconds * scale),
                p99_seconds=None,
                user_seconds=float(user_seconds * scale),
                system_seconds=float(system_seconds * scale),
                repeats=len(samples),
                users_timed=len(users),
                extrapolated=len(users) < self._num_drawn,
            )
        )
        return seconds / max(1, timed_candidates)

    def _time_batches(
        self, name: str, method, batch_size: int, per_candidate: float, max_users: int
    ) -> None:
        settings = self._settings
        timed_size = min(batch_size, max_users)
        estimate = per_candidate * self._candidates.mean() * timed_size
        if estimate > settings.time_limit:
            self._report.figures.append(
                Figure(
                    method=name,
                    batch_size=batch_size,
                    seconds=estimate * batch_size / timed_size,
                    p99_seconds=None,
                    user_seconds=float("nan"),
                    system_seconds=float("nan"),
                    repeats=0,
                    users_timed=0,
                    extrapolated=True,
                )
            )
            return

        samples = self._batch_samples.get((name, timed_size))
        if samples is None:
            samples = self._measure_batches(method, timed_size)
            self._batch_samples[(name, timed_size)] = samples
        walls = np.array([sample[0] for sample in samples])
        scale = batch_size / timed_size
        cpu = np.median(np.array(samples)[:, 1:], axis=0) * scale
        self._report.figures.append(
            Figure(
                method=name,
                batch_size=batch_size,
                seconds=float(np.percentile(walls, 50)) * scale,
                p99_seconds=float(np.percentile(walls, 99)) * scale,
                user_seconds=float(cpu[0]),
                system_seconds=float(cpu[1]),
                repeats=len(samples),
                users_timed=timed_size,
                extrapolated=scale != 1.0,
            )
        )

    def _measure_batches(self, method, batch_size: int) -> list[tuple[float, float, float]]:
        """Time requests of `batch_size` random users until the repeats or the time run out."""
        settings = self._settings
        num_users = len(self._candidates)
        replace = batch_size > num_users
        method.run(self._rng.choice(num_users, batch_size, replace=replace))  # warm-up
        samples = []
        spent = 0.0
        while len(samples) < settings.latency_repeats and (
            not samples or spent < settings.time_limit
        ):
            batch = self._rng.choice(num_users, batch_size, replace=replace)
            sample = _measure(lambda batch=batch: method.run(batch))
            samples.append(sample)
            spent += sample[0]
        return samples


def _run_in_calls(method, users: np.ndarray) -> None:
    for start in range(0, len(users), PASS_USERS_PER_CALL):
        method.run(users[start : start + PASS_USERS_PER_CALL])


def _measure(action: Callable[[], object]) -> tuple[float, float, float]:
    """Run `action` once; return wall, user CPU and system CPU seconds of the whole process."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    action()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    return wall, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def _stage_profile(recorded: list[CascadeStats], num_passes: int) -> StageProfile:
    """Sum the statistics of every recorded request and divide by the passes."""
    candidates = sum(stats.total_candidates for stats in recorded)
    stage_seconds = sum(stats.stage_seconds for stats in recorded)
    survivors = np.sum([stats.total_survivors for stats in recorded], axis=0)
    phases: Counter[str] = Counter()
    for stats in recorded:
        phases.update(stats.phase_seconds)

    num_decisions = len(survivors)
    names = [f"decision_{index + 1}" for index in range(num_decisions)] + ["score"]
    entering = [candidates, *survivors.tolist()]
    stages = []
    if recorded and recorded[0].prefilter_survivors is not None:
        prefiltered = sum(int(stats.prefilter_survivors.sum()) for stats in recorded)
        product_seconds = phases.pop("first_decision_product", 0.0)
        stages.append(("decision_1 (matrix product)", candidates, product_seconds))
        entering[0] = prefiltered
    stages += [
        (name, int(pairs), float(seconds))
        for name, pairs, seconds in zip(names, entering, stage_seconds)
    ]
    divide = max(1, num_passes)
    return StageProfile(
        [(name, pairs // divide, seconds / divide) for name, pairs, seconds in stages],
        {name: seconds / divide for name, seconds in phases.items()},
        candidates // divide,
    )


def _fill_rates(report: BenchReport) -> None:
    """Fill the multiply-adds per candidate and the useful multiply-add rates."""
    model = report.model
    stage_costs = hdn_stage_multiply_adds(
        model["embedding_dim"], model["hidden_dim"], len(model["rejection_ratios"])
    )
    report.stage_multiply_adds = stage_costs
    report.multiply_adds[FLOOR] = float(model["embedding_dim"])
    for method, profile in report.stage_profiles.items():
        costs = dict(stage_costs)
        if not profile.stages[0][0].endswith("(matrix product)"):
            costs.pop("prefilter")
        total = sum(cost * pairs for cost, (_, pairs, _) in zip(costs.values(), profile.stages))
        report.multiply_adds[method] = total / max(1, profile.candidates)

    for method, per_candidate in report.multiply_adds.items():
        figure = report.figure(method, None)
        if figure is None or figure.seconds <= 0:
            continue
        candidates = report.model["candidates_per_pass"]
        report.useful_gmacs[method] = per_candidate * candidates / figure.seconds / 1e9


def _matmul_gmacs() -> float:
    """Return the median rate of three float32 2048^3 numpy matrix products, in GMAC/s."""
    rng = np.random.default_rng(0)
    left = rng.standard_normal((_MATMUL_SIZE, _MATMUL_SIZE), dtype=np.float32)
    right = rng.standard_normal((_MATMUL_SIZE, _MATMUL_SIZE), dtype=np.float32)
    out = np.empty_like(left)
    np.matmul(left, right, out=out)  # warm-up
    seconds = [_measure(lambda: np.matmul(left, right, out=out))[0] for _ in range(3)]
    return _MATMUL_SIZE**3 / float(np.median(seconds)) / 1e9


def _new_report(
    recommender: Recommender, settings: BenchSettings, users: np.ndarray
) -> BenchReport:
    manifest = recommender.manifest
    seen_counts = np.diff(recommender._tables.seen_indptr)
    candidates = int((recommender.num_items - seen_counts[users]).sum())
    model = {
        "path": str(manifest.model_dir),
        "num_users": recommender.num_users,
        "num_items": recommender.num_items,
        "embedding_dim": manifest.embedding_dim,
        "hidden_dim": manifest.hidden_dim,
        "rejection_ratios": list(manifest.rejection_ratios),
        "rule": settings.rule,
        "users_per_pass": len(users),
        "candidates_per_pass": candidates,
        "users_per_chunk": max(1, settings.candidate_budget // recommender.num_items),
    }
    settings_dict = asdict(settings)
    settings_dict["batch_sizes"] = list(settings.batch_sizes)
    return BenchReport(machine_description(settings.threads), model, settings_dict)


def machine_description(threads: int | None) -> dict:
    """Return the CPU model (from /proc/cpuinfo where present), CPU counts and versions."""
    cpu_model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    import onnxruntime

    return {
        "cpu_model": cpu_model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "threads": threads,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def _draw_users(num_users: int, settings: BenchSettings) -> np.ndarray:
    if settings.users is None or settings.users >= num_users:
        return np.arange(num_users, dtype=np.int64)
    rng = np.random.default_rng(settings.seed)
    return rng.permutation(num_users)[: settings.users].astype(np.int64)


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@contextlib.contextmanager
def _thread_limit(threads: int | None) -> Iterator[None]:
    """Limit numpy's BLAS to `threads` while the block runs, when threadpoolctl is installed."""
    if threads is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        logger.warning(
            "threadpoolctl is not installed, so numpy's BLAS keeps its default thread count "
            "instead of %d. Install threadpoolctl to limit it.",
            threads,
        )
        yield
        return
    with threadpool_limits(limits=threads):
        yield


def _check_settings(settings: BenchSettings) -> None:
    counts = {
        "k": settings.k,
        "repeats": settings.repeats,
        "latency_repeats": settings.latency_repeats,
        "candidate_budget": settings.candidate_budget,
        "users": 1 if settings.users is None else settings.users,
        "reference_users": 1 if settings.reference_users is None else settings.reference_users,
    }
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    if not settings.batch_sizes or min(settings.batch_sizes) < 1:
        raise ValueError(
            f"batch_sizes must be positive numbers of users, got {settings.batch_sizes}."
        )
    if not settings.time_limit > 0:
        raise ValueError(f"time_limit must be > 0 seconds, got {settings.time_limit}.")
    if settings.rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {settings.rule!r}.")
