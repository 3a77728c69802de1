"""Read interaction data sets from disk, download MovieLens on demand, and split for evaluation.

Every reader returns a `Dataset` whose pairs are deduplicated implicit feedback: any rating counts
as one positive. Models and training code only see the `InteractionMatrix` inside it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from hdn_train.interactions import InteractionMatrix

logger = logging.getLogger(__name__)

DATA_HOME_ENV = "HDN_DATA_HOME"

# Data set name -> (archive URL, SHA-256 of the archive, member whose presence marks a complete
# extraction). The hashes are those recorded by TensorFlow Datasets in
# tensorflow_datasets/url_checksums/movielens.txt (archives of 4,924,029 and 5,917,549 bytes).
DOWNLOADS: dict[str, tuple[str, str, str]] = {
    "ml-100k": (
        "https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        "ml-100k/u.data",
    ),
    "ml-1m": (
        "https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        "ml-1m/ratings.dat",
    ),
}

U_DATA_FORMAT = "4 tab-separated fields per line: user id, item id, rating, Unix timestamp"
RATINGS_DAT_FORMAT = "UserID::MovieID::Rating::Timestamp with integer ids and timestamp"
ADJACENCY_FORMAT = "an integer user id, then zero or more integer item ids, separated by whitespace"
ACCEPTED_LAYOUTS = (
    "a folder with train.txt and test.txt (adjacency lists); "
    "a folder with u.data or ratings.dat (MovieLens); "
    "a file named u.data, a .dat file in ratings.dat format, or a .csv or .tsv file with a header"
)

_MAX_QUOTED_LINE = 200


class DataFormatError(ValueError):
    """A data file that is empty or contains a line that does not match its format.

    Attributes:
        path: The file that failed to parse.
        line_number: 1-based line of the first problem, or None when it concerns the whole file.
    """

    def __init__(
        self,
        path: Path,
        problem: str,
        expected: str,
        line_number: int | None = None,
        line: str | None = None,
    ) -> None:
        self.path = path
        self.line_number = line_number
        location = str(path) if line_number is None else f"{path}, line {line_number}"
        message = f"{location}: {problem}."
        if line is not None:
            if len(line) > _MAX_QUOTED_LINE:
                line = line[:_MAX_QUOTED_LINE] + "..."
            message += f" Line text: {line!r}."
        message += f" Expected {expected}."
        super().__init__(message)


class DownloadError(RuntimeError):
    """A data set archive that could not be downloaded, verified or extracted."""


@dataclass
class Dataset:
    """Implicit-feedback interactions with the external ids behind each dense index.

    Attributes:
        name: Data set name, such as "ml-1m", or the file or folder it was read from.
        interactions: All (user, item) pairs, deduplicated.
        user_ids: External id of each dense user index, as a string.
        item_ids: External id of each dense item index, as a string.
        timestamps: int64, shape (interactions.nnz,), aligned with `interactions.indices`: the
            earliest timestamp of each pair. None when the source has no timestamps.
        preset_split: (train, test) over the same id maps, when the source layout fixes one.
    """

    name: str
    interactions: InteractionMatrix
    user_ids: list[str]
    item_ids: list[str]
    timestamps: np.ndarray | None = None
    preset_split: tuple[InteractionMatrix, InteractionMatrix] | None = None

    def save_id_maps(self, directory: str | Path) -> None:
        """Write `user_ids.json` and `item_ids.json` (JSON lists of strings) into a folder.

        Each file is written to a temporary file in the same folder and then renamed over the
        target, so a reader never sees a partly written map.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        _write_json_atomically(directory / "user_ids.json", self.user_ids)
        _write_json_atomically(directory / "item_ids.json", self.item_ids)

    @staticmethod
    def load_id_maps(directory: str | Path) -> tuple[list[str], list[str]]:
        """Read the maps written by `save_id_maps`.

        Returns:
            (user_ids, item_ids), each the external id of every dense index.

        Raises:
            FileNotFoundError: A map file is missing.
            DataFormatError: A map file is not a JSON list of strings.
        """
        directory = Path(directory)
        user_ids = _read_id_list(directory / "user_ids.json")
        item_ids = _read_id_list(directory / "item_ids.json")
        return user_ids, item_ids


