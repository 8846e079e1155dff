"""The real-model lane: compare's one length setting, its real-cpu preset and time scaling, and
the reviews task (the DPO paper's controlled-sentiment experiment on a user's chat model)."""

from __future__ import annotations

import json
import shlex

import pytest

from preflab.cli import main
from preflab.compare.design import build
from preflab.compare.harness import BUDGET_FACTOR, MIN_BUDGET_S, PRIOR_SECONDS, Harness, Job
from preflab.compare.settings import PRESETS, CompareConfig
from tests.sft_data import write_jsonl
from tests.test_rm import preference_records


def flag(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def user_data(tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_records(16))
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"the {n} was"} for n in ("movie", "film", "plot", "show")])
    return pairs, prompts


@pytest.mark.parametrize("preset", ["quick", "standard", "real-cpu"])
@pytest.mark.parametrize("max_new_tokens", [0, 20])
def test_rl_methods_sample_at_the_length_every_policy_is_scored_at(
        preset, max_new_tokens, tiny_model_dir, tmp_path):
    pairs, prompts = user_data(tmp_path)
    cfg = CompareConfig(output_dir=str(tmp_path / "cmp"), model=str(tiny_model_dir),
                        pairs=str(pairs), prompts=str(prompts), preset=preset,
                        methods="dpo,ppo,ppo-shared,rloo,grpo,online-dpo",
                        max_new_tokens=max_new_tokens)
    cfg.validate()
    jobs = build(cfg).jobs
    scored = {flag(j.words, "--max-new-tokens") for j in jobs.values() if j.kind == "score"}
    assert len(scored) == 1
    length = scored.pop()
    expected = max_new_tokens or PRESETS[preset].max_new_tokens or 128
    assert length == str(expected)
    rl = [j for j in jobs.values() if j.kind in ("ppo", "rloo", "grpo")]
    assert len(rl) >= 4  # ppo, ppo-shared, rloo, grpo; more seeds and shares in standard
    for job in rl:  # rollouts, and the in-training evaluation, at the scored length
        assert flag(job.words, "--response-length") == length
        assert flag(job.words, "--eval-max-new-tokens") == length
    online = next(j for j in jobs.values() if j.kind == "online-dpo")
    assert flag(online.words, "--max-new-tokens") == length


