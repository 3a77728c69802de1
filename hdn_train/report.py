"""Tables and figures of a finished experiment, laid out like the results of the HDN paper.

Table 1 compares models across data sets, Table 2 compares HDN with its ablations, and Figure 2
plots each decision module's rejection share per epoch against its target.

`aggregate` averages the cell results of `hdn_train.experiment` over seeds, and `write_report`
turns them into one markdown file with PNG figures next to it. Running the grid is left to
`hdn_train.experiment`, and printing to the terminal to `cli/`.
"""

from __future__ import annotations

import os
import re
import statistics
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hdn_train.variants import BASELINES, TEACHER_KINDS, TEACHER_MODEL

MISSING = "–"
TEACHER_NAMES = {"neumf": "NeuMF", "convncf": "ConvNCF", "als": "ALS"}
ABLATIONS = ("hdn-nd", "hdn-nr", "hdn-nr-", "hdn-nr-nd")
VARIANT_NAMES = {
    "hdn": "HDN",
    "hdn-nd": "HDN-nd",
    "hdn-nr": "HDN-nr",
    "hdn-nr-": "HDN-nr-",
    "hdn-nr-nd": "HDN-nr-nd",
}
# Rows of Table 1 that belong to one teacher. The HDN rows of each gamma setting follow them.
TEACHER_ROWS = ("two-stage", TEACHER_MODEL, "mf-student")
REPORT_NAME = "results.md"
FIGURE_PATTERNS = ("rejection_*.png", "tradeoff_*.png")

GroupKey = tuple[str, str, str, str, "tuple[float, ...] | None"]


@dataclass
class ReportTable:
    """One table of the report: a title, the column names and rows of formatted cells."""

    title: str
    header: list[str]
    rows: list[list[str]]

    def to_markdown(self) -> str:
        lines = [
            "| " + " | ".join(self.header) + " |",
            "|" + "|".join("---" for _ in self.header) + "|",
        ]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- aggregation


def aggregate(results: Iterable[dict]) -> list[dict]:
    """Average cell results over seeds.

    Cells are grouped by (protocol, dataset, teacher, model, gammas). Each group gets the mean
    and the sample standard deviation (ddof=1, 0.0 for a single seed) of every metric, of
    `train_seconds` and, for HDN variants, of `reach_share`.

    Args:
        results: Cell results as written by `hdn_train.experiment.run_experiment`.

    Returns:
        One dict per group, in order of first appearance, with the keys `protocol`,
        `dataset`, `teacher`, `model`, `gammas` (list or None), `seeds` (sorted list),
        `num_seeds`, `mean` and `std` (both dicts from value name to float).

    Raises:
        ValueError: If two results share a group and a seed, for example when the cells of two
            experiment directories are mixed.
    """
    groups: dict[GroupKey, list[dict]] = {}
    for result in results:
        groups.setdefault(_group_key(result), []).append(result)

    entries = []
    for (protocol, dataset, teacher, model, gammas), members in groups.items():
        seeds = [member["cell"]["seed"] for member in members]
        if len(set(seeds)) != len(seeds):
            raise ValueError(
                f"Several results for {dataset}/{teacher}/{model}/gammas={gammas} share a seed "
                f"(seeds {sorted(seeds)}). Report one experiment directory at a time."
            )
        values: dict[str, list[float]] = {}
        for member in members:
            for name, value in _numeric_values(member).items():
                values.setdefault(name, []).append(value)
        entries.append(
            {
                "protocol": protocol,
                "dataset": dataset,
                "teacher": teacher,
                "model": model,
                "gammas": None if gammas is None else list(gammas),
                "seeds": sorted(seeds),
                "num_seeds": len(seeds),
                "mean": {name: statistics.fmean(series) for name, series in values.items()},
                "std": {name: _sample_std(series) for name, series in values.items()},
            }
        )
    return entries


def _group_key(result: dict) -> GroupKey:
    cell = result["cell"]
    gammas = None if cell.get("gammas") is None else tuple(float(g) for g in cell["gammas"])
    return (
        result.get("protocol", "paper"),
        cell["dataset"],
        cell["teacher"],
        cell["model"],
        gammas,
    )


def _numeric_values(result: dict) -> dict[str, float]:
    values = {name: float(value) for name, value in result.get("metrics", {}).items()}
    for name in ("train_seconds", "reach_share"):
        if result.get(name) is not None:
            values[name] = float(result[name])
    return values


