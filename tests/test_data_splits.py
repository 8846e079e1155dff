"""Named splits: hub datasets (split and configuration), and local directories laid out as the
hub's files or as ``datasets`` saves them; the flags that choose them (training commands,
compare). Everything offline: the hub loader is replaced, the directories are built here."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

from preflab.cli import main
from preflab.data import TruncationPolicy, load_preference_dataset, read_records, readers
from preflab.errors import ConfigError, DataError
from tests.test_rm import preference_records

SPLITS = {"train_prefs": 3, "test_prefs": 2}


def rows(split: str, n: int) -> list[dict]:
    return [{"prompt": f"the movie {i} was", "chosen": f"{split} good", "rejected": "bad"}
            for i in range(n)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_parquet(path: Path, records: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)
    return path


def write_csv(path: Path, records: list[dict]) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    return path


def hub_files(root: Path) -> Path:
    """The hub's layout: data/<split>-00000-of-00001.parquet, beside a README."""
    root.mkdir()
    (root / "README.md").write_text("a dataset card, not data")
    for split, n in SPLITS.items():
        write_parquet(root / "data" / f"{split}-00000-of-00001.parquet", rows(split, n))
    return root


def file_per_split(root: Path) -> Path:
    for split, n in SPLITS.items():
        write_jsonl(root / f"{split}.jsonl", rows(split, n))
    return root


def folder_per_split(root: Path) -> Path:
    for split, n in SPLITS.items():
        write_csv(root / split / "part.csv", rows(split, n))
    return root


def saved_dataset_dict(root: Path) -> Path:
    import datasets

    datasets.disable_progress_bars()
    datasets.DatasetDict({split: datasets.Dataset.from_list(rows(split, n))
                          for split, n in SPLITS.items()}).save_to_disk(str(root))
    return root


LAYOUTS = {"hub files": hub_files, "a file per split": file_per_split,
           "a folder per split": folder_per_split, "save_to_disk": saved_dataset_dict}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_split_reads_only_its_own_records(layout, tmp_path):
    root = LAYOUTS[layout](tmp_path / "data-dir")
    for split, n in SPLITS.items():
        records = read_records(str(root), split=split)
        assert [r.data["chosen"] for r in records] == [f"{split} good"] * n
        assert [r.line for r in records] == list(range(1, n + 1))
        assert all(split in r.path for r in records)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_missing_split_names_the_ones_there(layout, tmp_path):
    root = LAYOUTS[layout](tmp_path / "data-dir")
    with pytest.raises(DataError) as info:
        read_records(str(root), split="validation")
    message = str(info.value)
    assert "no split 'validation'" in message and str(root) in message
    assert "train_prefs" in message and "test_prefs" in message


@pytest.mark.parametrize("layout", LAYOUTS)
def test_several_splits_and_none_named_is_refused(layout, tmp_path):
    root = LAYOUTS[layout](tmp_path / "data-dir")
    with pytest.raises(DataError) as info:
        read_records(str(root), split_flag="--data-split")
    message = str(info.value)
    assert "holds 2 splits" in message and "not read whole" in message
    assert "--data-split train_prefs" in message and "test_prefs" in message
    readers.check_split(str(root), "train_prefs")  # what compare checks before it starts
    with pytest.raises(DataError, match="no split was named"):
        readers.check_split(str(root), None)


