"""Separate what lowers HDN's score from its ALS teacher on MovieLens-100K, seed 0.

It distils the same HDN network (N = 3, d = h = 32, gammas 0.5/0.75/0.875, 15 epochs) from
calibrated ALS scores twice: once with the decision modules trained on the teacher's
thresholds (HDN) and once with no decision loss at all, so only the score loss trains the
network. Both are ranked without rejection, so the difference is what the decision losses
cost the score. The MF student of docs/results/ml100k is the reference.

Usage: HDN_DATA_HOME=../shared/data python docs/results/ml100k_score_diagnosis/diagnose.py
"""

from __future__ import annotations

import json

import numpy as np
import torch

from hdn_train.data import load_dataset, paper_split
from hdn_train.distill import distill_hdn
from hdn_train.evaluate import evaluate_ranking, hdn_scorer
from hdn_train.experiment import ExperimentConfig, Workspace
from hdn_train.models.hdn import HDN
from hdn_train.teachers import FitOptions

GAMMAS = [0.5, 0.75, 0.875]


def main() -> None:
    torch.set_num_threads(1)
    data = load_dataset("ml-100k")
    train, test = paper_split(data.interactions, seed=0)
    config = ExperimentConfig(datasets=["ml-100k"], teachers=["als"], models=["hdn"])
    workspace = Workspace(config, None, "ml-100k", 0, (train, test))
    teacher_scores = workspace.teacher_scores("als")
    options = FitOptions(epochs=15, batch_size=512, negatives=5, learning_rate=0.001)
    results = {}
    for decision_targets in ("teacher", "none"):
        torch.manual_seed(0)
        model = HDN(train.n_users, train.n_items, dim=32, hidden_dim=32, num_decisions=3)
        distill_hdn(
            model,
            train,
            teacher_scores,
            GAMMAS,
            options,
            np.random.default_rng(0),
            decision_targets=decision_targets,
        )
        metrics = evaluate_ranking(hdn_scorer(model, rule="none"), train, test, ks=(20,))
        results[f"decision targets: {decision_targets}"] = metrics
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
