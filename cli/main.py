"""The `hdn` command: one Typer application, one module per command, logging set up here."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import typer

app = typer.Typer(
    name="hdn",
    help="Train, export and serve Hierarchical Decision Networks for recommendation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Third-party loggers that report every optimisation pass of an ONNX export at INFO, and warn
# that torchvision operators cannot be registered when torchvision is absent (harmless here).
NOISY_LOGGERS = ("onnx_ir", "onnxscript", "torch.onnx", "torch._dynamo", "torch.export")


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Send log records to stderr; INFO by default, DEBUG with --verbose, WARNING with --quiet."""
    level = logging.INFO
    if verbose:
        level = logging.DEBUG
    elif quiet:
        level = logging.WARNING
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR if not verbose else logging.INFO)


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Turn expected failures into one line on stderr and exit code 1.

    Bad input raises built-in errors (ValueError, OSError and its subclasses), failed downloads
    raise DownloadError (a RuntimeError), and domain failures raise HDNError; all reach the user
    as their message. Set HDN_DEBUG=1 to see the traceback instead.
    """
    from hdn_runtime.errors import HDNError

    expected = (HDNError, ValueError, OSError, KeyError, RuntimeError)

    @wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except expected as err:
            if logging.getLogger().isEnabledFor(logging.DEBUG) or _debug_requested():
                raise
            message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
            typer.echo(f"Error: {message}", err=True)
            raise typer.Exit(code=1) from err

    return wrapper


def _debug_requested() -> bool:
    import os

    return os.environ.get("HDN_DEBUG", "") not in ("", "0")


def _register_commands() -> None:
    from cli import bench, evaluate, experiment, export, recommend, train, verify

    app.command("train")(reports_errors(train.train))
    app.command("evaluate")(reports_errors(evaluate.evaluate))
    app.command("export")(reports_errors(export.export))
    app.command("recommend")(reports_errors(recommend.recommend))
    app.command("experiment")(reports_errors(experiment.experiment))
    app.command("verify")(reports_errors(verify.verify))
    app.command("bench")(reports_errors(bench.bench))


_register_commands()


def main() -> None:
    """Entry point for `python -m cli.main`."""
    sys.exit(app())


if __name__ == "__main__":
    main()
