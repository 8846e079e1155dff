"""REINFORCE++: the per-token reward and its return against values worked by hand, the
normalisation over the whole batch (every process's), one completion per prompt, and the
command end to end on a tiny Llama (three roles, what moves, the metric names, the registry)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch

from preflab.algorithms import compared, registry, reinforce_pp
from preflab.rl import loop
from tests.test_group_rl import capture, changed, prompt_files, rows_of  # noqa: F401

# --- the return and the advantage -----------------------------------------------------------

LOGPROBS = torch.tensor([[-1.0, -2.0, -0.5], [-0.2, -0.4, 0.0]])
REF_LOGPROBS = torch.tensor([[-1.5, -1.0, -0.5], [-0.4, -0.2, 0.0]])
MASK = torch.tensor([[True, True, True], [True, True, False]])  # lengths 3 and 2
SCORES = torch.tensor([1.0, -0.5])


def test_return_by_hand():
    """kl_coef 0.1, k1 = log pi_old - log pi_ref.
    Row 0: KL 0.5, -1.0, 0.0 -> r = -0.05, 0.1, 0.0 + score 1.0 at the last = -0.05, 0.1, 1.0;
    G = 1.05, 1.10, 1.00 (each the sum of r from t on).
    Row 1 (2 tokens): KL 0.2, -0.2 -> r = -0.02, 0.02 - 0.5 = -0.02, -0.48; G = -0.50, -0.48;
    its padding stays 0."""
    G, kl = reinforce_pp.returns(LOGPROBS, REF_LOGPROBS, SCORES, MASK, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, -1.0, 0.0], [0.2, -0.2, 0.0]]))
    torch.testing.assert_close(G, torch.tensor([[1.05, 1.10, 1.00], [-0.50, -0.48, 0.0]]))
    # no penalty: every token's return is its sequence's score
    G0, _ = reinforce_pp.returns(LOGPROBS, REF_LOGPROBS, SCORES, MASK, kl_coef=0.0)
    torch.testing.assert_close(G0, torch.tensor([[1.0, 1.0, 1.0], [-0.5, -0.5, 0.0]]))


def one_process() -> SimpleNamespace:
    return SimpleNamespace(ctx=SimpleNamespace(enabled=False))


def rollout_of(logprobs, ref_logprobs, scores, mask) -> SimpleNamespace:
    return SimpleNamespace(old={"logprobs": logprobs, "ref_logprobs": ref_logprobs},
                           scores=scores, mask=mask)


def test_advantage_is_the_return_normalised_over_the_batch_by_hand():
    """The five returns 1.05, 1.10, 1.00, -0.50, -0.48: mean 2.17 / 5 = 0.434, deviations
    0.616, 0.666, 0.566, -0.934, -0.914, squares summing to 2.85112, Bessel variance
    2.85112 / 4 = 0.71278. A_t = deviation / sqrt(0.71278 + 1e-8); padding 0."""
    targets = reinforce_pp.advantages(None, rollout_of(LOGPROBS, REF_LOGPROBS, SCORES, MASK),
                                      0.1, one_process())
    scale = math.sqrt(0.71278 + 1e-8)
    want = torch.tensor([[0.616, 0.666, 0.566], [-0.934, -0.914, 0.0]]) / scale
    torch.testing.assert_close(targets["advantages"], want)
    torch.testing.assert_close(targets["returns"],
                               torch.tensor([[1.05, 1.10, 1.00], [-0.50, -0.48, 0.0]]))


def test_normalisation_is_over_the_batch_not_each_sequence():
    """Mean 0 and (Bessel) std 1 over every response token of the batch, while one sequence
    alone keeps its sign: a sequence's advantages move when another sequence changes."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1, 5, 2, 6])
    mask = torch.arange(6).unsqueeze(0) < lengths.unsqueeze(1)
    logprobs, ref = -torch.rand(4, 6, generator=g), -torch.rand(4, 6, generator=g)
    scores = torch.tensor([2.0, -1.0, 0.5, 3.0])
    adv = reinforce_pp.advantages(None, rollout_of(logprobs, ref, scores, mask), 0.1,
                                  one_process())["advantages"]
    assert adv[mask].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert adv[mask].std().item() == pytest.approx(1.0, abs=1e-6)
    assert (adv[~mask] == 0).all()
    assert (adv[3, :6] > 0).all()  # the best sequence is above the batch's mean everywhere
    other = reinforce_pp.advantages(None, rollout_of(logprobs, ref, scores * torch.tensor(
        [1.0, 1.0, 1.0, 10.0]), mask), 0.1, one_process())["advantages"]
    assert not torch.allclose(other[0, :1], adv[0, :1])  # row 0 unchanged, its advantage not


NORMALISE_SCRIPT = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
import torch
from preflab.algorithms.reinforce_pp import advantages
from preflab.runtime import distributed