load_id_maps = Dataset.load_id_maps


def _write_json_atomically(path: Path, values: list[str]) -> None:
    file_descriptor, temporary_name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(file_descriptor, "w", encoding="utf-8") as file:
            json.dump(list(values), file)
        os.replace(temporary_name, path)
    except BaseException:
        Path(temporary_name).unlink(missing_ok=True)
        raise


def _read_id_list(path: Path) -> list[str]:
    expected = "a JSON list of strings, as written by Dataset.save_id_maps"
    if not path.is_file():
        raise FileNotFoundError(f"Id map not found: {path}. Write it with Dataset.save_id_maps.")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataFormatError(path, f"invalid JSON ({err.msg})", expected, err.lineno) from err
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        problem = f"found a {type(values).__name__}, not a list of strings"
        raise DataFormatError(path, problem, expected)
    return values


# ----------------------------------------------------------------------------- text helpers


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"Data file not found: {path}. Check the path or pass another one.")


def _read_text(path: Path, expected: str) -> str:
    """Decode a file as UTF-8 with "\\n" line ends, raising DataFormatError when it has no data."""
    _require_file(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line_number = raw.count(b"\n", 0, err.start) + 1
        line = raw.split(b"\n")[line_number - 1].decode("utf-8", errors="replace")
        raise DataFormatError(path, "invalid UTF-8 text", expected, line_number, line) from err
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if not text.strip():
        raise DataFormatError(path, "the file is empty", expected)
    return text


def _split_lines(
    path: Path, text: str, sep: str, n_fields: int, expected: str
) -> tuple[list[list[str]], np.ndarray]:
    """Split each non-blank line into exactly `n_fields` fields.

    Returns:
        The fields of each non-blank line, and int64 1-based line numbers of shape (rows,).
    """
    lines = text.split("\n")
    rows = [line.split(sep) for line in lines]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    line_numbers = np.arange(1, len(rows) + 1, dtype=np.int64)

    keep = lengths == n_fields
    for index in np.flatnonzero(~keep):
        if lines[index].strip():
            problem = f"found {lengths[index]} fields, not {n_fields}"
            raise DataFormatError(path, problem, expected, int(index) + 1, lines[index])

    if keep.all():
        return rows, line_numbers
    return [rows[index] for index in np.flatnonzero(keep)], line_numbers[keep]


def _parse_numbers(
    path: Path,
    values: Sequence[str],
    line_numbers: np.ndarray,
    line_text: Callable[[int], str],
    field: str,
    as_integer: bool,
    expected: str,
) -> np.ndarray:
    """Convert strings to int64 or float64, naming the first line whose value does not parse.

    `line_numbers[i]` is the 1-based line of `values[i]`, and `line_text(i)` returns that line.
    """
    convert = int if as_integer else float
    dtype = np.int64 if as_integer else np.float64
    try:
        return np.fromiter(map(convert, values), dtype=dtype, count=len(values))
    except (ValueError, OverflowError):
        pass

    for index, value in enumerate(values):
        try:
            np.array([convert(value)], dtype=dtype)
        except (ValueError, OverflowError) as err:
            kind = "a 64-bit integer" if as_integer else "a number"
            problem = f"{field} {value!r} is not {kind}"
            line_number = int(line_numbers[index])
            raise DataFormatError(path, problem, expected, line_number, line_text(index)) from err
    raise AssertionError("a conversion that failed on the whole column succeeded on every value")


# ----------------------------------------------------------------------------- id maps


def _index_integer_ids(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Map integer ids to dense indices in ascending order of the ids.

    The ids are returned in canonical decimal form, so a file id "007" becomes "7".
    """
    uniques, dense = np.unique(values, return_inverse=True)
    return dense.astype(np.int64), [str(value) for value in uniques.tolist()]


def _index_string_ids(values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Map string ids to dense indices, ordered numerically when every id is an integer.

    Distinct strings stay distinct ids even when they name the same number ("7" and "07").
    """
    uniques, dense = np.unique(values, return_inverse=True)
    try:
        numbers = np.fromiter(map(int, uniques), dtype=np.int64, count=len(uniques))
    except (ValueError, OverflowError):
        return dense.astype(np.int64), uniques.tolist()

    order = np.lexsort((uniques, numbers))  # by number, then by string to break ties
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[dense].astype(np.int64), uniques[order].tolist()


def _earliest_timestamps(
    users: np.ndarray, items: np.ndarray, timestamps: np.ndarray, n_items: int
) -> np.ndarray:
    """Return the earliest timestamp of each distinct pair, in `InteractionMatrix` CSR order."""
    keys = users * n_items + items
    order = np.lexsort((timestamps, keys))
    _, first = np.unique(keys[order], return_index=True)
    return timestamps[order][first]


def _dataset_from_integer_pairs(
    name: str, users: np.ndarray, items: np.ndarray, timestamps: np.ndarray | None
) -> Dataset:
    user_index, user_ids = _index_integer_ids(users)
    item_index, item_ids = _index_integer_ids(items)
    n_users, n_items = len(user_ids), len(item_ids)
    interactions = InteractionMatrix.from_pairs(user_index, item_index, n_users, n_items)
    if timestamps is not None:
        timestamps = _earliest_timestamps(user_index, item_index, timestamps, n_items)
    return Dataset(name, interactions, user_ids, item_ids, timestamps)


# ----------------------------------------------------------------------------- readers


def _read_rating_lines(path: Path, sep: str, expected: str, name: str | None) -> Dataset:
    """Read `user<sep>item<sep>rating<sep>timestamp` lines with integer ids."""
    text = _read_text(path, expected)
    rows, line_numbers = _split_lines(path, text, sep, 4, expected)
    users, items, ratings, timestamps = zip(*rows)

    def line_text(index: int) -> str:
        return sep.join(rows[index])

    user_values = _parse_numbers(path, users, line_numbers, line_text, "user id", True, expected)
    item_values = _parse_numbers(path, items, line_numbers, line_text, "item id", True, expected)
    _parse_numbers(path, ratings, line_numbers, line_text, "rating", False, expected)
    time_values = _parse_numbers(
        path, timestamps, line_numbers, line_text, "timestamp", True, expected
    )

    if name is None:
        name = path.resolve().parent.name
    return _dataset_from_integer_pairs(name, user_values, item_values, time_values)


def read_u_data(path: str | Path, name: str | None = None) -> Dataset:
    """Read a MovieLens 100K `u.data` file: `user<TAB>item<TAB>rating<TAB>timestamp` lines.

    Args:
        path: The file.
        name: Data set name; defaults to the name of the folder that contains the file.

    Raises:
        FileNotFoundError: The file does not exist.
        DataFormatError: The file is empty, or a line does not have four fields with integer
            ids, a numeric rating and an integer timestamp.
    """
    return _read_rating_lines(Path(path), "\t", U_DATA_FORMAT, name)


def read_ratings_dat(path: str | Path, name: str | None = None) -> Dataset:
    """Read a MovieLens 1M `ratings.dat` file: `UserID::MovieID::Rating::Timestamp` lines.

    Args:
        path: The file.
        name: Data set name; defaults to the name of the folder that contains the file.

    Raises:
        FileNotFoundError: The file does not exist.
        DataFormatError: The file is empty or a line does not match the format.
    """
    return _read_rating_lines(Path(path), "::", RATINGS_DAT_FORMAT, name)


def _choose_separator(path: Path, header: str, expected: str) -> str:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return ","
    if suffix == ".tsv":
        return "\t"
    for candidate in ("\t", ",", ";", "|"):
        if candidate in header:
            return candidate
    problem = "could not detect the column separator in the header, so pass sep="
    raise DataFormatError(path, problem, expected, 1, header)


def read_table(
    path: str | Path,
    user_col: str = "user_id",
    item_col: str = "item_id",
    sep: str | None = None,
    name: str | None = None,
    timestamp_col: str = "timestamp",
) -> Dataset:
    """Read a CSV or TSV file whose header row names a user column and an item column.

    Ids are kept as strings. Dense indices follow numeric order when every id is an integer,
    and string order otherwise. A column named `timestamp_col`, when the header has one, gives
    timestamps (integers such as Unix seconds, or ISO 8601 dates) that the leave-one-out
    protocol uses to hold out each user's latest interaction. Other columns are ignored.

    Args:
        path: The file.
        user_col: Header name of the user id column.
        item_col: Header name of the item id column.
        sep: Field separator. By default "," for .csv, tab for .tsv, and otherwise the first of
            tab, ",", ";" and "|" found in the header line.
        name: Data set name; defaults to the file name without its extension.
        timestamp_col: Header name of the optional timestamp column.

    Raises:
        FileNotFoundError: The file does not exist.
        DataFormatError: The file is empty, has no data rows, lacks one of the two columns, or
            has a row with the wrong number of fields, an empty id or a timestamp that is
            neither an integer nor an ISO 8601 date.
    """
    path = Path(path)
    if user_col == item_col:
        raise ValueError(f"user_col and item_col must differ, both are {user_col!r}.")
    expected = (
        f"a header row naming the columns {user_col!r} and {item_col!r}, then one row per pair"
    )

    text = _read_text(path, expected)
    header_line = text.split("\n", 1)[0]
    if sep is None:
        sep = _choose_separator(path, header_line, expected)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep, skipinitialspace=True)
    header = next(reader)

    for column in (user_col, item_col):
        if column not in header:
            problem = f"no column named {column!r} in the header, whose columns are {header}"
            hint = (
                f"{expected}. Name the columns from the header with --user-col and --item-col "
                "(user_col= and item_col= in Python)"
            )
            raise DataFormatError(path, problem, hint, 1, header_line)
    user_position = header.index(user_col)
    item_position = header.index(item_col)
    time_position = header.index(timestamp_col) if timestamp_col in header else None

    users: list[str] = []
    items: list[str] = []
    times: list[str] = []
    line_numbers: list[int] = []
    try:
        for row in reader:
            if len(row) != len(header) or not row[user_position] or not row[item_position]:
                if not any(field.strip() for field in row):
                    continue  # a blank line
                problem = f"found {len(row)} fields {row}, not {len(header)} with non-empty ids"
                raise DataFormatError(path, problem, expected, reader.line_num, sep.join(row))
            users.append(row[user_position])
            items.append(row[item_position])
            if time_position is not None:
                times.append(row[time_position])
                line_numbers.append(reader.line_num)
    except csv.Error as err:
        line_number = reader.line_num
        line = text.split("\n")[line_number - 1] if line_number else None
        raise DataFormatError(path, f"invalid CSV ({err})", expected, line_number, line) from err
    if not users:
        raise DataFormatError(path, "the header is followed by no data rows", expected)

    user_index, user_ids = _index_string_ids(np.array(users))
    item_index, item_ids = _index_string_ids(np.array(items))
    n_users, n_items = len(user_ids), len(item_ids)
    interactions = InteractionMatrix.from_pairs(user_index, item_index, n_users, n_items)
    timestamps = None
    if time_position is not None:
        timestamps = _parse_times(path, text, times, line_numbers, timestamp_col, expected)
        timestamps = _earliest_timestamps(user_index, item_index, timestamps, n_items)
    return Dataset(name or path.stem, interactions, user_ids, item_ids, timestamps)


def _parse_times(
    path: Path,
    text: str,
    times: list[str],
    line_numbers: list[int],
    column: str,
    expected: str,
) -> np.ndarray:
    """Convert a timestamp column of integers or ISO 8601 dates to int64 seconds.

    Raises:
        DataFormatError: Naming the first line whose value is neither.
    """
    try:
        return np.fromiter(map(int, times), dtype=np.int64, count=len(times))
    except (ValueError, OverflowError):
        pass
    try:
        return np.array(times, dtype="datetime64[s]").astype(np.int64)
    except ValueError:
        pass
    lines = text.split("\n")
    return _parse_numbers(
        path,
        times,
        np.array(line_numbers),
        lambda index: lines[line_numbers[index] - 1],
        column,
        True,
        f"{expected}, and integer or ISO 8601 timestamps in the {column!r} column",
    )


def _read_adjacency_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse `user item item ...` lines.

    Returns:
        int64 arrays: the user of each non-blank line, then the user and the item of each pair.
    """
    text = _read_text(path, ADJACENCY_FORMAT)
    lines = text.split("\n")
    line_tokens = [line.split() for line in lines]
    nonblank_lines = [index for index, tokens in enumerate(line_tokens) if tokens]
    tokens = [token for index in nonblank_lines for token in line_tokens[index]]
    lengths = np.array([len(line_tokens[index]) for index in nonblank_lines], dtype=np.int64)

    # Every token keeps the index of its line, so that a parse error can name the line.
    token_lines = np.repeat(np.array(nonblank_lines, dtype=np.int64), lengths)
    values = _parse_numbers(
        path,
        tokens,
        token_lines + 1,
        lambda index: lines[token_lines[index]],
        "id",
        True,
        ADJACENCY_FORMAT,
    )

    starts = np.cumsum(lengths) - lengths
    row_users = values[starts]
    is_item = np.ones(len(values), dtype=bool)
    is_item[starts] = False
    pair_users = np.repeat(row_users, lengths - 1)
    return row_users, pair_users, values[is_item]


def read_adjacency(directory: str | Path, name: str | None = None) -> Dataset:
    """Read a folder with `train.txt` and `test.txt` adjacency lists into a preset split.

    Each line is `user item item ...` with integer ids. A user line may list no items, and a
    user may be missing from `test.txt`. Both matrices share the id maps of the union.

    Args:
        directory: The folder that contains both files.
        name: Data set name; defaults to the folder name.

    Raises:
        FileNotFoundError: Either file is missing.
        DataFormatError: A file is empty or contains a token that is not an integer.
    """
    directory = Path(directory)
    train_rows, train_users, train_items = _read_adjacency_file(directory / "train.txt")
    test_rows, test_users, test_items = _read_adjacency_file(directory / "test.txt")

    # Index the line users too, so that users without items still get a row.
    user_index, user_ids = _index_integer_ids(
        np.concatenate([train_users, test_users, train_rows, test_rows])
    )
    item_index, item_ids = _index_integer_ids(np.concatenate([train_items, test_items]))
    n_users, n_items = len(user_ids), len(item_ids)
    n_train = len(train_items)
    n_pairs = n_train + len(test_items)

    train = InteractionMatrix.from_pairs(
        user_index[:n_train], item_index[:n_train], n_users, n_items
    )
    test = InteractionMatrix.from_pairs(
        user_index[n_train:n_pairs], item_index[n_train:], n_users, n_items
    )
    interactions = InteractionMatrix.from_pairs(user_index[:n_pairs], item_index, n_users, n_items)
    name = name or directory.resolve().name
    return Dataset(name, interactions, user_ids, item_ids, preset_split=(train, test))


def read_path(path: str | Path, user_col: str = "user_id", item_col: str = "item_id") -> Dataset:
    """Read a data file or folder, choosing the reader from its layout.

    A folder with `train.txt` is read as adjacency lists, otherwise a folder with `u.data` or
    `ratings.dat` as MovieLens. A file is read by its name: `u.data`, `*.dat`, `*.csv`, `*.tsv`.
    `user_col` and `item_col` name the header columns of a CSV or TSV file.

    Raises:
        FileNotFoundError: The path does not exist, or a folder contains no known data file.
        ValueError: A file's name matches no known layout.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        if (path / "train.txt").is_file():
            return read_adjacency(path)
        if (path / "u.data").is_file():
            return read_u_data(path / "u.data", name=path.resolve().name)
        if (path / "ratings.dat").is_file():
            return read_ratings_dat(path / "ratings.dat", name=path.resolve().name)
        raise FileNotFoundError(
            f"No data file found in the folder {path}. Accepted layouts: {ACCEPTED_LAYOUTS}."
        )

    _require_file(path)
    suffix = path.suffix.lower()
    if path.name == "u.data":
        return read_u_data(path)
    if suffix == ".dat":
        return read_ratings_dat(path)
    if suffix in (".csv", ".tsv"):
        return read_table(path, user_col=user_col, item_col=item_col)
    raise ValueError(f"Cannot tell the layout of {path}. Accepted layouts: {ACCEPTED_LAYOUTS}.")


# ----------------------------------------------------------------------------- named data sets


def resolve_data_home(data_home: str | Path | None = None) -> Path:
    """Return the folder that contains named data sets.

    The order is: the `data_home` argument, the `HDN_DATA_HOME` environment variable,
    `$XDG_CACHE_HOME/hdn/data`, and `~/.cache/hdn/data`.
    """
    if data_home is not None:
        return Path(data_home).expanduser()
    if os.environ.get(DATA_HOME_ENV):
        return Path(os.environ[DATA_HOME_ENV]).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home).expanduser() / "hdn" / "data"


