"""Tests of the experiment report: averaging over seeds, the markdown tables and the figures."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from hdn_train.experiment import ExperimentConfig, load_results, run_experiment
from hdn_train.report import aggregate, format_mean_std, headline_table, table1, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GAMMAS = [0.5, 0.75, 0.875]
TRADE_OFF_GAMMAS = [0.75, 0.875, 0.9375]
ALL_MODELS = [
    "poprank",
    "mf",
    "teacher",
    "two-stage",
    "mf-student",
    "hdn",
    "hdn-nd",
    "hdn-nr",
    "hdn-nr-",
    "hdn-nr-nd",
]
MEAN_STD = re.compile(r"^\d\.\d{3} ± \d\.\d{3}$")
MEAN_ONLY = re.compile(r"^\d\.\d{3}$")


def make_result(
    model: str,
    seed: int,
    ndcg: float,
    *,
    dataset: str = "toy",
    teacher: str = "neumf",
    gammas: list[float] | None = None,
    protocol: str = "paper",
    train_seconds: float = 1.0,
) -> dict:
    """Build a cell result by hand, with HR set to twice the NDCG."""
    if model in ("poprank", "mf"):
        teacher = "-"
    if protocol == "paper":
        metrics = {"ndcg@10": ndcg, "hr@10": 2 * ndcg, "ndcg@20": ndcg, "hr@20": 2 * ndcg}
    else:
        metrics = {"ndcg@10": ndcg, "hr@10": 2 * ndcg}
    return {
        "cell": {
            "dataset": dataset,
            "teacher": teacher,
            "model": model,
            "gammas": gammas,
            "seed": seed,
        },
        "protocol": protocol,
        "metrics": metrics,
        "train_seconds": train_seconds,
        "seconds": train_seconds,
    }


def markdown_section(text: str, heading: str) -> str:
    """Return the text under a '## ' heading, up to the next '## ' heading."""
    start = text.index(f"## {heading}")
    end = text.find("\n## ", start + 1)
    return text[start:] if end == -1 else text[start:end]


def markdown_rows(section: str) -> list[list[str]]:
    """Return the body rows of the first markdown table in `section`, as stripped cells."""
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


# ----------------------------------------------------------------------------- aggregate


def test_aggregate_mean_and_sample_std():
    results = [
        make_result("mf", seed, ndcg, train_seconds=seconds)
        for seed, ndcg, seconds in ((0, 0.1, 2.0), (1, 0.2, 4.0), (2, 0.3, 6.0))
    ]
    (entry,) = aggregate(results)
    assert entry["num_seeds"] == 3
    assert entry["seeds"] == [0, 1, 2]
    assert entry["mean"]["ndcg@20"] == pytest.approx(0.2)
    assert entry["std"]["ndcg@20"] == pytest.approx(0.1)  # ddof=1
    assert entry["mean"]["hr@20"] == pytest.approx(0.4)
    assert entry["std"]["hr@20"] == pytest.approx(0.2)
    assert entry["mean"]["train_seconds"] == pytest.approx(4.0)
    assert entry["std"]["train_seconds"] == pytest.approx(2.0)


def test_aggregate_single_seed_std_zero():
    (entry,) = aggregate([make_result("mf", 0, 0.25)])
    assert entry["num_seeds"] == 1
    assert entry["mean"]["ndcg@20"] == pytest.approx(0.25)
    assert entry["std"]["ndcg@20"] == 0.0


def test_aggregate_groups_by_gammas_and_teacher():
    results = [
        make_result("hdn", 0, 0.1, gammas=GAMMAS),
        make_result("hdn", 1, 0.3, gammas=GAMMAS),
        make_result("hdn", 0, 0.5, gammas=TRADE_OFF_GAMMAS),
        make_result("hdn", 0, 0.7, gammas=GAMMAS, teacher="als"),
    ]
    entries = aggregate(results)
    assert len(entries) == 3
    by_key = {(entry["teacher"], tuple(entry["gammas"])): entry for entry in entries}
    assert by_key[("neumf", tuple(GAMMAS))]["mean"]["ndcg@20"] == pytest.approx(0.2)
    assert by_key[("neumf", tuple(GAMMAS))]["num_seeds"] == 2
    assert by_key[("neumf", tuple(TRADE_OFF_GAMMAS))]["num_seeds"] == 1
    assert by_key[("als", tuple(GAMMAS))]["mean"]["ndcg@20"] == pytest.approx(0.7)


def test_aggregate_averages_reach_share():
    results = [make_result("hdn", seed, 0.1, gammas=GAMMAS) for seed in (0, 1)]
    results[0]["reach_share"] = 0.1
    results[1]["reach_share"] = 0.2
    (entry,) = aggregate(results)
    assert entry["mean"]["reach_share"] == pytest.approx(0.15)


def test_aggregate_duplicate_seed_raises():
    results = [make_result("mf", 0, 0.1), make_result("mf", 0, 0.2)]
    with pytest.raises(ValueError, match="share a seed"):
        aggregate(results)


def test_format_mean_std_cases():
    (several,) = aggregate([make_result("mf", seed, ndcg) for seed, ndcg in ((0, 0.1), (1, 0.3))])
    (single,) = aggregate([make_result("mf", 0, 0.25)])
    assert format_mean_std(several, "ndcg@20") == "0.200 ± 0.141"
    assert format_mean_std(single, "ndcg@20") == "0.250"
    assert format_mean_std(single, "recall@20") == "–"
    assert format_mean_std(None, "ndcg@20") == "–"


# ----------------------------------------------------------------------------- tables on hand data


def test_table1_missing_cell_dash():
    results = [
        make_result("mf", 0, 0.1, dataset="first"),
        make_result("mf", 0, 0.2, dataset="second"),
        make_result("teacher", 0, 0.3, dataset="first"),
    ]
    table = table1(aggregate(results), 20)
    assert table.header == [
        "teacher",
        "model",
        "first NDCG@20",
        "first HR@20",
        "second NDCG@20",
        "second HR@20",
        "seeds",
    ]
    rows = {row[1]: row for row in table.rows}
    assert rows["NeuMF (teacher)"][2:4] == ["0.300", "0.600"]
    assert rows["NeuMF (teacher)"][4:6] == ["–", "–"]
    assert rows["NeuMF (teacher)"][6] == "1/–"


def test_headline_table_loo_protocol():
    results = [
        make_result(model, 0, 0.4, protocol="loo", gammas=GAMMAS if model == "hdn" else None)
        for model in ("poprank", "mf", "teacher", "hdn")
    ]
    table = headline_table(aggregate(results))
    assert table is not None
    assert "Leave-one-out" in table.title
    assert table.header[2:4] == ["toy HR@10", "toy NDCG@10"]
    labels = [row[1] for row in table.rows]
    assert labels == ["PopRank", "MF", "NeuMF (teacher)", "HDN (γ = 0.5/0.75/0.875)"]


def test_write_report_loo_section(tmp_path):
    results = [make_result(model, 0, 0.4, protocol="loo") for model in ("poprank", "teacher")]
    text = write_report(results, tmp_path).read_text()
    rows = markdown_rows(markdown_section(text, "Leave-one-out protocol"))
    assert [row[1] for row in rows] == ["PopRank", "NeuMF (teacher)"]
    assert rows[0][2:4] == ["0.800", "0.400"]  # HR@10, then NDCG@10
    assert "## Table 1" not in text


@pytest.mark.parametrize(
    ("holdout", "expected"),
    [
        ("latest", "Held out: each user's latest interaction by timestamp."),
        ("random", "Held out: a random interaction of each user (seeded)."),
        (None, "Held out: not recorded"),
    ],
)
def test_write_report_loo_holdout_note(tmp_path, holdout, expected):
    results = [make_result(model, 0, 0.4, protocol="loo") for model in ("poprank", "teacher")]
    for result in results:
        if holdout is not None:
            result["holdout"] = holdout
    text = write_report(results, tmp_path).read_text()
    assert expected in markdown_section(text, "Leave-one-out protocol")


def test_write_report_empty_raises(tmp_path):
    with pytest.raises(ValueError, match="No cell results"):
        write_report([], tmp_path / "report")


def test_write_report_without_history_no_figures(tmp_path):
    results = [make_result("hdn", 0, 0.4, gammas=GAMMAS), make_result("teacher", 0, 0.5)]
    text = write_report(results, tmp_path).read_text()
    assert list(tmp_path.glob("*.png")) == []
    assert "![" not in text


# ----------------------------------------------------------------------------- a real experiment


@pytest.fixture(scope="module")
def experiment_dir(synthetic_csv, tmp_path_factory) -> Path:
    """A finished two-seed experiment on the synthetic data: every model, NeuMF teacher."""
    config = ExperimentConfig(
        datasets=[str(synthetic_csv)],
        teachers=["neumf"],
        models=ALL_MODELS,
        gamma_settings=[GAMMAS],
        seeds=[0, 1],
        trade_off_gammas=[TRADE_OFF_GAMMAS],
        dim=8,
        hidden_dim=8,
        mlp_layers=[16, 8],
        batch_size=64,
        learning_rate=0.01,
        mf_epochs=1,
        pretrain_epochs=1,
        neumf_epochs=1,
        student_epochs=3,
    )
    directory = tmp_path_factory.mktemp("experiment")
    run_experiment(config, directory)
    return directory


@pytest.fixture(scope="module")
def report(experiment_dir) -> tuple[Path, str]:
    """The report directory of the experiment and the text of its results.md."""
    path = write_report(load_results(experiment_dir), experiment_dir / "report")
    return path.parent, path.read_text(encoding="utf-8")


def test_report_writes_results_md(report):
    report_dir, _ = report
    assert (report_dir / "results.md").is_file()
    assert not list(report_dir.glob(".*")), "temporary files left behind"


def test_report_table1_rows_in_order(report):
    _, text = report
    rows = markdown_rows(markdown_section(text, "Table 1: NDCG and HR at K = 20"))
    labels = [row[1] for row in rows]
    assert labels == [
        "PopRank",
        "MF",
        "MF top-100 + NeuMF",
        "NeuMF (teacher)",
        "MF student",
        "HDN (γ = 0.5/0.75/0.875)",
        "HDN (γ = 0.75/0.875/0.9375)",
    ]
    assert [row[0] for row in rows[:2]] == ["–", "–"]
    assert {row[0] for row in rows[2:]} == {"NeuMF"}


def test_report_table1_formats_seeds(report):
    _, text = report
    section = markdown_section(text, "Table 1: NDCG and HR at K = 20")
    rows = {row[1]: row for row in markdown_rows(section)}
    two_seeds = rows["HDN (γ = 0.5/0.75/0.875)"]
    assert MEAN_STD.match(two_seeds[2]), two_seeds
    assert MEAN_STD.match(two_seeds[3]), two_seeds
    assert two_seeds[4] == "2"
    trade_off = rows["HDN (γ = 0.75/0.875/0.9375)"]
    assert MEAN_ONLY.match(trade_off[2]), trade_off
    assert trade_off[4] == "1"


def test_report_has_both_cutoffs(report):
    _, text = report
    assert "## Table 1: NDCG and HR at K = 10" in text
    assert "## Table 1: NDCG and HR at K = 20" in text


def test_report_table2_ablation_rows(report):
    _, text = report
    section = markdown_section(text, "Table 2: ablations")
    assert "### interactions.csv, NeuMF teacher, γ = 0.5/0.75/0.875" in section
    rows = markdown_rows(section)
    assert [row[0] for row in rows] == [
        "NeuMF (teacher)",
        "HDN",
        "HDN-nd",
        "HDN-nr",
        "HDN-nr-",
        "HDN-nr-nd",
    ]
    header = [line for line in section.splitlines() if line.startswith("|")][0]
    for column in ("NDCG@10", "HR@10", "NDCG@20", "HR@20"):
        assert column in header, header


def test_report_training_time_rows(report):
    _, text = report
    rows = markdown_rows(markdown_section(text, "Training time"))
    labels = [row[1] for row in rows]
    assert "HDN-nr-nd (γ = 0.5/0.75/0.875)" in labels
    assert all(re.match(r"^\d+\.\d$", row[2]) for row in rows), rows


def test_report_figures_are_png(report):
    report_dir, _ = report
    expected = [
        "rejection_interactions.csv_neumf_0.5_0.75_0.875.png",
        "rejection_interactions.csv_neumf_0.75_0.875_0.9375.png",
        "tradeoff_interactions.csv_neumf.png",
    ]
    for name in expected:
        path = report_dir / name
        assert path.is_file(), name
        assert path.read_bytes()[:8] == PNG_SIGNATURE, name


def test_report_links_figures(report):
    report_dir, text = report
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert sorted(linked) == sorted(path.name for path in report_dir.glob("*.png"))


def test_report_removes_stale_figures(experiment_dir, tmp_path):
    stale = tmp_path / "tradeoff_old_neumf.png"
    stale.write_bytes(PNG_SIGNATURE)
    unrelated = tmp_path / "notes.png"
    unrelated.write_bytes(PNG_SIGNATURE)
    write_report(load_results(experiment_dir), tmp_path)
    assert not stale.exists()
    assert unrelated.exists()


def test_report_leaves_pyplot_alone(experiment_dir, tmp_path):
    # Importing pyplot would pick a global backend for the whole process.
    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    write_report(load_results(experiment_dir), tmp_path)
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_loaded
