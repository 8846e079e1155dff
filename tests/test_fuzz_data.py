"""Property: no input file, however malformed, makes a data loader raise anything but a
``PreflabError`` -- and a valid load keeps the truncation limits.

Hypothesis writes files in every supported format (JSON Lines, JSON, CSV, TSV, Parquet, a
directory of them) from records of every kind, spoiled in the ways users' data is spoiled:
missing fields, wrong types, empty and odd strings, lone surrogates, chosen == rejected, JSON
nested 50,000 deep, integers past Python's 4,300-digit limit, cut or inserted bytes, odd CSV
quoting, NUL bytes, byte-order marks, huge cells, files that only claim to be Parquet. Each
file goes through ``read_records`` and all four loaders.

Derandomized, so every run (and CI) tries the same cases; the counts are summed and checked
by the last test (``test_every_fuzz_test_ran_its_cases``).
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from preflab.data import (
    PreferenceExample,
    PromptExample,
    Record,
    RecordKind,
    SFTExample,
    TruncationPolicy,
    UnpairedExample,
    detect_kind,
    load_preference_dataset,
    load_prompt_dataset,
    load_sft_dataset,
    load_unpaired_dataset,
    read_records,
    readers,
    resolve_kind,
    validate,
)
from preflab.data.formats import ROLES, parse_label, preference_parts
from preflab.errors import PreflabError

from .conftest import WORDS

CASES: Counter[str] = Counter()  # test name -> generated cases run
EXPECTED_CASES = {"jsonl": 300, "json": 200, "csv": 200, "parquet": 150, "directory": 100,
                  "hub": 150, "records": 150}


def fuzz(name: str):
    return settings(max_examples=EXPECTED_CASES[name], deadline=None, derandomize=True,
                    database=None, print_blob=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                           HealthCheck.data_too_large])


# --- values --------------------------------------------------------------------------------
WORDS_TEXT = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)
# Valid but odd text: loads, as <unk> tokens or special tokens written out.
ODD = st.sampled_from(["\x00", "\ufeff", "café", "日本語", "😀", "<|user|>", "<eos>", "\u2028",
                       "x" * 300, "[1, 2] is a list", '[{"role": "user"}]', "true", "0", "2"])
# Text a field cannot hold: empty, or with a lone surrogate.
BAD = st.sampled_from(["", " ", "\n\t", "\r\n", "\ud800", "a \udfff b", "the \udc00 movie"])
TEXT = st.one_of(WORDS_TEXT, WORDS_TEXT, WORDS_TEXT, WORDS_TEXT, st.text(max_size=12), ODD,
                 st.builds(lambda a, b: f"{a} {b}", WORDS_TEXT, ODD))
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(-3, 3),
                   st.floats(allow_nan=True, allow_infinity=True), TEXT)
ANY = st.recursive(SCALAR, lambda inner: st.lists(inner, max_size=3)
                   | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)


def _conversation(shape: str, system: bool, turns: int, texts: list[str]) -> list:
    """A well-formed conversation: ``full`` (user first, assistant last), a ``prompt`` (ends
    with user) or a ``reply`` continuing a prompt (assistant first and last)."""
    roles = ["user", "assistant"] * turns
    if shape == "prompt":
        roles = roles[:-1]
    elif shape == "reply":
        roles, system = (["assistant", "user"] * turns)[: 2 * turns - 1], False
    head = [{"role": "system", "content": texts[0]}] if system else []
    return head + [{"role": r, "content": texts[(i + 1) % len(texts)]}
                   for i, r in enumerate(roles)]


MESSAGE = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": TEXT}),
    st.fixed_dictionaries({"role": st.one_of(st.sampled_from(ROLES), ANY),
                           "content": st.one_of(TEXT, ANY)}, optional={"extra": ANY}),
    ANY)


def conversation(shape: str):
    well_formed = st.builds(_conversation, st.just(shape), st.booleans(), st.integers(1, 3),
                            st.lists(TEXT, min_size=1, max_size=4))
    return well_formed


# Each field's part: "text" (any string), "prompt", "reply", "full" (a whole conversation)
# or "label". A record's text fields are all strings, or all conversations.
PARTS = {
    RecordKind.LANGUAGE_MODELING: {"text": "text"},
    RecordKind.PROMPT_COMPLETION: {"prompt": "prompt", "completion": "reply"},
    RecordKind.CONVERSATIONAL: {"messages": "full"},
    RecordKind.PREFERENCE: {"prompt": "prompt", "chosen": "reply", "rejected": "reply"},
    RecordKind.IMPLICIT_PREFERENCE: {"chosen": "full", "rejected": "full"},
    RecordKind.UNPAIRED: {"prompt": "prompt", "completion": "reply", "label": "label"},
    RecordKind.PROMPT_ONLY: {"prompt": "prompt"},
}
LABELS = st.one_of(st.booleans(), st.booleans(), st.booleans(), ANY)


def field_strategy(part: str, shape: str):
    """``shape``: "text" (strings), "chat" (conversations) or "ultrafeedback" (a string
    prompt beside whole conversations)."""
    if part == "label":
        return LABELS
    if part == "text" or shape == "text" or (shape == "ultrafeedback" and part == "prompt"):
        return TEXT
    return conversation("full" if shape == "ultrafeedback" else part)


SPOILS = ["none", "unshared", "drop", "null", "wrong-type", "bad-text", "identical", "extra",
          "odd-messages", "empty-list"]
FEW_SPOILS = ["none"] * 12 + SPOILS


def _make_pair_sound(draw, record: dict, kind: RecordKind) -> None:
    """Chosen and rejected that differ, and share a prompt where none is given."""
    chosen = record["chosen"]
    awful = f"awful {draw(WORDS_TEXT)}"
    if isinstance(chosen, list) and chosen:
        # the same conversation with another last reply: the prompt can be taken from it
        record["rejected"] = [*chosen[:-1], {"role": "assistant", "content": awful}]
    elif kind is RecordKind.IMPLICIT_PREFERENCE:
        stem = draw(WORDS_TEXT)
        record["chosen"], record["rejected"] = f"{stem} great {draw(WORDS_TEXT)}", f"{stem} {awful}"
    elif chosen == record["rejected"]:
        record["rejected"] = awful


@st.composite
def records(draw, kind: RecordKind | None = None, spoils: list[str] = SPOILS) -> dict:
    """A record of ``kind`` (or any), spoiled in one way or not at all (``"none"``)."""
    kind = kind or draw(st.sampled_from(list(RecordKind)))
    shape = draw(st.sampled_from(["text", "chat", "ultrafeedback"]))
    record = {name: draw(field_strategy(part, shape)) for name, part in PARTS[kind].items()}
    spoil, name = draw(st.sampled_from(spoils)), draw(st.sampled_from(list(record)))
    if "chosen" in record and spoil != "unshared":
        _make_pair_sound(draw, record, kind)
    if spoil == "drop":
        del record[name]
    elif spoil == "null":
        record[name] = None
    elif spoil == "wrong-type":
        record[name] = draw(ANY)
    elif spoil == "bad-text" and isinstance(record[name], list) and record[name]:
        record[name][-1] = {**record[name][-1], "content": draw(BAD)}
    elif spoil == "bad-text":
        record[name] = draw(BAD)
    elif spoil == "empty-list":
        record[name] = []
    elif spoil == "identical" and "chosen" in record:
        record["rejected"] = record["chosen"]
    elif spoil == "extra":
        record[draw(st.text(max_size=8))] = draw(ANY)
    elif spoil == "odd-messages":
        record[name] = draw(st.lists(MESSAGE, max_size=4))
    return record


# Files of one kind, mostly sound (so that loads succeed too), or of mixed, spoiled records.
ONE_KIND = st.sampled_from(list(RecordKind)).flatmap(
    lambda kind: st.lists(records(kind, FEW_SPOILS), min_size=1, max_size=4))
RECORD_LISTS = st.one_of(ONE_KIND, ONE_KIND, st.lists(records(), min_size=1, max_size=4))

# Whole lines that no record strategy makes: limits of the JSON parser, and not-objects.
RAW_LINES = st.sampled_from([
    '{"text": "the movie", "x": ' + "[" * 50_000 + "]" * 50_000 + "}",
    '{"text": "the movie", "x": ' + "[" * 150 + "]" * 150 + "}",
    '{"text": "the movie", "x": ' + "1" * 4_301 + "}",
    '{"text": "the movie", "x": -' + "9" * 10_000 + "}",
    '{"text": "the movie", "x": ' + "1" * 5_000 + ".5}",
    '{"text": "\\ud800"}', '{"prompt": "the", "chosen": "a", "rejected": "a"}',
    '["the", "movie"]', '"the movie"', "42", "null", "{oops}", "{", "",
    '{"text": NaN}', '{"text": "a", "text": 1}', '{"label": [true]}',
    '{"messages": {"role": "user", "content": "the"}}', '{"messages": [[]]}',
])


@st.composite
def byte_spoils(draw, raw: bytes) -> bytes:
    """Maybe cut, insert into or prefix ``raw`` with bytes that break an encoding or format."""
    how = draw(st.sampled_from(["none"] * 4 + ["cut", "insert", "bom", "crlf", "latin1"]))
    at = draw(st.integers(0, len(raw)))
    if how == "cut":
        return raw[:at]
    if how == "insert":
        return raw[:at] + draw(st.sampled_from([b"\xff", b"\x00", b'"', b"\n", b"\xed\xa0\x80",
                                                b"\xef\xbb\xbf", b"\r", b",", b"\t"])) + raw[at:]
    if how == "bom":
        return b"\xef\xbb\xbf" + raw
    if how == "crlf":
        return raw.replace(b"\n", b"\r\n")
    if how == "latin1":
        return raw + "café".encode("latin-1")
    return raw


def encode(text: str, draw) -> bytes:
    # A lone surrogate written raw (not as a \u escape) is invalid UTF-8 on disk.
    return text.encode("utf-8", draw(st.sampled_from(["surrogatepass", "replace"])))


# --- files ---------------------------------------------------------------------------------
@st.composite
def jsonl_files(draw) -> bytes:
    lines = [json.dumps(r, ensure_ascii=draw(st.booleans()), allow_nan=True)
             for r in draw(RECORD_LISTS)]
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))), draw(RAW_LINES))
    return draw(byte_spoils(encode("\n".join(lines) + draw(st.sampled_from(["", "\n"])), draw)))


@st.composite
def json_files(draw) -> bytes:
    rows = draw(RECORD_LISTS)
    shape = draw(st.sampled_from(["array", "wrapped", "two-lists", "lines", "scalar", "raw"]))
    if shape == "array":
        text = json.dumps(rows, indent=draw(st.sampled_from([None, 1])))
    elif shape == "wrapped":
        text = json.dumps({draw(st.sampled_from(["data", "rows", "messages"])): rows})
    elif shape == "two-lists":
        text = json.dumps({"data": rows, "more": rows})
    elif shape == "lines":
        text = "\n".join(json.dumps(r) for r in rows)
    elif shape == "scalar":
        text = json.dumps(draw(SCALAR))
    else:
        text = "[" + draw(RAW_LINES) + "]" if draw(st.booleans()) else draw(RAW_LINES)
    return draw(byte_spoils(encode(text, draw)))


def _cell(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value).lower()
    return "" if value is None else json.dumps(value)


@st.composite
def csv_files(draw, delimiter: str) -> bytes:
    rows = draw(RECORD_LISTS)
    header = list(dict.fromkeys(k for r in rows for k in r)) or ["text"]
    if draw(st.sampled_from([False] * 9 + [True])):
        header.append(header[0])  # the same column twice
    out = io.StringIO(newline="")
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONE]))
    writer = csv.writer(out, delimiter=delimiter, quoting=quoting, escapechar="\\")
    plain = csv.writer(out, delimiter=delimiter)
    for cells in [header, *([_cell(r.get(k)) for k in header] for r in rows)]:
        try:
            writer.writerow(cells)
        except csv.Error:  # QUOTE_NONE cannot write a lone empty cell
            plain.writerow(cells)
    text = out.getvalue()
    extra = draw(st.sampled_from(["none"] * 5 + ["odd-quote", "nul", "huge", "short-row",
                                                  "header-only", "empty"]))
    if extra == "odd-quote":
        text += '"the movie' + delimiter + 'a"b"\n"unclosed\n'
    elif extra == "nul":
        text += "the\x00movie\n"
    elif extra == "huge":
        text += '"' + "the " * 40_000 + '"\n'
    elif extra == "short-row":
        text += "the movie\n" if len(header) > 1 else f"a{delimiter}b\n"
    elif extra == "header-only":
        text = text.split("\n")[0] + "\n"
    elif extra == "empty":
        text = ""
    return draw(byte_spoils(encode(text, draw)))


def _arrow_safe(value):
    """A value pyarrow takes: text with lone surrogates, and mixed-type lists, as JSON text."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return json.dumps(value)


