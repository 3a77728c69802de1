"""Train every model of one run and record quality and training time.

Usage (the ML-1M figures in benchmarks/README.md):

    HDN_DATA_HOME=../shared/data python benchmarks/train_quality.py --data ml-1m \
        --mf-epochs 20 --pretrain-epochs 10 --teacher-epochs 20 --student-epochs 30 \
        --out benchmarks/results/ml1m_quality.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

from hdn_train.checkpoint import write_json
from hdn_train.config import TrainConfig
from hdn_train.pipeline import train_all, write_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="ml-1m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mf-epochs", type=int, default=20)
    parser.add_argument("--pretrain-epochs", type=int, default=10)
    parser.add_argument("--teacher-epochs", type=int, default=20)
    parser.add_argument("--student-epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the results.")
    parser.add_argument("--run-dir", type=Path, help="Also write the run directory here.")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    config = TrainConfig(
        data=args.data,
        seed=args.seed,
        mf_epochs=args.mf_epochs,
        pretrain_epochs=args.pretrain_epochs,
        teacher_epochs=args.teacher_epochs,
        student_epochs=args.student_epochs,
        threads=args.threads,
    )
    started = time.perf_counter()
    run = train_all(config)
    results = {
        "config": config.to_dict(),
        "metrics": run.metrics,
        "history": run.history,
        "total_seconds": round(time.perf_counter() - started, 1),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
    }
    write_json(args.out, results)
    if args.run_dir:
        write_run(run, args.run_dir, overwrite=True)

    for name, values in run.metrics.items():
        print(
            f"{name:18s} ndcg@20 {values['ndcg@20']:.4f}  hr@20 {values['hr@20']:.4f}  "
            f"train {values.get('train_seconds', 0):.0f}s"
        )
    print(json.dumps(run.metrics["hdn"]["rejection"], indent=1))


if __name__ == "__main__":
    main()
