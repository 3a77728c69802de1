"""`hdn bench`: time top-K over the whole catalogue for the HDN cascades, teachers and a floor."""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import typer
from rich.table import Table

from cli.main import setup_logging
from cli.tables import output_console
from hdn_runtime.cascade import DEFAULT_MAX_CANDIDATES

logger = logging.getLogger(__name__)

SYNTHETIC_REFERENCE_USERS = 64


def bench(
    model: Path | None = typer.Argument(
        None, help="Model directory written by 'hdn export'. Omit it with --synthetic."
    ),
    synthetic: str | None = typer.Option(
        None,
        help="Generate and time a model with random weights of USERSxITEMS instead, for "
        "example 138493x26744 (MovieLens-20M): d = 32, N = 3, gammas 0.75/0.875/0.9375, plus "
        "random NeuMF and ConvNCF teachers. Reused from --out when it is already there.",
    ),
    run: Path | None = typer.Option(
        None,
        help="Training run whose teacher (NeuMF or ConvNCF) is exported and timed. Default: "
        "the run recorded in the model's manifest, when that directory exists.",
    ),
    random_teacher: list[str] = typer.Option(
        [],
        "--random-teacher",
        help="Also time a teacher of this kind (neumf or convncf) with random weights and the "
        "model's users, items and width; repeat for both. Its speed does not depend on the "
        "weights, and its figures are labelled as random.",
    ),
    users: str = typer.Option(
        "all", help="Users of the timed pass, drawn at random: 'all' or a number."
    ),
    reference_users: str | None = typer.Option(
        None,
        help="Users on which the plain cascade and the teachers are timed, a subset of the "
        "pass; their figures are scaled to the pass and marked as extrapolated. Default: "
        f"all of them, or {SYNTHETIC_REFERENCE_USERS} with --synthetic.",
    ),
    batch_sizes: str = typer.Option(
        "1,64,1024", help="Comma-separated request sizes, in users, whose latency is timed."
    ),
    repeats: int = typer.Option(3, help="Timed passes over the users; figures are medians."),
    latency_repeats: int = typer.Option(
        30, help="Maximum timed requests per batch size, for p50 and p99."
    ),
    threads: int | None = typer.Option(
        None, help="Threads for ONNX Runtime and numpy's BLAS. Default: the libraries' own."
    ),
    candidate_budget: int = typer.Option(
        DEFAULT_MAX_CANDIDATES,
        help="Maximum (user, item) pairs per chunk for every method, which bounds memory.",
    ),
    time_limit: float = typer.Option(
        120.0,
        help="Seconds after which a method stops repeating one figure; requests estimated "
        "to take longer are extrapolated instead of run.",
    ),
    rule: str = typer.Option("sign", help="Rejection rule of the HDN cascades: sign or quota."),
    k: int = typer.Option(20, "--k", help="Items per user."),
    out: Path = typer.Option(
        Path("bench-results"), help="Folder for report.json, stages.png and exported models."
    ),
    seed: int = typer.Option(0, help="Seed for drawing users and synthetic weights."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings only."),
) -> None:
    """Time top-K for every user and for batches; print times, ratios, stages and memory."""
    from hdn_runtime.bench import BenchSettings, plot_stage_profile, run_benchmark

    setup_logging(quiet=quiet)
    if model is not None and synthetic is not None:
        raise ValueError("Pass a MODEL directory or --synthetic USERSxITEMS, not both.")
    if model is None and synthetic is None:
        raise ValueError(
            "A MODEL directory is missing. Pass one, or --synthetic USERSxITEMS to generate one."
        )
    unknown = sorted(set(random_teacher) - {"neumf", "convncf"})
    if unknown:
        raise ValueError(f"Invalid --random-teacher {unknown[0]!r}. Pass neumf or convncf.")
    if run is not None and synthetic is not None:
        raise ValueError(
            "--run is for a MODEL directory: --synthetic times its own random NeuMF and "
            "ConvNCF teachers. Drop --run, or pass the model exported from that run."
        )
    if random_teacher and synthetic is not None:
        raise ValueError(
            "--random-teacher is for a MODEL directory: --synthetic already times random NeuMF "
            "and ConvNCF teachers."
        )
    if reference_users is None and synthetic is not None:
        reference_users = str(SYNTHETIC_REFERENCE_USERS)
    settings = BenchSettings(
        k=k,
        users=_parse_count(users, "--users"),
        reference_users=_parse_count(reference_users or "all", "--reference-users"),
        batch_sizes=_parse_sizes(batch_sizes),
        repeats=repeats,
        latency_repeats=latency_repeats,
        threads=threads,
        candidate_budget=candidate_budget,
        time_limit=time_limit,
        rule=rule,
        seed=seed,
    )
    if model is not None and not (model / "manifest.json").is_file():
        raise FileNotFoundError(
            f"Model directory {model} not found or has no manifest.json. Create one with "
            "'hdn export RUN --out DIR', or pass --synthetic USERSxITEMS."
        )
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file. Pass a folder for the bench results.")
    if threads is not None and threads < 1:
        raise ValueError(f"Invalid --threads {threads}. Pass a positive number of threads.")
    out.mkdir(parents=True, exist_ok=True)
    # Exports import torch and build large arrays. A child process keeps both out of the peak
    # resident memory that the benchmark reports for this one.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        1, context, initializer=setup_logging, initargs=(False, quiet)
    ) as pool:
        if synthetic is not None:
            model, teacher_paths = pool.submit(_prepare_synthetic, synthetic, out, seed).result()
        else:
            teacher_paths = pool.submit(_prepare_teachers, model, run, out).result()
            if random_teacher:
                teacher_paths += pool.submit(
                    _prepare_random_teachers, model, tuple(random_teacher), out, seed
                ).result()

    report = run_benchmark(
        model, teacher_paths, settings, on_phase=lambda text: logger.info("Timing %s", text)
    )
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, default=float))
    plot_path = plot_stage_profile(report, out / "stages.png")

    console = output_console()
    console.print(_pass_table(report))
    console.print(_latency_table(report))
    console.print(_stage_table(report))
    for line in _summary_lines(report, plot_path, synthetic is not None):
        console.print(line)


