"""Time MF-BPR and ConvNCF training and ConvNCF full-catalogue scoring on the CPU.

Usage (ML-1M, 1 to 2 minutes per thread count on a 2-core machine):

    HDN_DATA_HOME=../shared/data python benchmarks/convncf_epoch_time.py --threads 1 2

For each torch thread count it measures one full MF-BPR epoch, a fixed number of ConvNCF BPR
steps extrapolated to one epoch, and ConvNCF `score_all` for a few users extrapolated to every
user. The extrapolations are estimates: they assume the per-step and per-user cost stays flat.

ConvNCF training steps allocate buffers of 32 MiB and more, which glibc maps fresh from the kernel
on every step. To time steps without that cost, run with
MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296 in the environment.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time

import numpy as np
import torch

from hdn_train.bpr import bpr_loss, bpr_triples, fit_bpr
from hdn_train.data import load_dataset, paper_split
from hdn_train.interactions import InteractionMatrix
from hdn_train.models.baselines import MatrixFactorization
from hdn_train.models.convncf import ConvNCF
from hdn_train.teachers import FitOptions

WARMUP_STEPS = 5
"""ConvNCF steps run before the clock starts, so one-time setup is not extrapolated."""


def time_mf_epoch(train: InteractionMatrix, args: argparse.Namespace) -> float:
    """Return the seconds of one MF-BPR epoch, negative sampling included."""
    torch.manual_seed(args.seed)
    model = MatrixFactorization(train.n_users, train.n_items, dim=args.dim)
    options = FitOptions(epochs=1, batch_size=args.batch_size)
    history = fit_bpr(model, train, options, np.random.default_rng(args.seed), "mf-bpr")
    return history[0]["seconds"]


def time_convncf_steps(train: InteractionMatrix, args: argparse.Namespace) -> tuple[float, float]:
    """Return (seconds to sample one epoch of triples, seconds per ConvNCF BPR step)."""
    torch.manual_seed(args.seed)
    model = ConvNCF(train.n_users, train.n_items, dim=args.dim, channels=args.channels)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    started = time.perf_counter()
    triples = bpr_triples(train, np.random.default_rng(args.seed))
    users, positives, negatives = (torch.from_numpy(a) for a in triples)
    sampling_seconds = time.perf_counter() - started

    model.train()
    for step in range(WARMUP_STEPS + args.convncf_steps):
        if step == WARMUP_STEPS:
            started = time.perf_counter()
        batch = slice(step * args.batch_size, (step + 1) * args.batch_size)
        loss = bpr_loss(model, users[batch], positives[batch], negatives[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return sampling_seconds, (time.perf_counter() - started) / args.convncf_steps


def time_convncf_scoring(train: InteractionMatrix, args: argparse.Namespace) -> float:
    """Return the seconds ConvNCF `score_all` takes for `args.score_users` users."""
    torch.manual_seed(args.seed)
    model = ConvNCF(train.n_users, train.n_items, dim=args.dim, channels=args.channels).eval()
    users = torch.arange(args.score_users)
    model.score_all(users[:1])  # warm-up

    started = time.perf_counter()
    model.score_all(users)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="ml-1m", help="Data set name or path.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to time."
    )
    parser.add_argument("--dim", type=int, default=32, help="Embedding width of MF and ConvNCF.")
    parser.add_argument("--channels", type=int, default=32, help="ConvNCF channels per layer.")
    parser.add_argument("--batch-size", type=int, default=512, help="BPR triples per step.")
    parser.add_argument(
        "--convncf-steps", type=int, default=200, help="Timed ConvNCF steps per thread count."
    )
    parser.add_argument(
        "--score-users", type=int, default=64, help="Users scored against every item."
    )
    args = parser.parse_args()

    dataset = load_dataset(args.data)
    train, _ = paper_split(dataset.interactions, seed=args.seed)
    steps_per_epoch = math.ceil(train.nnz / args.batch_size)
    if args.convncf_steps + WARMUP_STEPS > steps_per_epoch:
        parser.error(
            f"--convncf-steps must be at most {steps_per_epoch - WARMUP_STEPS} for this data set "
            f"(one epoch has {steps_per_epoch} steps), got {args.convncf_steps}."
        )
    if not 1 <= args.score_users <= train.n_users:
        parser.error(f"--score-users must be in [1, {train.n_users}], got {args.score_users}.")
    macs = ConvNCF(1, 1, dim=args.dim, channels=args.channels).multiply_adds_per_pair()

    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__}"
    )
    print(
        f"{dataset.name}: {train.n_users} users, {train.n_items} items, {train.nnz} training "
        f"positives; batch {args.batch_size}, so {steps_per_epoch} steps per epoch"
    )
    print(f"ConvNCF dim {args.dim}, channels {args.channels}: {macs} multiply-adds per pair")

    for threads in args.threads:
        torch.set_num_threads(threads)
        wall_started, cpu_started = time.perf_counter(), time.process_time()
        mf_seconds = time_mf_epoch(train, args)
        sampling_seconds, step_seconds = time_convncf_steps(train, args)
        scoring_seconds = time_convncf_scoring(train, args)
        # Below `threads` when other processes compete for the cores, which inflates the times.
        cpu_share = (time.process_time() - cpu_started) / (time.perf_counter() - wall_started)

        convncf_epoch = sampling_seconds + step_seconds * steps_per_epoch
        all_users = scoring_seconds * train.n_users / args.score_users
        pairs_per_second = args.score_users * train.n_items / scoring_seconds
        print(f"\n--threads {threads} (process CPU time / wall time: {cpu_share:.2f})")
        print(f"  MF-BPR epoch (measured):              {mf_seconds:8.1f} s")
        print(
            f"  ConvNCF BPR step ({args.convncf_steps} timed):        {1e3 * step_seconds:8.1f} ms"
        )
        print(f"  ConvNCF BPR epoch (estimate):         {convncf_epoch:8.1f} s")
        print(
            f"  ConvNCF score_all, {args.score_users} users (measured): "
            f"{scoring_seconds:8.1f} s  ({pairs_per_second:,.0f} pairs/s, "
            f"{2 * macs * pairs_per_second / 1e9:.1f} GFLOP/s)"
        )
        print(f"  ConvNCF score_all, all {train.n_users} users (estimate): {all_users:8.1f} s")


if __name__ == "__main__":
    main()