def _sample_std(series: list[float]) -> float:
    return statistics.stdev(series) if len(series) > 1 else 0.0


# ----------------------------------------------------------------------------- labels and rows


def dataset_name(dataset: str) -> str:
    """Return the display name of a data set: a named one as is, a path by its file name."""
    return Path(dataset).name or dataset


def teacher_name(teacher: str) -> str:
    return TEACHER_NAMES.get(teacher, teacher)


def format_gammas(gammas: Sequence[float] | None) -> str:
    return "" if gammas is None else "/".join(f"{g:g}" for g in gammas)


def model_label(model: str, teacher: str, gammas: Sequence[float] | None) -> str:
    """Return the row label of a model, such as 'MF top-100 + NeuMF' for the two-stage model."""
    if model == "poprank":
        return "PopRank"
    if model == "mf":
        return "MF"
    if model == "two-stage":
        return f"MF top-100 + {teacher_name(teacher)}"
    if model == TEACHER_MODEL:
        return f"{teacher_name(teacher)} (teacher)"
    if model == "mf-student":
        return "MF student"
    label = VARIANT_NAMES.get(model, model)
    return label if gammas is None else f"{label} (γ = {format_gammas(gammas)})"


def _ordered_teachers(entries: list[dict]) -> list[str]:
    present = {entry["teacher"] for entry in entries if entry["teacher"] != "-"}
    known = [teacher for teacher in TEACHER_KINDS if teacher in present]
    return known + sorted(present - set(known))


def _ordered_datasets(entries: list[dict]) -> list[str]:
    return list(dict.fromkeys(entry["dataset"] for entry in entries))


def _gamma_settings(entries: list[dict], teacher: str, models: Sequence[str]) -> list[tuple]:
    found = {
        tuple(entry["gammas"])
        for entry in entries
        if entry["teacher"] == teacher and entry["model"] in models and entry["gammas"]
    }
    return sorted(found)


def _row_keys(entries: list[dict], with_ablations: bool) -> list[tuple[str, str, tuple | None]]:
    """List (teacher, model, gammas) rows in Table 1 order, optionally followed by ablations."""
    models = {(entry["teacher"], entry["model"]) for entry in entries}
    keys: list[tuple[str, str, tuple | None]] = [
        ("-", model, None) for model in BASELINES if ("-", model) in models
    ]
    for teacher in _ordered_teachers(entries):
        keys += [(teacher, model, None) for model in TEACHER_ROWS if (teacher, model) in models]
        variants = ("hdn",) + (ABLATIONS if with_ablations else ())
        for variant in variants:
            for gammas in _gamma_settings(entries, teacher, (variant,)):
                keys.append((teacher, variant, gammas))
    return keys


class _Index:
    """Aggregated entries of one protocol, looked up by (dataset, teacher, model, gammas)."""

    def __init__(self, entries: list[dict]) -> None:
        self._by_key = {
            (
                entry["dataset"],
                entry["teacher"],
                entry["model"],
                None if entry["gammas"] is None else tuple(entry["gammas"]),
            ): entry
            for entry in entries
        }

    def get(self, dataset: str, teacher: str, model: str, gammas: tuple | None) -> dict | None:
        return self._by_key.get((dataset, teacher, model, gammas))


# ----------------------------------------------------------------------------- tables


def format_mean_std(entry: dict | None, name: str, digits: int = 3) -> str:
    """Format 'mean ± std'. One seed shows the mean alone, and a missing value shows '–'."""
    if entry is None or name not in entry["mean"]:
        return MISSING
    mean = entry["mean"][name]
    if entry["num_seeds"] < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {entry['std'][name]:.{digits}f}"


def _seed_counts(index: _Index, datasets: list[str], key: tuple) -> str:
    counts = []
    for dataset in datasets:
        entry = index.get(dataset, *key)
        counts.append(MISSING if entry is None else str(entry["num_seeds"]))
    return counts[0] if len(set(counts)) == 1 else "/".join(counts)


def _metric_table(
    title: str,
    entries: list[dict],
    metrics: Sequence[tuple[str, str]],
    with_ablations: bool,
) -> ReportTable:
    """Build a table of rows in Table 1 order and, per data set, one column per metric."""
    index = _Index(entries)
    datasets = _ordered_datasets(entries)
    header = ["teacher", "model"]
    header += [f"{dataset_name(d)} {label}" for d in datasets for label, _ in metrics]
    header.append("seeds")

    rows = []
    for key in _row_keys(entries, with_ablations):
        teacher, model, gammas = key
        row = [
            MISSING if teacher == "-" else teacher_name(teacher),
            model_label(model, teacher, gammas),
        ]
        for dataset in datasets:
            entry = index.get(dataset, *key)
            row += [format_mean_std(entry, name) for _, name in metrics]
        row.append(_seed_counts(index, datasets, key))
        rows.append(row)
    return ReportTable(title, header, rows)