@st.composite
def parquet_files(draw) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    kind = draw(st.sampled_from(["table", "table", "table", "cut", "garbage", "magic", "empty"]))
    if kind == "garbage":
        return draw(st.binary(max_size=64))
    if kind == "magic":
        return b"PAR1" + draw(st.binary(max_size=32)) + b"PAR1"
    if kind == "empty":
        return b""
    rows = draw(RECORD_LISTS)
    try:
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows), sink)
    except Exception:  # mixed types in a column, lone surrogates, an empty object (a struct
        # with no fields): not a table pyarrow makes, or writes to Parquet
        table = pa.Table.from_pylist([{k: _arrow_safe(v) for k, v in r.items()} for r in rows])
        sink = io.BytesIO()
        pq.write_table(table, sink)
    raw = sink.getvalue()
    return raw[: draw(st.integers(0, len(raw)))] if kind == "cut" else raw


FILE_KINDS = {
    "d.jsonl": jsonl_files(), "d.json": json_files(), "d.csv": csv_files(","),
    "d.tsv": csv_files("\t"), "d.parquet": parquet_files(),
}


@st.composite
def directories(draw) -> dict[str, bytes | None]:
    """``{relative name: bytes}``; None makes a subdirectory."""
    names = draw(st.lists(st.sampled_from([*FILE_KINDS, "notes.txt", ".hidden.jsonl",
                                           "sub", "d.JSONL", "noext"]),
                          max_size=4, unique=True))
    files: dict[str, bytes | None] = {}
    for i, name in enumerate(names):
        if name == "sub":
            files[name] = None
        elif name in FILE_KINDS:
            files[f"{i}{name}"] = draw(FILE_KINDS[name])
        else:
            files[name] = draw(jsonl_files())
    return files


