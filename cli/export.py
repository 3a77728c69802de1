"""`hdn export`: write a run's HDN as one ONNX model per stage, checked against PyTorch."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cli.main import setup_logging


def export(
    run: Path = typer.Argument(..., help="Run directory written by 'hdn train'."),
    out: Path = typer.Option(..., help="Model directory to create."),
    format: str = typer.Option("onnx", "--format", help="onnx, or trt for TensorRT engines."),
    overwrite: bool = typer.Option(False, help="Replace an existing model directory."),
    verify_users: int = typer.Option(64, help="Users whose pairs with every item feed the "
                                     "parity check."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings only."),
) -> None:
    """Export every decision module and the scoring module, then check them in onnxruntime."""
    from hdn_export.onnx import export_onnx
    from hdn_runtime.errors import BackendUnavailableError

    setup_logging(quiet=quiet)
    if format == "trt":
        raise BackendUnavailableError(
            "--format trt is not available in this build of hdn: TensorRT engine export is not "
            "implemented yet. Export with --format onnx and serve on onnxruntime."
        )
    if format != "onnx":
        raise ValueError(f"--format must be onnx or trt, got {format!r}.")

    manifest = export_onnx(run, out, overwrite=overwrite, verify_users=verify_users)
    table = Table(title=f"Stages written to {out}, checked in onnxruntime against PyTorch")
    for column in ("stage", "max abs diff", "max rel diff", "pairs checked"):
        table.add_column(column, justify="right")
    for name, entry in manifest["parity"].items():
        table.add_row(
            name, f"{entry['max_abs_diff']:.2e}", f"{entry['max_rel_diff']:.2e}",
            str(entry["pairs"]),
        )
    Console().print(table)
