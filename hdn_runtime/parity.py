"""Compare a stage backend against ONNX Runtime on the CPU, stage by stage and end to end.

Used after `hdn export --format trt` builds engines and by `hdn verify` on a deployment machine,
where torch is absent: the reference is always ONNX Runtime's CPU provider on the exported
ONNX stages. Inputs are real, the model's own embeddings of sampled users against every item.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hdn_runtime.backends.base import StageBackend
from hdn_runtime.backends.engine_record import read_engine_record
from hdn_runtime.backends.select import open_stage_backends
from hdn_runtime.manifest import HIDDEN_INPUT, HIDDEN_OUTPUT, ITEM_INPUT, USER_INPUT, read_manifest
from hdn_runtime.recommender import Recommender
from hdn_runtime.tables import ModelTables, load_tables

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tolerance:
    """Allowed difference |candidate - reference| <= absolute + relative * |reference|."""

    absolute: float
    relative: float


# fp32: both sides compute in float32 and differ only in summation order and kernel fusion,
# because fp32 engines are built with TF32 off. That moves a result by a few units in the last
# place of the summed terms, about 1e-6 relative for these small MLPs.
# fp16: an fp16 engine rounds weights and activations to 11-bit significands (unit roundoff
# 4.9e-4). Three or four layers of 32- to 64-term sums grow that to about 1e-2.
# NOTE: the fp16 values are an estimate from that arithmetic, not yet measured on a GPU.
TOLERANCES = {"fp32": Tolerance(1e-4, 1e-4), "fp16": Tolerance(5e-2, 2e-2)}
# Caps the pairs of one comparison at 2**20, about 128 MiB per float32 (pairs, 32) input.
MAX_PAIRS = 1 << 20


@dataclass(frozen=True)
class StageParity:
    """Largest differences of one stage's outputs against the reference.

    Attributes:
        name: Stage name.
        max_abs_diff: Largest |candidate - reference| over every output element.
        max_rel_diff: Largest |candidate - reference| / |reference|.
        pairs: (user, item) pairs compared.
        passed: Every element is within the tolerance.
    """

    name: str
    max_abs_diff: float
    max_rel_diff: float
    pairs: int
    passed: bool

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TopKAgreement:
    """How far the candidate's top-K lists agree with the reference's.

    Attributes:
        users: Users compared.
        k: List length requested.
        identical_users: Users whose lists are equal item for item.
        tied_users: Users whose lists differ only where scores tie within the tolerance.
        mean_overlap: Mean share of each reference list that the candidate list contains.
    """

    users: int
    k: int
    identical_users: int
    tied_users: int
    mean_overlap: float

    @property
    def agrees(self) -> bool:
        """Every list is identical or differs only by ties."""
        return self.identical_users + self.tied_users == self.users


@dataclass(frozen=True)
class ParityReport:
    """Result of `verify_model`.

    Attributes:
        backend: The backend checked ("cpu", "cuda" or "tensorrt").
        precision: "fp32", or the engines' precision for "tensorrt".
        tolerance: The tolerance applied to every stage output.
        stages: One entry per stage, in cascade order.
        top_k: End-to-end agreement of the recommendations.
    """

    backend: str
    precision: str
    tolerance: Tolerance
    stages: list[StageParity]
    top_k: TopKAgreement

    @property
    def passed(self) -> bool:
        """Every stage is within tolerance and, at fp32, every top-K list agrees up to ties.

        At fp16 near-ties reorder legitimately, so the overlap is reported but not required.
        """
        stages_pass = all(stage.passed for stage in self.stages)
        return stages_pass and (self.precision == "fp16" or self.top_k.agrees)


def sample_users(num_users: int, num_items: int, requested: int, seed: int) -> np.ndarray:
    """Choose sorted distinct users so that their pairs with every item stay within MAX_PAIRS.

    Returns:
        int64, shape (min(requested, num_users, MAX_PAIRS // num_items),), at least one user
        when the model has any.
    """
    if requested < 1:
        raise ValueError(f"The number of users to compare must be >= 1, got {requested}.")
    count = min(requested, num_users, max(1, MAX_PAIRS // num_items))
    if count < min(requested, num_users):
        logger.info(
            "Comparing %d users instead of %d to stay within %d pairs", count, requested, MAX_PAIRS
        )
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_users, size=count, replace=False)).astype(np.int64)


def pair_inputs(tables: ModelTables, user_indices: np.ndarray) -> dict[str, np.ndarray]:
    """Return the embedding inputs of every (user, item) pair, float32 (U * I, d) each."""
    num_items = len(tables.item_embedding)
    return {
        USER_INPUT: np.repeat(tables.user_embedding[user_indices], num_items, axis=0),
        ITEM_INPUT: np.tile(tables.item_embedding, (len(user_indices), 1)),
    }


def compare_stages(
    stage_names: Sequence[str],
    reference: Sequence[StageBackend],
    candidate: Sequence[StageBackend],
    inputs: dict[str, np.ndarray],
    tolerance: Tolerance,
) -> list[StageParity]:
    """Run both chains of stage backends on the same inputs and compare every output.

    Each stage gets the reference's hidden state from the previous stage, so a difference is
    measured for that stage alone and does not build up along the cascade.

    Args:
        stage_names: Names of the stages, in cascade order.
        reference: Reference backends, one per stage.
        candidate: Backends under test, one per stage.
        inputs: float32 embedding inputs of the pairs, keys "user_emb" and "item_emb".
        tolerance: Allowed difference per element.

    Returns:
        One entry per stage, in order.
    """
    feeds = dict(inputs)
    report = []
    for name, reference_stage, candidate_stage in zip(stage_names, reference, candidate):
        stage_feeds = {key: feeds[key] for key in reference_stage.input_specs}
        expected = reference_stage.run(stage_feeds)
        actual = candidate_stage.run(stage_feeds)

        max_abs = max_rel = 0.0
        passed = True
        for output_name, want in expected.items():
            got = actual[output_name].astype(np.float64)
            want = want.astype(np.float64)
            diff = np.abs(got - want)
            max_abs = max(max_abs, float(diff.max(initial=0.0)))
            relative = diff / np.maximum(np.abs(want), 1e-12)
            max_rel = max(max_rel, float(relative.max(initial=0.0)))
            allowed = tolerance.absolute + tolerance.relative * np.abs(want)
            passed = passed and not np.any(diff > allowed)

        pairs = len(next(iter(stage_feeds.values())))
        report.append(StageParity(name, max_abs, max_rel, pairs, passed))
        logger.info(
            "Stage %s: max abs diff %.3g, max rel diff %.3g over %d pairs",
            name,
            max_abs,
            max_rel,
            pairs,
        )
        if HIDDEN_OUTPUT in expected:
            feeds[HIDDEN_INPUT] = expected[HIDDEN_OUTPUT]
    return report


def compare_top_k(
    reference: tuple[np.ndarray, np.ndarray, np.ndarray],
    candidate: tuple[np.ndarray, np.ndarray, np.ndarray],
    k: int,
    tolerance: Tolerance,
) -> TopKAgreement:
    """Compare two `Recommender.recommend_indices` results for the same users.

    A list counts as tied when its length and its score at every rank match the reference
    within `tolerance`, so every rank where the items differ holds scores that tie.
    """
    reference_items, reference_scores, reference_counts = reference
    candidate_items, candidate_scores, candidate_counts = candidate
    identical = tied = 0
    overlaps = []
    for row in range(len(reference_counts)):
        count = int(reference_counts[row])
        want_items = reference_items[row, :count]
        got_items = candidate_items[row, : int(candidate_counts[row])]
        overlaps.append(len(np.intersect1d(want_items, got_items)) / max(count, 1))
        if np.array_equal(want_items, got_items):
            identical += 1
        elif len(got_items) == count:
            want = reference_scores[row, :count].astype(np.float64)
            got = candidate_scores[row, :count].astype(np.float64)
            if np.all(np.abs(got - want) <= tolerance.absolute + tolerance.relative * np.abs(want)):
                tied += 1
    mean_overlap = float(np.mean(overlaps)) if overlaps else 1.0
    return TopKAgreement(len(reference_counts), k, identical, tied, mean_overlap)


def verify_model(
    model_dir: str | Path,
    backend: str = "auto",
    num_users: int = 64,
    k: int = 20,
    seed: int = 0,
    device_id: int = 0,
) -> ParityReport:
    """Check a backend against ONNX Runtime on the CPU for an exported model directory.

    Every stage runs on the real embeddings of `num_users` sampled users against every item,
    on both backends, and every output is compared. Then both recommend the top k items to
    those users and the lists are compared.

    Args:
        model_dir: Directory written by `hdn export`.
        backend: Backend to check, as for `Recommender.load`; "auto" checks the one it picks.
        num_users: Users to sample, lowered so that at most MAX_PAIRS pairs are compared.
        k: Length of the compared top-K lists, at most the catalogue size.
        seed: Seed of the user sample.
        device_id: CUDA device for the "cuda" and "tensorrt" backends.

    Returns:
        The report. Its `passed` is True when the backend agrees within tolerance.

    Raises:
        ValueError: An argument is out of range.
        BackendUnavailableError: An explicit backend cannot run here.
        EngineMismatchError: The engines were built for another TensorRT version or GPU.
        ModelFormatError: The model directory is invalid.
    """
    manifest = read_manifest(model_dir)
    tables = load_tables(manifest)
    if not 1 <= k <= manifest.num_items:
        raise ValueError(f"k must be in [1, {manifest.num_items}], got {k}.")
    user_indices = sample_users(manifest.num_users, manifest.num_items, num_users, seed)

    name, candidate = open_stage_backends(manifest, backend, device_id=device_id)
    precision = "fp32"
    if name == "tensorrt":
        precision = read_engine_record(manifest).precision
    tolerance = TOLERANCES[precision]
    try:
        _, reference = open_stage_backends(manifest, "cpu")
        try:
            stage_names = [stage.name for stage in manifest.stages]
            inputs = pair_inputs(tables, user_indices)
            stages = compare_stages(stage_names, reference, candidate, inputs, tolerance)
        finally:
            for stage_backend in reference:
                stage_backend.close()
    finally:
        for stage_backend in candidate:
            stage_backend.close()

    with Recommender.load(model_dir, backend="cpu") as reference_recommender:
        expected = reference_recommender.recommend_indices(user_indices, k)
    with Recommender.load(model_dir, backend=name, device_id=device_id) as recommender:
        actual = recommender.recommend_indices(user_indices, k)
    top_k = compare_top_k(expected, actual, k, tolerance)
    return ParityReport(name, precision, tolerance, stages, top_k)