@pytest.mark.parametrize("key", ["response_length", "max_new_tokens", "eval_max_new_tokens"])
def test_a_length_set_for_one_stage_is_refused(key, tiny_world, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"hyperparameters:\n  ppo: {{{key}: 8}}\n")
    assert main(["compare", "--world", str(tiny_world), "--output-dir", str(tmp_path / "c"),
                 "--config", str(config), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--max-new-tokens" in err and key in err and "Traceback" not in err


def test_expected_times_and_budgets_scale_with_the_models_parameters(tmp_path):
    from preflab.compare.run import time_scale
    from preflab.models.tiny import save_tiny_model

    pairs, prompts = user_data(tmp_path)
    model = save_tiny_model(tmp_path / "m", ["a", "b"], arch="llama", hidden_size=64,
                            num_layers=2, num_heads=4)
    cfg = CompareConfig(output_dir=str(tmp_path / "cmp"), model=str(model), pairs=str(pairs),
                        prompts=str(prompts), preset="real-cpu")
    scale, note = time_scale(cfg)
    from transformers import AutoModelForCausalLM

    params = AutoModelForCausalLM.from_pretrained(model).num_parameters()
    assert scale == pytest.approx(params / PRESETS["real-cpu"].prior_params)
    assert f"{params / 1e6:,.1f}M parameters" in note
    # the harness scales its priors; with no --time-budget a run's budget follows its prior
    jobs = {"a": Job("a", ["-c", "pass"], tmp_path / "x", kind="ppo")}
    harness = Harness(tmp_path / "h", jobs, time_scale=300.0, progress=False)
    assert harness.prior("ppo") == PRIOR_SECONDS["ppo"] * 300
    assert harness.budget("a") == max(MIN_BUDGET_S, BUDGET_FACTOR * PRIOR_SECONDS["ppo"] * 300)
    small = Harness(tmp_path / "h", jobs, time_scale=0.01, progress=False)
    assert small.budget("a") == MIN_BUDGET_S  # never under an hour by default
    fixed = Harness(tmp_path / "h", jobs, time_budget_s=7, time_scale=300.0, progress=False)
    assert fixed.budget("a") == 7
    # a preset's own priors (measured at its model size) replace the world's
    own = Harness(tmp_path / "h", jobs, prior_seconds={"ppo": 600}, time_scale=2.0,
                  progress=False)
    assert own.prior("ppo") == 1200


def test_a_gguf_model_is_dequantized_once_for_every_compared_run(tmp_path):
    pairs, prompts = user_data(tmp_path)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")  # the design reads no weights
    cfg = CompareConfig(output_dir=str(tmp_path / "cmp"), model=str(gguf), pairs=str(pairs),
                        prompts=str(prompts), preset="real-cpu")
    jobs = build(cfg).jobs
    base = str(tmp_path / "cmp" / "data" / "model")
    assert jobs["convert"].words[:3] == ["-m", "preflab.compare.data", "convert"]
    assert flag(jobs["convert"].words, "--out") == base
    training = [j for j in jobs.values() if j.kind in ("rm", "dpo", "ppo", "grpo")]
    assert training and all(flag(j.words, "--model") == base for j in training)
    assert all("convert" in j.after for j in training)
    scores = [j for j in jobs.values() if j.kind == "score"]
    assert all(flag(j.words, "--reference") == base for j in scores)


def test_real_cpu_preset_runs_dpo_the_rlhf_road_and_a_critic_free_method(tiny_model_dir,
                                                                         tmp_path, capsys):
    pairs, prompts = user_data(tmp_path)
    assert main(["compare", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--prompts",
                 str(prompts), "--output-dir", str(tmp_path / "cmp"), "--preset", "real-cpu",
                 "--dry-run"]) == 0
    commands = [shlex.split(x) for x in capsys.readouterr().out.strip().splitlines()]
    ran = {c[c.index("preflab.cli") + 1] if "preflab.cli" in c else c[1] for c in commands}
    assert {"dpo", "rm", "ppo", "grpo"} <= ran
    assert not {"ipo", "kto", "rloo", "sft"} & ran


# --- the reviews task --------------------------------------------------------------------------

def test_review_prompts_are_distinct_chat_prompts_that_ask_for_no_sentiment():
    from preflab.commands.reviews import review_prompts

    prompts = review_prompts(seed=0)
    texts = [p[0]["content"] for p in prompts]
    assert len(set(texts)) == len(texts) >= 700
    assert all(p == [{"role": "user", "content": p[0]["content"]}] for p in prompts)
    for word in ("positive", "negative", "good", "bad", "love", "hate"):
        assert not any(f" {word} " in f" {t.lower()} " for t in texts), word
    assert review_prompts(seed=0) == prompts and review_prompts(seed=1) != prompts


def test_gold_reward_is_vaders_compound_score():
    from preflab.commands.reviews import gold_reward

    scores = gold_reward(["p"] * 3, ["A wonderful, delightful film. I loved it!",
                                     "Terrible. The worst book I have ever read.",
                                     "It is a chair."])
    assert scores[0] > 0.8 and scores[1] < -0.7 and scores[2] == 0.0
    assert all(-1 <= s <= 1 for s in scores)


def test_simulated_people_prefer_by_a_bradley_terry_draw_on_gold():
    from preflab.commands.reviews import annotators
    from preflab.world.annotators import sigmoid

    people = annotators(temperature=0.1, seed=0)
    n, gold_a, gold_b = 20_000, 0.3, 0.1
    wins = sum(people.label_pair("p", "a", "b", gold_a, gold_b).chosen == "a" for _ in range(n))
    p = sigmoid((gold_a - gold_b) / 0.1)  # 0.881
    assert abs(wins / n - p) < 5 * (p * (1 - p) / n) ** 0.5
    label = annotators(temperature=0, seed=0).label_pair("p", "a", "b", 0.1, 0.5)
    chosen, rejected, g_c, g_r = label.chosen, label.rejected, label.chosen_gold, label.rejected_gold
    assert (chosen, rejected, g_c, g_r) == ("b", "a", 0.5, 0.1)  # deterministic at 0
    assert annotators(0.1, 0).flip_rate == 0 and annotators(0.1, 0).length_bias == 0


def test_reviews_build_writes_conversational_pairs_the_loaders_read(tmp_path, capsys):
    from preflab import models
    from preflab.commands.reviews import gold_reward, review_prompts
    from preflab.data import TruncationPolicy, load_preference_dataset
    from preflab.models.tiny import save_tiny_model

    words = sorted({w for p in review_prompts() for w in p[0]["content"].split()}
                   | {"great", "awful", "fine"})
    model = save_tiny_model(tmp_path / "m", words, arch="llama")
    out = tmp_path / "task"
    assert main(["reviews", "build", "--model", str(model), "--out", str(out), "--pair-prompts",
                 "12", "--rl-prompts", "6", "--max-new-tokens", "6", "--no-progress"]) == 0
    task = json.loads((out / "task.json").read_text())
    pairs = [json.loads(x) for x in (out / "pairs.jsonl").read_text().splitlines()]
    prompts = [json.loads(x)["prompt"] for x in (out / "prompts.jsonl").read_text().splitlines()]
    assert task["pairs"] == len(pairs) > 0 and len(prompts) == 6
    paired = {json.dumps(p["prompt"]) for p in pairs}
    assert not paired & {json.dumps(p) for p in prompts}  # disjoint prompt sets
    for pair in pairs:
        assert pair["chosen"][0]["role"] == "assistant" and pair["prompt"][0]["role"] == "user"
        assert pair["chosen"] != pair["rejected"]
    tokenizer = models.load_tokenizer(str(model))
    examples, _ = load_preference_dataset(str(out / "pairs.jsonl"), tokenizer,
                                          TruncationPolicy(max_length=128))
    assert len(examples) == len(pairs)
    for pair in pairs:  # each side's gold is VADER's score of that side's text
        sides = [pair["chosen"][0]["content"], pair["rejected"][0]["content"]]
        assert gold_reward([pair["prompt"]] * 2, sides) == [pair["chosen_gold"],
                                                            pair["rejected_gold"]]
    # a second build into the same directory is refused, not silently overwritten
    assert main(["reviews", "build", "--model", str(model), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_compare_scores_a_policy_on_chat_prompts(tiny_model_dir, tmp_path):
    """Own-data mode: the held-out prompts may be chat messages; the score job renders them
    with the policy's chat template, as the trainers do."""
    from preflab.compare.score import main as score

    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"prompt": [{"role": "user", "content": f"the {n} was"}]} for n in ("movie", "film")]
        + [{"prompt": "the plot was"}])
    out = tmp_path / "s.json"
    assert score(["--policy", str(tiny_model_dir), "--reference", str(tiny_model_dir),
                  "--prompts", str(prompts), "--out", str(out), "--samples", "2",
                  "--max-new-tokens", "4", "--num-prompts", "3"]) == 0
    result = json.loads(out.read_text())
    assert result["prompts"] == 3
    shown = [e["prompt"] for e in result["examples"]]
    assert shown[0] == "<|user|> the movie was <|end|> <|assistant|> "  # the template's text
    assert shown[2] == "the plot was"
    assert result["metrics"]["eval/kl"] == pytest.approx(0.0, abs=1e-6)  # policy = reference