def _has_data_layout(folder: Path) -> bool:
    if (folder / "train.txt").is_file() and (folder / "test.txt").is_file():
        return True
    return (folder / "u.data").is_file() or (folder / "ratings.dat").is_file()


def download_dataset(name: str, data_home: str | Path | None = None) -> Path:
    """Download a named data set archive, check its SHA-256 and extract it into the data home.

    The archive is kept in `<data home>/downloads`. Files are extracted to a temporary folder
    first and the member listed in `DOWNLOADS` is moved into place last, so an interrupted run
    never leaves a folder that looks complete.

    Args:
        name: A key of `DOWNLOADS`.
        data_home: See `resolve_data_home`.

    Returns:
        The extracted data set folder, `<data home>/<name>`.

    Raises:
        DownloadError: The download failed, the checksum did not match, or the archive lacks
            the expected member.
    """
    if name not in DOWNLOADS:
        known = sorted(DOWNLOADS)
        raise ValueError(f"No download is known for {name!r}. Known data sets: {known}.")
    import pooch  # Imported here because reading local files does not need it.
    import requests

    url, sha256, member = DOWNLOADS[name]
    home = resolve_data_home(data_home)
    home.mkdir(parents=True, exist_ok=True)
    folder = home / name

    logger.info("Downloading %s from %s into %s", name, url, home)
    try:
        archive = pooch.retrieve(
            url,
            known_hash=f"sha256:{sha256}",
            fname=PurePosixPath(url).name,
            path=home / "downloads",
            progressbar=False,
        )
    except ValueError as err:
        raise DownloadError(
            f"The archive for {name} from {url} failed its SHA-256 check, so it was deleted and "
            f"nothing was extracted ({err}). Retry the download; if the publisher has replaced "
            f"the archive, update the hash in DOWNLOADS[{name!r}]."
        ) from err
    except requests.exceptions.RequestException as err:
        raise DownloadError(
            f"Could not download {name} from {url} ({err}). Check the network connection, "
            f"place the files in {folder} by hand, or set {DATA_HOME_ENV} to a folder that "
            f"already contains {name}/."
        ) from err

    _extract_archive(Path(archive), member, folder)
    logger.info("Extracted %s into %s", name, folder)
    return folder


