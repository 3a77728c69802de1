"""Tests for hdn_train.data: readers, id maps, data home, downloads and the evaluation split."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import logging
import os
import re
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from hdn_train import data
from hdn_train.data import DataFormatError, Dataset, DownloadError
from hdn_train.interactions import InteractionMatrix

SHARED_DATA = Path(
    os.environ.get("HDN_DATA_HOME") or Path(__file__).parents[2].parent / "shared" / "data"
)

U_DATA_TEXT = "3\t10\t4\t300\n1\t20\t5\t100\n3\t10\t2\t200\n2\t9\t1\t50\n"
RATINGS_DAT_TEXT = "10::5::3::978300760\n2::5::4::978300761\n10::7::5::978300762\n"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def pairs_of(matrix: InteractionMatrix) -> set[tuple[int, int]]:
    users, items = matrix.to_pairs()
    return set(zip(users.tolist(), items.tolist()))


def external_pairs(dataset: Dataset, matrix: InteractionMatrix) -> set[tuple[str, str]]:
    return {(dataset.user_ids[u], dataset.item_ids[i]) for u, i in pairs_of(matrix)}


# ----------------------------------------------------------------------------- readers


def test_read_u_data_pairs_and_ids(tmp_path):
    dataset = data.read_u_data(write(tmp_path / "ml-100k" / "u.data", U_DATA_TEXT))

    assert dataset.name == "ml-100k"
    assert dataset.user_ids == ["1", "2", "3"]
    assert dataset.item_ids == ["9", "10", "20"]
    assert external_pairs(dataset, dataset.interactions) == {("3", "10"), ("1", "20"), ("2", "9")}
    assert dataset.preset_split is None


def test_read_u_data_duplicates_count_once(tmp_path):
    dataset = data.read_u_data(write(tmp_path / "u.data", U_DATA_TEXT))

    assert dataset.interactions.nnz == 3
    assert dataset.interactions.row_lengths().tolist() == [1, 1, 1]


def test_read_u_data_keeps_earliest_timestamp(tmp_path):
    dataset = data.read_u_data(write(tmp_path / "u.data", U_DATA_TEXT))

    # CSR order: user "1" -> item "20", user "2" -> item "9", user "3" -> item "10".
    assert dataset.timestamps.tolist() == [100, 50, 200]


def test_read_ratings_dat(tmp_path):
    dataset = data.read_ratings_dat(write(tmp_path / "ratings.dat", RATINGS_DAT_TEXT))

    assert dataset.user_ids == ["2", "10"]
    assert dataset.item_ids == ["5", "7"]
    assert external_pairs(dataset, dataset.interactions) == {("10", "5"), ("2", "5"), ("10", "7")}
    assert dataset.timestamps.tolist() == [978300761, 978300760, 978300762]


def test_read_rating_lines_skip_blank_lines(tmp_path):
    text = "1\t2\t3\t4\r\n\r\n2\t2\t3\t4\r\n\n"
    dataset = data.read_u_data(write(tmp_path / "u.data", text))

    assert dataset.interactions.nnz == 2


def test_read_table_csv_numeric_order(tmp_path):
    text = "user_id,item_id,rating\n10,b,1\n9,a,1\n10,b,5\n100,c,2\n"
    dataset = data.read_table(write(tmp_path / "plays.csv", text))

    assert dataset.name == "plays"
    assert dataset.user_ids == ["9", "10", "100"]
    assert dataset.item_ids == ["a", "b", "c"]
    assert dataset.interactions.nnz == 3
    assert dataset.timestamps is None


def test_read_table_timestamp_column(tmp_path):
    # A repeated pair keeps its earliest timestamp, as the MovieLens readers do.
    text = "user_id,item_id,timestamp\nu1,a,30\nu1,b,10\nu2,a,20\nu1,a,5\n"
    dataset = data.read_table(write(tmp_path / "plays.csv", text))

    users, items = dataset.interactions.to_pairs()
    times = {
        (dataset.user_ids[user], dataset.item_ids[item]): int(time)
        for user, item, time in zip(users, items, dataset.timestamps)
    }
    assert times == {("u1", "a"): 5, ("u1", "b"): 10, ("u2", "a"): 20}


def test_read_table_iso_timestamps(tmp_path):
    text = "user_id,item_id,timestamp\nu1,a,2020-01-02\nu1,b,2020-01-01T00:00:10\n"
    dataset = data.read_table(write(tmp_path / "plays.csv", text))

    assert dataset.timestamps.tolist() == [1577923200, 1577836810]


def test_read_table_rejects_bad_timestamp(tmp_path):
    text = "user_id,item_id,timestamp\nu1,a,30\nu2,b,yesterday\n"
    path = write(tmp_path / "plays.csv", text)
    with pytest.raises(data.DataFormatError, match="line 3") as info:
        data.read_table(path)
    assert "yesterday" in str(info.value)
    assert "'timestamp' column" in str(info.value)


def test_read_table_keeps_distinct_strings(tmp_path):
    text = "user_id,item_id\nu1,7\nu1,07\nu2,10\n"
    dataset = data.read_table(write(tmp_path / "plays.csv", text))

    assert dataset.item_ids == ["07", "7", "10"]
    assert dataset.interactions.nnz == 3


def test_read_table_tsv_custom_columns(tmp_path):
    text = "when\titem\tuser\n1\tx\talice\n2\ty\tbob\n3\tx\tbob\n"
    dataset = data.read_table(write(tmp_path / "plays.tsv", text), user_col="user", item_col="item")

    assert dataset.user_ids == ["alice", "bob"]
    assert external_pairs(dataset, dataset.interactions) == {
        ("alice", "x"),
        ("bob", "y"),
        ("bob", "x"),
    }


@pytest.mark.parametrize("separator", [";", "\t", "|"])
def test_read_table_detects_separator_from_header(tmp_path, separator):
    text = separator.join(["user_id", "item_id"]) + "\n" + separator.join(["1", "2"]) + "\n"
    dataset = data.read_table(write(tmp_path / "plays.txt", text))

    assert external_pairs(dataset, dataset.interactions) == {("1", "2")}


def test_read_table_quoted_fields(tmp_path):
    text = 'user_id,item_id\n"a,b","x"\n'
    dataset = data.read_table(write(tmp_path / "plays.csv", text))

    assert dataset.user_ids == ["a,b"]


def test_read_table_unknown_column(tmp_path):
    path = write(tmp_path / "plays.csv", "user,movie\n1,2\n")

    with pytest.raises(DataFormatError) as excinfo:
        data.read_table(path)

    message = str(excinfo.value)
    assert "'user_id'" in message
    assert "['user', 'movie']" in message
    assert "plays.csv, line 1" in message


def test_read_table_header_only(tmp_path):
    path = write(tmp_path / "plays.csv", "user_id,item_id\n")

    with pytest.raises(DataFormatError, match="no data rows"):
        data.read_table(path)


def test_read_adjacency_preset_split(tmp_path):
    write(tmp_path / "train.txt", "0 5 6\n1\n2 6 7 6\n")
    write(tmp_path / "test.txt", "0 7\n2 5\n")
    dataset = data.read_adjacency(tmp_path)
    train, test = dataset.preset_split

    assert dataset.user_ids == ["0", "1", "2"]
    assert dataset.item_ids == ["5", "6", "7"]
    assert external_pairs(dataset, train) == {("0", "5"), ("0", "6"), ("2", "6"), ("2", "7")}
    assert external_pairs(dataset, test) == {("0", "7"), ("2", "5")}
    assert pairs_of(dataset.interactions) == pairs_of(train) | pairs_of(test)
    assert train.n_users == test.n_users == 3
    assert train.n_items == test.n_items == 3
    assert dataset.interactions.row_lengths().tolist() == [3, 0, 3]


def test_read_adjacency_user_only_in_test(tmp_path):
    write(tmp_path / "train.txt", "0 1\n")
    write(tmp_path / "test.txt", "4 1\n")
    dataset = data.read_adjacency(tmp_path)

    assert dataset.user_ids == ["0", "4"]
    assert dataset.preset_split[0].row_lengths().tolist() == [1, 0]


# ----------------------------------------------------------------------------- reader errors


def _read_adjacency_with_train(path: Path) -> Dataset:
    write(path.parent / "test.txt", "0 1\n")
    return data.read_adjacency(path.parent)


READERS = {
    "u.data": data.read_u_data,
    "ratings.dat": data.read_ratings_dat,
    "plays.csv": data.read_table,
    "train.txt": _read_adjacency_with_train,
}


@pytest.mark.parametrize("file_name", list(READERS))
def test_reader_missing_file(tmp_path, file_name):
    path = tmp_path / file_name
    if file_name == "train.txt":
        path = tmp_path / "missing" / file_name
        reader = data.read_adjacency
        argument = path.parent
    else:
        reader = READERS[file_name]
        argument = path

    with pytest.raises(FileNotFoundError, match=re.escape(str(path))):
        reader(argument)


@pytest.mark.parametrize("file_name", list(READERS))
@pytest.mark.parametrize("text", ["", "\n  \n"])
def test_reader_empty_file(tmp_path, file_name, text):
    path = write(tmp_path / file_name, text)

    with pytest.raises(DataFormatError, match="empty") as excinfo:
        READERS[file_name](path)

    assert file_name in str(excinfo.value)


MALFORMED_CASES = [
    ("u.data", "1\t2\t3\t4\n1\t2\t3\n", 2, "1\\t2\\t3"),
    ("u.data", "1\t2\t3\t4\n\n1\tx9\t3\t4\n", 3, "x9"),
    ("u.data", "1\t2\tgood\t4\n", 1, "good"),
    ("u.data", "1 2 3 4\n", 1, "1 2 3 4"),
    ("ratings.dat", "1::2::3::4\n1::2::3::4::5\n", 2, "1::2::3::4::5"),
    ("ratings.dat", "1::2::3::4\n1::2::3::soon\n", 2, "soon"),
    ("plays.csv", "user_id,item_id\n1,2\n1,2,3\n", 3, "1,2,3"),
    ("plays.csv", "user_id,item_id\n1,\n", 2, "1,"),
    ("train.txt", "0 1 2\n1 3 b4\n", 2, "b4"),
]


@pytest.mark.parametrize(("file_name", "text", "line_number", "offending"), MALFORMED_CASES)
def test_reader_malformed_line(tmp_path, file_name, text, line_number, offending):
    path = write(tmp_path / file_name, text)

    with pytest.raises(DataFormatError) as excinfo:
        READERS[file_name](path)

    message = str(excinfo.value)
    assert f"{path}, line {line_number}:" in message
    assert offending in message
    assert "Expected" in message
    assert excinfo.value.line_number == line_number


def test_reader_invalid_utf8(tmp_path):
    path = tmp_path / "u.data"
    path.write_bytes(b"1\t2\t3\t4\n1\t\xff\t3\t4\n")

    with pytest.raises(DataFormatError, match="line 2: invalid UTF-8"):
        data.read_u_data(path)


# ----------------------------------------------------------------------------- id maps


def test_id_maps_round_trip(tmp_path):
    dataset = data.read_u_data(write(tmp_path / "u.data", U_DATA_TEXT))
    maps_dir = tmp_path / "maps" / "nested"
    dataset.save_id_maps(maps_dir)

    user_ids, item_ids = data.load_id_maps(maps_dir)

    assert user_ids == dataset.user_ids
    assert item_ids == dataset.item_ids
    assert json.loads((maps_dir / "item_ids.json").read_text()) == ["9", "10", "20"]
    assert sorted(path.name for path in maps_dir.iterdir()) == ["item_ids.json", "user_ids.json"]


def test_id_maps_overwrite(tmp_path):
    dataset = data.read_u_data(write(tmp_path / "u.data", U_DATA_TEXT))
    dataset.save_id_maps(tmp_path)
    dataset.user_ids = ["a"]
    dataset.save_id_maps(tmp_path)

    assert Dataset.load_id_maps(tmp_path)[0] == ["a"]


def test_id_maps_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="user_ids.json"):
        data.load_id_maps(tmp_path)


@pytest.mark.parametrize("content", ['{"a": 1}', "[1, 2]", '[\n  "1",\n'])
def test_id_maps_invalid_content(tmp_path, content):
    write(tmp_path / "user_ids.json", content)
    write(tmp_path / "item_ids.json", "[]")

    with pytest.raises(DataFormatError, match="user_ids.json"):
        data.load_id_maps(tmp_path)


# ----------------------------------------------------------------------------- layouts and names


def test_read_path_layouts(tmp_path):
    write(tmp_path / "adjacency" / "train.txt", "0 1\n")
    write(tmp_path / "adjacency" / "test.txt", "0 2\n")
    write(tmp_path / "official" / "u.data", U_DATA_TEXT)
    write(tmp_path / "one-m" / "ratings.dat", RATINGS_DAT_TEXT)
    write(tmp_path / "plays.tsv", "user_id\titem_id\n1\t2\n")

    assert data.read_path(tmp_path / "adjacency").preset_split is not None
    assert data.read_path(tmp_path / "official").name == "official"
    assert data.read_path(tmp_path / "official" / "u.data").interactions.nnz == 3
    assert data.read_path(tmp_path / "one-m").interactions.nnz == 3
    assert data.read_path(tmp_path / "one-m" / "ratings.dat").name == "one-m"
    assert data.read_path(tmp_path / "plays.tsv").interactions.nnz == 1


def test_read_path_unknown_layout(tmp_path):
    path = write(tmp_path / "ratings.json", "[]")
    (tmp_path / "empty").mkdir()

    with pytest.raises(ValueError, match="Accepted layouts: a folder with train.txt"):
        data.read_path(path)
    with pytest.raises(FileNotFoundError, match="Accepted layouts"):
        data.read_path(tmp_path / "empty")


def test_load_dataset_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a known data set name"):
        data.load_dataset(str(tmp_path / "ml-20m"))


def test_load_dataset_reads_path(tmp_path):
    path = write(tmp_path / "u.data", U_DATA_TEXT)

    assert data.load_dataset(str(path)).interactions.nnz == 3


def test_load_dataset_named_from_data_home(tmp_path):
    write(tmp_path / "ml-100k" / "u.data", U_DATA_TEXT)

    dataset = data.load_dataset("ml-100k", data_home=tmp_path)

    assert dataset.name == "ml-100k"
    assert dataset.interactions.nnz == 3


def test_resolve_data_home_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HDN_DATA_HOME", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))

    assert data.resolve_data_home(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_data_home() == tmp_path / "env"
    monkeypatch.delenv("HDN_DATA_HOME")
    assert data.resolve_data_home() == tmp_path / "xdg" / "hdn" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.resolve_data_home() == tmp_path / "home" / ".cache" / "hdn" / "data"


# ----------------------------------------------------------------------------- downloads


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class names it `format`
        pass


@pytest.fixture
def archive_server(tmp_path, monkeypatch) -> Iterator[tuple[str, Path]]:
    """Serve a small ml-100k.zip on loopback; yield its URL and the served file."""
    for variable in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")

    served = tmp_path / "served"
    served.mkdir()
    archive = served / "ml-100k.zip"
    with zipfile.ZipFile(archive, "w") as zip_file:
        zip_file.writestr("ml-100k/README", "test archive\n")
        zip_file.writestr("ml-100k/u.data", U_DATA_TEXT)

    handler = functools.partial(QuietHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ml-100k.zip", archive
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_named_dataset(tmp_path, monkeypatch, caplog, archive_server):
    url, archive = archive_server
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(data.DOWNLOADS, "ml-100k", (url, sha256, "ml-100k/u.data"))
    home = tmp_path / "home"

    with caplog.at_level(logging.INFO, logger="hdn_train.data"):
        dataset = data.load_dataset("ml-100k", data_home=home)

    assert dataset.name == "ml-100k"
    assert dataset.interactions.nnz == 3
    assert (home / "ml-100k" / "u.data").read_text() == U_DATA_TEXT
    assert (home / "ml-100k" / "README").is_file()
    assert (home / "downloads" / "ml-100k.zip").is_file()
    assert sorted(path.name for path in home.iterdir()) == ["downloads", "ml-100k"]
    assert any("Downloading ml-100k" in record.getMessage() for record in caplog.records)


def test_download_skipped_when_present(tmp_path, monkeypatch):
    write(tmp_path / "ml-100k" / "u.data", U_DATA_TEXT)
    unreachable = ("http://127.0.0.1:9/ml-100k.zip", "0" * 64, "ml-100k/u.data")
    monkeypatch.setitem(data.DOWNLOADS, "ml-100k", unreachable)

    assert data.load_dataset("ml-100k", data_home=tmp_path).interactions.nnz == 3


def test_download_wrong_checksum(tmp_path, monkeypatch, archive_server):
    url, _ = archive_server
    monkeypatch.setitem(data.DOWNLOADS, "ml-100k", (url, "0" * 64, "ml-100k/u.data"))
    home = tmp_path / "home"

    with pytest.raises(DownloadError, match="failed its SHA-256 check"):
        data.load_dataset("ml-100k", data_home=home)

    assert not (home / "ml-100k").exists()
    assert list((home / "downloads").iterdir()) == []
    assert sorted(path.name for path in home.iterdir()) == ["downloads"]


def test_download_archive_without_member(tmp_path, monkeypatch, archive_server):
    url, archive = archive_server
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(data.DOWNLOADS, "ml-100k", (url, sha256, "ml-100k/ratings.csv"))
    home = tmp_path / "home"

    with pytest.raises(DownloadError, match="no member 'ml-100k/ratings.csv'"):
        data.download_dataset("ml-100k", data_home=home)

    assert not (home / "ml-100k").exists()


# ----------------------------------------------------------------------------- paper_split


def random_interactions(n_users=300, n_items=60, density=0.3, seed=1) -> InteractionMatrix:
    rng = np.random.default_rng(seed)
    users, items = np.nonzero(rng.random((n_users, n_items)) < density)
    return InteractionMatrix.from_pairs(users, items, n_users, n_items)


def test_paper_split_partitions_pairs():
    interactions = random_interactions()
    train, test = data.paper_split(interactions, seed=3)

    assert pairs_of(train).isdisjoint(pairs_of(test))
    assert pairs_of(train) | pairs_of(test) == pairs_of(interactions)
    assert (train.n_users, train.n_items) == (interactions.n_users, interactions.n_items)
    assert (test.n_users, test.n_items) == (interactions.n_users, interactions.n_items)


def test_paper_split_share_per_user():
    interactions = random_interactions()
    train, test = data.paper_split(interactions, test_share=0.2, seed=3)
    lengths = interactions.row_lengths()

    # Every item has many users here, so no test item is moved back and the counts are exact.
    expected = np.minimum(np.rint(0.2 * lengths), np.maximum(lengths - 1, 0))
    assert test.row_lengths().tolist() == expected.astype(int).tolist()
    assert abs(test.nnz / interactions.nnz - 0.2) < 0.01


def test_paper_split_keeps_a_training_item():
    interactions = InteractionMatrix.from_pairs([0, 1, 1, 2, 2], [0, 0, 1, 0, 1], 4, 2)
    train, test = data.paper_split(interactions, test_share=0.9, seed=0)

    assert train.row_lengths().tolist() == [1, 1, 1, 0]
    assert test.row_lengths().tolist() == [0, 1, 1, 0]


def test_paper_split_no_test_only_items():
    # Item 5 belongs to user 0 alone, so it goes back to train whenever it is drawn.
    users = [0] * 5 + [1] * 5 + [2] * 5
    items = [0, 1, 2, 3, 5, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    interactions = InteractionMatrix.from_pairs(users, items, 3, 6)

    for seed in range(20):
        train, test = data.paper_split(interactions, test_share=0.4, seed=seed)
        train_items = set(train.indices.tolist())
        assert set(test.indices.tolist()) <= train_items
        assert 5 in train.items_of(0)
        assert pairs_of(train) | pairs_of(test) == pairs_of(interactions)


def test_paper_split_seed_determinism():
    interactions = random_interactions()
    train_a, test_a = data.paper_split(interactions, seed=7)
    train_b, test_b = data.paper_split(interactions, seed=7)
    _, test_other = data.paper_split(interactions, seed=8)

    assert np.array_equal(train_a.indptr, train_b.indptr)
    assert np.array_equal(train_a.indices, train_b.indices)
    assert np.array_equal(test_a.indices, test_b.indices)
    assert pairs_of(test_a) != pairs_of(test_other)


@pytest.mark.parametrize("test_share", [-0.1, 1.0, 1.5])
def test_paper_split_invalid_share(test_share):
    with pytest.raises(ValueError, match="test_share must be in"):
        data.paper_split(random_interactions(), test_share=test_share)


def test_paper_split_zero_share():
    interactions = random_interactions()
    train, test = data.paper_split(interactions, test_share=0.0)

    assert test.nnz == 0
    assert train.nnz == interactions.nnz


# ----------------------------------------------------------------------------- real data


needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(), reason=f"MovieLens copies not found at {SHARED_DATA}"
)


@needs_shared_data
def test_real_ml_100k_u_data():
    dataset = data.read_u_data(SHARED_DATA / "ml-100k" / "u.data")

    assert dataset.interactions.n_users == 943
    assert dataset.interactions.n_items == 1682
    assert dataset.interactions.nnz == 100_000
    assert dataset.user_ids[0] == "1"
    assert dataset.item_ids[-1] == "1682"


@needs_shared_data
def test_real_ml_1m_adjacency():
    dataset = data.read_adjacency(SHARED_DATA / "ml-1m")
    train, test = dataset.preset_split

    assert dataset.interactions.n_users == 6040
    assert dataset.interactions.n_items == 3706
    assert dataset.interactions.nnz == 1_000_209
    assert train.nnz == 800_167
    assert test.nnz == 200_042


@needs_shared_data
def test_real_ml_1m_named_and_split():
    dataset = data.load_dataset("ml-1m", data_home=SHARED_DATA)
    train, test = data.paper_split(dataset.interactions, seed=0)
    test_items = np.unique(test.indices)

    assert dataset.name == "ml-1m"
    assert dataset.interactions.nnz == 1_000_209
    assert train.nnz + test.nnz == 1_000_209
    assert np.all(train.item_counts()[test_items] > 0)
    assert abs(test.nnz / dataset.interactions.nnz - 0.2) < 0.005
