"""Compare initial embedding scales of the HDN network on MovieLens-100K, seed 0.

For each standard deviation of the initial user and item embeddings, it distils the HDN
network (N = 3, d = h = 32, gammas 0.5/0.75/0.875, 15 epochs) from calibrated ALS scores twice:
with the score loss alone and with the decision hinge losses as well (HDN). Every network is
ranked without rejection, and the rejection shares of the full HDN are reported beside it.

Usage: HDN_DATA_HOME=../shared/data python docs/results/ml100k_init/compare_init.py
"""

from __future__ import annotations

import json

import numpy as np
import torch

from hdn_train.data import load_dataset, paper_split
from hdn_train.distill import distill_hdn, rejection_shares
from hdn_train.evaluate import evaluate_ranking, hdn_scorer
from hdn_train.experiment import ExperimentConfig, Workspace
from hdn_train.models.hdn import HDN
from hdn_train.teachers import FitOptions

GAMMAS = [0.5, 0.75, 0.875]
INIT_STDS = (0.1, 0.03, 0.01)


def main() -> None:
    torch.set_num_threads(1)
    data = load_dataset("ml-100k")
    train, test = paper_split(data.interactions, seed=0)
    config = ExperimentConfig(datasets=["ml-100k"], teachers=["als"], models=["hdn"])
    workspace = Workspace(config, None, "ml-100k", 0, (train, test))
    teacher_scores = workspace.teacher_scores("als")
    options = FitOptions(epochs=15, batch_size=512, negatives=5, learning_rate=0.001)
    results = {}
    for init_std in INIT_STDS:
        for decision_targets in ("none", "teacher"):
            torch.manual_seed(0)
            model = HDN(train.n_users, train.n_items, 32, 32, 3, init_std=init_std)
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
            entry = {"ndcg@20": metrics["ndcg@20"], "hr@20": metrics["hr@20"]}
            if decision_targets == "teacher":
                cumulative, _ = rejection_shares(model, np.arange(train.n_users))
                entry["rejection"] = [float(share) for share in cumulative]
            loss = "score loss only" if decision_targets == "none" else "HDN"
            results[f"init_std {init_std}, {loss}"] = entry
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