def _extract_archive(archive: Path, member: str, folder: Path) -> None:
    """Extract a zip archive so that the top folder of `member` becomes `folder`.

    `member` is moved into place last, after every other file.
    """
    member_parts = PurePosixPath(member).parts
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}-") as temporary:
        try:
            with zipfile.ZipFile(archive) as zip_file:
                names = zip_file.namelist()
                if member not in names:
                    raise DownloadError(
                        f"The archive {archive} has no member {member!r} (first members: "
                        f"{names[:5]}). Delete it and retry, or fix the member path in DOWNLOADS."
                    )
                zip_file.extractall(temporary)
        except zipfile.BadZipFile as err:
            raise DownloadError(
                f"{archive} is not a valid zip archive ({err}). Delete it and retry."
            ) from err

        # The member's top folder (the archive root when it has none) becomes `folder`.
        source = Path(temporary)
        if len(member_parts) > 1:
            source = source / member_parts[0]
        marker = Path(temporary).joinpath(*member_parts)
        files = [path for path in source.rglob("*") if path.is_file() and path != marker]
        for path in [*files, marker]:
            target = folder / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)


def load_dataset(
    name_or_path: str,
    data_home: str | Path | None = None,
    user_col: str = "user_id",
    item_col: str = "item_id",
) -> Dataset:
    """Load a named data set from the data home, downloading it if needed, or read a path.

    Names are the keys of `DOWNLOADS` ("ml-100k", "ml-1m") and take precedence over a path of
    the same name. A named set is read from `<data home>/<name>`, which may contain the official
    GroupLens files (`u.data`, `ratings.dat`) or `train.txt` and `test.txt` adjacency lists,
    which are preferred when both are present. Anything else is read with `read_path`.

    Args:
        name_or_path: A data set name, or a data file or folder.
        data_home: Folder of named data sets; see `resolve_data_home` for the default.
        user_col: Header name of the user column of a CSV or TSV file.
        item_col: Header name of the item column of a CSV or TSV file.

    Raises:
        FileNotFoundError: The argument is neither a known name nor an existing path.
        DownloadError: A named set is missing locally and could not be downloaded.
        DataFormatError: A data file does not match its format.
    """
    if name_or_path in DOWNLOADS:
        folder = resolve_data_home(data_home) / name_or_path
        if not _has_data_layout(folder):
            download_dataset(name_or_path, data_home)
        dataset = read_path(folder)
        dataset.name = name_or_path
        return dataset

    path = Path(name_or_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{name_or_path!r} is neither a known data set name ({', '.join(DOWNLOADS)}) nor an "
            f"existing path. Accepted layouts: {ACCEPTED_LAYOUTS}."
        )
    return read_path(path, user_col=user_col, item_col=item_col)


