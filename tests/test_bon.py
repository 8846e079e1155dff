"""Best-of-n: the order-statistic weights against brute force over every n-subset, the KL
bound, and `preflab bon` end to end on the tiny Llama with a reward function."""

from __future__ import annotations

import itertools
import json
import math
import random

import pytest

from preflab.cli import main
from preflab.metrics import best_of_n as bon
from tests.sft_data import write_jsonl


def test_weights_worked_by_hand():
    # 3 samples ranked low to high, best of 2: the lowest is never the best of a pair, the
    # middle one is in 1 of the 3 pairs as the best, the highest in 2 of 3.
    assert bon.best_of_n_weights(3, 2) == pytest.approx([0, 1 / 3, 2 / 3])
    assert bon.best_of_n_weights(4, 1) == pytest.approx([0.25] * 4)  # n = 1: the mean
    assert bon.best_of_n_weights(4, 4) == pytest.approx([0, 0, 0, 1])  # n = N: the max
    for count in (5, 17):
        for n in range(1, count + 1):
            assert sum(bon.best_of_n_weights(count, n)) == pytest.approx(1.0)


def test_expected_best_equals_the_mean_over_every_subset():
    rng = random.Random(0)
    proxy = [rng.random() for _ in range(7)]
    gold = [rng.random() for _ in range(7)]
    for n in range(1, 8):
        subsets = list(itertools.combinations(range(7), n))
        best = [max(s, key=lambda i: proxy[i]) for s in subsets]
        want_proxy = sum(proxy[i] for i in best) / len(subsets)
        want_gold = sum(gold[i] for i in best) / len(subsets)
        got = bon.expected_best(proxy, {"gold": gold}, n)
        assert got["proxy"] == pytest.approx(want_proxy)
        assert got["gold"] == pytest.approx(want_gold)


def test_the_kl_bound():
    assert bon.kl_bound(1) == 0
    assert bon.kl_bound(2) == pytest.approx(math.log(2) - 0.5)
    assert bon.kl_bound(16) == pytest.approx(math.log(16) - 15 / 16)


REWARD = '''
def positive(prompts, completions, **kwargs):
    return [sum(w in ("great", "good", "fun") for w in c.split()) for c in completions]


def length(prompts, completions, **kwargs):
    return [len(c.split()) / 10 for c in completions]
'''


