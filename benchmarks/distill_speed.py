"""Distillation training speed on one data set: samples per second and seconds per epoch.

Measures, in one process and on the same data:

- the one-off costs of a run: the teacher's score matrix over every pair, and the per-user
  thresholds derived from it;
- distillation steps with the teacher scores of each batch looked up in that matrix (what
  `distill_hdn` does), against a baseline that runs the teacher on every batch instead.

Steps are timed over a fixed number of batches and extrapolated to a full epoch (every training
positive with its sampled negatives). Usage, for the figures in benchmarks/README.md:

    HDN_DATA_HOME=../shared/data python benchmarks/distill_speed.py --data ml-1m --threads 2
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch

from hdn_train.data import load_dataset, paper_split
from hdn_train.distill import rejection_targets, teacher_score_matrix, user_thresholds
from hdn_train.losses import decision_hinge_loss
from hdn_train.models.hdn import HDN
from hdn_train.models.neumf import NeuMF
from hdn_train.sampling import training_pairs
from hdn_train.teachers import TorchTeacher

GAMMAS = (0.5, 0.75, 0.875)


def time_steps(model, optimizer, batches, teacher_for_batch) -> float:
    """Run the distillation step on each batch and return the seconds it took."""
    started = time.perf_counter()
    for users, items, thresholds in batches:
        teacher_scores = teacher_for_batch(users, items)
        targets = torch.from_numpy(rejection_targets(teacher_scores, thresholds))
        decisions, scores = model(torch.from_numpy(users), torch.from_numpy(items))
        score_loss = torch.nn.functional.binary_cross_entropy_with_logits(
            scores, torch.sigmoid(torch.from_numpy(teacher_scores))
        )
        loss = score_loss + decision_hinge_loss(decisions, targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="ml-1m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300, help="Batches timed per variant.")
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    dataset = load_dataset(args.data)
    train, _ = paper_split(dataset.interactions, 0.2, 0)
    teacher = TorchTeacher(NeuMF(train.n_users, train.n_items))  # weights do not change timing
    student = HDN(train.n_users, train.n_items)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)

    started = time.perf_counter()
    score_matrix = teacher_score_matrix(teacher.score_users, train.n_users)
    matrix_seconds = time.perf_counter() - started
    started = time.perf_counter()
    thresholds = user_thresholds(score_matrix, GAMMAS)
    threshold_seconds = time.perf_counter() - started

    started = time.perf_counter()
    users, items, _ = training_pairs(train, 5, rng)
    sampling_seconds = time.perf_counter() - started
    samples_per_epoch = len(users)
    batches = [
        (
            users[start : start + args.batch_size],
            items[start : start + args.batch_size],
            thresholds[users[start : start + args.batch_size]],
        )
        for start in range(0, args.steps * args.batch_size, args.batch_size)
    ]

    # Warm-up so that both variants start with allocated buffers.
    time_steps(student, optimizer, batches[:20], lambda u, i: score_matrix[u, i])
    cpu_start = time.process_time()
    lookup_seconds = time_steps(student, optimizer, batches, lambda u, i: score_matrix[u, i])
    lookup_cpu = time.process_time() - cpu_start
    online_seconds = time_steps(student, optimizer, batches, teacher.score_pairs)

    timed = args.steps * args.batch_size
    lookup_rate = timed / lookup_seconds
    online_rate = timed / online_seconds
    epoch_lookup = samples_per_epoch / lookup_rate + sampling_seconds
    epoch_online = samples_per_epoch / online_rate + sampling_seconds
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads"
    )
    print(f"data: {args.data}, {train.nnz} training positives, {samples_per_epoch} samples/epoch")
    print(f"teacher score matrix ({train.n_users} x {train.n_items}): {matrix_seconds:.1f} s")
    print(f"per-user thresholds: {threshold_seconds:.2f} s")
    print(f"negative sampling and shuffle per epoch: {sampling_seconds:.2f} s")
    print(
        f"distillation, teacher scores looked up: {lookup_rate:,.0f} samples/s "
        f"(CPU/wall {lookup_cpu / lookup_seconds:.2f}), epoch {epoch_lookup:.1f} s"
    )
    print(
        f"baseline, teacher run on every batch: {online_rate:,.0f} samples/s, "
        f"epoch {epoch_online:.1f} s"
    )
    print(f"speed-up of the lookup over the baseline: {lookup_rate / online_rate:.2f}x")


if __name__ == "__main__":
    main()
