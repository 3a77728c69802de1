"""`hdn experiment`: run a resumable grid of training runs and write its report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cli.main import setup_logging
from cli.tables import output_console

if TYPE_CHECKING:
    from hdn_train.experiment import Cell, ExperimentConfig
    from hdn_train.report import ReportTable


def experiment(
    config: Path = typer.Argument(
        ...,
        help="Experiment file (TOML or JSON) whose keys are ExperimentConfig fields, "
        "such as examples/experiments/ml1m_paper.toml.",
    ),
    out: Path = typer.Option(
        ...,
        help="Experiment directory. Finished cells in it are kept and skipped, so "
        "running the same file again resumes an interrupted experiment.",
    ),
    seed: list[int] = typer.Option(
        None,
        "--seed",
        help="Run only this seed's cells (repeat for several). Processes given different "
        "seeds can share one --out and run at the same time, one per core.",
    ),
    report_only: bool = typer.Option(
        False,
        "--report-only",
        help="Skip training and rewrite the report from the cells already in --out.",
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log per-epoch detail."),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Log warnings only and hide the progress bar."
    ),
) -> None:
    """Train every cell of CONFIG's grid into OUT, then write OUT/report/results.md."""
    from hdn_train.experiment import ExperimentConfig, load_results
    from hdn_train.report import aggregate, headline_table, write_report

    setup_logging(verbose, quiet)
    settings = ExperimentConfig.from_file(config)
    output = output_console()

    if report_only and seed:
        raise ValueError(
            "--seed selects cells to train, but --report-only trains none and reports every "
            "cell in --out. Drop one of the two options."
        )
    if not report_only:
        trained, resumed = _run_with_progress(settings, out, quiet, seed or None)
        output.print(f"Cells trained: {trained}, resumed: {resumed}.")

    results = load_results(out)
    if not results:
        raise FileNotFoundError(
            f"No finished cells under {out / 'cells'}. Run 'hdn experiment {config} --out "
            f"{out}' without --report-only first."
        )
    report_path = write_report(results, out / "report")

    table = headline_table(aggregate(results))
    if table is not None:
        output.print(_rich_table(table))
    output.print(f"Report written to {report_path}")


def _run_with_progress(
    settings: ExperimentConfig, out: Path, quiet: bool, seeds: list[int] | None
) -> tuple[int, int]:
    """Run the grid under a progress bar and return the counts of trained and resumed cells."""
    from hdn_train.experiment import grid_cells, run_experiment

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    )
    counts = {"trained": 0, "resumed": 0}

    with progress:
        task = progress.add_task("cells", total=len(grid_cells(settings, seeds)))

        def on_cell(cell: Cell, result: dict | None, index: int, total: int) -> None:
            # run_experiment passes None for a cell whose result file already existed.
            status = "resumed" if result is None else "trained"
            counts[status] += 1
            progress.update(task, advance=1, description=f"{status} {cell.key}")

        run_experiment(settings, out, on_cell=on_cell, seeds=seeds)
    return counts["trained"], counts["resumed"]


def _rich_table(table: ReportTable) -> Table:
    rich_table = Table(title=table.title)
    for number, name in enumerate(table.header):
        rich_table.add_column(name, justify="left" if number < 2 else "right")
    for row in table.rows:
        rich_table.add_row(*row)
    return rich_table
