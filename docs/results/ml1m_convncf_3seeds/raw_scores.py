"""Print how raw ConvNCF scores would read as logits, for the first 300 users of one seed.

It loads the ConvNCF teacher that `hdn experiment` cached under EXPERIMENT_DIR/models and
prints quantiles of its raw scores over every item and the mean of sigmoid(score), the soft
label that distillation would use without calibration.

Usage: HDN_DATA_HOME=../shared/data python docs/results/ml1m_convncf_3seeds/raw_scores.py \
    runs/exp_ml1m_convncf3 [SEED]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from hdn_train.experiment import ExperimentConfig, Workspace, load_teacher

CONFIG = Path(__file__).with_name("experiment.toml")
NUM_USERS = 300


def main() -> None:
    torch.set_num_threads(1)
    directory = Path(sys.argv[1])
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    config = ExperimentConfig.from_file(CONFIG)
    workspace = Workspace(config, directory, "ml-1m", seed)
    weights = directory / "models" / f"ml-1m-seed{seed}-teacher-convncf.safetensors"
    teacher = load_teacher("convncf", weights, workspace.num_users, workspace.num_items, config)
    scores = teacher.score_users(np.arange(NUM_USERS))
    quantiles = np.quantile(scores, [0.01, 0.25, 0.5, 0.75, 0.99])
    summary = {
        "users": NUM_USERS,
        "score quantiles 1/25/50/75/99%": [round(float(value), 3) for value in quantiles],
        "mean sigmoid(score)": round(float((1.0 / (1.0 + np.exp(-scores))).mean()), 3),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
