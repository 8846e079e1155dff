"""Read records from JSON Lines, JSON, CSV/TSV, Parquet, a directory of these, or a hub name.

Every record keeps where it came from (``path`` and a 1-based ``line``), so that any later
check -- a missing field, a message out of order, a prompt too long -- can name the exact
place in the user's file. What ``line`` counts depends on the format:

    .jsonl / .ndjson   the physical line in the file (blank lines are skipped, not renumbered)
    .json              the element's 1-based index in the array of records
    .csv / .tsv        the 1-based data row (the header row is not counted)
    .parquet           the 1-based row
    Arrow directory    the 1-based row of the split (``path`` is the split's folder)
    hub dataset name   the 1-based row of the split

A directory may hold named splits, laid out as a hub dataset's files are, or as ``datasets``
saves them; ``split`` picks one (``_directory_splits`` says how each layout is read):

    train_prefs.jsonl, test_prefs.jsonl                     a file per split
    data/train_prefs-00000-of-00001.parquet, data/test_...  the hub's shards, in data/ or not
    train_prefs/, test_prefs/                               a folder of files per split
    dataset_dict.json, train_prefs/, test_prefs/            DatasetDict.save_to_disk
    state.json, dataset_info.json, data-00000-of-00001.arrow  Dataset.save_to_disk: one split

A directory whose layout names two or more splits is never read whole (train and test would
be trained on together): without ``split`` that is an error listing the splits.

CSV and Parquet cannot always store lists of messages natively, so a text cell that holds a
JSON list of ``{"role": ..., "content": ...}`` objects is decoded into that list (only then:
any other text stays text, so a prompt such as ``"[1, 2] is a list"`` is left alone).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from preflab.errors import DataError

JSONL_SUFFIXES = (".jsonl", ".ndjson")
SUFFIXES = (*JSONL_SUFFIXES, ".json", ".parquet", ".csv", ".tsv")
_EXPECTED_FILE = "a .jsonl, .ndjson, .json, .parquet, .csv or .tsv file, a directory of them, or a Hugging Face dataset name"
# A hub name is "owner/name" or "name": word characters, dots and dashes, at most one slash.
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# JSON deeper than this is no record anyone trains on (a chat record is 3 levels deep), and
# much deeper JSON makes json.loads, or a later ==, raise RecursionError.
MAX_DEPTH = 100
# The most characters of a user's file that a message quotes: enough to recognise a value,
# never a whole line of whatever file --data happened to point at.
EXCERPT_CHARS = 40
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_DIGITS = frozenset("0123456789")
# A shard of a split, as the hub and ``push_to_hub`` name them: train-00000-of-00002.parquet
# (older uploads add a hash: train-00000-of-00001-4f3a2b1c.parquet).
_SHARD = re.compile(r"^(?P<split>.+?)-\d{5}-of-\d{5}(-[0-9a-f]+)?$")
# The words that make a file name a split's: train_prefs.jsonl, my_test.csv, dev.parquet, ...
_SPLIT_WORDS = {"train": "train", "training": "train", "test": "test", "testing": "test",
                "validation": "validation", "valid": "validation", "val": "validation",
                "dev": "validation", "eval": "eval", "evaluation": "eval"}
_SPLIT_WORD = re.compile(rf"(?:^|[-_.])({'|'.join(_SPLIT_WORDS)})(?:$|[-_.])", re.IGNORECASE)
# What ``datasets.save_to_disk`` writes: a DatasetDict's list of splits; a Dataset's files.
ARROW_DICT = "dataset_dict.json"
ARROW_DATASET = ("state.json", "dataset_info.json")
_SPLIT_NAME = re.compile(r"[\w.-]{1,60}")


@dataclass(frozen=True)
class Record:
    """One record as read: its fields, the file it came from and its 1-based line (or row)."""

    data: dict
    path: str
    line: int


def read_records(source: str, *, split: str | None = None, config: str | None = None,
                 split_flag: str | None = None) -> list[Record]:
    """Read every record of ``source`` (a file, a directory of files, or a hub dataset name).

    ``split`` names the split to read: of a hub dataset (default ``"train"``), or of a
    directory with named splits (needed when it holds several; ``_directory_splits``). A
    single file is one split: a ``split`` other than the one its name gives is refused.
    ``config`` is a hub dataset's configuration (``datasets.load_dataset(name, config)``),
    refused for a local source. ``split_flag``, the flag that sets ``split``, is named in
    the error for a directory of several splits. Raises ``DataError`` for a missing file,
    undecodable bytes, invalid JSON, a record that is not an object, a split that is not
    there, or a source with no records at all.
    """
    path = Path(os.path.expanduser(str(source)))
    split, config = split or None, config or None
    try:
        if config and path.exists():
            raise DataError(f"a configuration ({config!r}) is given, but this is a local "
                            "path, which has none", path=str(source),
                            expected="no configuration, or the configuration's own folder "
                                     "as the path")
        if path.is_dir():
            records = [r for part in _split_parts(path, split, split_flag)
                       for r in _read_part(part)]
        elif path.is_file():
            _check_file_split(path, split)
            records = _read_file(path)
        elif _looks_like_hub_name(str(source)):
            records = _read_hub(str(source), split or "train", config)
        else:
            raise DataError("no such file or directory", path=str(source), expected=_EXPECTED_FILE)
    except OSError as e:  # permission denied, a name too long, a file gone while reading ...
        raise DataError(f"cannot be read: {e.strerror or type(e).__name__}",
                        path=str(e.filename or source), expected=_EXPECTED_FILE) from None
    if not records:
        raise DataError("no records found (the file is empty)", path=str(source),
                        expected="at least one record")
    return records


def check_split(source: str, split: str | None, *, split_flag: str | None = None) -> None:
    """Raise the ``DataError`` that ``read_records`` would for ``split`` of a local file or
    directory (not there; none named where several are), without reading a record."""
    path = Path(os.path.expanduser(str(source)))
    split = split or None
    try:
        if path.is_dir():
            _split_parts(path, split, split_flag)
        elif path.is_file():
            _check_file_split(path, split)
    except OSError as e:
        raise DataError(f"cannot be read: {e.strerror or type(e).__name__}",
                        path=str(e.filename or source), expected=_EXPECTED_FILE) from None


def _data_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_file() and _suffix(p) in SUFFIXES
                  and not p.name.startswith("."))


def _file_split(path: Path) -> str:
    """The split a data file's name gives: ``train_prefs`` for train_prefs.jsonl and for
    train_prefs-00000-of-00001.parquet."""
    shard = _SHARD.match(path.stem)
    return shard["split"] if shard else path.stem


def _is_arrow_dataset(directory: Path) -> bool:
    return all((directory / name).is_file() for name in ARROW_DATASET)


def _directory_splits(directory: Path) -> tuple[dict[str, list[Path]], bool]:
    """A directory's data by split name, in order, and whether its layout names splits.

    The first of these that applies: a ``DatasetDict`` saved to disk (``dataset_dict.json``:
    one Arrow folder per split); a ``Dataset`` saved to disk (one split, named by its
    ``state.json``, else ``""``); data files, grouped by the split their names give; a
    ``data/`` folder (the hub's layout), read by these same rules; folders of data files or
    of Arrow datasets, one split each. Data files name their splits when any is a hub shard,
    or when the names tell splits apart by the words in them (train_prefs beside test_prefs,
    train beside extra); otherwise (part1, part2; train_a, train_b) the directory is a plain
    directory of files, read whole.
    """
    if (directory / ARROW_DICT).is_file():
        names = _json_field(directory / ARROW_DICT, "splits")
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise DataError("the file has no list of split names", path=str(directory / ARROW_DICT),
                            expected='{"splits": ["train", ...]}, as DatasetDict.save_to_disk '
                                     "writes it")
        return {name: [directory / name] for name in names}, True
    if _is_arrow_dataset(directory):
        name = _json_field(directory / "state.json", "_split")
        return {name if isinstance(name, str) else "": [directory]}, False
    files = _data_files(directory)
    if files:
        parts: dict[str, list[Path]] = {}
        for f in files:
            parts.setdefault(_file_split(f), []).append(f)
        roles = {_split_role(name) for name in parts}
        named = any(_SHARD.match(f.stem) for f in files) or (len(roles) > 1 and roles != {None})
        return parts, named
    if (directory / "data").is_dir():
        parts, _ = _directory_splits(directory / "data")
        return parts, True
    parts = {}
    for folder in sorted(p for p in directory.iterdir() if p.is_dir()
                         and not p.name.startswith(".")):
        found = [folder] if _is_arrow_dataset(folder) else _data_files(folder)
        if found:
            parts[folder.name] = found
    return parts, True


def _split_role(name: str) -> str | None:
    """Which split a file name says it holds (train, test, validation, eval), if any."""
    found = _SPLIT_WORD.search(name)
    return _SPLIT_WORDS[found[1].lower()] if found else None


def _json_field(path: Path, key: str) -> Any:
    try:
        document = json.loads(_decode_whole(path.read_bytes(), path))
    except (ValueError, RecursionError):
        raise DataError("not valid JSON", path=str(path),
                        expected="the file as datasets' save_to_disk writes it") from None
    return document.get(key) if isinstance(document, dict) else None


def _split_parts(directory: Path, split: str | None, split_flag: str | None = None) -> list[Path]:
    """The files and Arrow folders of ``directory`` to read for ``split`` (None: all of
    them, when the directory does not hold several named splits)."""
    parts, named = _directory_splits(directory)
    if not parts:
        raise DataError("directory holds no data files", path=str(directory),
                        expected=_EXPECTED_FILE)
    shown = _split_list(parts)
    if split is not None:
        if split not in parts:
            if list(parts) == [""]:
                raise DataError(f"no split {split!r}: the directory holds one dataset, with no "
                                "split name", path=str(directory),
                                expected="no split for this directory")
            raise DataError(f"no split {split!r} in the directory", path=str(directory),
                            expected=f"one of its splits: {shown}")
        return parts[split]
    if named and len(parts) > 1:
        example = _example(parts)
        example = f"{split_flag} {example}" if split_flag else example
        raise DataError(f"the directory holds {len(parts)} splits ({shown}) and no split was "
                        "named, so it is not read whole", path=str(directory),
                        expected=f"a split to read, such as {example}, or the path of one "
                                 "split's file or folder")
    return [p for found in parts.values() for p in found]


def _split_list(names: Iterable[str]) -> str:
    """Split names for a message: each as it is, or excerpted if odd; at most 20."""
    names = list(names)
    shown = ", ".join(n if _SPLIT_NAME.fullmatch(n) else excerpt(n) for n in names[:20])
    return shown + (f" and {len(names) - 20} more" if len(names) > 20 else "")


def _example(parts: dict[str, list[Path]]) -> str:
    return next((n for n in parts if n.lower().startswith("train")), next(iter(parts)))


def _check_file_split(path: Path, split: str | None) -> None:
    """A single file is one split: the one its name gives (train.jsonl, train-00000-of-...)."""
    if split is not None and split != _file_split(path):
        raise DataError(f"no split {split!r}: this is a single file, whose name gives the split "
                        f"{_file_split(path)!r}", path=str(path),
                        expected="no split for a single file, or the directory that holds "
                                 "the splits")


def _read_part(path: Path) -> list[Record]:
    """A data file, or an Arrow dataset folder (``Dataset.save_to_disk``)."""
    return _read_arrow(path) if path.is_dir() else _read_file(path)


def _read_arrow(directory: Path) -> list[Record]:
    try:
        import datasets

        dataset = datasets.load_from_disk(str(directory))
        rows = dataset.to_list()
    except Exception as e:  # a foreign or cut folder: datasets raises several types
        raise DataError(f"not a readable Arrow dataset: {_one_line(e)}", path=str(directory),
                        expected="a folder written by datasets' save_to_disk") from None
    return [_checked_row(dict(row), str(directory), i) for i, row in enumerate(rows, start=1)]


def _suffix(path: Path) -> str:
    return path.suffix.lower()


def _looks_like_hub_name(source: str) -> bool:
    # A path the user meant as a local file (has a data extension, starts with ./ or ~, or
    # has more than one separator) gets "file not found" at once, not a slow hub lookup.
    return not source.lower().endswith(SUFFIXES) and bool(_HUB_NAME.match(source))


def _read_file(path: Path) -> list[Record]:
    suffix = _suffix(path)
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(path, path.read_bytes())
    if suffix == ".json":
        return _read_json(path)
    if suffix in (".csv", ".tsv"):
        return _read_csv(path, delimiter="\t" if suffix == ".tsv" else ",")
    if suffix == ".parquet":
        return _read_parquet(path)
    raise DataError(f"unsupported file type {suffix or '(no extension)'!r}", path=str(path),
                    expected=_EXPECTED_FILE)


def _decode_line(raw: bytes, path: Path, line: int) -> str:
    """Strict UTF-8, so a stray Latin-1 byte is reported where it is instead of silently mangled."""
    if line == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]  # a byte-order mark some editors write; not part of the data
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"bytes that are not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})",
            path=str(path), line=line, expected="a file saved as UTF-8 text",
        ) from None


def _read_jsonl(path: Path, raw: bytes) -> list[Record]:
    records = []
    for number, raw_line in enumerate(raw.split(b"\n"), start=1):
        if not raw_line.strip():
            continue
        text = _decode_line(raw_line, path, number)
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg}: column {e.colno}", path=str(path),
                            line=number, expected="one JSON object per line") from None
        except (RecursionError, ValueError):  # nested too deep, or an integer too long
            raise _limit_error(text, path, number) from None
        if _may_be_too_deep(text) and _deeper_than(value, MAX_DEPTH):
            raise _limit_error(text, path, number)
        if not isinstance(value, dict):
            raise DataError(f"the line holds a JSON {_json_type(value)}, not an object",
                            path=str(path), line=number,
                            expected='one JSON object per line, such as {"text": "..."}')
        records.append(Record(value, str(path), number))
    return records


def _read_json(path: Path) -> list[Record]:
    raw = path.read_bytes()
    text = _decode_whole(raw, path)
    try:
        document = json.loads(text)
    except json.JSONDecodeError as e:
        # Many ".json" files are really JSON Lines; read them as such unless the file
        # clearly starts an array, where the whole-document error is the useful one.
        if text.lstrip().startswith("["):
            raise DataError(f"invalid JSON: {e.msg}: column {e.colno}", path=str(path),
                            line=e.lineno, expected="a JSON array of objects") from None
        return _read_jsonl(path, raw)
    except (RecursionError, ValueError):  # nested too deep, or an integer too long
        raise _limit_error(text, path, None) from None
    if _may_be_too_deep(text) and _deeper_than(document, MAX_DEPTH):
        raise _limit_error(text, path, None)
    items = _records_list(document, path)
    records = []
    for index, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            raise DataError(f"element {index} of the array is a JSON {_json_type(item)}, "
                            "not an object", path=str(path), line=index,
                            expected="an array of JSON objects")
        records.append(Record(item, str(path), index))
    return records


FORMAT_FIELDS = {
    "language-modeling": ("text",),
    "prompt-completion": ("prompt", "completion"),
    "conversational": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "implicit-preference": ("chosen", "rejected"),
    "unpaired": ("prompt", "completion", "label"),
    "prompt-only": ("prompt",),
}
"""The fields that identify each record format, by its name (``formats.RecordKind`` reads
them here): a JSON object whose one list is under one of these names is a record, not a
wrapper around a list of records."""
RECORD_FIELDS = frozenset(f for fields in FORMAT_FIELDS.values() for f in fields)


def _records_list(document: Any, path: Path) -> list:
    """The list of records in a JSON document: the array itself, or ``{"data": [...]}``."""
    if isinstance(document, list):
        return document
    if isinstance(document, dict):
        lists = [k for k, v in document.items() if isinstance(v, list)]
        # {"messages": [...]} is one record, not a wrapper around a list of records.
        if len(lists) == 1 and lists[0] not in RECORD_FIELDS:
            return document[lists[0]]
    raise DataError(
        f"the document is a JSON {_json_type(document)}, not a list of records", path=str(path),
        expected='a JSON array of objects, an object with one list-valued key such as '
                 '{"data": [...]}, or one JSON object per line',
    )


def _decode_whole(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"bytes that are not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column})",
            path=str(path), line=line, expected="a file saved as UTF-8 text",
        ) from None


def _read_csv(path: Path, *, delimiter: str) -> list[Record]:
    text = _decode_whole(path.read_bytes(), path)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    records: list[Record] = []
    try:
        header = next(reader, None)
        if header is None:
            return records
        twice = sorted({name for name in header if header.count(name) > 1})
        if twice:
            raise DataError(f"the header names the column {excerpt(twice[0])} twice",
                            path=str(path), expected="a header row of distinct column names")
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # a blank line, as the csv module reads it
            number = len(records) + 1
            if len(row) != len(header):
                raise DataError(f"the row has {len(row)} cells but the header names "
                                f"{len(header)} columns", path=str(path), line=number,
                                expected=f"{len(header)} cells per row (columns: "
                                         f"{field_names(header)})")
            data = {name: _maybe_messages(cell) for name, cell in zip(header, row)}
            records.append(Record(data, str(path), number))
    except csv.Error as e:
        limit = csv.field_size_limit()
        if "field limit" in str(e):
            raise DataError(f"a cell is longer than the CSV reader's limit of {limit:,} "
                            "characters", path=str(path), line=len(records) + 1,
                            expected="shorter cells, or a .jsonl or .parquet file for long "
                                     "texts") from None
        raise DataError(f"malformed CSV: {_one_line(e, EXCERPT_CHARS * 2)}", path=str(path),
                        line=len(records) + 1) from None
    return records


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for a corrupt or foreign file
        raise DataError(f"not a readable Parquet file: {_one_line(e)}", path=str(path)) from None
    return [_checked_row({k: _maybe_messages(v) for k, v in row.items()}, str(path), i)
            for i, row in enumerate(rows, start=1)]


def _checked_row(row: dict, path: str, line: int) -> Record:
    """A row of a Parquet file or hub dataset as a record, refused if nested too deeply."""
    for name, value in row.items():
        if _deeper_than(value, MAX_DEPTH - 1):
            raise DataError(f"the value is nested more than {MAX_DEPTH} levels deep", path=path,
                            line=line, field=_field_name(str(name)),
                            expected=f"records nested at most {MAX_DEPTH} levels deep")
    return Record(row, path, line)


def _maybe_messages(value: Any) -> Any:
    """Decode a text cell that holds a JSON list of chat messages; leave anything else alone."""
    if not isinstance(value, str) or not value.lstrip().startswith("["):
        return value
    try:
        decoded = json.loads(value)
    except (RecursionError, ValueError):  # not JSON, nested too deep, an integer too long
        return value
    if _may_be_too_deep(value) and _deeper_than(decoded, MAX_DEPTH):
        return value
    is_messages = isinstance(decoded, list) and decoded and all(
        isinstance(m, dict) and "role" in m for m in decoded)
    return decoded if is_messages else value


def _load_hub_dataset(name: str, split: str, config: str | None = None) -> list[dict]:
    """Load a split from the Hugging Face hub (or its local cache); tests replace this."""
    import datasets

    return list(datasets.load_dataset(name, config, split=split))


# What ``datasets`` says when a split or a configuration is not there (datasets 2 to 5).
_UNKNOWN_SPLIT = re.compile(r'Unknown split "[^"]*"\. Should be one of \[(?P<names>[^\]]*)\]')
_UNKNOWN_CONFIG = re.compile(r"BuilderConfig '[^']*' not found\. Available: \[(?P<names>[^\]]*)\]")
_NO_CONFIG = re.compile(r"Config name is missing\..*available configs: \[(?P<names>[^\]]*)\]",
                        re.DOTALL)


def _read_hub(name: str, split: str, config: str | None = None) -> list[Record]:
    try:
        rows = _load_hub_dataset(name, split, config)
    except Exception as e:  # network, auth, missing split: all mean "cannot use this name"
        raise _hub_error(name, split, config, e) from None
    return [_checked_row(dict(row), name, i) for i, row in enumerate(rows, start=1)]


def _hub_error(name: str, split: str, config: str | None, error: Exception) -> DataError:
    """A missing split or configuration named as such (with the ones there are), or else
    the loader's own words."""
    text = str(error)
    for pattern, problem, expected in (
            (_UNKNOWN_SPLIT, f"the dataset has no split {split!r}", "one of its splits"),
            (_UNKNOWN_CONFIG, f"the dataset has no configuration {config!r}",
             "one of its configurations"),
            (_NO_CONFIG, "the dataset has several configurations and none was named",
             "one of its configurations")):
        found = pattern.search(text)
        if found:
            names = [n.strip().strip("'\"") for n in found["names"].split(",") if n.strip()]
            return DataError(problem, path=name,
                             expected=f"{expected}: {_split_list(dict.fromkeys(names))}")
    return DataError(
        "no such file or directory, and it could not be loaded as a Hugging Face dataset "
        f"name either ({type(error).__name__}: {_one_line(error)})",
        path=name, expected=_EXPECTED_FILE,
    )


def _one_line(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
             type(None): "null", dict: "object"}
    return names.get(type(value), type(value).__name__)


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """``text`` quoted for a message: its repr, cut to ``limit`` characters and marked if cut.

    Every message that shows what a user's file holds goes through here, so a --data that
    points at the wrong file (a key, a password file) never has a whole line printed.
    """
    text = str(text)
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... (an excerpt: the first {limit} of {len(text):,} characters)"


def field_names(names: Any) -> str:
    """Field or column names for a message: plain names as they are, anything else excerpted."""
    names = [str(n) for n in names]
    if names and all(_PLAIN_NAME.fullmatch(n) for n in names):
        shown = ", ".join(names[:10])
        return shown + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return excerpt(", ".join(names)) if names else "none"


def _may_be_too_deep(text: str) -> bool:
    # Only text with this many brackets can nest this deep; most records skip the walk.
    return text.count("[") + text.count("{") > MAX_DEPTH


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether lists and dicts nest more than ``limit`` levels in ``value`` (no recursion)."""
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _limit_error(text: str, path: Path, line: int | None) -> DataError:
    """The DataError for JSON that exceeds a limit: nesting, or the digits of an integer.

    ``line`` is the JSONL line ``text`` came from; None for a whole .json document, whose
    physical line of the problem is counted here (as for invalid JSON).
    """
    record_depth = 1 if line is not None else 2 if text.lstrip().startswith("[") else 3
    offset, field, problem = _locate_limit(text, record_depth)
    if line is None:
        line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    if problem == "number":
        digits = sys.get_int_max_str_digits()
        message = f"a number with more than {digits:,} digits (column {column})"
        expected = f"numbers of at most {digits:,} digits; write longer ones as strings"
    else:
        message = f"JSON nested more than {MAX_DEPTH} levels deep (column {column})"
        expected = f"records nested at most {MAX_DEPTH} levels deep"
    return DataError(message, path=str(path), line=line, field=field, expected=expected)


def _locate_limit(text: str, record_depth: int) -> tuple[int, str | None, str]:
    """Where ``text`` first nests past ``MAX_DEPTH`` or holds an integer too long for Python.

    Returns ``(offset, field, problem)``: ``field`` is the record's key that holds it (a key
    of an object ``record_depth`` levels down: 1 in a JSONL line, 2 in a JSON array of
    records), ``problem`` is ``"depth"`` or ``"number"``. A scan of the raw text, run only
    once ``json.loads`` has failed or its value was too deep, so it can assume valid JSON.
    """
    digits = sys.get_int_max_str_digits() or len(text) + 1
    keys: dict[int, str] = {}  # depth -> the last key read in the object at that depth
    depth, i, n = 0, 0, len(text)
    while i < n:
        ch = text[i]
        if ch == '"':
            end = i + 1
            while end < n and text[end] != '"':
                end += 2 if text[end] == "\\" else 1
            after = end + 1
            while after < n and text[after] in " \t\r\n":
                after += 1
            if after < n and text[after] == ":":
                keys[depth] = text[i + 1:end]
            i = end + 1
            continue
        if ch in "[{":
            depth += 1
            keys.pop(depth, None)
            if depth > MAX_DEPTH:
                return i, _raw_key(keys.get(record_depth)), "depth"
        elif ch in "]}":
            depth -= 1
        elif ch in _DIGITS:
            end = i
            while end < n and text[end] in _DIGITS:
                end += 1
            if end - i > digits and (end == n or text[end] not in ".eE"):
                return i, _raw_key(keys.get(record_depth)), "number"
            i = end
            continue
        i += 1
    return 0, None, "depth"


def _raw_key(raw: str | None) -> str | None:
    """A key as it stands in the file (escapes and all), as a field name."""
    if raw is None:
        return None
    try:
        return _field_name(json.loads(f'"{raw}"'))
    except ValueError:
        return _field_name(raw)


def _field_name(name: str) -> str:
    """A field name taken from the user's file, cut if long (``DataError`` shows it whole)."""
    return name if len(name) <= EXCERPT_CHARS else name[:EXCERPT_CHARS] + "..."


def read_text_prompts(source: str, max_prompts: int = 0, *,
                      allow_empty: bool = False) -> list[str]:
    """The text ``prompt`` of each record of ``source`` (all of them, or the first N), for
    commands that sample from prompts as given (no tokenizer, no chat template)."""
    prompts = []
    for record in read_records(str(source)):
        prompt = record.data.get("prompt")
        if not isinstance(prompt, str) or not (allow_empty or prompt.strip()):
            shown = "a list of messages" if isinstance(prompt, list) else (
                "missing" if prompt is None else "empty" if isinstance(prompt, str)
                else type(prompt).__name__)
            raise DataError(f"the prompt is {shown}", path=record.path, line=record.line,
                            field="prompt", expected="a non-empty text prompt (conversations: "
                            "render them with the chat template first)")
        prompts.append(prompt)
        if max_prompts and len(prompts) >= max_prompts:
            break
    return prompts