POLICIES = st.builds(
    lambda max_length, prompt, overlong: TruncationPolicy(
        max_length, prompt if prompt is not None and prompt < max_length else None, overlong),
    st.integers(2, 40), st.one_of(st.none(), st.integers(1, 39)),
    st.sampled_from(["error", "skip"]))


# --- the property --------------------------------------------------------------------------
def _read(source, tokenizer, policy):
    return read_records(source), None


LOADERS = (_read, load_sft_dataset, load_preference_dataset, load_unpaired_dataset,
           load_prompt_dataset)


def check_error(error: PreflabError) -> None:
    """One paragraph, printable, and quoting no more than a short excerpt of the file."""
    message = str(error)
    assert "\n" not in message and "Traceback" not in message, message
    message.encode("utf-8")  # no lone surrogate reaches the terminal
    rest = message.replace(str(error.path), "") if error.path else message
    assert len(rest) <= 900, message


def check_examples(examples: list, policy: TruncationPolicy) -> None:
    assert examples
    for e in examples:
        if isinstance(e, SFTExample):
            assert len(e.input_ids) == len(e.completion_mask) <= policy.max_length
        elif isinstance(e, PreferenceExample):
            assert len(e.prompt_ids) + max(len(e.chosen_ids), len(e.rejected_ids)) \
                <= policy.max_length
        elif isinstance(e, UnpairedExample):
            assert len(e.prompt_ids) + len(e.completion_ids) <= policy.max_length
            assert isinstance(e.label, bool)
        elif isinstance(e, PromptExample):
            assert len(e.prompt_ids) < policy.max_length
            assert policy.max_prompt_length is None or len(e.prompt_ids) <= policy.max_prompt_length
        else:
            assert isinstance(e, Record)