def paper_cutoffs(entries: list[dict]) -> list[int]:
    """Return the cut-offs K with an NDCG value in the full-ranking results, ascending."""
    cutoffs = set()
    for entry in entries:
        for name in entry["mean"]:
            match = re.fullmatch(r"ndcg@(\d+)", name)
            if match:
                cutoffs.add(int(match.group(1)))
    return sorted(cutoffs)


def table1(entries: list[dict], k: int) -> ReportTable:
    """Build Table 1 at cut-off `k`: NDCG and HR of the baselines, teachers and students.

    Rows: PopRank, MF, then per teacher the two-stage model, the teacher, the MF student and
    HDN for each gamma setting. Columns: NDCG and HR per data set, then the seed count.
    """
    paper = [entry for entry in entries if entry["protocol"] == "paper"]
    metrics = [(f"NDCG@{k}", f"ndcg@{k}"), (f"HR@{k}", f"hr@{k}")]
    return _metric_table(f"NDCG and HR at K = {k} (full ranking)", paper, metrics, False)


def table2(entries: list[dict]) -> list[ReportTable]:
    """Build one ablation table per data set, teacher and gamma setting that has ablations."""
    paper = [entry for entry in entries if entry["protocol"] == "paper"]
    index = _Index(paper)
    cutoffs = paper_cutoffs(paper)
    tables = []
    for dataset in _ordered_datasets(paper):
        for teacher in _ordered_teachers(paper):
            for gammas in _gamma_settings(paper, teacher, ABLATIONS):
                header = ["model"]
                header += [f"{name}@{k}" for k in cutoffs for name in ("NDCG", "HR")]
                header.append("seeds")
                rows = []
                keys = [(TEACHER_MODEL, None)] + [(model, gammas) for model in VARIANT_NAMES]
                for model, row_gammas in keys:
                    entry = index.get(dataset, teacher, model, row_gammas)
                    label = (
                        model_label(model, teacher, None)
                        if model == TEACHER_MODEL
                        else VARIANT_NAMES[model]
                    )
                    row = [label]
                    row += [
                        format_mean_std(entry, f"{name}@{k}")
                        for k in cutoffs
                        for name in ("ndcg", "hr")
                    ]
                    row.append(MISSING if entry is None else str(entry["num_seeds"]))
                    rows.append(row)
                title = (
                    f"{dataset_name(dataset)}, {teacher_name(teacher)} teacher, "
                    f"γ = {format_gammas(gammas)}"
                )
                tables.append(ReportTable(title, header, rows))
    return tables


def training_time_table(entries: list[dict]) -> ReportTable:
    """Build the table of mean training seconds per model, teacher and data set."""
    index = _Index(entries)
    datasets = _ordered_datasets(entries)
    header = ["teacher", "model"] + [f"{dataset_name(d)} train s" for d in datasets]
    rows = []
    for key in _row_keys(entries, with_ablations=True):
        teacher, model, gammas = key
        row = [
            MISSING if teacher == "-" else teacher_name(teacher),
            model_label(model, teacher, gammas),
        ]
        for dataset in datasets:
            entry = index.get(dataset, *key)
            seconds = None if entry is None else entry["mean"].get("train_seconds")
            row.append(MISSING if seconds is None else f"{seconds:.1f}")
        rows.append(row)
    return ReportTable("Mean training seconds per cell", header, rows)


def loo_table(entries: list[dict]) -> ReportTable:
    """Build the HR@10 and NDCG@10 table of the leave-one-out protocol."""
    loo = [entry for entry in entries if entry["protocol"] == "loo"]
    metrics = [("HR@10", "hr@10"), ("NDCG@10", "ndcg@10")]
    title = "Leave-one-out: HR and NDCG at K = 10 among 99 sampled negatives"
    return _metric_table(title, loo, metrics, with_ablations=True)