# ----------------------------------------------------------------------------- evaluation split


def paper_split(
    interactions: InteractionMatrix, test_share: float = 0.2, seed: int = 0
) -> tuple[InteractionMatrix, InteractionMatrix]:
    """Split each user's items into train and test at random, the HDN evaluation protocol.

    Each user with n items sends round(test_share * n) of them to test (Python rounding, ties
    to even), capped at n - 1 so that every user keeps at least one training item. Test items
    that then appear in no user's training row are moved back to train, so every test item has
    been seen in training.

    Args:
        interactions: The pairs to split.
        test_share: Share of each user's items drawn for test, in [0, 1).
        seed: Seed of the numpy Generator; the same seed gives the same split.

    Returns:
        (train, test), disjoint and together equal to `interactions`, with the same shape.
    """
    if not 0.0 <= test_share < 1.0:
        raise ValueError(
            f"test_share must be in [0, 1), got {test_share}. It is the share of each user's "
            "items that goes to test."
        )
    users, items = interactions.to_pairs()
    lengths = interactions.row_lengths()
    n_test = np.minimum(np.rint(test_share * lengths).astype(np.int64), np.maximum(lengths - 1, 0))

    # Random keys sorted within each user give a uniform random order of that user's items.
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(users)), users))
    rank_in_user = np.arange(len(users)) - np.repeat(interactions.indptr[:-1], lengths)
    is_test = np.zeros(len(users), dtype=bool)
    is_test[order] = rank_in_user < n_test[users[order]]

    train_counts = np.bincount(items[~is_test], minlength=interactions.n_items)
    is_test &= train_counts[items] > 0

    return _select_pairs(interactions, ~is_test), _select_pairs(interactions, is_test)


def _select_pairs(interactions: InteractionMatrix, keep: np.ndarray) -> InteractionMatrix:
    """Return the pairs where `keep` is True, `keep` being bool of shape (nnz,) in row order.

    Rows of a subset stay sorted and unique, so the CSR arrays are sliced directly. This skips
    the deduplication in `InteractionMatrix.from_pairs`, which is not needed and is slow on
    a million pairs.
    """
    users, _ = interactions.to_pairs()
    counts = np.bincount(users[keep], minlength=interactions.n_users)
    indptr = np.zeros(interactions.n_users + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return InteractionMatrix(indptr, interactions.indices[keep], interactions.n_items)