def load_everything(source: str, tokenizer, policy: TruncationPolicy) -> None:
    """Every loader on ``source``: a valid load or a PreflabError, never another exception."""
    for load in LOADERS:
        try:
            examples, report = load(source, tokenizer, policy)
        except PreflabError as error:
            check_error(error)
        else:
            check_examples(examples, policy)
            if report is not None:
                assert report.records >= 1
                assert report.skipped + report.skipped_identical <= report.records


class Files:
    """A fresh folder per generated case, under the test's tmp_path."""

    def __init__(self, root: Path) -> None:
        self.root, self.count = root, 0

    def folder(self) -> Path:
        self.count += 1
        path = self.root / f"case{self.count}"
        path.mkdir()
        return path


@pytest.fixture
def files(tmp_path):
    return Files(tmp_path)


@fuzz("jsonl")
@given(raw=jsonl_files(), policy=POLICIES, suffix=st.sampled_from([".jsonl", ".ndjson"]))
def test_jsonl_files(files, tiny_tokenizer, raw, policy, suffix):
    CASES["jsonl"] += 1
    path = files.folder() / f"d{suffix}"
    path.write_bytes(raw)
    load_everything(str(path), tiny_tokenizer, policy)


@fuzz("json")
@given(raw=json_files(), policy=POLICIES)
def test_json_files(files, tiny_tokenizer, raw, policy):
    CASES["json"] += 1
    path = files.folder() / "d.json"
    path.write_bytes(raw)
    load_everything(str(path), tiny_tokenizer, policy)