def headline_table(entries: list[dict]) -> ReportTable | None:
    """Return Table 1 at K = 20 (else the largest K), or the leave-one-out table without it."""
    paper = [entry for entry in entries if entry["protocol"] == "paper"]
    if paper:
        cutoffs = paper_cutoffs(paper)
        if cutoffs:
            return table1(paper, 20 if 20 in cutoffs else cutoffs[-1])
    if any(entry["protocol"] == "loo" for entry in entries):
        return loo_table(entries)
    return None


# ----------------------------------------------------------------------------- figures


def _file_token(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)


def rejection_figure_name(dataset: str, teacher: str, gammas: Sequence[float]) -> str:
    gamma_token = "_".join(f"{g:g}" for g in gammas)
    return _file_token(f"rejection_{dataset_name(dataset)}_{teacher}_{gamma_token}") + ".png"


def tradeoff_figure_name(dataset: str, teacher: str) -> str:
    return _file_token(f"tradeoff_{dataset_name(dataset)}_{teacher}") + ".png"


def _new_figure(width: float = 6.4, height: float = 4.2):
    # The object-oriented API with an explicit Agg canvas leaves pyplot's global backend and
    # figure registry untouched, so writing a report has no effect on the caller's plots.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(figure)
    return figure


def _save_figure(figure, path: Path) -> None:
    _write_atomically(path, lambda temp_path: figure.savefig(temp_path, format="png"))


def plot_rejection(result: dict, path: Path) -> bool:
    """Plot the cumulative rejection share of each module per epoch against its target.

    Args:
        result: One HDN cell result with a `history` whose epochs carry `rejection_share`.
        path: PNG to write.

    Returns:
        False, writing nothing, when the history has no rejection shares.
    """
    history = [epoch for epoch in result.get("history", []) if epoch.get("rejection_share")]
    gammas = result["cell"]["gammas"]
    if not history or not gammas:
        return False

    figure = _new_figure()
    axes = figure.add_subplot()
    epochs = [epoch.get("epoch", number + 1) for number, epoch in enumerate(history)]
    colours = [f"C{n}" for n in range(len(gammas))]
    for module, (gamma, colour) in enumerate(zip(gammas, colours, strict=True)):
        shares = [epoch["rejection_share"][module] for epoch in history]
        axes.plot(
            epochs, shares, color=colour, marker="o", markersize=3, label=f"module {module + 1}"
        )
        axes.axhline(
            gamma,
            color=colour,
            linestyle="--",
            linewidth=1,
            label=f"target γ{module + 1} = {gamma:g}",
        )

    cell = result["cell"]
    axes.set_title(
        f"Rejection during distillation: {dataset_name(cell['dataset'])}, "
        f"{teacher_name(cell['teacher'])} teacher, seed {cell['seed']}",
        fontsize=10,
    )
    axes.set_xlabel("epoch")
    axes.set_ylabel("cumulative share of catalogue rejected")
    axes.set_ylim(0.0, 1.0)
    axes.grid(alpha=0.3)
    axes.xaxis.get_major_locator().set_params(integer=True)
    # Legend columns fill top to bottom, so one column per module pairs each line with its target.
    axes.legend(fontsize=8, loc="lower right", ncol=len(gammas))
    figure.tight_layout()
    _save_figure(figure, path)
    return True


def _tradeoff_metric(entries: list[dict]) -> str | None:
    names = {name for entry in entries for name in entry["mean"] if name.startswith("ndcg@")}
    if "ndcg@20" in names:
        return "ndcg@20"
    ranked = sorted(names, key=lambda name: int(name.split("@")[1]))
    return ranked[-1] if ranked else None


