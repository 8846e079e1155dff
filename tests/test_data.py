"""The data layer: readers, formats, tokenization under truncation, and collation.

Everything runs offline on the word-level tiny tokenizer, whose chat template renders a
message as ``<|role|> content <|end|>`` and whose generation prompt is ``<|assistant|>``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from preflab.data import (
    PreferenceExample,
    PromptExample,
    Record,
    RecordKind,
    TruncationPolicy,
    collate_preference,
    collate_prompts,
    collate_sft,
    collate_unpaired,
    detect_kind,
    extract_prompt,
    load_preference_dataset,
    load_prompt_dataset,
    load_sft_dataset,
    load_unpaired_dataset,
    pad_sequences,
    read_records,
    readers,
    split_train_eval,
)
from preflab.errors import ConfigError, DataError, PreflabError
from preflab.models.tiny import build_word_tokenizer

from .conftest import WORDS


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def tokens(tokenizer, ids: list[int]) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids)


GOOD_PC = {"prompt": "the movie", "completion": "was great"}
GOOD_PREF = {"prompt": "the movie was", "chosen": "great", "rejected": "bad"}
GOOD_UNPAIRED = {"prompt": "the movie", "completion": "was fun", "label": True}

SFT, PREF, UNPAIRED, PROMPTS = (load_sft_dataset, load_preference_dataset,
                                load_unpaired_dataset, load_prompt_dataset)

# id, loader, file name, file content (rows are JSON-encoded one per line; bytes written as
# is), policy kwargs, the line and field the error must name, and a phrase of the message.
MALFORMED = [
    ("missing-field", PREF, "d.jsonl", [GOOD_PREF, {"prompt": "the", "chosen": "good"}], {},
     2, "rejected", "missing field 'rejected'"),
    ("wrong-type", SFT, "d.jsonl", [GOOD_PC, {"prompt": "the", "completion": 5}], {},
     2, "completion", "the number 5, not a string"),
    ("empty-completion", SFT, "d.jsonl", [GOOD_PC, {"prompt": "the", "completion": " "}], {},
     2, "completion", "empty completion"),
    ("invalid-json-line-3", SFT, "d.jsonl",
     b'{"text": "the movie"}\n{"text": "a film"}\n{"text": "bad\n', {},
     3, None, "invalid JSON"),
    ("non-utf8-line-2", SFT, "d.jsonl", b'{"text": "the"}\n{"text": "caf\xe9"}\n', {},
     2, None, "not valid UTF-8"),
    ("non-utf8-in-json-array", SFT, "d.json", b'[{"text": "the"},\n{"text": "caf\xe9"}]', {},
     2, None, "not valid UTF-8"),
    ("roles-out-of-order", SFT, "d.jsonl",
     [GOOD_PC, {"messages": [user("the"), user("movie"), assistant("great")]}], {},
     2, "messages[1].role", "roles out of order"),
    ("conversation-ends-with-user", SFT, "d.jsonl", [{"messages": [user("the")]}], {},
     1, "messages", "ends with a 'user' message"),
    ("unknown-role", SFT, "d.jsonl",
     [{"messages": [{"role": "bot", "content": "hi"}, assistant("x")]}], {},
     1, "messages[0].role", "message role is 'bot'"),
    ("content-not-string", PREF, "d.jsonl",
     [{"prompt": [user("the")], "chosen": [assistant("good")],
       "rejected": [{"role": "assistant", "content": None}]}], {},
     1, "rejected[0].content", "content is null"),
    ("prompt-too-long", SFT, "d.jsonl",
     [GOOD_PC, {"prompt": "the movie was really very", "completion": "good"}],
     {"max_length": 5}, 2, "prompt", "prompt is 5 tokens, longer than --max-length 5"),
    ("label-not-bool", UNPAIRED, "d.jsonl", [GOOD_UNPAIRED, {**GOOD_UNPAIRED, "label": "maybe"}],
     {}, 2, "label", "not a boolean"),
    ("label-not-bool-csv-row", UNPAIRED, "d.csv",
     b"prompt,completion,label\nthe movie,was fun,true\nthe film,was bad,2\n", {},
     2, "label", "not a boolean"),
    ("unknown-field-set", SFT, "d.jsonl", [GOOD_PC, {"question": "q", "answer": "a"}], {},
     2, None, "fields: answer, question"),
    ("wrong-kind-for-loader", PREF, "d.jsonl", [GOOD_PC], {},
     1, None, "prompt-completion record"),
    ("line-not-object", SFT, "d.jsonl", [GOOD_PC, ["the", "movie"]], {},
     2, None, "JSON array, not an object"),
    ("array-element-not-object", SFT, "d.json", b'[{"text": "the"}, "movie"]', {},
     2, None, "element 2 of the array"),
    ("mixed-text-and-messages", PREF, "d.jsonl",
     [{"prompt": [user("the")], "chosen": "good", "rejected": "bad"}], {},
     1, "chosen", "both strings, or both lists"),
    ("identical-implicit-pair", PREF, "d.jsonl", [{"chosen": "a b", "rejected": "a b"}], {},
     1, "rejected", "identical"),
    ("file-not-found", SFT, None, None, {}, None, None, "no such file or directory"),
    ("empty-file", SFT, "d.jsonl", b"\n\n", {}, None, None, "no records"),
]


@pytest.mark.parametrize(
    "loader, name, content, policy_kwargs, line, field, phrase",
    [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_malformed_input_names_file_line_and_field(
        tmp_path, tiny_tokenizer, loader, name, content, policy_kwargs, line, field, phrase):
    path = tmp_path / (name or "missing.jsonl")
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        write_jsonl(path, content)
    with pytest.raises(DataError) as info:
        loader(str(path), tiny_tokenizer, TruncationPolicy(**policy_kwargs))
    message = str(info.value)
    assert isinstance(info.value, PreflabError)
    assert message.startswith(str(path)), message
    assert phrase in message, message
    if line is not None:
        assert f"line {line}" in message and info.value.line == line, message
    if field is not None:
        assert f"field {field!r}" in message and info.value.field == field, message
    assert "\n" not in message  # one paragraph for the CLI's "error: ..." line


KIND_RECORDS = [
    ({"text": "the movie"}, RecordKind.LANGUAGE_MODELING),
    (GOOD_PC, RecordKind.PROMPT_COMPLETION),
    ({"messages": [user("the"), assistant("movie")]}, RecordKind.CONVERSATIONAL),
    ({**GOOD_PREF, "chosen_gold": 1.0, "rejected_gold": 0.0}, RecordKind.PREFERENCE),
    ({"chosen": "the movie was great", "rejected": "the movie was bad"},
     RecordKind.IMPLICIT_PREFERENCE),
    (GOOD_UNPAIRED, RecordKind.UNPAIRED),
    ({"prompt": "the movie"}, RecordKind.PROMPT_ONLY),
]


@pytest.mark.parametrize("data, kind", KIND_RECORDS, ids=[k.value for _, k in KIND_RECORDS])
def test_each_kind_is_detected_and_loads_from_jsonl(tmp_path, tiny_tokenizer, data, kind):
    path = write_jsonl(tmp_path / "d.jsonl", [data])
    assert detect_kind(read_records(str(path))[0]) is kind
    loader = {RecordKind.LANGUAGE_MODELING: SFT, RecordKind.PROMPT_COMPLETION: SFT,
              RecordKind.CONVERSATIONAL: SFT, RecordKind.PREFERENCE: PREF,
              RecordKind.IMPLICIT_PREFERENCE: PREF, RecordKind.UNPAIRED: UNPAIRED,
              RecordKind.PROMPT_ONLY: PROMPTS}[kind]
    examples, report = loader(str(path), tiny_tokenizer, TruncationPolicy())
    assert len(examples) == 1 and report.records == 1
    prompts, _ = load_prompt_dataset(str(path), tiny_tokenizer, TruncationPolicy()) \
        if kind is not RecordKind.LANGUAGE_MODELING else ([None], None)
    assert len(prompts) == 1


def test_ambiguous_field_set_is_an_error():
    record = Record({"text": "a", "prompt": "b", "completion": "c"}, "f.jsonl", 4)
    with pytest.raises(DataError, match="more than one format"):
        detect_kind(record)


def test_json_csv_and_parquet_give_the_same_examples(tmp_path, tiny_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {"prompt": "the movie", "completion": "was great", "label": True},
        {"prompt": "a film", "completion": "was really boring", "label": False},
        {"prompt": "this plot", "completion": "is fine", "label": True},
    ]
    write_jsonl(tmp_path / "d.jsonl", rows)
    (tmp_path / "d.json").write_text(json.dumps({"data": rows}))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for name, delimiter in (("d.csv", ","), ("d.tsv", "\t")):
        with open(tmp_path / name, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows({**r, "label": str(r["label"]).lower()} for r in rows)
    policy = TruncationPolicy()
    results = {name: (PROMPTS(str(tmp_path / name), tiny_tokenizer, policy)[0],
                      UNPAIRED(str(tmp_path / name), tiny_tokenizer, policy)[0])
               for name in ("d.jsonl", "d.json", "d.csv", "d.tsv", "d.parquet")}
    first = results["d.jsonl"]
    assert [e.label for e in first[1]] == [True, False, True]
    for name, result in results.items():
        assert result == first, name
    lines = [r.line for r in read_records(str(tmp_path / "d.csv"))]
    assert lines == [1, 2, 3]


def test_conversations_load_alike_from_jsonl_csv_and_parquet(tmp_path, tiny_tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [user("the movie"), assistant("was great")]},
            {"messages": [{"role": "system", "content": "be fun"}, user("a film"),
                          assistant("so boring")]}]
    write_jsonl(tmp_path / "d.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")  # list<struct> column
    with open(tmp_path / "d.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["messages"])
        writer.writerows([json.dumps(r["messages"])] for r in rows)
    loaded = [SFT(str(tmp_path / n), tiny_tokenizer, TruncationPolicy())[0]
              for n in ("d.jsonl", "d.parquet", "d.csv")]
    assert loaded[0] == loaded[1] == loaded[2]


def test_conversational_mask_covers_exactly_the_assistant_reply_and_eos(tmp_path, tiny_tokenizer):
    messages = [user("the movie"), assistant("was great"), user("and the plot"),
                assistant("not very good")]
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": messages}])
    (example,), _ = SFT(str(path), tiny_tokenizer, TruncationPolicy())
    rendered = tiny_tokenizer.apply_chat_template(messages, tokenize=False)
    assert tokens(tiny_tokenizer, example.input_ids) == rendered.split() + ["<eos>"]
    trained = [t for t, m in zip(tokens(tiny_tokenizer, example.input_ids),
                                 example.completion_mask) if m]
    assert trained == ["not", "very", "good", "<|end|>", "<eos>"]
    (full,), _ = SFT(str(path), tiny_tokenizer, TruncationPolicy(), completion_only=False)
    assert full.completion_mask == [1] * len(full.input_ids)


def test_text_prompt_and_completion_tokenization(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD_PC, {"text": "it was fun"}])
    (pc, lm), _ = SFT(str(path), tiny_tokenizer, TruncationPolicy())
    assert tokens(tiny_tokenizer, pc.input_ids) == ["the", "movie", "was", "great", "<eos>"]
    assert pc.completion_mask == [0, 0, 1, 1, 1]
    assert lm.completion_mask == [1, 1, 1, 1]


def test_implicit_prompt_extraction():
    record = Record({}, "f.jsonl", 1)
    assert extract_prompt(record, "the movie was great", "the movie was good") == (
        "the movie was", " great", " good")
    assert extract_prompt(record, "the film was fun", "the fun was") == ("the", " film was fun",
                                                                        " fun was")
    chosen = [user("the"), assistant("a"), user("b"), assistant("good")]
    rejected = [user("the"), assistant("a"), user("b"), assistant("bad")]
    assert extract_prompt(record, chosen, rejected) == (chosen[:3], chosen[3:], rejected[3:])
    # Diverging at a user turn: the prompt is cut back to end with a user message.
    rejected_user = [user("the"), assistant("a"), user("c"), assistant("bad")]
    assert extract_prompt(record, chosen, rejected_user)[0] == chosen[:1]
    with pytest.raises(DataError, match="shared prompt"):
        extract_prompt(record, "great movie", "bad movie")


def test_implicit_and_ultrafeedback_style_preferences_load(tmp_path, tiny_tokenizer):
    convo = {"chosen": [user("the movie"), assistant("was great")],
             "rejected": [user("the movie"), assistant("was bad")]}
    rows = [{"chosen": "the movie was great", "rejected": "the movie was bad"},
            convo, {"prompt": "the movie", **convo}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    (text, conv, uf), _ = PREF(str(path), tiny_tokenizer, TruncationPolicy())
    assert tokens(tiny_tokenizer, text.prompt_ids) == ["the", "movie", "was"]
    assert tokens(tiny_tokenizer, text.chosen_ids) == ["great", "<eos>"]
    assert tokens(tiny_tokenizer, conv.prompt_ids) == [
        "<|user|>", "the", "movie", "<|end|>", "<|assistant|>"]
    assert tokens(tiny_tokenizer, conv.rejected_ids) == ["was", "bad", "<|end|>", "<eos>"]
    assert uf == conv


def test_unpaired_from_preference_pairs_and_prompts_from_any_kind(tmp_path, tiny_tokenizer):
    path = write_jsonl(tmp_path / "d.jsonl", [GOOD_PREF])
    examples, report = UNPAIRED(str(path), tiny_tokenizer, TruncationPolicy())
    assert [e.label for e in examples] == [True, False] and report.records == 1
    assert examples[0].prompt_ids == examples[1].prompt_ids
    conv = write_jsonl(tmp_path / "c.jsonl", [{"messages": [user("the"), assistant("movie")]},
                                              {"prompt": [user("a film")]}])
    prompts, _ = PROMPTS(str(conv), tiny_tokenizer, TruncationPolicy())
    assert [p.prompt for p in prompts] == ["<|user|> the <|end|> <|assistant|> ",
                                           "<|user|> a film <|end|> <|assistant|> "]


def test_truncation_counts_prompt_left_and_completion_right(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "the movie was really", "completion": "great fun and good"}, GOOD_PC]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    policy = TruncationPolicy(max_length=5, max_prompt_length=2)
    (cut, whole), report = SFT(str(path), tiny_tokenizer, policy)
    assert tokens(tiny_tokenizer, cut.input_ids) == ["was", "really", "great", "fun", "and"]
    assert cut.completion_mask == [0, 0, 1, 1, 1]
    assert len(whole.input_ids) == 5
    assert report.as_dict() == {"records": 2, "prompts_truncated": 1,
                                "completions_truncated": 1, "skipped": 0,
                                "skipped_identical": 0}
    assert "1 prompts truncated" in report.summary()


def test_preference_truncation_cuts_each_completion(tmp_path, tiny_tokenizer):
    row = {"prompt": "the movie", "chosen": "was very very good", "rejected": "bad"}
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    (example,), report = PREF(str(path), tiny_tokenizer, TruncationPolicy(max_length=4))
    assert len(example.chosen_ids) == 2 and len(example.rejected_ids) == 2
    assert report.completions_truncated == 1


def test_overlong_skip(tmp_path, tiny_tokenizer):
    rows = [GOOD_PC, {"prompt": "the movie was really very", "completion": "good"}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    examples, report = SFT(str(path), tiny_tokenizer, TruncationPolicy(5, overlong="skip"))
    assert len(examples) == 1 and report.skipped == 1 and report.records == 2
    with pytest.raises(DataError, match="all 1 records were skipped"):
        SFT(str(write_jsonl(tmp_path / "e.jsonl", rows[1:])), tiny_tokenizer,
            TruncationPolicy(5, overlong="skip"))


def test_policy_rejects_bad_settings():
    with pytest.raises(ConfigError):
        TruncationPolicy(max_length=8, max_prompt_length=8)
    with pytest.raises(ConfigError):
        TruncationPolicy(overlong="truncate")


def test_conversations_need_a_chat_template_that_prefixes(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"messages": [user("the"), assistant("movie")]}])
    plain = build_word_tokenizer(WORDS, chat_template=False)
    with pytest.raises(DataError, match="has no chat template") as info:
        SFT(str(path), plain, TruncationPolicy())
    assert "line 1" in str(info.value)
    odd = build_word_tokenizer(WORDS, chat_template=False)
    odd.chat_template = ("{% for m in messages %}{{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|> {% endif %}")
    with pytest.raises(DataError, match="cannot be separated from the prompt"):
        SFT(str(path), odd, TruncationPolicy())


def test_json_variants_and_directories(tmp_path):
    (tmp_path / "b.json").write_text('{"text": "the"}\n{"text": "movie"}\n')  # JSON Lines
    (tmp_path / "a.json").write_text('[{"text": "a"}]')
    (tmp_path / "notes.txt").write_text("ignored")
    records = read_records(str(tmp_path))
    assert [(Path(r.path).name, r.line, r.data["text"]) for r in records] == [
        ("a.json", 1, "a"), ("b.json", 1, "the"), ("b.json", 2, "movie")]
    (tmp_path / "one.json").write_text('{"messages": []}')
    with pytest.raises(DataError, match="not a list of records"):
        read_records(str(tmp_path / "one.json"))


def test_hub_names_fall_back_to_datasets(monkeypatch):
    def fail(name, split, config=None):
        raise ConnectionError("offline\nsecond line")

    monkeypatch.setattr(readers, "_load_hub_dataset", fail)
    with pytest.raises(DataError) as info:
        read_records("someone/no-such-data")
    message = str(info.value)
    assert "could not be loaded as a Hugging Face dataset" in message
    assert "offline second line" in message and "\n" not in message

    monkeypatch.setattr(readers, "_load_hub_dataset",
                        lambda name, split, config=None: [{"text": split}, {"text": name}])
    records = read_records("imdb", split="test")
    assert [(r.line, r.data["text"]) for r in records] == [(1, "test"), (2, "imdb")]


def test_collate_preference_layout():
    examples = [PreferenceExample([5, 6], [7, 8, 9], [10]),
                PreferenceExample([11], [12], [13, 14])]
    batch = collate_preference(examples, pad_token_id=0)
    assert batch["batch_size"] == 2
    assert batch["input_ids"].tolist() == [
        [5, 6, 7, 8, 9], [11, 12, 0, 0, 0], [5, 6, 10, 0, 0], [11, 13, 14, 0, 0]]
    assert batch["completion_mask"].tolist() == [
        [0, 0, 1, 1, 1], [0, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 1, 1, 0, 0]]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0]]


def test_collate_prompts_left_pads_and_others_right_pad():
    batch = collate_prompts([PromptExample([5, 6, 7], "a"), PromptExample([8], "b")], 0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["prompts"] == ["a", "b"]
    from preflab.data import SFTExample, UnpairedExample

    sft = collate_sft([SFTExample([1, 2, 3], [0, 1, 1]), SFTExample([4], [1])], 0)
    assert sft["completion_mask"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert sft["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    kto = collate_unpaired([UnpairedExample([1], [2], True), UnpairedExample([3, 4], [5], False)], 0)
    assert kto["labels"].dtype == torch.bool and kto["labels"].tolist() == [True, False]
    assert kto["completion_mask"].tolist() == [[0, 1, 0], [0, 0, 1]]
    assert pad_sequences([[1], [2, 3]], -1, side="left").tolist() == [[-1, 1], [2, 3]]


def test_split_train_eval_is_deterministic():
    items = list(range(10))
    train, eval_ = split_train_eval(items, 0.2, seed=3)
    assert (train, eval_) == split_train_eval(items, 0.2, seed=3)
    assert len(eval_) == 2 and sorted(train + eval_) == items
    assert split_train_eval(items, 0.2, seed=4) != (train, eval_)
    assert [len(p) for p in split_train_eval([1, 2], 0.01, seed=0)] == [1, 1]
    assert split_train_eval([1], 0.5, seed=0) == ([1], [])
    assert split_train_eval(items, 0.0, seed=0)[1] == []
