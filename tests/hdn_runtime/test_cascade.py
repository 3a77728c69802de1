"""Cascade rules, compaction between stages, chunking and statistics, on scripted backends.

The scripted backends compute decisions and scores from the item embedding, whose single
column contains the item index, so every expected survivor set can be written down by hand.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hdn_runtime.backends.base import StageBackend, TensorSpec
from hdn_runtime.cascade import Cascade

FLOAT32 = np.dtype(np.float32)


class ScriptedBackend(StageBackend):
    """A stage whose outputs come from a Python function of the inputs."""

    def __init__(self, name, input_names, output_names, function):
        super().__init__(Path(f"{name}.onnx"))
        self._input_specs = {
            input_name: TensorSpec(FLOAT32, (None, 1)) for input_name in input_names
        }
        self._output_specs = {
            output_name: TensorSpec(FLOAT32, (None,) if output_name != "hidden" else (None, 1))
            for output_name in output_names
        }
        self._function = function
        self.batch_sizes = []
        self.close_count = 0

    @property
    def input_specs(self):
        return self._input_specs

    @property
    def output_specs(self):
        return self._output_specs

    def _run(self, inputs):
        self.batch_sizes.append(len(inputs["item_emb"]))
        return self._function(inputs)

    def _close(self):
        self.close_count += 1


def decision_stage(stage_index, decide):
    """A decision stage with decision = decide(item index); hidden carries the item index."""
    input_names = ["user_emb", "item_emb"] + (["hidden_in"] if stage_index > 0 else [])

    def run(inputs):
        items = inputs["item_emb"][:, 0]
        if stage_index > 0:
            np.testing.assert_array_equal(inputs["hidden_in"][:, 0], items)
        return {"decision": decide(items).astype(np.float32), "hidden": inputs["item_emb"].copy()}

    return ScriptedBackend(f"decision_{stage_index + 1}", input_names, ["decision", "hidden"], run)


def score_stage(score=lambda items: items):
    def run(inputs):
        return {"score": score(inputs["item_emb"][:, 0]).astype(np.float32)}

    return ScriptedBackend("score", ["user_emb", "item_emb", "hidden_in"], ["score"], run)


def item_table(num_items):
    return np.arange(num_items, dtype=np.float32)[:, None]


def user_table(num_users):
    return np.zeros((num_users, 1), dtype=np.float32)


def test_quota_rounding_keeps_exact_share():
    # (1 - 0.7) * 10 is 3.0000000000000004 in float64; a plain ceiling would keep 4.
    cascade = Cascade([decision_stage(0, lambda items: items), score_stage()], [0.7], rule="quota")

    result = cascade.run(user_table(1), item_table(10), k=10)

    assert result.stats.survivor_counts.tolist() == [[3]]
    assert sorted(result.item_indices[0, :3].tolist()) == [0, 1, 2]


def test_quota_ties_keep_lower_items():
    stages = [
        decision_stage(0, lambda items: np.zeros_like(items)),
        decision_stage(1, lambda items: np.zeros_like(items)),
        score_stage(lambda items: np.zeros_like(items)),
    ]
    cascade = Cascade(stages, [0.5, 0.75], rule="quota")

    result = cascade.run(user_table(2), item_table(8), k=8)

    assert result.stats.survivor_counts.tolist() == [[4, 4], [2, 2]]
    assert result.item_indices[:, :2].tolist() == [[0, 1], [0, 1]]
    assert result.counts.tolist() == [2, 2]


def test_quota_counts_use_initial_candidates():
    # User 0 has 10 candidates, user 1 has 6 after exclusions: quotas 5 then 3, 3 then 2.
    stages = [
        decision_stage(0, lambda items: -items),
        decision_stage(1, lambda items: -items),
        score_stage(),
    ]
    cascade = Cascade(stages, [0.5, 0.75], rule="quota")

    result = cascade.run(
        user_table(2),
        item_table(10),
        k=10,
        excluded_indptr=np.array([0, 0, 4]),
        excluded_indices=np.array([9, 8, 0, 1]),
    )

    assert result.stats.candidate_counts.tolist() == [10, 6]
    assert result.stats.survivor_counts.tolist() == [[5, 3], [3, 2]]
    assert result.item_indices[0, :3].tolist() == [9, 8, 7]
    assert result.item_indices[1, :2].tolist() == [7, 6]


def test_sign_rule_rejects_positive_only():
    decisions = np.array([1.0, 0.0, -1.0, np.nan, 2.0], dtype=np.float32)
    stages = [decision_stage(0, lambda items: decisions[items.astype(int)]), score_stage()]
    cascade = Cascade(stages, [0.5], rule="sign")

    result = cascade.run(user_table(1), item_table(5), k=5)

    assert result.counts.tolist() == [3]
    assert result.item_indices[0, :3].tolist() == [3, 2, 1]


def test_excluded_items_are_not_candidates():
    cascade = Cascade([decision_stage(0, lambda items: -np.ones_like(items)), score_stage()], [0.0])

    result = cascade.run(
        user_table(2),
        item_table(4),
        k=4,
        excluded_indptr=np.array([0, 2, 3]),
        excluded_indices=np.array([3, 1, 0]),
    )

    assert result.item_indices.tolist() == [[2, 0, -1, -1], [3, 2, 1, -1]]
    assert result.counts.tolist() == [2, 3]


def test_all_rejected_skips_later_sessions():
    stages = [
        decision_stage(0, lambda items: np.ones_like(items)),
        decision_stage(1, lambda items: -np.ones_like(items)),
        score_stage(),
    ]
    cascade = Cascade(stages, [0.5, 0.75], rule="sign")

    result = cascade.run(user_table(3), item_table(6), k=2)

    assert result.counts.tolist() == [0, 0, 0]
    assert (result.item_indices == -1).all()
    assert np.isneginf(result.scores).all()
    assert result.stats.total_survivors == [0, 0]
    assert stages[0].batch_sizes == [18]
    assert stages[1].batch_sizes == []
    assert stages[2].batch_sizes == []


def test_empty_user_batch():
    stages = [decision_stage(0, lambda items: -items), score_stage()]
    cascade = Cascade(stages, [0.5])

    result = cascade.run(user_table(0), item_table(5), k=3)

    assert result.item_indices.shape == (0, 3)
    assert result.scores.shape == (0, 3)
    assert result.stats.survivor_counts.shape == (1, 0)
    assert result.stats.num_chunks == 0
    assert stages[0].batch_sizes == []


def test_chunks_bound_batch_size():
    stages = [decision_stage(0, lambda items: -items), score_stage()]
    cascade = Cascade(stages, [0.5], rule="quota", max_candidates=25)

    result = cascade.run(user_table(5), item_table(10), k=2)

    assert stages[0].batch_sizes == [20, 20, 10]
    assert result.stats.num_chunks == 3
    assert result.item_indices.tolist() == [[9, 8]] * 5
    assert result.stats.stage_seconds.shape == (2,)


def test_chunk_holds_one_user_when_catalogue_is_larger():
    stages = [decision_stage(0, lambda items: -items), score_stage()]
    cascade = Cascade(stages, [0.5], max_candidates=4)

    result = cascade.run(user_table(2), item_table(10), k=1)

    assert stages[0].batch_sizes == [10, 10]
    assert result.item_indices.tolist() == [[9], [9]]


def test_close_closes_every_backend():
    stages = [decision_stage(0, lambda items: items), score_stage()]

    with Cascade(stages, [0.5]):
        pass

    assert [stage.close_count for stage in stages] == [1, 1]
    assert all(stage.is_closed for stage in stages)


@pytest.mark.parametrize(
    ("num_decisions", "ratios", "keywords", "message"),
    [
        (1, [0.5], {"rule": "vote"}, "rule must be one of"),
        (2, [0.5], {}, "got 3 stage backends and 1 rejection ratios"),
        (0, [], {}, "N >= 1 decision stages"),
        (1, [1.0], {}, "rejection_ratios must lie in \\[0, 1\\)"),
        (1, [0.5], {"max_candidates": 0}, "max_candidates must be a positive integer"),
    ],
)
def test_invalid_construction(num_decisions, ratios, keywords, message):
    stages = [decision_stage(index, lambda items: items) for index in range(num_decisions)]

    with pytest.raises(ValueError, match=message):
        Cascade([*stages, score_stage()], ratios, **keywords)


def test_invalid_run_arguments():
    cascade = Cascade([decision_stage(0, lambda items: items), score_stage()], [0.5])

    with pytest.raises(ValueError, match="must share d"):
        cascade.run(np.zeros((2, 3), dtype=np.float32), item_table(4), k=1)
    with pytest.raises(ValueError, match="k must be an integer >= 0"):
        cascade.run(user_table(2), item_table(4), k=-1)
    with pytest.raises(ValueError, match="both excluded_indptr and excluded_indices"):
        cascade.run(user_table(2), item_table(4), k=1, excluded_indptr=np.array([0, 0, 0]))
    with pytest.raises(ValueError, match="excluded_indptr must have shape \\(3,\\)"):
        cascade.run(
            user_table(2),
            item_table(4),
            k=1,
            excluded_indptr=np.array([0, 0]),
            excluded_indices=np.array([], dtype=np.int64),
        )