def plot_tradeoff(hdn_entries: list[dict], teacher_entry: dict | None, path: Path) -> bool:
    """Plot NDCG against the share of the catalogue that reaches the scoring module.

    Args:
        hdn_entries: Aggregated `hdn` entries of one data set and teacher, one per gamma
            setting. Entries without `reach_share` are left out.
        teacher_entry: The aggregated teacher entry, drawn at reach share 1.0, or None.
        path: PNG to write.

    Returns:
        False, writing nothing, when no entry has both a reach share and an NDCG value.
    """
    metric = _tradeoff_metric(hdn_entries + ([teacher_entry] if teacher_entry else []))
    points = [
        entry for entry in hdn_entries if "reach_share" in entry["mean"] and metric in entry["mean"]
    ]
    if metric is None or not points:
        return False
    points.sort(key=lambda entry: entry["mean"]["reach_share"])

    figure = _new_figure()
    axes = figure.add_subplot()
    reach = [entry["mean"]["reach_share"] for entry in points]
    quality = [entry["mean"][metric] for entry in points]
    errors = [entry["std"][metric] for entry in points]
    axes.errorbar(reach, quality, yerr=errors, color="C0", marker="o", capsize=3, label="HDN")
    for entry, x, y in zip(points, reach, quality, strict=True):
        axes.annotate(
            f"γ = {format_gammas(entry['gammas'])}",
            (x, y),
            fontsize=7,
            textcoords="offset points",
            xytext=(4, 6),
        )

    if teacher_entry is not None and metric in teacher_entry["mean"]:
        teacher_quality = teacher_entry["mean"][metric]
        label = model_label(TEACHER_MODEL, teacher_entry["teacher"], None)
        axes.axhline(teacher_quality, color="C3", linestyle="--", linewidth=1)
        axes.plot([1.0], [teacher_quality], color="C3", marker="s", linestyle="none", label=label)

    first = points[0]
    axes.set_title(
        f"Quality against cost: {dataset_name(first['dataset'])}, "
        f"{teacher_name(first['teacher'])} teacher",
        fontsize=10,
    )
    axes.set_xlabel("share of catalogue reaching the scoring module")
    axes.set_ylabel(metric.replace("ndcg", "NDCG"))
    axes.set_xlim(0.0, 1.05)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    _save_figure(figure, path)
    return True


def _rejection_sources(results: list[dict]) -> list[dict]:
    """Pick the lowest-seed `hdn` cell (seed 0 in a full grid) of each setting with a history."""
    chosen: dict[GroupKey, dict] = {}
    for result in results:
        if result["cell"]["model"] != "hdn" or not result.get("history"):
            continue
        key = _group_key(result)
        if key not in chosen or result["cell"]["seed"] < chosen[key]["cell"]["seed"]:
            chosen[key] = result
    teacher_order = {teacher: n for n, teacher in enumerate(("-",) + TEACHER_KINDS)}

    def order(result: dict) -> tuple:
        protocol, dataset, teacher, _, gammas = _group_key(result)
        return (protocol, dataset, teacher_order.get(teacher, len(teacher_order)), teacher, gammas)

    return sorted(chosen.values(), key=order)


def _write_figures(results: list[dict], entries: list[dict], out_dir: Path) -> dict[str, list]:
    """Write the rejection and trade-off figures and return (caption, file name) pairs of each."""
    figures: dict[str, list] = {"rejection": [], "tradeoff": []}
    for result in _rejection_sources(results):
        cell = result["cell"]
        name = rejection_figure_name(cell["dataset"], cell["teacher"], cell["gammas"])
        if plot_rejection(result, out_dir / name):
            caption = (
                f"{dataset_name(cell['dataset'])}, {teacher_name(cell['teacher'])} "
                f"teacher, γ = {format_gammas(cell['gammas'])}, seed {cell['seed']}"
            )
            figures["rejection"].append((caption, name))

    paper = [entry for entry in entries if entry["protocol"] == "paper"]
    index = _Index(paper)
    for dataset in _ordered_datasets(paper):
        for teacher in _ordered_teachers(paper):
            hdn_entries = [
                entry
                for entry in paper
                if entry["dataset"] == dataset
                and entry["teacher"] == teacher
                and entry["model"] == "hdn"
            ]
            if not hdn_entries:
                continue
            name = tradeoff_figure_name(dataset, teacher)
            teacher_entry = index.get(dataset, teacher, TEACHER_MODEL, None)
            if plot_tradeoff(hdn_entries, teacher_entry, out_dir / name):
                caption = f"{dataset_name(dataset)}, {teacher_name(teacher)} teacher"
                figures["tradeoff"].append((caption, name))
    return figures


# ----------------------------------------------------------------------------- report


