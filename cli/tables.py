"""Rich tables shared by the commands that print metrics or recommendations."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table


def output_console() -> Console:
    """Return the console for results on stdout.

    Rich assumes 80 columns when stdout is not a terminal, which cuts model names and metric
    headers in logs and pipes, so a redirected table gets 160 columns instead.
    """
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    return console


MODEL_LABELS = {
    "poprank": "PopRank",
    "mf": "MF",
    "two-stage": "MF top-100 + teacher",
    "neumf": "NeuMF (teacher)",
    "convncf": "ConvNCF (teacher)",
    "als": "ALS (teacher)",
    "mf-student": "MF student",
    "hdn": "HDN",
    "hdn-nr": "HDN, no rejection",
    "hdn-nd": "HDN-nd",
    "hdn-nr-": "HDN-nr-",
    "hdn-nr-nd": "HDN-nr-nd",
}


def metrics_table(metrics: dict, ks: Sequence[int] = (10, 20)) -> Table:
    """Build the model-by-metric table: NDCG, HR and Recall at each K, and training time."""
    table = Table(title="Full-ranking metrics on the test split")
    table.add_column("model")
    for k in ks:
        for name in ("ndcg", "hr", "recall"):
            table.add_column(f"{name}@{k}", justify="right")
    table.add_column("train s", justify="right")
    for key, label in MODEL_LABELS.items():
        if key not in metrics:
            continue
        values = metrics[key]
        cells = [
            f"{values.get(f'{name}@{k}', float('nan')):.4f}"
            for k in ks
            for name in ("ndcg", "hr", "recall")
        ]
        seconds = values.get("train_seconds")
        table.add_row(label, *cells, "" if seconds is None else f"{seconds:.0f}")
    return table


def rejection_table(rejection: list[dict]) -> Table:
    """Build the per-module table of actual rejection shares against their targets."""
    table = Table(title="HDN rejection share of the whole catalogue (sign rule, all users)")
    for column in ("module", "target gamma", "actual", "share of arrivals rejected"):
        table.add_column(column, justify="right")
    for entry in rejection:
        table.add_row(
            str(entry["module"]),
            f"{entry['target']:.4f}",
            f"{entry['actual']:.4f}",
            f"{entry['module_share']:.4f}",
        )
    return table