def test_row_numbers_in_errors_count_within_the_split_file(tmp_path):
    """Two shards of one split: the bad row is named by its own file and row."""
    root = tmp_path / "shards"
    write_parquet(root / "train-00000-of-00002.parquet", rows("train", 3))
    bad = rows("train", 3)
    bad[1]["rejected"] = None
    write_parquet(root / "train-00001-of-00002.parquet", bad)
    write_parquet(root / "test-00000-of-00001.parquet", rows("test", 2))
    from preflab.models.tiny import build_word_tokenizer
    from tests.conftest import WORDS

    tokenizer = build_word_tokenizer(WORDS)
    with pytest.raises(DataError) as info:
        load_preference_dataset(str(root), tokenizer, TruncationPolicy(), split="train")
    message = str(info.value)
    assert "train-00001-of-00002.parquet, line 2, field 'rejected'" in message
    examples, report = load_preference_dataset(str(root), tokenizer, TruncationPolicy(),
                                               split="test")
    assert len(examples) == 2 and report.records == 2
    # JSON Lines: the physical line, blank lines counted
    (tmp_path / "lines").mkdir()
    (tmp_path / "lines" / "test.jsonl").write_text('{"text": "a"}\n\n{"text": "b"}\n')
    (tmp_path / "lines" / "train.jsonl").write_text('{"text": "c"}\n')
    assert [r.line for r in read_records(str(tmp_path / "lines"), split="test")] == [1, 3]


def test_a_saved_dataset_is_one_split_read_with_its_rows(tmp_path):
    import datasets

    datasets.disable_progress_bars()
    data = datasets.Dataset.from_list([{"text": "a"}, {"text": "b"}])
    data.save_to_disk(str(tmp_path / "one"))
    records = read_records(str(tmp_path / "one"))
    assert [(r.path, r.line, r.data) for r in records] == [
        (str(tmp_path / "one"), 1, {"text": "a"}), (str(tmp_path / "one"), 2, {"text": "b"})]
    with pytest.raises(DataError, match="one dataset, with no split name"):
        read_records(str(tmp_path / "one"), split="train")
    # a split folder of a saved DatasetDict, given as the path itself
    root = saved_dataset_dict(tmp_path / "dict")
    assert len(read_records(str(root / "test_prefs"))) == SPLITS["test_prefs"]


def test_directories_without_named_splits_are_read_whole(tmp_path):
    (tmp_path / "plain").mkdir()
    write_jsonl(tmp_path / "plain" / "part1.jsonl", rows("a", 2))
    write_jsonl(tmp_path / "plain" / "part2.jsonl", rows("b", 1))
    assert len(read_records(str(tmp_path / "plain"))) == 3
    # one named split (two shards) is no choice to make
    root = tmp_path / "one-split"
    write_parquet(root / "data" / "train-00000-of-00002.parquet", rows("train", 2))
    write_parquet(root / "data" / "train-00001-of-00002.parquet", rows("train", 2))
    assert len(read_records(str(root))) == 4
    assert len(read_records(str(root), split="train")) == 4


def test_a_single_file_is_the_split_its_name_gives(tmp_path):
    shard = write_parquet(tmp_path / "train_prefs-00000-of-00001.parquet", rows("x", 2))
    assert len(read_records(str(shard), split="train_prefs")) == 2
    plain = write_jsonl(tmp_path / "pairs.jsonl", rows("x", 2))
    assert len(read_records(str(plain))) == 2
    with pytest.raises(DataError, match="no split 'train': this is a single file"):
        read_records(str(plain), split="train")


def test_a_configuration_is_for_hub_datasets_only(tmp_path):
    plain = write_jsonl(tmp_path / "pairs.jsonl", rows("x", 2))
    with pytest.raises(DataError, match="this is a local path"):
        read_records(str(plain), config="default")


@pytest.mark.parametrize("split, config, called", [
    (None, None, ("org/prefs", "train", None)),
    ("train_prefs", None, ("org/prefs", "train_prefs", None)),
    ("test_gen", "default", ("org/prefs", "test_gen", "default")),
    ("train[:2]", None, ("org/prefs", "train[:2]", None)),
])
def test_the_hub_loader_gets_the_split_and_configuration(split, config, called, monkeypatch):
    calls = []

    def load(name, split, config=None):
        calls.append((name, split, config))
        return rows(split, 2)

    monkeypatch.setattr(readers, "_load_hub_dataset", load)
    records = read_records("org/prefs", split=split, config=config)
    assert calls == [called]
    assert [(r.path, r.line) for r in records] == [("org/prefs", 1), ("org/prefs", 2)]


