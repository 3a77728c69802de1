"""Print the markdown tables of benchmarks/README.md from the report.json files of hdn bench.

Usage: python benchmarks/inference_tables.py benchmarks/results/inference/NAME/report.json ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPORT_KEYS = {"figures", "settings", "stage_profiles", "multiply_adds", "useful_gmacs"}


def format_seconds(seconds: float) -> str:
    """Format a duration as ms below one second and as s above it."""
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms" if seconds < 0.01 else f"{seconds * 1e3:.1f} ms"
    return f"{seconds:,.2f} s" if seconds < 100 else f"{seconds:,.0f} s"


def pass_table(report: dict) -> list[str]:
    """Return the rows of the whole-catalogue table: times, ratios, work and rates."""
    passes = {f["method"]: f for f in report["figures"] if f["batch_size"] is None}
    fast = passes["HDN fast"]["seconds"]
    header = "| method | wall | user CPU | system CPU | vs HDN fast |"
    header += " multiply-adds per candidate | useful GMAC/s |"
    rows = [header, "| --- " * 7 + "|"]
    for name, figure in passes.items():
        mark = "*" if figure["extrapolated"] else ""
        ratio = figure["seconds"] / fast
        rows.append(
            f"| {name} | {format_seconds(figure['seconds'])}{mark} "
            f"| {format_seconds(figure['user_seconds'])}{mark} "
            f"| {format_seconds(figure['system_seconds'])}{mark} | {ratio:.2f}x "
            f"| {report['multiply_adds'].get(name, float('nan')):,.0f} "
            f"| {report['useful_gmacs'].get(name, float('nan')):.1f} |"
        )
    return rows


def latency_table(report: dict) -> list[str]:
    """Return the rows of the latency table, p50 / p99 per request size."""
    sizes = report["settings"]["batch_sizes"]
    names = [f"{size} user" if size == 1 else f"{size} users" for size in sizes]
    rows = ["| method | " + " | ".join(names) + " |"]
    rows.append("| --- " * (len(sizes) + 1) + "|")
    methods = [f["method"] for f in report["figures"] if f["batch_size"] is None]
    for name in methods:
        cells = []
        for size in sizes:
            figure = next(
                (f for f in report["figures"] if f["method"] == name and f["batch_size"] == size),
                None,
            )
            if figure is None:
                cells.append("–")
                continue
            mark = "*" if figure["extrapolated"] else ""
            p99 = figure["p99_seconds"]
            p99_text = format_seconds(p99) if p99 is not None else "–"
            cells.append(f"{format_seconds(figure['seconds'])} / {p99_text}{mark}")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return rows


def stage_table(report: dict) -> list[str]:
    """Return the per-stage rows of the fast cascade's pass over every user."""
    profile = report["stage_profiles"]["HDN fast"]
    candidates = profile["candidates"]
    rows = ["| stage | pairs entering | share of candidates | time |", "| --- " * 4 + "|"]
    for name, pairs, seconds in profile["stages"]:
        rows.append(
            f"| {name} | {pairs:,} | {pairs / candidates:.4f} | {format_seconds(seconds)} |"
        )
    for name, seconds in profile["phases"].items():
        rows.append(f"| host: {name} | | | {format_seconds(seconds)} |")
    return rows


def main(paths: list[str]) -> None:
    for path in paths:
        try:
            report = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(report, dict) or not REPORT_KEYS <= report.keys():
                raise ValueError("keys are missing")
        except (OSError, ValueError) as err:
            sys.exit(f"{path} is not a report.json written by 'hdn bench' ({err}).")
        print(f"## {path}\n")
        print(f"float32 2048^3 matrix product: {report['matmul_gmacs']:.1f} GMAC/s")
        memory = ", ".join(f"{phase} {mib:,.0f}" for phase, mib in report["peak_rss_mib"])
        print(f"peak resident memory (MiB), after: {memory}")
        print(f"fast cascade buffers: {report['workspace_mib']:.0f} MiB\n")
        for table in (pass_table(report), latency_table(report), stage_table(report)):
            print("\n".join(table), end="\n\n")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
