"""`hdn train`: train the baselines, a teacher and the distilled HDN into a run directory."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.main import setup_logging
from cli.tables import metrics_table, output_console, rejection_table


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    """Parse a comma-separated list such as '0.5,0.75,0.875'."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError as err:
        raise ValueError(
            f"{option} must be comma-separated numbers such as 0.5,0.75,0.875, got {text!r}."
        ) from err


def train(
    data: str = typer.Option(
        ...,
        help="Named data set (ml-100k, ml-1m) or a path: u.data, ratings.dat, a CSV/TSV "
        "file with user_id and item_id columns, or a folder with train.txt and test.txt.",
    ),
    out: Path = typer.Option(..., help="Run directory to create."),
    user_col: str = typer.Option("user_id", help="User column of a CSV or TSV header."),
    item_col: str = typer.Option("item_id", help="Item column of a CSV or TSV header."),
    split: str = typer.Option(
        "paper", help="paper: seeded 20% per user; preset: the folder's train.txt/test.txt."
    ),
    seed: int = typer.Option(0, help="Seed for the split, initialisation and sampling."),
    gammas: str = typer.Option(
        "0.5,0.75,0.875",
        help="Rejection ratio of each decision "
        "module: share of the catalogue rejected once it has decided.",
    ),
    teacher: str = typer.Option("neumf", help="Teacher to distil from: neumf, convncf or als."),
    also: str = typer.Option(
        "",
        help="Comma-separated extra models to train and evaluate: mf-student, two-stage, "
        "hdn-nd, hdn-nr-, hdn-nr-nd.",
    ),
    dim: int = typer.Option(32, help="Embedding width of every model."),
    negatives: int = typer.Option(5, help="Sampled negatives per training positive."),
    learning_rate: float = typer.Option(0.001, help="Adam learning rate."),
    batch_size: int = typer.Option(512, help="Sampled pairs per optimiser step."),
    mf_epochs: int = typer.Option(10, help="Epochs of the MF baseline."),
    pretrain_epochs: int = typer.Option(
        5, help="Epochs of GMF and of MLP pre-training each (0: train NeuMF from scratch)."
    ),
    teacher_epochs: int = typer.Option(
        5, help="Epochs of NeuMF after pre-training, or of ConvNCF's BPR training."
    ),
    convncf_pretrain_epochs: int = typer.Option(
        10, help="Epochs of MF-BPR that initialise ConvNCF's embeddings."
    ),
    student_epochs: int = typer.Option(10, help="Epochs of HDN distillation."),
    threads: int = typer.Option(0, help="Torch CPU threads (0: torch's default)."),
    overwrite: bool = typer.Option(False, help="Replace an existing run directory."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log per-epoch detail."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings only."),
) -> None:
    """Train PopRank, MF, the NeuMF teacher and the HDN student, then write RUN."""
    from hdn_train.checkpoint import RUN_FORMAT, check_output_directory
    from hdn_train.config import TrainConfig
    from hdn_train.pipeline import train_all, write_run

    setup_logging(verbose, quiet)
    # Fail before training, not after it, when the run could not be written.
    check_output_directory(out, overwrite, RUN_FORMAT)
    config = TrainConfig(
        data=data,
        split=split,
        seed=seed,
        gammas=parse_floats(gammas, "--gammas"),
        dim=dim,
        negatives=negatives,
        learning_rate=learning_rate,
        batch_size=batch_size,
        teacher=teacher,
        extra_models=tuple(name.strip() for name in also.split(",") if name.strip()),
        convncf_pretrain_epochs=convncf_pretrain_epochs,
        mf_epochs=mf_epochs,
        pretrain_epochs=pretrain_epochs,
        teacher_epochs=teacher_epochs,
        student_epochs=student_epochs,
        threads=threads,
        user_col=user_col,
        item_col=item_col,
    )
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description:>6}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    )
    tasks: dict[str, int] = {}

    def on_step(phase: str, done: int, total: int) -> None:
        if phase not in tasks:
            tasks[phase] = progress.add_task(phase, total=total)
        if done == total or done % 50 == 0:
            progress.update(tasks[phase], completed=done)

    with progress:
        run = train_all(config, on_step=on_step)
    write_run(run, out, overwrite=overwrite)

    output = output_console()
    output.print(metrics_table(run.metrics, config.ks))
    output.print(rejection_table(run.metrics["hdn"]["rejection"]))
    output.print(f"Run written to {out}")
