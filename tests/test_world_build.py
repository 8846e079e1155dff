"""Building, loading and using a world directory; the `preflab world` commands, on tiny sizes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from preflab.commands.world import main
from preflab.errors import ConfigError, DataError
from preflab.generation import Sample
from preflab.world import load_world
from preflab.world.build import build_world
from preflab.world.tasks import make_pairs

SMALL = dict(num_reviews=300, num_prompts_train=24, num_prompts_eval=8, hidden_size=32,
             num_layers=1, num_heads=4, max_positions=64)


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    return build_world(tmp_path_factory.mktemp("world") / "w", seed=3, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def test_same_seed_same_files_byte_for_byte(world_dir, tmp_path):
    again = build_world(tmp_path / "again", seed=3, **SMALL)
    first, second = _files(world_dir), _files(again)
    assert set(first) >= {"world.json", "sft.jsonl", "sft.yaml", "rewards.py", "prompts_train.jsonl",
                          "prompts_eval.jsonl", "model/config.json", "model/model.safetensors",
                          "model/tokenizer.json", "model/tokenizer_config.json"}
    assert first == second
    other = build_world(tmp_path / "other", seed=4, **SMALL)
    assert _files(other)["sft.jsonl"] != first["sft.jsonl"]
    assert _files(other)["model/model.safetensors"] != first["model/model.safetensors"]


def test_world_files_are_ordinary_data(world_dir):
    world = load_world(world_dir / "world.json")
    sft = [json.loads(line) for line in (world_dir / "sft.jsonl").read_text().splitlines()]
    assert len(sft) == SMALL["num_reviews"]
    assert all(set(r) == {"prompt", "completion"} for r in sft)
    assert all(2 <= len(r["prompt"].split()) <= 4 and r["completion"].startswith(" ")
               and r["completion"].split()[-1] == "." for r in sft)
    assert all(world.gold_reward.is_grammatical(r["prompt"], r["completion"]) for r in sft)
    train = [json.loads(x)["prompt"] for x in (world_dir / "prompts_train.jsonl").open()]
    evals = [json.loads(x)["prompt"] for x in (world_dir / "prompts_eval.jsonl").open()]
    assert len(set(train)) == len(train) == 24 and len(set(evals)) == len(evals) == 8
    assert not set(train) & set(evals)
    meta = world.meta
    assert meta["corpus"]["grammatical_rate"] == 1.0
    assert 0.3 < meta["corpus"]["gold_mean"] < 0.6 and meta["corpus"]["gold_std"] > 0.1
    assert meta["annotator"]["threshold"] == meta["corpus"]["gold_mean"]
    assert "learning_rate: 0.003" in (world_dir / "sft.yaml").read_text()


def test_rewards_file_is_an_ordinary_reward_function(world_dir):
    from preflab.rewards import load_reward_function

    gold = load_reward_function(f"{world_dir / 'rewards.py'}:gold_reward")
    harm = load_reward_function(f"{world_dir / 'rewards.py'}:harmlessness")
    assert gold(["the movie was"], [" good ."], ended_with_eos=[True]) == \
        load_world(world_dir).gold_reward(["the movie was"], [" good ."])
    assert harm(["the movie was"], [" damn brilliant ."]) == [0.5]


def test_model_directory_loads_and_tokenizer_round_trips(world_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    world = load_world(world_dir)
    tokenizer = AutoTokenizer.from_pretrained(world.model_dir)
    model = AutoModelForCausalLM.from_pretrained(world.model_dir)
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tokenizer)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert tokenizer.chat_template and tokenizer.pad_token_id is not None
    for line in (world_dir / "sft.jsonl").read_text().splitlines()[:50]:
        record = json.loads(line)
        text = record["prompt"] + record["completion"]
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
        completion_ids = tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(completion_ids) == record["completion"].strip()


def test_build_refuses_a_non_empty_directory(world_dir, tmp_path):
    with pytest.raises(ConfigError, match="not empty"):
        build_world(world_dir, **SMALL)
    (tmp_path / "mine.txt").write_text("keep me")
    build_world(tmp_path, overwrite=True, **SMALL)
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    with pytest.raises(ConfigError):
        build_world(tmp_path / "x", **{**SMALL, "num_heads": 5})


def test_load_world_errors(tmp_path):
    with pytest.raises(DataError, match="no built world"):
        load_world(tmp_path)
    (tmp_path / "world.json").write_text('{"world": "other", "version": 1}')
    with pytest.raises(DataError, match="unsupported world"):
        load_world(tmp_path)


def _corpus_policy(world_dir: Path, prompt_file: Path):
    """A stand-in for a policy: 'samples' are corpus continuations of the same prefix.

    Writes the corpus's most common prefixes to ``prompt_file``; returns a fake ``generate``.
    """
    by_prompt: dict[str, list[str]] = {}
    for line in (world_dir / "sft.jsonl").read_text().splitlines():
        record = json.loads(line)
        by_prompt.setdefault(record["prompt"], []).append(record["completion"])
    common = sorted(by_prompt, key=lambda p: -len(by_prompt[p]))[:20]
    prompt_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in common))

    def fake_generate(model, tokenizer, prompts, *, num_samples=1, **kwargs):
        return [[Sample(p, by_prompt[p][j % len(by_prompt[p])], [], True)
                 for j in range(num_samples)] for p in prompts]

    return fake_generate


def test_make_pairs_with_deterministic_annotator_agrees_with_gold(world_dir, tmp_path,
                                                                monkeypatch):
    import preflab.generation
    import preflab.world.tasks as world_cli

    prompts = tmp_path / "prompts.jsonl"
    monkeypatch.setattr(preflab.generation, "generate", _corpus_policy(world_dir, prompts))
    monkeypatch.setattr(world_cli, "_load_policy", lambda *a, **k: (None, None))
    out = tmp_path / "pairs.jsonl"
    stats = make_pairs("unused", world_dir, out, prompts=prompts, temperature=0.0,
                       samples_per_prompt=4)
    assert stats["agreement"] == 1.0 and stats["decided"] > 30
    pairs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(pairs) == stats["pairs"] == 20 * 6 - stats["skipped_identical"]
    assert all(p["chosen_gold"] >= p["rejected_gold"] for p in pairs)
    assert set(pairs[0]) == {"prompt", "chosen", "rejected", "chosen_gold", "rejected_gold"}
    unpaired = [json.loads(x) for x in (tmp_path / "pairs_unpaired.jsonl").read_text().splitlines()]
    assert len(unpaired) == 20 * 4 and set(unpaired[0]) == {"prompt", "completion", "label", "gold"}
    assert all(u["label"] == (u["gold"] > stats["annotator"]["threshold"]) for u in unpaired)
    with pytest.raises(ConfigError, match="exists"):
        make_pairs("unused", world_dir, out, prompts=prompts)
    noisy = make_pairs("unused", world_dir, tmp_path / "noisy.jsonl", prompts=prompts,
                       flip_rate=1.0, temperature=0.0)
    assert noisy["agreement"] == 0.0


def test_world_commands_end_to_end(world_dir, tmp_path, capsys):
    world = load_world(world_dir)
    policy = str(world.model_dir)  # the random model: a valid if hopeless policy
    out = tmp_path / "p.jsonl"
    args = ["--policy", policy, "--world", str(world_dir), "--max-prompts", "3",
            "--max-new-tokens", "6", "--device", "cpu"]
    assert main(["pairs", *args, "--out", str(out), "--samples-per-prompt", "3"]) == 0
    assert "agreement with gold" in capsys.readouterr().out
    assert out.exists() and (tmp_path / "p_unpaired.jsonl").exists()
    with pytest.raises(ConfigError):
        main(["pairs", *args, "--out", str(out)])
    assert main(["pairs", *args, "--out", str(out), "--overwrite"]) == 0
    report = tmp_path / "score.json"
    assert main(["score", *args, "--samples", "2", "--json", str(report)]) == 0
    figures = json.loads(report.read_text())
    for key in ("gold_reward", "harmlessness", "grammatical", "mean_length", "eos_rate",
                "distinct_n/per_input", "distinct_n/across_input", "self_bleu/per_input",
                "ead/across_input"):
        assert f"eval/{key}" in figures
    assert figures["samples"] == 6
    build_out = tmp_path / "built"
    assert main(["build", "--out", str(build_out), "--num-reviews", "50",
                 "--num-prompts-train", "5", "--num-prompts-eval", "3", "--hidden-size", "16",
                 "--num-layers", "1", "--num-heads", "2", "--max-positions", "64",
                 "--temperature", "0.2"]) == 0
    assert load_world(build_out).meta["annotator"]["temperature"] == 0.2


def test_world_help_shows_defaults(capsys):
    for command in ("build", "pairs", "score"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "(default:" in capsys.readouterr().out
