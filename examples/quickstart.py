"""Quickstart: the Python API from training to recommendations, on MovieLens-100K.

Run it after installing (scripts/setup_env.sh does that):

    HDN_DATA_HOME=../shared/data python examples/quickstart.py

It trains a small NeuMF teacher and distils an HDN with few epochs, writes the run directory,
exports every stage to ONNX, and serves recommendations with the torch-free runtime.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from hdn_export.onnx import export_onnx
from hdn_runtime import Recommender
from hdn_train.config import TrainConfig
from hdn_train.pipeline import train_all, write_run


def main() -> None:
    parser = argparse.ArgumentParser(description="Train, export and serve an HDN.")
    parser.add_argument("--data", default="ml-100k", help="Named data set or a path.")
    parser.add_argument("--out", type=Path, help="Output folder (default: a temporary one).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    out = args.out or Path(tempfile.mkdtemp(prefix="hdn-quickstart-"))

    # 1. Train the baselines, the teacher and the student; every setting is a TrainConfig field.
    config = TrainConfig(
        data=args.data, mf_epochs=2, pretrain_epochs=2, teacher_epochs=2, student_epochs=8
    )
    run = train_all(config)
    print(
        f"Teacher NDCG@20 {run.metrics['neumf']['ndcg@20']:.4f}, "
        f"HDN NDCG@20 {run.metrics['hdn']['ndcg@20']:.4f}"
    )

    # 2. Save the run, then export one ONNX model per stage (checked against PyTorch).
    write_run(run, out / "run", overwrite=True)
    export_onnx(out / "run", out / "model", overwrite=True)

    # 3. Serve: this part needs only numpy and onnxruntime, as in a production service.
    with Recommender.load(out / "model") as recommender:
        for result in recommender.recommend(["1", "2"], k=5):
            print(f"user {result.user_id}: items {result.item_ids}")
        stats = recommender.last_stats
        print(f"Candidates per stage for that request: {stats.total_survivors}")
        print(recommender.recommend(["no-such-user"], k=3, unknown_users="popular")[0])


if __name__ == "__main__":
    main()