def _prepare_synthetic(shape: str, out: Path, seed: int) -> tuple[Path, list[Path]]:
    """Write (or reuse) the synthetic model directory and teachers under `out`."""
    from hdn_export.synthetic import parse_shape, write_synthetic_model, write_synthetic_teachers

    num_users, num_items = parse_shape(shape)
    folder = out / f"synthetic-{num_users}x{num_items}-seed{seed}"
    model_dir = folder / "model"
    teacher_dir = folder / "teachers"
    if (model_dir / "manifest.json").is_file():
        logger.info("Reusing the synthetic model in %s", model_dir)
    else:
        write_synthetic_model(model_dir, num_users, num_items, seed=seed)
    teacher_paths = [teacher_dir / "neumf.onnx", teacher_dir / "convncf.onnx"]
    if all(path.is_file() for path in teacher_paths):
        logger.info("Reusing the synthetic teachers in %s", teacher_dir)
    else:
        teacher_dir.mkdir(parents=True, exist_ok=True)
        teacher_paths = [
            export.path
            for export in write_synthetic_teachers(teacher_dir, num_users, num_items, seed=seed)
        ]
    return model_dir, teacher_paths


def _prepare_teachers(model: Path, run: Path | None, out: Path) -> list[Path]:
    """Export the run's teacher to `out` and return its path, or log a warning and return []."""
    if run is None:
        manifest = json.loads((model / "manifest.json").read_text(encoding="utf-8"))
        source_run = manifest.get("source_run")
        if not source_run or not Path(source_run).is_dir():
            logger.warning(
                "The run's teacher is not timed: the model's source run %r is not a "
                "directory here. Pass --run RUN to time it.",
                source_run,
            )
            return []
        run = Path(source_run)
    from hdn_export.teacher import export_teacher_onnx

    try:
        export = export_teacher_onnx(run, out / "teacher.onnx")
    except ValueError as err:
        logger.warning("The run's teacher is not timed: %s", err)
        return []
    return [export.path]


def _prepare_random_teachers(
    model: Path, kinds: tuple[str, ...], out: Path, seed: int
) -> list[Path]:
    """Export teachers with random weights at the model's shape into `out/random-teachers`."""
    from hdn_export.synthetic import write_synthetic_teachers
    from hdn_runtime.manifest import read_manifest

    manifest = read_manifest(model)
    folder = out / "random-teachers"
    folder.mkdir(parents=True, exist_ok=True)
    exports = write_synthetic_teachers(
        folder,
        manifest.num_users,
        manifest.num_items,
        dim=manifest.embedding_dim,
        seed=seed,
        kinds=tuple(dict.fromkeys(kinds)),
        label_random=True,
    )
    return [export.path for export in exports]


def _parse_count(text: str, option: str) -> int | None:
    if text.strip().lower() == "all":
        return None
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"{option} takes 'all' or a positive number of users, got {text!r}.")
    return int(text)


