"""`hdn verify`: check a backend against ONNX Runtime on the CPU, on this machine."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.main import setup_logging
from cli.tables import output_console


def verify(
    model: Path = typer.Argument(..., help="Model directory written by 'hdn export'."),
    backend: str = typer.Option(
        "auto",
        help="Backend to check: auto, cpu, cuda or tensorrt. auto checks the one that "
        "Recommender.load(backend='auto') picks here.",
    ),
    users: int = typer.Option(64, help="Users whose pairs with every item are compared."),
    k: int = typer.Option(20, "--k", help="Length of the compared top-K lists."),
    seed: int = typer.Option(0, help="Seed for choosing the users."),
    device_id: int = typer.Option(0, help="CUDA device for cuda and tensorrt."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings only."),
) -> None:
    """Run every stage and the whole cascade on a backend and on the CPU, and compare them.

    Exits with code 1 when a stage differs beyond the tolerance of its precision, or when fp32
    top-K lists differ other than by tied scores.
    """
    from hdn_runtime.errors import ParityError
    from hdn_runtime.parity import verify_model

    setup_logging(quiet=quiet)
    report = verify_model(
        model, backend=backend, num_users=users, k=k, seed=seed, device_id=device_id
    )

    tolerance = report.tolerance
    table = Table(
        title=f"Backend {report.backend!r} ({report.precision}) against onnxruntime on the CPU, "
        f"tolerance abs {tolerance.absolute:g} + rel {tolerance.relative:g}"
    )
    for column in ("stage", "max abs diff", "max rel diff", "pairs", "within tolerance"):
        table.add_column(column, justify="right")
    for stage in report.stages:
        table.add_row(
            stage.name,
            f"{stage.max_abs_diff:.2e}",
            f"{stage.max_rel_diff:.2e}",
            str(stage.pairs),
            "yes" if stage.passed else "NO",
        )
    console = output_console()
    console.print(table)

    top_k = report.top_k
    console.print(
        f"Top-{top_k.k} for {top_k.users} users: {top_k.identical_users} identical, "
        f"{top_k.tied_users} differing only by tied scores, mean overlap "
        f"{top_k.mean_overlap:.4f}."
    )
    if not report.passed:
        failed = [stage.name for stage in report.stages if not stage.passed]
        problem = (
            f"stages {failed} differ beyond tolerance"
            if failed
            else (
                f"{top_k.users - top_k.identical_users - top_k.tied_users} top-K lists differ "
                "beyond tied scores"
            )
        )
        raise ParityError(
            f"Backend {report.backend!r} does not match the CPU: {problem}. Rebuild the engines "
            "with 'hdn export RUN --format trt --out DIR', or serve with --backend cpu.",
            max_abs_diff={stage.name: stage.max_abs_diff for stage in report.stages},
        )
    console.print(f"Backend {report.backend!r} matches the CPU.")
