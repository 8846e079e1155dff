"""`preflab sample` and `preflab label`: samples -> judged pairs (or KTO labels) that the
trainers' loaders read, the pairing rules, the human-labelling round trip, and bad input."""

from __future__ import annotations

import csv
import json

import pytest

from preflab.cli import main
from preflab.data import TruncationPolicy, load_preference_dataset, load_unpaired_dataset
from preflab.judges.pairing import PAIRINGS, Group, comparisons, make_outputs
from preflab.models import load_tokenizer


@pytest.fixture(scope="module")
def samples(tiny_world, tmp_path_factory):
    """3 completions for each of 8 world prompts, from the world's (untrained) model."""
    out = tmp_path_factory.mktemp("samples") / "samples.jsonl"
    code = main(["sample", "--model", str(tiny_world / "model"), "--prompts",
                 str(tiny_world / "prompts_train.jsonl"), "--n", "3", "--max-prompts", "8",
                 "--max-new-tokens", "8", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_sample_writes_k_completions_per_prompt_reproducibly(samples, tiny_world, tmp_path,
                                                              capsys):
    records = read_jsonl(samples)
    prompts = [r["prompt"] for r in read_jsonl(tiny_world / "prompts_train.jsonl")[:8]]
    assert [r["prompt"] for r in records] == prompts
    assert all(len(r["completions"]) == 3 for r in records)
    again = tmp_path / "again.jsonl"
    args = ["sample", "--model", str(tiny_world / "model"), "--prompts",
            str(tiny_world / "prompts_train.jsonl"), "--n", "3", "--max-prompts", "8",
            "--max-new-tokens", "8", "--out", str(again), "--no-progress"]
    assert main(args) == 0
    assert again.read_bytes() == samples.read_bytes()  # same seed, same file
    capsys.readouterr()
    assert main(args) == 2  # the file exists now
    assert "--out exists" in capsys.readouterr().err
    assert main([*args, "--overwrite", "--seed", "1"]) == 0
    assert again.read_bytes() != samples.read_bytes()


def test_sample_refuses_a_bad_prompt_file(tiny_world, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "the movie"}\n{"text": "no prompt here"}\n')
    code = main(["sample", "--model", str(tiny_world / "model"), "--prompts", str(prompts),
                 "--out", str(tmp_path / "s.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"{prompts}, line 2, field 'prompt': the prompt is missing" in err
    assert not (tmp_path / "s.jsonl").exists()


def test_sample_label_dpo_ready(samples, tiny_world, tmp_path, capsys):
    """sample -> label with the world's annotators -> a file the DPO loader reads; the
    agreement with the gold reward is printed and saved beside it."""
    pairs = tmp_path / "pairs.jsonl"
    code = main(["label", "--judge", f"world:{tiny_world}", "--in", str(samples), "--out",
                 str(pairs), "--agreement-judge", f"world-gold:{tiny_world}", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "agreement of world:" in out
    report = json.loads((tmp_path / "pairs.agreement.json").read_text())
    assert report["pairs"] == 8 * 3  # best-worst: every pair of 3 compared
    records = read_jsonl(pairs)
    assert 1 <= len(records) <= 8 and all(r["p_chosen"] > 0.5 for r in records)
    tokenizer = load_tokenizer(str(tiny_world / "model"))
    examples, _ = load_preference_dataset(str(pairs), tokenizer, TruncationPolicy())
    assert len(examples) == len(records)


def test_label_kto_output_loads_as_unpaired(samples, tiny_world, tmp_path):
    labels = tmp_path / "kto.jsonl"
    assert main(["label", "--judge", f"world:{tiny_world}", "--in", str(samples), "--out",
                 str(labels), "--kto", "--no-progress"]) == 0
    records = read_jsonl(labels)
    assert records and {r["label"] for r in records} <= {True, False}
    assert all((r["win_rate"] > 0.5) == r["label"] for r in records)
    tokenizer = load_tokenizer(str(tiny_world / "model"))
    examples, _ = load_unpaired_dataset(str(labels), tokenizer, TruncationPolicy())
    assert len(examples) == len(records)


def test_label_a_second_run_asks_nothing(tmp_path, capsys):
    """The judge cache: the same command again, even in another order, asks the judge nothing."""
    rewards = tmp_path / "rewards.py"
    rewards.write_text("CALLS = []\n\ndef length(prompts, completions, **kwargs):\n"
                       "    CALLS.append(len(completions))\n"
                       "    return [len(c.split()) for c in completions]\n")
    samples = tmp_path / "samples.jsonl"
    samples.write_text(json.dumps({"prompt": "p", "completions": ["a b", "a", "a b c"]}) + "\n")
    args = ["label", "--judge", f"{rewards}:length", "--in", str(samples), "--out",
            str(tmp_path / "pairs.jsonl"), "--pairing", "all", "--no-progress"]
    assert main(args) == 0
    assert "3 comparisons: 3 asked of the judge" in capsys.readouterr().out
    samples.write_text(json.dumps({"prompt": "p", "completions": ["a b c", "a", "a b"]}) + "\n")
    assert main([*args, "--overwrite"]) == 0
    assert "3 comparisons: 0 asked of the judge" in capsys.readouterr().out
    pairs = read_jsonl(tmp_path / "pairs.jsonl")
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {
        ("a b c", "a"), ("a b c", "a b"), ("a b", "a")}


def test_pairing_rules():
    """best-worst: win rates 1, 1/2, 0 -> (0, 2); all: every decided pair; adjacent: 1-2, 3-4;
    KTO: above 1/2 desirable, below undesirable, exactly 1/2 left out."""
    groups = [Group("p", ["best", "mid", "worst", "other"])]
    p = {(0, 1): 1.0, (0, 2): 1.0, (0, 3): 1.0, (1, 2): 1.0, (1, 3): 0.5, (2, 3): 0.0}
    todo = comparisons(groups, PAIRINGS["all"])
    probs = [p[(i, j)] for _, i, j in todo]
    best = make_outputs(groups, todo, probs, PAIRINGS["best-worst"], kto=False)
    assert [(r["chosen"], r["rejected"]) for r in best] == [("best", "worst")]
    every = make_outputs(groups, todo, probs, PAIRINGS["all"], kto=False)
    assert len(every) == 5 and ("worst", "other") not in {(r["chosen"], r["rejected"]) for r in every}
    assert ("other", "worst") in {(r["chosen"], r["rejected"]) for r in every}
    assert comparisons(groups, PAIRINGS["adjacent"]) == [(0, 0, 1), (0, 2, 3)]
    kto = make_outputs(groups, todo, probs, PAIRINGS["all"], kto=True)
    # win rates: best 1, mid 1/2 (left out), worst 0, other 1/2 (left out)
    assert [(r["completion"], r["label"]) for r in kto] == [("best", True), ("worst", False)]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_human_export_import_round_trip(samples, tiny_world, tmp_path, suffix):
    pairs, review = tmp_path / "pairs.jsonl", tmp_path / f"review{suffix}"
    assert main(["label", "--judge", f"world:{tiny_world}", "--in", str(samples), "--out",
                 str(pairs), "--export-human", str(review), "--no-progress"]) == 0
    judged = {(r["prompt"], r["chosen"], r["rejected"]) for r in read_jsonl(pairs)}
    rows = _read_rows(review)
    assert len(rows) == len(judged) and all(r["label"] == "" for r in rows)
    for row in rows:  # people agree with the judge
        row["label"] = "a" if (row["prompt"], row["a"], row["b"]) in judged else "b"
    rows[0]["label"] = "skip"
    _write_rows(review, rows)
    human = tmp_path / "human.jsonl"
    assert main(["label", "--import-human", str(review), "--out", str(human)]) == 0
    imported = {(r["prompt"], r["chosen"], r["rejected"]) for r in read_jsonl(human)}
    assert len(imported) == len(judged) - 1 and imported <= judged
    tokenizer = load_tokenizer(str(tiny_world / "model"))
    examples, _ = load_preference_dataset(str(human), tokenizer, TruncationPolicy())
    assert len(examples) == len(imported)


def test_human_import_refuses_a_bad_label_naming_the_line(tmp_path, capsys):
    review = tmp_path / "review.csv"
    rows = [{"id": i, "prompt": "p", "a": f"one {i}", "b": f"two {i}", "label": label}
            for i, label in enumerate(["a", "B", "maybe", "", "b"], start=1)]
    _write_rows(review, rows)
    code = main(["label", "--import-human", str(review), "--out", str(tmp_path / "h.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert (f"{review}, line 3, field 'label': the label is 'maybe'; 1 more row is refused "
            "(line 4) (expected a or b, or skip)") in err
    assert not (tmp_path / "h.jsonl").exists()


def test_human_kto_round_trip(samples, tmp_path):
    """Without a judge: every completion exported for people to call good or bad."""
    review = tmp_path / "review.csv"
    assert main(["label", "--in", str(samples), "--kto", "--pairing", "all",
                 "--export-human", str(review)]) == 0
    rows = _read_rows(review)
    assert rows and set(rows[0]) == {"id", "prompt", "completion", "label"}
    for i, row in enumerate(rows):
        row["label"] = ("good", "bad", "1", "false")[i % 4]
    _write_rows(review, rows)
    out = tmp_path / "kto.jsonl"
    assert main(["label", "--import-human", str(review), "--out", str(out)]) == 0
    labels = [r["label"] for r in read_jsonl(out)]
    assert labels == [(True, False, True, False)[i % 4] for i in range(len(rows))]


@pytest.mark.parametrize("argv, message", [
    ("--in {samples} --out {out}", "--judge is required"),
    ("--judge world-gold:{world} --in {samples}", "--out is required"),
    ("--judge lm:/no/such/model --in {samples} --out {out}", "/no/such/model"),
    ("--judge lm:/no/such/model --in {samples} --out {out}", "--judge: no such directory"),
    ("--judge http:m --judge-base-url https://user:pw@host/v1 --in {samples} --out {out}",
     "holds credentials"),
    ("--judge world-gold:{world} --in {samples} --out {out} --judge-answers A",
     "is not two answers"),
    ("--judge world-gold:{world} --in {samples} --out {out} --judge-template {template}",
     "does not show {{b}}"),
    ("--judge world-gold:{world} --in {bad} --out {out}",
     "line 2, field 'completions': the completions are not a list of texts"),
    ("--judge world-gold:{world} --in {samples} --out {out} --judge-retries -1",
     "--judge-retries -1 is out of range"),
    ("--judge world:/no/such/world --in {samples} --out {out}", "no built world here"),
])
def test_label_bad_input_is_one_paragraph(argv, message, tiny_world, samples, tmp_path, capsys):
    (tmp_path / "t.txt").write_text("{prompt} {a}")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p", "completions": ["a", "b"]}\n'
                                        '{"prompt": "p", "completions": "a b"}\n')
    names = {"samples": samples, "out": tmp_path / "out.jsonl", "template": tmp_path / "t.txt",
             "bad": tmp_path / "bad.jsonl", "world": tiny_world}
    assert main(["label", *argv.format(**names).split()]) == 2
    err = capsys.readouterr().err
    assert message.format() in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def _read_rows(path):
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    return read_jsonl(path)


def _write_rows(path, rows):
    if path.suffix == ".csv":
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