@pytest.mark.parametrize("raised, expected", [
    (ValueError('Unknown split "validation". Should be one of [\'train_prefs\', '
                '\'test_prefs\'].'),
     "org/prefs: the dataset has no split 'validation' (expected one of its splits: "
     "train_prefs, test_prefs)"),
    (ValueError("BuilderConfig 'nope' not found. Available: ['default', 'extra']"),
     "org/prefs: the dataset has no configuration 'nope' (expected one of its "
     "configurations: default, extra)"),
    (ValueError("Config name is missing.\nPlease pick one among the available configs: "
                "['en', 'fr']\nExample of usage:\n\t`load_dataset('org/prefs', 'en')`"),
     "several configurations and none was named (expected one of its configurations: en, fr)"),
    (ConnectionError("offline"), "could not be loaded as a Hugging Face dataset name either "
                                 "(ConnectionError: offline)"),
])
def test_hub_errors_name_the_splits_and_configurations_there_are(raised, expected, monkeypatch):
    def load(name, split, config=None):
        raise raised

    monkeypatch.setattr(readers, "_load_hub_dataset", load)
    with pytest.raises(DataError) as info:
        read_records("org/prefs", split="validation", config="nope")
    assert expected in str(info.value)


# --- the flags -----------------------------------------------------------------------------------