def test_bon_end_to_end(tiny_model_dir, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"the {n} was"} for n in ("movie", "film", "plot", "story")])
    (tmp_path / "r.py").write_text(REWARD)
    out = tmp_path / "bon"
    args = ["bon", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--reward",
            f"{tmp_path / 'r.py'}:positive", "--gold-reward", f"{tmp_path / 'r.py'}:length",
            "--n", "1,2,4,8", "--max-new-tokens", "6", "--output-dir", str(out), "--no-progress"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    rows = results["rows"]
    assert [r["n"] for r in rows] == [1, 2, 4, 8] and results["samples_per_prompt"] == 8
    proxy = [r["proxy"] for r in rows]
    assert proxy == sorted(proxy)  # the expected best of n never falls as n grows
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    for row in rows:  # the table is the estimate from the samples it saved, prompt by prompt
        want = [bon.expected_best(s["proxy"], {"gold": s["gold"]}, row["n"]) for s in samples]
        assert row["proxy"] == pytest.approx(sum(w["proxy"] for w in want) / len(want))
        assert row["gold"] == pytest.approx(sum(w["gold"] for w in want) / len(want))
    assert len(samples) == 4 and all(len(s["completions"]) == 8 for s in samples)
    # n = 1 is the plain mean of every sample.
    mean_gold = sum(sum(s["gold"]) for s in samples) / 32
    assert rows[0]["gold"] == pytest.approx(mean_gold)
    assert (out / "bon.png").stat().st_size > 0 and "| 8 |" in (out / "report.md").read_text()
    # the run directory every trainer writes: one evaluation row per n, and the summary
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [1, 2, 4, 8]
    for e, row in zip(evals, rows):
        assert (e["eval/kl"], e["eval/proxy_reward"], e["eval/gold_reward"]) == (
            row["kl_bound"], row["proxy"], row["gold"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["command"] == "bon" and summary["samples"] == 32
    assert summary["tensor_bytes"]["policy"]["params"] > 0  # a function reward holds no model
    assert summary["tensor_bytes"]["policy"]["grads"] == 0 and "reward" not in summary["tensor_bytes"]

    assert main(args) == 2  # an earlier run is never replaced silently
    assert "--overwrite" in capsys.readouterr().err
    assert main([*args, "--overwrite"]) == 0
    assert json.loads((out / "results.json").read_text())["rows"] == rows  # seeded


@pytest.mark.parametrize("n", ["0,2", "a,b", "", "1,99999"])
def test_bad_values_of_n_are_refused(n, tiny_model_dir, tmp_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "the movie was"}])
    assert main(["bon", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--reward",
                 "m:f", "--n", n, "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--n" in err and "Traceback" not in err


def test_evaluate_policy_scores_the_proxys_pick_of_n(tiny_model_dir, tiny_tokenizer):
    """``best_of=4``: the same draws as 8 plain samples per prompt, of which each run of 4
    keeps the proxy's favourite; the proxy is reported for the picks, the KL is the bound."""
    from preflab import models
    from preflab.evaluation import evaluate_policy
    from preflab.metrics.best_of_n import kl_bound

    model = models.load_causal_lm(str(tiny_model_dir))
    prompts = ["the movie was", "the plot is"]

    def length(p, c, **kw):
        return [float(len(x)) for x in c]

    plain = evaluate_policy(model, tiny_tokenizer, prompts, num_samples=8, max_new_tokens=6,
                            seed=3, rewards={"length": length})
    picked = evaluate_policy(model, tiny_tokenizer, prompts, num_samples=2, max_new_tokens=6,
                             seed=3, rewards={"length": length}, best_of=4, proxy=length,
                             reference=lambda fn: fn(model))
    for drawn, kept in zip(plain.groups, picked.groups):
        assert len(kept) == 2
        for i, sample in enumerate(kept):
            run = [s.completion for s in drawn[4 * i : 4 * i + 4]]
            best = max(range(4), key=lambda j: (len(run[j]), -j))  # the first on ties
            assert sample.completion == run[best]
    lengths = [len(s.completion) for g in picked.groups for s in g]
    assert picked.metrics["eval/proxy_reward"] == pytest.approx(sum(lengths) / 4)
    assert picked.metrics["eval/length"] == pytest.approx(sum(lengths) / 4)
    assert picked.metrics["eval/length"] >= plain.metrics["eval/length"]
    assert picked.metrics["eval/kl"] == kl_bound(4)  # not a sampled KL of the policy to itself
    with pytest.raises(ValueError, match="proxy"):
        evaluate_policy(model, tiny_tokenizer, prompts, best_of=2)


def test_the_quick_comparison_includes_best_of_n(quick):
    """The shared quick run (tests/conftest.py) adds best-of-n on the RLHF road: it shares PPO's
    reward model, trains nothing, is scored as best-of-16 of the SFT model with the KL bound,
    and shows in the runs table, the memory chart (sampling policy and reward model, no
    gradients) and the frontier (one point per n)."""
    from preflab.metrics.best_of_n import kl_bound

    out, _, _ = quick
    results = json.loads((out / "results.json").read_text())
    runs = {r["method"]: r for r in results["runs"] if r["experiment"] == "main"}
    run = runs["bon"]
    assert run["status"] == "done" and run["road"] == "rlhf" and run["best_of"] == 16
    assert [results["stages"][k]["command"] for k in run["stages"]] == ["rm", "bon"]
    assert run["stages"][0] == runs["ppo"]["stages"][0]  # the same reward-model run
    assert run["score"]["eval/kl"] == pytest.approx(kl_bound(16))
    assert "eval/gold_reward" in run["score"] and "eval/proxy_reward" in run["score"]
    score = json.loads((out / run["score_file"]).read_text())
    assert score["policy"] == results["inputs"]["sft"] and score["proxy"].endswith(run["stages"][0])
    config = next(c for c in results["memory"]["configs"] if c["method"] == "bon")
    assert set(config["roles"]) == {"policy", "reward"}
    assert config["roles"]["policy"]["grads"] == config["roles"]["policy"]["optimizer"] == 0
    points = results["frontier"]["points"]["Best-of-n (RM)"]
    assert sorted(p[3] for p in points) == [1, 2, 4, 8, 16]
    assert all(p[0] == pytest.approx(kl_bound(p[3]), abs=1e-4) for p in points)
    assert "| Best-of-n (RM) | done |" in (out / "report.md").read_text()
    assert "(bound)" in (out / "report.md").read_text()
    assert results["recommendation"]["method"] != "bon"  # a choice is a model to train


def test_best_of_n_never_stands_for_the_rlhf_road():
    """It trains nothing: with bon listed first, the RLHF road's representative is still the
    trained method; with bon alone, the road's memory row is not measured rather than won by a
    sampler."""
    from preflab.compare import criteria

    stages = {"rm-s0": {"trains": ["reward"]}, "bon-s0": {"trains": []},
              "rloo-s0": {"trains": ["policy"]}}
    runs = [{"method": m, "road": "rlhf", "experiment": "main", "policy": f"{m}-s0",
             "stages": ["rm-s0", f"{m}-s0"]} for m in ("bon", "rloo")]
    assert criteria._rep({"runs": runs, "stages": stages}, "rlhf")["method"] == "rloo"
    assert criteria._rep({"runs": runs[:1], "stages": stages}, "rlhf") is None

    def config(method, optimizer):
        role = {"params": 10, "grads": 0, "optimizer": optimizer, "total": 10 + optimizer}
        return {"method": method, "label": method, "road": "rlhf" if method == "bon" else
                "direct", "roles": {"policy": role}, "total": role["total"], "weights": 10,
                "peak_rss_bytes": 1, "total_P": 1.0, "weights_P": 1.0, "probe": False}

    results = {"memory": {"P": 10, "configs": [config("bon", 0), config("dpo", 20)]}}
    row = criteria.memory(results)
    assert row["rlhf"]["figures"] == {} and row["winner"] not in ("RLHF",)