@fuzz("csv")
@given(data=st.data(), policy=POLICIES, name=st.sampled_from(["d.csv", "d.tsv"]))
def test_csv_and_tsv_files(files, tiny_tokenizer, data, policy, name):
    raw = data.draw(FILE_KINDS[name])
    CASES["csv"] += 1
    path = files.folder() / name
    path.write_bytes(raw)
    load_everything(str(path), tiny_tokenizer, policy)


@fuzz("parquet")
@given(raw=parquet_files(), policy=POLICIES)
def test_parquet_files(files, tiny_tokenizer, raw, policy):
    CASES["parquet"] += 1
    path = files.folder() / "d.parquet"
    path.write_bytes(raw)
    load_everything(str(path), tiny_tokenizer, policy)


@fuzz("directory")
@given(tree=directories(), policy=POLICIES)
def test_directories(files, tiny_tokenizer, tree, policy):
    CASES["directory"] += 1
    folder = files.folder()
    for name, raw in tree.items():
        if raw is None:
            (folder / name).mkdir()
            (folder / name / "inner.jsonl").write_text('{"text": "the movie"}\n')
        else:
            (folder / name).write_bytes(raw)
    load_everything(str(folder), tiny_tokenizer, policy)


def _deep_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


# Python values a hub dataset (or a library caller) can hand over that JSON files cannot.
PYTHON_ODDITIES = st.sampled_from([10 ** 5000, -(10 ** 400), b"the movie", ("the", "movie"),
                                   {"the", "movie"}, 1.5, _deep_list(5_000), _deep_list(120)])


@st.composite
def python_rows(draw) -> list[dict]:
    rows = draw(st.lists(records(), min_size=0, max_size=4))
    for row in rows:
        if draw(st.booleans()):
            row[draw(st.sampled_from([*row, "x", 7]))] = draw(PYTHON_ODDITIES)
    return rows


@fuzz("hub")
@given(rows=python_rows(), policy=POLICIES)
def test_hub_rows(monkeypatch, tiny_tokenizer, rows, policy):
    CASES["hub"] += 1
    monkeypatch.setattr(readers, "_load_hub_dataset", lambda name, split, config=None: rows)
    load_everything("someone/data", tiny_tokenizer, policy)


@fuzz("records")
@given(data=st.one_of(records(), python_rows().map(lambda rows: rows[0] if rows else {})),
       accepted=st.sets(st.sampled_from(list(RecordKind)), min_size=1))
def test_record_checks_called_directly(data, accepted):
    """The format checks as a library calls them, on records built in Python."""
    CASES["records"] += 1
    record = Record(data, "in-memory", 1)
    try:
        detect_kind(record)
    except PreflabError as error:
        check_error(error)
    try:
        kind = resolve_kind(record, sorted(accepted, key=lambda k: k.value), "this test")
        validate(record, kind)
        if kind in (RecordKind.PREFERENCE, RecordKind.IMPLICIT_PREFERENCE):
            preference_parts(record, kind)
        if kind is RecordKind.UNPAIRED:
            assert isinstance(parse_label(record), bool)
    except PreflabError as error:
        check_error(error)


def test_every_fuzz_test_ran_its_cases():
    """At least 1,200 generated cases in all (runs last, as pytest keeps file order)."""
    if set(CASES) != set(EXPECTED_CASES):
        pytest.skip("only some fuzz tests ran (-k or a test filter)")
    total = sum(CASES.values())
    print(f"\nfuzz cases run: {total} ({dict(CASES)})")
    assert total >= 1_200, dict(CASES)
