"""Helpers of scripts/gpu_check.sh: report the GPU stack, make fallback data, benchmark backends.

Run from the repository root: `python scripts/gpu_check.py env|synthetic-data|bench ...`.
Each subcommand prints plain text for the log. `env` reports a missing package or GPU as text.
`bench` reports each backend that fails to load or recommend, goes on with the next one, and
exits with code 1 if any failed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BACKENDS = ("cpu", "cuda", "tensorrt")


def module_version(name: str) -> str:
    """Return a module's version, or why it cannot be imported."""
    try:
        module = importlib.import_module(name)
    except Exception as err:  # a broken CUDA install can raise more than ImportError
        return f"not importable ({type(err).__name__}: {err})"
    version = getattr(module, "__version__", None)
    if version is None:
        try:
            version = importlib.metadata.version(name.split(".")[0])
        except importlib.metadata.PackageNotFoundError:
            version = "version unknown"
    return str(version)


def report_environment() -> None:
    print(f"python: {sys.version.split()[0]} at {sys.executable}")
    for name in (
        "numpy",
        "onnx",
        "onnxscript",
        "onnxruntime",
        "tensorrt",
        "cupy",
        "typer",
        "rich",
        "safetensors",
        "pooch",
    ):
        print(f"{name}: {module_version(name)}")
    print(f"cuda-python: {module_version('cuda.bindings')}")

    try:
        import onnxruntime

        print(f"onnxruntime providers: {onnxruntime.get_available_providers()}")
    except ImportError:
        pass
    try:
        import torch

        print(
            f"torch: {torch.__version__}, torch.version.cuda: {torch.version.cuda}, "
            f"cuda available: {torch.cuda.is_available()}"
        )
        if torch.cuda.is_available():
            print(f"torch device 0: {torch.cuda.get_device_name(0)}")
    except ImportError as err:
        print(f"torch: not importable ({err})")

    for line in backend_availability():
        print(line)


def backend_availability() -> list[str]:
    """Return one 'backend <name>: ...' line per backend, as hdn_runtime's own checks see it."""
    try:
        from hdn_runtime.backends.select import cuda_unavailable_reason
        from hdn_runtime.backends.tensorrt import tensorrt_unavailable_reason
    except ImportError as err:
        return [f"backend checks: hdn_runtime cannot be imported ({err})"]
    checks = {
        "cpu": lambda: None,
        "cuda": cuda_unavailable_reason,
        "tensorrt": tensorrt_unavailable_reason,
    }
    lines = []
    for name, check in checks.items():
        reason = check()
        lines.append(
            f"backend {name}: " + ("available" if reason is None else f"UNAVAILABLE: {reason}")
        )
    return lines


def write_synthetic_data(path: Path, num_users: int = 600, num_items: int = 800) -> None:
    """Write a two-taste-group CSV, used when MovieLens-100K is not on the machine."""
    import numpy as np

    rng = np.random.default_rng(0)
    lines = ["user_id,item_id"]
    for user in range(num_users):
        preferred = np.arange(user % 2, num_items, 2)
        picks = rng.choice(preferred, size=30, replace=False).tolist()
        picks += rng.choice(num_items, size=10, replace=False).tolist()
        lines += [f"u{user},i{item}" for item in set(picks)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    print(
        f"wrote {len(lines) - 1} interactions of {num_users} users and {num_items} items to {path}"
    )


def time_backend(recommender_class, backend: str, model_dir: Path, k: int, repeats: int):
    """Load a model on one backend, print one user's top 5, and time top-k for all users.

    Returns:
        (backend, load seconds, best all-users seconds, users per second, seconds in stages)
        and the item indices of the last all-users call.
    """
    import numpy as np

    started = time.perf_counter()
    with recommender_class.load(model_dir, backend=backend) as recommender:
        load_seconds = time.perf_counter() - started
        first_user = recommender.user_ids[0]
        (result,) = recommender.recommend([first_user], k=5)
        print(
            f"user {first_user}: top-5 items {result.item_ids}, scores "
            f"{np.round(result.scores, 4).tolist()}"
        )

        users = np.arange(recommender.num_users)
        recommender.recommend_indices(users[:64], k)  # warm-up: allocations, lazy init
        timings = []
        for _ in range(repeats):
            started = time.perf_counter()
            items, _, _ = recommender.recommend_indices(users, k)
            timings.append(time.perf_counter() - started)
        best = min(timings)
        stage_total = float(recommender.last_stats.stage_seconds.sum())
    return (backend, load_seconds, best, len(users) / best, stage_total), items


def benchmark(models: dict[str, Path], k: int, repeats: int) -> int:
    """Recommend through each backend, time top-k for all users, and return the failure count."""
    import numpy as np

    from hdn_runtime import Recommender

    failures = 0
    rows = []
    reference = None
    for backend, model_dir in models.items():
        print(f"--- backend {backend} on {model_dir}")
        try:
            row, items = time_backend(Recommender, backend, model_dir, k, repeats)
        except Exception as err:  # report every failure and go on with the next backend
            print(f"backend {backend}: FAILED: {type(err).__name__}: {err}")
            failures += 1
            continue
        rows.append(row)

        if reference is None:
            reference = items
        else:
            overlap = np.mean(
                [len(np.intersect1d(want, got)) / k for want, got in zip(reference, items)]
            )
            print(f"top-{k} overlap with backend {next(iter(models))}: {overlap:.4f}")

    print(f"\nTop-{k} for all users, best of {repeats} (after one warm-up call):")
    print(f"{'backend':>10} {'load s':>8} {'all users s':>12} {'users/s':>10} {'in stages s':>12}")
    for backend, load_seconds, seconds, rate, stage_total in rows:
        print(f"{backend:>10} {load_seconds:8.2f} {seconds:12.3f} {rate:10.0f} {stage_total:12.3f}")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("env", help="print versions, providers and backend availability")
    synthetic = commands.add_parser("synthetic-data", help="write a fallback CSV data set")
    synthetic.add_argument("path", type=Path)
    bench = commands.add_parser("bench", help="recommend and time top-k through each backend")
    bench.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="BACKEND=DIR",
        help="backend and model directory; repeat for each backend",
    )
    bench.add_argument("--k", type=int, default=20)
    bench.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()

    if arguments.command == "env":
        report_environment()
        return 0
    if arguments.command == "synthetic-data":
        write_synthetic_data(arguments.path)
        return 0
    models = dict(pair.split("=", 1) for pair in arguments.model)
    unknown = set(models) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backends {sorted(unknown)}; use {list(BACKENDS)}")
    return (
        1
        if benchmark(
            {name: Path(path) for name, path in models.items()}, arguments.k, arguments.repeats
        )
        else 0
    )


if __name__ == "__main__":
    sys.exit(main())
