"""`hdn evaluate`: print the metrics table of a run directory."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.main import setup_logging
from cli.tables import metrics_table, output_console, rejection_table


def evaluate(
    run: Path = typer.Argument(..., help="Run directory written by 'hdn train'."),
    recompute: bool = typer.Option(
        False, help="Re-rank the test split with the saved models instead of reading metrics.json."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings only."),
) -> None:
    """Print PopRank, MF, the teacher and HDN at K = 10 and 20, and HDN's rejection shares."""
    from hdn_train.pipeline import evaluate_models, load_run

    setup_logging(quiet=quiet)
    loaded = load_run(run)
    metrics = loaded.metrics
    if recompute:
        metrics = evaluate_models(
            loaded.config, loaded.train, loaded.test, loaded.mf, loaded.teacher, loaded.student
        )
    console = output_console()
    console.print(metrics_table(metrics, loaded.config.ks))
    console.print(rejection_table(metrics["hdn"]["rejection"]))