def test_dpo_reads_the_hub_splits_it_is_given(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """--data-split and --data-config reach the loader; --eval-data-split reads another split
    of --data, with the same configuration."""
    calls = []

    def load(name, split, config=None):
        calls.append((name, split, config))
        return preference_records(12 if split == "train_prefs" else 4)

    monkeypatch.setattr(readers, "_load_hub_dataset", load)
    out = tmp_path / "run"
    assert main(["dpo", "--model", str(tiny_model_dir), "--data", "org/prefs", "--data-split",
                 "train_prefs", "--data-config", "default", "--eval-data-split", "test_prefs",
                 "--output-dir", str(out), "--max-steps", "1", "--batch-size", "4",
                 "--max-length", "32", "--no-progress", "--device", "cpu"]) == 0
    assert calls == [("org/prefs", "train_prefs", "default"), ("org/prefs", "test_prefs", "default")]
    assert "data: 12 train / 4 eval pairs" in capsys.readouterr().out
    card = (out / "final" / "README.md").read_text()
    assert "- data: `org/prefs`, split `train_prefs`, configuration `default`" in card


def split_dir(root: Path, records: list[dict], train: int) -> Path:
    """``records`` as a hub-layout directory: the first ``train`` in train_x, the rest test_x."""
    write_parquet(root / "data" / "train_x-00000-of-00001.parquet", records[:train])
    write_parquet(root / "data" / "test_x-00000-of-00001.parquet", records[train:])
    return root


@pytest.mark.parametrize("command", ["sft", "rm", "dpo", "kto", "online-dpo", "ppo", "rloo",
                                     "grpo"])
def test_every_training_command_reads_the_splits_it_is_given(command, tiny_model_dir, tmp_path,
                                                             capsys):
    """--data-split for the training data; --eval-data with --eval-data-split for the held-out
    data (online DPO holds none out)."""
    from tests.sft_data import sft_records
    from tests.test_dpo import pair_records
    from tests.test_kto import unpaired_records
    from tests.test_run_options import REWARD, RL

    (tmp_path / "r.py").write_text(REWARD)
    reward = f"{tmp_path / 'r.py'}:positive"
    prompts = [{"prompt": f"{d} {n} was"} for d in ("the", "a", "one") for n in ("movie", "film")
               for _ in range(2)]
    records = {"sft": sft_records(12), "rm": pair_records(12), "dpo": pair_records(12),
               "kto": unpaired_records(12)}.get(command, prompts)
    root = split_dir(tmp_path / "data", records, 8)
    extra = {"online-dpo": ["--judge", reward, "--rounds", "1", "--pairs-per-round", "4",
                            "--num-samples", "2", "--max-new-tokens", "4"],
             "ppo": ["--reward", reward, *RL],
             "rloo": ["--reward", reward, "--num-generations", "2", *RL],
             "grpo": ["--reward", reward, "--num-generations", "2", *RL]}.get(command, [])
    held_out = [] if command == "online-dpo" else ["--eval-data", str(root), "--eval-data-split",
                                                   "test_x"]
    steps = [] if command == "online-dpo" else ["--max-steps", "1"]
    assert main([command, "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "run"),
                 "--data", str(root), "--data-split", "train_x", *held_out, *steps,
                 "--batch-size", "4", "--no-progress", "--max-length", "32", *extra]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("data: "))
    if command == "online-dpo":
        assert line.startswith("data: 8 prompts;"), line
        return
    counts = re.match(r"data: (\d+) train[^/]*/ (\d+) eval", line)
    assert counts and counts.groups() == ("8", "4"), line


def test_a_local_split_is_checked_before_anything_loads(tiny_model_dir, tmp_path, capsys):
    root = hub_files(tmp_path / "prefs")
    base = ["dpo", "--model", str(tiny_model_dir), "--data", str(root),
            "--output-dir", str(tmp_path / "run")]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "holds 2 splits (test_prefs, train_prefs)" in err and "--data-split" in err
    assert "Traceback" not in err
    assert main([*base, "--data-split", "train_prefs", "--eval-data", str(root)]) == 2
    err = capsys.readouterr().err
    assert "such as --eval-data-split train_prefs" in err and "Traceback" not in err


@pytest.mark.parametrize("args, expected", [
    (["--data-config", "default"], "--data-config names a configuration of a hub dataset"),
    (["--eval-data-split", "train_prefs", "--data-split", "train_prefs"],
     "--eval-data-split train_prefs is the split --data trains on"),
])
def test_split_flags_that_cannot_work_are_refused(args, expected, tmp_path, capsys):
    root = hub_files(tmp_path / "prefs")
    assert main(["dpo", "--model", "m", "--data", str(root), "--output-dir",
                 str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_the_held_out_source_of_each_flag_combination():
    from preflab.algorithms.sft import SFTConfig

    def source(**values):
        return SFTConfig(model="m", data="org/prefs", output_dir="o", **values).eval_source()

    assert source() == ("", {})
    assert source(eval_data_split="test_prefs", data_config="c") == (
        "org/prefs", {"split": "test_prefs", "config": "c"})
    assert source(eval_data="org/prefs", data_config="c") == (
        "org/prefs", {"split": None, "config": "c"})
    assert source(eval_data="other/set", eval_data_split="test", data_config="c") == (
        "other/set", {"split": "test", "config": None})  # another dataset: its own default
    with pytest.raises(ConfigError, match="is the split --data trains on"):
        SFTConfig(model="m", data="org/prefs", output_dir="o", eval_data_split="train").validate()


def test_online_dpo_has_no_held_out_split(tmp_path, capsys):
    (tmp_path / "r.py").write_text("def flat(prompts, completions, **kw):\n"
                                   "    return [0.0] * len(completions)\n")
    assert main(["online-dpo", "--model", "m", "--data", "org/prompts", "--output-dir", "o",
                 "--judge", f"{tmp_path / 'r.py'}:flat", "--eval-data-split", "test"]) == 2
    assert "--eval-data-split: online DPO has no fixed pairs" in capsys.readouterr().err


def test_sample_and_bon_read_the_prompt_split_they_are_given(tiny_model_dir, tmp_path,
                                                             monkeypatch, capsys):
    """--prompts-split of a local directory (sample); a hub split and configuration (bon)."""
    prompts = tmp_path / "prompts"
    write_jsonl(prompts / "train_gen.jsonl", [{"prompt": f"the {n} was"} for n in ("movie", "film")])
    write_jsonl(prompts / "test_gen.jsonl", [{"prompt": "the plot was"}])
    out = tmp_path / "samples.jsonl"
    sample = ["sample", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--n", "2",
              "--max-new-tokens", "3", "--out", str(out), "--no-progress"]
    assert main(sample) == 2
    assert "such as --prompts-split train_gen" in capsys.readouterr().err
    assert main([*sample, "--prompts-split", "test_gen"]) == 0
    assert [json.loads(x)["prompt"] for x in out.read_text().splitlines()] == ["the plot was"]
    assert main([*sample, "--prompts-config", "default", "--overwrite"]) == 2
    assert "--prompts-config names a configuration" in capsys.readouterr().err

    calls = []
    monkeypatch.setattr(readers, "_load_hub_dataset", lambda name, split, config=None:
                        calls.append((name, split, config)) or [{"prompt": "the film was"}])
    from tests.test_bon import REWARD

    (tmp_path / "r.py").write_text(REWARD)
    assert main(["bon", "--model", str(tiny_model_dir), "--prompts", "org/prompts",
                 "--prompts-split", "test_gen", "--prompts-config", "default", "--reward",
                 f"{tmp_path / 'r.py'}:positive", "--n", "1,2", "--max-new-tokens", "3",
                 "--output-dir", str(tmp_path / "bon"), "--no-progress"]) == 0
    assert calls == [("org/prompts", "test_gen", "default")]


# --- compare -------------------------------------------------------------------------------------

def compare_args(tiny_model_dir, tmp_path, pairs, prompts, *extra) -> list[str]:
    return ["compare", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--prompts",
            str(prompts), "--output-dir", str(tmp_path / "cmp"), "--preset", "quick",
            "--methods", "dpo", "--dry-run", *extra]


def data_jobs(out: str) -> dict[str, list[str]]:
    commands = [shlex.split(x) for x in out.strip().splitlines()]
    return {c[c.index("--keep") + 1].rsplit("/", 1)[-1]: c for c in commands if "split" in c[3:4]}


def test_compare_passes_each_split_to_its_data_job(tiny_model_dir, tmp_path, capsys):
    pairs = hub_files(tmp_path / "prefs")
    prompts = tmp_path / "prompts"
    write_jsonl(prompts / "train_gen.jsonl", [{"prompt": f"the {n} was"} for n in range(4)])
    write_jsonl(prompts / "test_gen.jsonl", [{"prompt": "the end was"}])
    assert main(compare_args(tiny_model_dir, tmp_path, pairs, prompts, "--pairs-split",
                             "train_prefs", "--prompts-split", "train_gen")) == 0
    jobs = data_jobs(capsys.readouterr().out)
    assert jobs["pairs.jsonl"][jobs["pairs.jsonl"].index("--data-split") + 1] == "train_prefs"
    assert jobs["prompts-train.jsonl"][
        jobs["prompts-train.jsonl"].index("--data-split") + 1] == "train_gen"
    assert "--data-config" not in jobs["pairs.jsonl"]
    # a split that is not there, or none where several are: refused before any job
    assert main(compare_args(tiny_model_dir, tmp_path, pairs, prompts, "--pairs-split",
                             "train", "--prompts-split", "train_gen")) == 2
    err = capsys.readouterr().err
    assert "no split 'train'" in err and "train_prefs" in err and "Traceback" not in err
    assert main(compare_args(tiny_model_dir, tmp_path, pairs, prompts,
                             "--pairs-split", "train_prefs")) == 2
    assert "such as --prompts-split train_gen" in capsys.readouterr().err


def test_compare_takes_hub_datasets_with_a_configuration(tiny_model_dir, tmp_path, capsys):
    assert main(compare_args(tiny_model_dir, tmp_path, "org/prefs", "org/prefs",
                             "--pairs-split", "train_prefs", "--pairs-config", "default",
                             "--prompts-split", "train_gen")) == 0
    jobs = data_jobs(capsys.readouterr().out)
    words = jobs["pairs.jsonl"]
    assert words[words.index("--data") + 1:words.index("--share")] == [
        "org/prefs", "--data-split", "train_prefs", "--data-config", "default"]
    assert "--data-config" not in jobs["prompts-train.jsonl"]
    assert main(compare_args(tiny_model_dir, tmp_path, tmp_path, "org/prompts",
                             "--pairs-config", "default")) == 2
    assert "--pairs-config names a configuration" in capsys.readouterr().err


def test_compare_data_job_reads_one_split(tmp_path, monkeypatch):
    from preflab.compare import data

    root = saved_dataset_dict(tmp_path / "prefs")
    keep, held = tmp_path / "keep.jsonl", tmp_path / "held.jsonl"
    assert data.main(["split", "--data", str(root), "--data-split", "train_prefs", "--share",
                      "0.34", "--keep", str(keep), "--held-out", str(held)]) == 0
    written = [json.loads(x) for f in (keep, held) for x in f.read_text().splitlines()]
    assert len(written) == SPLITS["train_prefs"]
    assert {r["chosen"] for r in written} == {"train_prefs good"}
    calls = []
    monkeypatch.setattr(readers, "_load_hub_dataset",
                        lambda name, split, config=None: calls.append((split, config))
                        or rows(split, 4))
    assert data.main(["split", "--data", "org/prefs", "--data-split", "train_prefs",
                      "--data-config", "default", "--share", "0.5", "--keep", str(keep),
                      "--held-out", str(held)]) == 0
    assert calls == [("train_prefs", "default")]


def test_resuming_a_run_from_before_the_split_flags(tmp_path):
    from preflab.runtime import rundir

    (tmp_path / "config.yaml").write_text("config: {data: d.jsonl, seed: 0}\n")
    new = {"data": "d.jsonl", "seed": 0, "data_split": "", "data_config": ""}
    assert rundir.config_changes(tmp_path, new, checkpoint_step=None) == []
    new["data_split"] = "train"
    assert rundir.config_changes(tmp_path, new, checkpoint_step=None) == [
        "data_split: None -> 'train'"]


@pytest.mark.parametrize("names, whole", [
    (["part1", "part2"], True), (["train_a", "train_b"], True), (["train"], True),
    (["train", "extra"], False), (["train_prefs", "test_prefs"], False),
    (["prefs", "my_dev"], False), (["pretest", "trainer"], True),
])
def test_when_file_names_name_splits(names, whole, tmp_path):
    """Read whole unless the names tell splits apart: two split words, or one beside none."""
    for name in names:
        write_jsonl(tmp_path / f"{name}.jsonl", rows(name, 1))
    if whole:
        assert len(read_records(str(tmp_path))) == len(names)
    else:
        with pytest.raises(DataError, match=f"holds {len(names)} splits"):
            read_records(str(tmp_path))
    assert [r.data["chosen"] for r in read_records(str(tmp_path), split=names[0])] == [
        f"{names[0]} good"]


def test_ultrafeedback_shaped_splits_load_as_pairs_and_prompts(tmp_path, tiny_tokenizer):
    """HuggingFaceH4/ultrafeedback_binarized's layout: data/train_prefs-*.parquet rows hold a
    string prompt, chosen and rejected as whole conversations, and the same chat again in
    messages; train_gen rows a prompt and messages. The pairs read from train_prefs (the
    prompt taken from the conversations), the prompts from train_gen's prompt field."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from preflab.data import TruncationPolicy, load_preference_dataset, load_prompt_dataset

    def chat(prompt, reply):
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]

    prefs = [{"prompt": p, "prompt_id": str(i), "chosen": chat(p, "the movie was great"),
              "rejected": chat(p, "the movie was boring"), "messages": chat(p, "the movie was great"),
              "score_chosen": 8.0, "score_rejected": 3.0}
             for i, p in enumerate(("a film", "this plot"))]
    gen = [{"prompt": "a film", "prompt_id": "0", "messages": chat("a film", "the movie was great")}]
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(prefs), tmp_path / "data" / "train_prefs-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(gen), tmp_path / "data" / "train_gen-00000-of-00001.parquet")
    policy = TruncationPolicy()
    pairs, report = load_preference_dataset(str(tmp_path), tiny_tokenizer, policy,
                                            split="train_prefs")
    assert report.records == 2 and len(pairs) == 2
    prompts, _ = load_prompt_dataset(str(tmp_path), tiny_tokenizer, policy, split="train_gen")
    assert len(prompts) == 1
