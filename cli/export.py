"""`hdn export`: write a run's HDN as one ONNX model per stage, and optionally TensorRT engines."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.main import setup_logging
from cli.tables import output_console

TRT_ONLY_OPTIONS = ("--precision", "--min-batch", "--opt-batch", "--max-batch", "--timing-cache")


def export(
    run: Path = typer.Argument(..., help="Run directory written by 'hdn train'."),
    out: Path = typer.Option(..., help="Model directory to create."),
    format: str = typer.Option(
        "onnx", "--format", help="onnx, or trt to also build one TensorRT engine per stage."
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing model directory."),
    verify_users: int = typer.Option(
        64, help="Users whose pairs with every item feed the parity check."
    ),
    precision: str | None = typer.Option(
        None, help="trt only: fp32 (default) or fp16 arithmetic inside the engines."
    ),
    min_batch: int | None = typer.Option(
        None, help="trt only: smallest batch of (user, item) pairs per engine call (default 1)."
    ),
    opt_batch: int | None = typer.Option(
        None, help="trt only: batch, in pairs, TensorRT tunes for (default 16 users' catalogues)."
    ),
    max_batch: int | None = typer.Option(
        None,
        help="trt only: largest batch, in pairs, per engine call; larger batches run in "
        "chunks (default max(2**20, catalogue size), at most 2**22).",
    ),
    timing_cache: Path | None = typer.Option(
        None,
        help="trt only: TensorRT timing cache file, reused across builds (default "
        "~/.cache/hdn/tensorrt/timing-<version>-sm<capability>.cache).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings only."),
) -> None:
    """Export every decision module and the scoring module, then check them in onnxruntime.

    With --format trt, also build a TensorRT engine per stage and check it against its ONNX
    stage. That needs an NVIDIA GPU and the GPU extra: pip install 'hdn[gpu]'.
    """
    setup_logging(quiet=quiet)
    if format not in ("onnx", "trt"):
        raise ValueError(f"--format must be onnx or trt, got {format!r}.")
    trt_options = (precision, min_batch, opt_batch, max_batch, timing_cache)
    if format == "onnx" and any(value is not None for value in trt_options):
        raise ValueError(
            f"{', '.join(TRT_ONLY_OPTIONS)} apply to --format trt only. Remove them, or pass "
            "--format trt."
        )

    if format == "trt":
        from hdn_export.tensorrt import export_tensorrt

        manifest = export_tensorrt(
            run,
            out,
            overwrite=overwrite,
            precision=precision or "fp32",
            min_batch=min_batch,
            opt_batch=opt_batch,
            max_batch=max_batch,
            timing_cache=timing_cache,
            verify_users=verify_users,
        )
    else:
        from hdn_export.onnx import export_onnx

        manifest = export_onnx(run, out, overwrite=overwrite, verify_users=verify_users)

    console = output_console()
    console.print(
        parity_table(
            manifest["parity"], f"Stages written to {out}, checked in onnxruntime against PyTorch"
        )
    )
    if format == "trt":
        record = manifest["tensorrt"]
        profile = record["profile"]
        console.print(
            parity_table(
                record["parity"],
                f"TensorRT {record['version']} {record['precision']} engines for "
                f"{record['gpu_name']}, checked against onnxruntime",
            )
        )
        console.print(
            f"Batch profile: min {profile['min']}, opt {profile['opt']}, max {profile['max']} "
            "pairs per engine call."
        )


def parity_table(parity: dict[str, dict], title: str) -> Table:
    """Render `{stage: {"max_abs_diff", "max_rel_diff", "pairs"}}` as a table."""
    table = Table(title=title)
    for column in ("stage", "max abs diff", "max rel diff", "pairs checked"):
        table.add_column(column, justify="right")
    for name, entry in parity.items():
        table.add_row(
            name,
            f"{entry['max_abs_diff']:.2e}",
            f"{entry['max_rel_diff']:.2e}",
            str(entry["pairs"]),
        )
    return table