out = Path(sys.argv[1])
ctx = distributed.setup("cpu")
g = torch.Generator().manual_seed(0)
mask = torch.arange(6).unsqueeze(0) < torch.tensor([1, 5, 2, 6, 3, 4]).unsqueeze(1)
logprobs, ref = -torch.rand(6, 6, generator=g), -torch.rand(6, 6, generator=g)
scores = torch.randn(6, generator=g)
rows = slice(ctx.rank * 3, ctx.rank * 3 + 3) if ctx.enabled else slice(0, 6)
rollout = SimpleNamespace(old={"logprobs": logprobs[rows], "ref_logprobs": ref[rows]},
                          scores=scores[rows], mask=mask[rows])
adv = advantages(None, rollout, 0.1, SimpleNamespace(ctx=ctx))["advantages"]
whole = torch.zeros(6, 6)
whole[rows] = adv
if ctx.enabled:
    whole = distributed.all_reduce_sum(whole, ctx)
if ctx.rank == 0:
    (out / ("two.json" if ctx.enabled else "one.json")).write_text(json.dumps(whole.tolist()))
distributed.teardown(ctx)
distributed.exit_rank(0)
"""


def test_two_processes_normalise_as_one(tmp_path):
    """Six sequences of unequal lengths split 3 + 3 over 2 gloo processes get the advantages
    of one process holding all six: the mean and variance are every process's."""
    from tests.test_rm import one_and_two_processes

    one, two = one_and_two_processes(tmp_path, NORMALISE_SCRIPT, [str(tmp_path)])
    torch.testing.assert_close(torch.tensor(two), torch.tensor(one), atol=1e-6, rtol=1e-5)


# --- end to end ---------------------------------------------------------------------------------

def args(model, data, out, reward, *extra) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--output-dir", str(out),
            "--reward", reward, "--rollout-batch-size", "8", "--num-minibatches", "2",
            "--num-iterations", "2", "--response-length", "6", "--batch-size", "4",
            "--learning-rate", "3e-3", "--log-every", "1", "--no-progress",
            "--eval-fraction", "0.2", "--eval-num-prompts", "4", *extra]


METRICS = ("loss", "loss/policy", "policy/approxkl", "policy/clipfrac", "val/ratio",
           "objective/kl", "objective/entropy", "objective/non_score_reward", "objective/scores",
           "objective/rlhf_reward", "objective/response_length", "objective/kl_coef",
           "val/num_eos_tokens", "rollout/sampler_logprob_gap", "lr", "episode",
           "tokens_per_sec", "elapsed_s")


def test_end_to_end_one_completion_per_prompt_three_roles(
        tiny_model_dir, prompt_files, tmp_path, monkeypatch):  # noqa: F811
    """Each rollout is one completion per prompt; policy, reference and reward, no value
    model: the policy moves, the reference does not; PPO's metric names are logged."""
    data, rewards_py = prompt_files
    captured = capture(monkeypatch)
    rollouts = []

    def collect(*a, **kw):
        rollout = collect_rollout(*a, **kw)
        rollouts.append((len(a[3]), kw["num_samples"], len(rollout.scores)))
        return rollout

    collect_rollout = loop.collect_rollout
    monkeypatch.setattr(loop, "collect_rollout", collect)
    out = tmp_path / "run"
    assert reinforce_pp.main(args(tiny_model_dir, data, out, f"{rewards_py}:positive",
                                  "--max-steps", "3", "--kl-coef", "0.1", "--gold-reward",
                                  f"{rewards_py}:positive")) == 0
    assert rollouts == [(8, 1, 8)] * 3  # 8 prompts, 1 completion each, 8 rows
    roles = captured["roles"]
    assert not roles.has_value
    assert all(changed(captured, roles.policy.parameters()))
    assert not any(changed(captured, roles.reference.parameters()))
    rows = rows_of(out)
    train = [r for r in rows if "loss" in r]
    assert [r["episode"] for r in train] == [8, 16, 24]
    for row in train:
        assert set(METRICS) <= row.keys()
        assert "objective/scores/positive" in row and "val/explained_variance" not in row
        assert math.isfinite(row["loss"]) and row["objective/kl_coef"] == 0.1
    assert train[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference
    assert {"eval/gold_reward", "eval/proxy_reward", "eval/kl"} <= rows[-1].keys()
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tensor_bytes"]) == {"policy", "reference", "reward"}
    assert summary["single_pass"] is False
    assert not (out / "final" / "value").exists()


def test_refuses_a_group_and_declares_itself(tiny_model_dir, prompt_files, tmp_path,  # noqa: F811
                                             capsys):
    """No --num-generations: one completion per prompt is the method. The registry, hence
    preflab's command list and compare, has it."""
    from preflab.cli import main

    data, rewards_py = prompt_files
    base = args(tiny_model_dir, data, tmp_path / "x", f"{rewards_py}:positive")
    try:
        code = main(["reinforce-pp", *base, "--num-generations", "4"])
    except SystemExit as exc:  # argparse's own refusal of an unknown flag
        code = exc.code
    assert code == 2 and "--num-generations" in capsys.readouterr().err
    method = registry()["reinforce-pp"]
    assert method.module == "preflab.algorithms.reinforce_pp"
    assert method.roles == ("policy", "reward", "reference")
    assert compared()["reinforce-pp"][1].world["rollout_batch_size"] == 64