def _parse_sizes(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(part.isdigit() and int(part) >= 1 for part in parts):
        raise ValueError(
            f"--batch-sizes takes comma-separated positive numbers of users, got {text!r}."
        )
    return tuple(int(part) for part in parts)


def _methods(report) -> list[str]:
    names = []
    for figure in report.figures:
        if figure.method not in names:
            names.append(figure.method)
    return names


def _teachers(report) -> list[str]:
    return [name for name in _methods(report) if " teacher" in name]


def _seconds(value: float) -> str:
    if value is None or math.isnan(value):
        return "-"
    if value < 1:
        return f"{value * 1e3:.2f} ms"
    return f"{value:.2f} s"


def _ratio(value: float, reference: float | None) -> str:
    if reference is None or not reference or math.isnan(value):
        return "-"
    return f"{value / reference:.2f}x"


def _pass_table(report) -> Table:
    from hdn_runtime.bench import FLOOR

    model = report.model
    table = Table(
        title=f"Top-{report.settings['k']} over {model['num_items']:,} items for "
        f"{model['users_per_pass']:,} users ({model['candidates_per_pass']:,} candidate pairs); "
        "* = extrapolated from fewer users"
    )
    for column in ("method", "wall", "user CPU", "sys CPU", "passes", "vs floor"):
        table.add_column(column, justify="left" if column == "method" else "right")
    teachers = _teachers(report)
    for teacher in teachers:
        table.add_column(f"vs {teacher}", justify="right")
    table.add_column("MACs/candidate", justify="right")
    table.add_column("useful GMAC/s", justify="right")

    floor = report.figure(FLOOR, None)
    for method in _methods(report):
        figure = report.figure(method, None)
        mark = "*" if figure.extrapolated else ""
        cells = [
            method,
            _seconds(figure.seconds) + mark,
            _seconds(figure.user_seconds) + mark,
            _seconds(figure.system_seconds) + mark,
            f"{figure.repeats} x {figure.users_timed} users",
            _ratio(figure.seconds, floor.seconds if floor else None),
        ]
        for teacher in teachers:
            teacher_figure = report.figure(teacher, None)
            cells.append(_ratio(figure.seconds, teacher_figure.seconds))
        macs = report.multiply_adds.get(method)
        rate = report.useful_gmacs.get(method)
        cells.append("-" if macs is None else f"{macs:,.0f}")
        cells.append("-" if rate is None else f"{rate:.2f}")
        table.add_row(*cells)
    return table


def _latency_table(report) -> Table:
    from hdn_runtime.bench import FLOOR

    sizes = report.settings["batch_sizes"]
    table = Table(title="Latency per request: p50 / p99 (vs floor at p50); * = extrapolated")
    table.add_column("method")
    for size in sizes:
        table.add_column(f"{size} user{'s' if size > 1 else ''}", justify="right")
    for method in _methods(report):
        cells = [method]
        for size in sizes:
            figure = report.figure(method, size)
            floor = report.figure(FLOOR, size)
            if figure is None:
                cells.append("-")
                continue
            mark = "*" if figure.extrapolated else ""
            p99 = "-" if figure.p99_seconds is None else _seconds(figure.p99_seconds)
            ratio = _ratio(figure.seconds, floor.seconds if floor else None)
            cells.append(f"{_seconds(figure.seconds)} / {p99}{mark} ({ratio})")
        table.add_row(*cells)
    return table


def _stage_table(report) -> Table:
    table = Table(
        title="Per pass: pairs entering each stage and time spent there; * = scaled from the "
        "sample of users"
    )
    for column in ("cascade", "stage", "pairs", "share of candidates", "MACs/pair", "time"):
        table.add_column(column, justify="left" if column in ("cascade", "stage") else "right")
    costs = report.stage_multiply_adds
    for method, profile in report.stage_profiles.items():
        mark = "*" if profile.extrapolated else ""
        for name, pairs, seconds in profile.stages:
            cost_key = "prefilter" if name.endswith("(matrix product)") else name
            share = pairs / max(1, profile.candidates)
            table.add_row(
                method,
                name,
                f"{pairs:,}{mark}",
                f"{share:.4f}",
                f"{costs.get(cost_key, 0):,}",
                _seconds(seconds) + mark,
            )
        for name, seconds in profile.phases.items():
            table.add_row(method, f"host: {name}", "", "", "", _seconds(seconds) + mark)
    return table


def _summary_lines(report, plot_path: Path, is_synthetic: bool) -> list[str]:
    machine = report.machine
    model = report.model
    rss = ", ".join(f"after {name} {mib:,.0f} MiB" for name, mib in report.peak_rss_mib)
    lines = [
        (
            f"Machine: {machine['cpu_model']}, {machine['usable_cpus']} usable CPUs, threads "
            f"{machine['threads'] or 'library default'}, 1-minute load average at the start "
            f"{machine['load_average_1min']:.2f}; numpy {machine['numpy']}, onnxruntime "
            f"{machine['onnxruntime']}."
        ),
        f"numpy float32 2048x2048x2048 matrix product: {report.matmul_gmacs:.1f} GMAC/s.",
        f"Peak resident memory of this process (cumulative, in run order): {rss}.",
        (
            f"Memory bound: at most "
            f"{model['users_per_chunk'] * model['num_items']:,} (user, item) pairs per chunk "
            f"({model['users_per_chunk']:,} users of {model['num_items']:,} items, budget "
            f"{report.settings['candidate_budget']:,}); "
            f"the fast cascade kept {report.workspace_mib:,.0f} MiB of buffers for reuse."
        ),
        f"Stage plot: {plot_path}",
    ]
    if is_synthetic:
        lines.insert(0, "Synthetic model with random weights: times only, no quality.")
    return lines
