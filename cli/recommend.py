"""`hdn recommend`: top-K items for one or more users from an exported model directory."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from cli.main import setup_logging
from cli.tables import output_console


def recommend(
    model: Path = typer.Argument(..., help="Model directory written by 'hdn export'."),
    user: list[str] = typer.Option(..., "--user", help="External user id; repeat for more."),
    k: int = typer.Option(20, "--k", help="Number of items per user."),
    include_seen: bool = typer.Option(False, help="Allow the user's training items."),
    popular_fallback: bool = typer.Option(
        False, help="Recommend the most popular items to unknown users instead of failing."
    ),
    rule: str = typer.Option("sign", help="Rejection rule: sign (as trained) or quota."),
    backend: str = typer.Option(
        "cpu", help="Stage backend: cpu, cuda, tensorrt, or auto (the best available)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings only."),
) -> None:
    """Print each user's top-K external item ids and scores through the HDN cascade."""
    from hdn_runtime import Recommender
    from hdn_runtime.errors import UnknownUserError

    setup_logging(quiet=quiet)
    if k < 1:
        raise ValueError(f"--k must be a positive number of items, got {k}.")
    with Recommender.load(model, backend=backend, rule=rule) as recommender:
        if k > recommender.num_items:
            raise ValueError(
                f"--k {k} is larger than the catalogue of {recommender.num_items} items. "
                f"Pass --k {recommender.num_items} or less."
            )
        try:
            results = recommender.recommend(
                user,
                k=k,
                exclude_seen=not include_seen,
                unknown_users="popular" if popular_fallback else "error",
            )
        except UnknownUserError as err:
            shown = ", ".join(repr(user_id) for user_id in err.user_ids[:5])
            raise UnknownUserError(
                f"User(s) not in the model: {shown}. Pass --popular-fallback to recommend the "
                "most popular items to unknown users instead.",
                err.user_ids,
            ) from err
    console = output_console()
    for result in results:
        title = f"user {result.user_id}" + (" (popularity fallback)" if result.fallback else "")
        table = Table(title=title)
        for column in ("rank", "item", "score"):
            table.add_column(column, justify="right")
        for rank, (item, score) in enumerate(zip(result.item_ids, result.scores), start=1):
            table.add_row(str(rank), item, f"{score:.4f}")
        console.print(table)
        if len(result.item_ids) < k:
            # The cascade never pads with rejected items, so say why the list is short.
            console.print(
                f"Only {len(result.item_ids)} of {k} items passed every decision module for "
                f"user {result.user_id}."
            )