def write_report(results: Sequence[dict], out_dir: str | Path) -> Path:
    """Write `results.md` and its figures into `out_dir`, replacing an earlier report.

    The markdown contains Table 1 per cut-off K, the ablation tables (Table 2), training times,
    the leave-one-out table when that protocol was run, and links to two kinds of figure:
    `rejection_<dataset>_<teacher>_<gammas>.png` (Figure 2: rejection share per epoch against
    its target, from the lowest-seed `hdn` cell) and `tradeoff_<dataset>_<teacher>.png` (NDCG
    against the share of the catalogue reaching the scoring module, one point per gamma
    setting). Every file is written to a temporary name and moved into place, and figures of
    an earlier report that this one does not produce are removed.

    Args:
        results: Cell results, as returned by `hdn_train.experiment.load_results`.
        out_dir: Report directory; created if missing.

    Returns:
        The path of `results.md`.

    Raises:
        ValueError: If `results` is empty or two results share a cell and seed.
    """
    results = list(results)
    if not results:
        raise ValueError(f"No cell results to report into {out_dir}. Run the experiment first.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = aggregate(results)

    figures = _write_figures(results, entries, out_dir)
    written = {name for pairs in figures.values() for _, name in pairs}
    for pattern in FIGURE_PATTERNS:
        for stale in out_dir.glob(pattern):
            if stale.name not in written:
                stale.unlink()

    markdown = _render_markdown(results, entries, figures)
    path = out_dir / REPORT_NAME
    _write_atomically(path, lambda temp_path: temp_path.write_text(markdown, encoding="utf-8"))
    return path


def _render_markdown(results: list[dict], entries: list[dict], figures: dict[str, list]) -> str:
    datasets = ", ".join(dataset_name(d) for d in _ordered_datasets(entries))
    protocols = ", ".join(sorted({entry["protocol"] for entry in entries}))
    seeds = sorted({result["cell"]["seed"] for result in results})
    lines = [
        "# Experiment results",
        "",
        f"{len(results)} cells; data sets: {datasets}; protocol: {protocols}; "
        f"seeds: {', '.join(str(seed) for seed in seeds)}.",
        "",
        "Values are the mean ± the sample standard deviation over seeds. A value from a "
        f"single seed shows the mean alone, and {MISSING} marks a cell that was not run.",
        "",
    ]
    paper = [entry for entry in entries if entry["protocol"] == "paper"]
    for k in paper_cutoffs(paper):
        lines += _section(f"Table 1: NDCG and HR at K = {k}", [table1(paper, k)])

    ablation_tables = table2(paper)
    if ablation_tables:
        lines += _section("Table 2: ablations", ablation_tables, with_titles=True)

    if any(entry["protocol"] == "loo" for entry in entries):
        lines += _section(
            "Leave-one-out protocol", [loo_table(entries)], note=_holdout_note(results)
        )

    time_note = (
        "Seconds spent training the cell's own model. The two-stage model reuses MF and the "
        "teacher, so it shows 0. HDN and HDN-nr share one trained network, as do HDN-nd and "
        "HDN-nr-, so each pair shows the same time."
    )
    lines += _section("Training time", [training_time_table(entries)], note=time_note)

    if figures["rejection"]:
        lines += [
            "## Figure 2: rejection share during distillation",
            "",
            "Solid lines: the share of the catalogue rejected once each module has decided, "
            "on the monitored users after each epoch. Dashed lines of the same colour: its "
            "target γ.",
            "",
        ]
        lines += _figure_lines(figures["rejection"])
    if figures["tradeoff"]:
        lines += [
            "## Quality against cost",
            "",
            "HDN's NDCG against the share of the catalogue that reaches the scoring module, "
            "one point per gamma setting. The dashed line is the teacher, which scores the "
            "whole catalogue.",
            "",
        ]
        lines += _figure_lines(figures["tradeoff"])
    return "\n".join(lines).rstrip() + "\n"


HOLDOUT_TEXT = {
    "latest": "each user's latest interaction by timestamp",
    "random": "a random interaction of each user (seeded)",
}


def _holdout_note(results: list[dict]) -> str:
    """Describe the interaction that the leave-one-out cells held out, as each cell records it."""
    kinds = sorted(
        {result.get("holdout") or "unknown" for result in results if result["protocol"] == "loo"}
    )
    described = [
        HOLDOUT_TEXT.get(kind, "not recorded (cells from an older version)") for kind in kinds
    ]
    return "Held out: " + "; ".join(described) + "."


def _section(
    heading: str, tables: list[ReportTable], with_titles: bool = False, note: str = ""
) -> list[str]:
    lines = [f"## {heading}", ""]
    if note:
        lines += [note, ""]
    for table in tables:
        if with_titles:
            lines += [f"### {table.title}", ""]
        lines += [table.to_markdown(), ""]
    return lines


def _figure_lines(pairs: list[tuple[str, str]]) -> list[str]:
    lines = []
    for caption, name in pairs:
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    return lines


def _write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """Call `write(temp_path)` on a temporary file beside `path`, then move it over `path`."""
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(handle)
    temp_path = Path(temp_name)
    try:
        write(temp_path)
        os.replace(temp_path, path)
    finally:
        temp_path.unlink(missing_ok=True)
