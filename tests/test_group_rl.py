"""RLOO and GRPO: the leave-one-out baseline, group normalisation, the k3 KL term and the loss
aggregations against values worked by hand; the losses and gradients against TRL's
RLOOTrainer and GRPOTrainer (when trl is installed); and both commands end to end on a tiny
Llama (three roles, what moves, the metric names, resume, 2 processes against 1)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from preflab.algorithms import grpo, rloo
from preflab.losses import clipped_policy_loss, group_advantages, normalize, rloo_advantages
from tests.sft_data import write_jsonl
from tests.test_ppo import REWARD_FILE, assert_same_update, moved

# --- advantages -----------------------------------------------------------------------------------

def test_leave_one_out_baseline_by_hand():
    """Rewards 1, 2, 3, 6: baselines (2+3+6)/3, (1+3+6)/3, (1+2+6)/3, (1+2+3)/3 =
    11/3, 10/3, 3, 2, so advantages -8/3, -4/3, 0, 4 (summing to 0). The second group
    (0, 0, 0, 4) has baselines 4/3, 4/3, 4/3, 0: advantages -4/3 three times and 4."""
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 0.0, 4.0]])
    want = torch.tensor([[-8 / 3, -4 / 3, 0.0, 4.0], [-4 / 3, -4 / 3, -4 / 3, 4.0]])
    torch.testing.assert_close(rloo_advantages(rewards), want)
    # the same as K / (K - 1) x (r - mean)
    torch.testing.assert_close(rloo_advantages(rewards),
                               4 / 3 * (rewards - rewards.mean(-1, keepdim=True)))
    with pytest.raises(ValueError, match="K >= 2"):
        rloo_advantages(torch.ones(3, 1))


def test_group_normalisation_by_hand_and_equal_rewards_give_zero():
    """Rewards 1, 2, 3, 6: mean 3, deviations -2, -1, 0, 3, Bessel std sqrt(14/3) = 2.1602.
    A group of equal rewards: advantage 0, no NaN, in every scale mode."""
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
    std = math.sqrt(14 / 3)
    got = group_advantages(rewards)
    torch.testing.assert_close(got[0], torch.tensor([-2.0, -1.0, 0.0, 3.0]) / (std + 1e-4))
    assert got[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert torch.isfinite(got).all()
    none = group_advantages(rewards, scale="none")  # Dr. GRPO: centred only
    torch.testing.assert_close(none, torch.tensor([[-2.0, -1.0, 0.0, 3.0], [0.0] * 4]))
    batch = group_advantages(rewards, scale="batch")
    torch.testing.assert_close(batch, none / (rewards.std() + 1e-4))
    torch.testing.assert_close(group_advantages(rewards, scale="batch", batch_std=torch.tensor(2.0)),
                               none / (2.0 + 1e-4))
    for scale in ("group", "batch", "none"):
        assert group_advantages(torch.full((2, 4), 7.0), scale=scale).abs().sum() == 0


def test_normalize_by_hand():
    x = torch.tensor([1.0, 3.0])  # mean 2, Bessel std sqrt(2)
    torch.testing.assert_close(normalize(x), torch.tensor([-1.0, 1.0]) / (math.sqrt(2) + 1e-4))


# --- the clipped loss -----------------------------------------------------------------------------

def test_k3_kl_term_value_and_gradient_by_hand():
    """Advantage 0, so only the KL term is left. log pi = [-1, -2], log pi_ref = [-1.5, -1]:
    d = [-0.5, 1], k3 = e^d - d - 1 = [0.106531, 0.718282]; loss = 0.1 x mean; and
    d k3 / d log pi = 1 - e^d, so the gradient is 0.1 x (1 - e^d) / 2."""
    logprobs = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.0]])
    d = torch.tensor([-0.5, 1.0])
    k3 = torch.exp(d) - d - 1
    assert k3.tolist() == pytest.approx([0.1065307, 0.7182818], abs=1e-6)
    loss, stats = clipped_policy_loss(logprobs, logprobs.detach(), torch.zeros(1),
                                      torch.ones(1, 2, dtype=torch.bool), clip_range=0.2,
                                      ref_logprobs=ref, kl_coef=0.1)
    assert loss.item() == pytest.approx(0.1 * k3.mean().item(), abs=1e-7)
    assert stats["kl"].item() == pytest.approx(k3.mean().item(), abs=1e-7)
    loss.backward()
    torch.testing.assert_close(logprobs.grad[0], 0.1 * (1 - torch.exp(d)) / 2)


def test_token_against_sequence_aggregation_by_hand():
    """Ratio 1 everywhere, so each token's loss is -A. Row 0: 1 token, A = 1 -> -1. Row 1:
    3 tokens, A = -1 -> +1 each. sequence: mean(-1, +1) = 0. token: (-1 + 3) / 4 = 0.5.
    fixed (max length 4): (-1 + 3) / (2 x 4) = 0.25."""
    logprobs = torch.tensor([[-1.0, -1.0, -1.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[True, False, False], [True, True, True]])
    adv = torch.tensor([1.0, -1.0])
    got = {agg: clipped_policy_loss(logprobs, logprobs, adv, mask, clip_range=0.2,
                                    aggregation=agg, max_length=4)[0].item()
           for agg in ("sequence", "token", "fixed")}
    assert got == pytest.approx({"sequence": 0.0, "token": 0.5, "fixed": 0.25})


def test_importance_levels_and_clipping_by_hand():
    """One row of two tokens, log-ratios 0.1 and 0.2, A = 1, clip 0.2.
    token: w = e^0.1 = 1.105 (inside), e^0.2 = 1.221 (clipped to 1.2): loss -(1.105 + 1.2)/2.
    sequence-sum: w = e^0.3 = 1.350, clipped to 1.2: loss -1.2, region 1.
    sequence-mean: w = e^0.15 = 1.162, inside: loss -1.162, region 0."""
    old = torch.tensor([[-1.0, -1.0]])
    new = old + torch.tensor([[0.1, 0.2]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    adv = torch.ones(1)
    loss, stats = clipped_policy_loss(new, old, adv, mask, clip_range=0.2, importance="token")
    assert loss.item() == pytest.approx(-(math.exp(0.1) + 1.2) / 2, abs=1e-6)
    assert stats["clip_ratio/high_mean"].item() == pytest.approx(0.5)
    loss, stats = clipped_policy_loss(new, old, adv, mask, clip_range=0.2, importance="sequence-sum")
    assert loss.item() == pytest.approx(-1.2, abs=1e-6)
    assert stats["clip_ratio/region_mean"].item() == 1.0
    loss, stats = clipped_policy_loss(new, old, adv, mask, clip_range=0.2,
                                      importance="sequence-mean")
    assert loss.item() == pytest.approx(-math.exp(0.15), abs=1e-6)
    assert stats["clip_ratio/region_mean"].item() == 0.0
    # clip-higher: an upper range of 0.28 leaves e^0.2 unclipped
    loss, _ = clipped_policy_loss(new, old, adv, mask, clip_range=0.2, clip_range_high=0.28)
    assert loss.item() == pytest.approx(-(math.exp(0.1) + math.exp(0.2)) / 2, abs=1e-6)


# --- against TRL ------------------------------------------------------------------------------------

class _Accelerator:
    num_processes, sync_gradients = 1, True

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):  # noqa: ARG002
        return x

    gather_for_metrics = gather


def _trl_trainer(cls, logps: torch.Tensor, **attrs):
    """A TRL trainer object with only what ``_compute_loss`` reads, its policy forward replaced
    by ``logps`` (a leaf with grad), so its loss can be set beside ours on the same numbers."""
    trainer = object.__new__(cls)
    model = torch.nn.Linear(1, 1)
    values = dict(model=model, accelerator=_Accelerator(), aux_loss_enabled=False,
                  _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                  top_entropy_quantile=1.0, off_policy_mask_threshold=None, use_vllm=False,
                  current_gradient_accumulation_steps=1, _entropy_bonus_enabled=False,
                  args=SimpleNamespace(use_bias_correction_kl=False, delta=None))
    values.update(attrs)
    for key, value in values.items():
        object.__setattr__(trainer, key, value)
    trainer._get_per_token_logps_and_entropies = (
        lambda *a, **k: (logps, torch.zeros_like(logps), None))
    return trainer


def _random_case(seed: int, B: int = 6, T: int = 5):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(B, T, generator=g) * 3
    new = (old + torch.randn(B, T, generator=g) * 0.3).requires_grad_(True)
    ref = old + torch.randn(B, T, generator=g) * 0.2
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    adv = torch.randn(B, generator=g)
    return old, new, ref, mask, adv


def _inputs(mask, adv, **extra):
    B, T = mask.shape
    return {"prompt_ids": torch.ones(B, 2, dtype=torch.long), "prompt_mask": torch.ones(B, 2),
            "completion_ids": torch.ones(B, T, dtype=torch.long),
            "completion_mask": mask.float(), "advantages": adv, **extra}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rloo_loss_and_gradient_match_trl(seed):
    trl_rloo = pytest.importorskip("trl.trainer.rloo_trainer")
    old, new, _, mask, adv = _random_case(seed)
    ours, _ = clipped_policy_loss(new, old, adv, mask, clip_range=0.2, importance="sequence-sum",
                                  aggregation="sequence")
    (ours_grad,) = torch.autograd.grad(ours, new)
    theirs_new = new.detach().clone().requires_grad_(True)
    trainer = _trl_trainer(trl_rloo.RLOOTrainer, theirs_new, epsilon_low=0.2, epsilon_high=0.2)
    theirs = trainer._compute_loss(None, _inputs(mask, adv,
                                                 old_logps=(old * mask).sum(1)))
    theirs.backward()
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    # TRL's per-token log-probs are not masked before its sum: only valid tokens carry gradient
    torch.testing.assert_close(ours_grad * mask, theirs_new.grad * mask, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("loss_type", "aggregation", "level", "importance", "beta"), [
    ("grpo", "sequence", "token", "token", 0.04),
    ("grpo", "sequence", "token", "token", 0.0),
    ("bnpo", "token", "token", "token", 0.04),
    ("dr_grpo", "fixed", "token", "token", 0.04),
    ("grpo", "sequence", "sequence", "sequence-mean", 0.04),  # GSPO
])
def test_grpo_loss_and_gradient_match_trl(loss_type, aggregation, level, importance, beta):
    trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
    old, new, ref, mask, adv = _random_case(7)
    T = mask.shape[1]
    ours, _ = clipped_policy_loss(new, old, adv, mask, clip_range=0.2, clip_range_high=0.28,
                                  importance=importance, aggregation=aggregation, max_length=T,
                                  ref_logprobs=ref if beta else None, kl_coef=beta)
    (ours_grad,) = torch.autograd.grad(ours, new)
    theirs_new = new.detach().clone().requires_grad_(True)
    trainer = _trl_trainer(trl_grpo.GRPOTrainer, theirs_new, epsilon_low=0.2, epsilon_high=0.28,
                           importance_sampling_level=level, loss_type=loss_type, beta=beta,
                           max_completion_length=T)
    extra = {"old_per_token_logps": old}
    if beta:
        extra["ref_per_token_logps"] = ref
    theirs = trainer._compute_loss(None, _inputs(mask, adv, **extra))
    theirs.backward()
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours_grad * mask, theirs_new.grad * mask, atol=1e-6, rtol=1e-6)


# --- end to end -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prompt_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("group-data")
    prompts = [{"prompt": f"{d} {n} was"} for d in ("the", "a", "this", "that")
               for n in ("movie", "film", "plot", "story", "acting")]
    (root / "rewards.py").write_text(REWARD_FILE)
    return write_jsonl(root / "prompts.jsonl", prompts), root / "rewards.py"


def group_args(model, data, out, reward, *extra) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--output-dir", str(out),
            "--reward", reward, "--rollout-batch-size", "4", "--num-generations", "4",
            "--num-minibatches", "2", "--num-iterations", "2", "--response-length", "6",
            "--batch-size", "4", "--learning-rate", "3e-3", "--log-every", "1",
            "--no-progress", "--eval-fraction", "0.2", "--eval-num-prompts", "4", *extra]


TRL_METRICS = ("reward", "reward_std", "frac_reward_zero_std", "kl", "entropy",
               "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
               "completions/mean_length", "completions/clipped_ratio", "loss", "lr",
               "tokens_per_sec", "elapsed_s")


def capture(monkeypatch) -> dict:
    from preflab.rl import common
    from preflab.rl import roles as roles_module

    captured: dict = {}

    def wrapper(*args, **kwargs):
        roles, reward = roles_module.build_roles(*args, **kwargs)
        captured["roles"] = roles
        modules = ([roles.policy, roles.reference, *roles.reward_models]
                   if roles.mode == "classic" else [roles.peft])
        captured["start"] = {id(p): p.detach().clone() for m in modules for p in m.parameters()}
        return roles, reward

    monkeypatch.setattr(common, "build_roles", wrapper)
    return captured


def changed(captured, params) -> list[bool]:
    return [not torch.equal(captured["start"][id(p)], p.detach()) for p in params]


def rows_of(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("module", [rloo, grpo])
def test_three_roles_classic(module, tiny_model_dir, prompt_files, tmp_path, monkeypatch):
    """Policy, reference and reward, no value model: the policy moves, the others do not; the
    bytes per role are those of the loaded parameters; TRL's metric names are logged."""
    data, rewards_py = prompt_files
    captured = capture(monkeypatch)
    out = tmp_path / module.__name__.rsplit(".", 1)[1]
    assert module.main(group_args(tiny_model_dir, data, out, f"{rewards_py}:positive",
                                  "--max-steps", "3", "--gold-reward",
                                  f"{rewards_py}:positive")) == 0
    roles = captured["roles"]
    assert not roles.has_value
    rows = rows_of(out)
    train = [r for r in rows if "loss" in r]
    assert len(train) == 3
    for row in train:
        assert set(TRL_METRICS) <= row.keys()
        assert "rewards/positive/mean" in row
    assert train[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference at first
    assert {"eval/gold_reward", "eval/proxy_reward", "eval/kl"} <= rows[-1].keys()
    assert all(changed(captured, roles.policy.parameters()))
    assert not any(changed(captured, roles.reference.parameters()))
    summary = json.loads((out / "summary.json").read_text())
    tb = summary["tensor_bytes"]
    assert set(tb) == {"policy", "reference", "reward"}  # three roles; a function holds no bytes
    policy_bytes = sum(p.numel() * p.element_size() for p in roles.policy.parameters())
    assert tb["policy"]["total"] == 4 * policy_bytes
    assert tb["reference"]["params"] == policy_bytes and tb["reward"]["total"] == 0
    assert summary["num_generations"] == 4
    config = (out / "config.yaml").read_text()
    assert f"command: {out.name}" in config


@pytest.mark.parametrize(("module", "mode"), [(rloo, []), (grpo, []),
                                         (rloo, ["--memory-mode", "shared", "--lora-rank", "2"])],
                         ids=["rloo", "grpo", "rloo-shared"])
def test_single_pass_gives_the_update_of_separate_passes(module, mode, tiny_model_dir,
                                                         prompt_files, tmp_path):
    """One pass of one minibatch in one micro-batch: the update's policy pass stands in for
    the rollout's. The weights and logged figures equal those of the same run in micro-batches
    of 8, which takes the separate no-grad pass (RLOO's KL in the reward, GRPO's in the loss)."""
    data, rewards_py = prompt_files
    runs = {}
    for name, size in (("single", "16"), ("separate", "8")):
        out = tmp_path / name
        assert module.main(group_args(tiny_model_dir, data, out, f"{rewards_py}:positive",
                                      "--max-steps", "3", "--num-iterations", "1",
                                      "--num-minibatches", "1", "--batch-size", size,
                                      "--kl-coef", "0.1", "--eval-every", "0", *mode)) == 0
        runs[name] = out
    flags = [json.loads((runs[k] / "summary.json").read_text())["single_pass"] for k in runs]
    assert flags == [True, False]
    name = "final/adapter/adapter_model.safetensors" if mode else "final/model.safetensors"
    a, b = (load_file(runs[k] / name) for k in ("single", "separate"))
    assert_same_update(a, b, lr=3e-3, steps=3, atol=1e-4)
    rows = {k: [r for r in rows_of(v) if "loss" in r] for k, v in runs.items()}
    for key in ("kl", "entropy", "loss", "advantages/std"):
        assert [r[key] for r in rows["single"]] == pytest.approx(
            [r[key] for r in rows["separate"]], abs=1e-5, rel=1e-4), key
    # the policy moved (a real comparison); an adapter's B matrices start at zero
    assert moved(a, None if mode else load_file(tiny_model_dir / "model.safetensors"))


def test_shared_mode_holds_one_base(tiny_model_dir, prompt_files, tmp_path, monkeypatch):
    """--memory-mode shared: the policy is a LoRA adapter, the reference the base with adapters
    off (no bytes), the reward an adapter from a LoRA reward model on the same base."""
    from preflab.algorithms import rm
    from tests.test_rm import preference_records

    data, rewards_py = prompt_files
    pairs = write_jsonl(tmp_path / "pairs.jsonl", preference_records(32))
    assert rm.main(["--model", str(tiny_model_dir), "--data", str(pairs), "--output-dir",
                    str(tmp_path / "rm"), "--max-steps", "4", "--lora-rank", "1",
                    "--no-progress", "--max-length", "32", "--eval-fraction", "0"]) == 0
    captured = capture(monkeypatch)
    out = tmp_path / "shared"
    assert grpo.main(group_args(tiny_model_dir, data, out, str(tmp_path / "rm"), "--max-steps",
                                "2", "--memory-mode", "shared", "--lora-rank", "2")) == 0
    roles = captured["roles"]
    assert roles.mode == "shared" and not roles.has_value
    assert set(roles.peft.peft_config) == {"default"}  # the reward adapter is gone at the end
    base = [p for n, p in roles.peft.named_parameters() if "lora_" not in n]
    assert not any(changed(captured, base))
    tb = json.loads((out / "summary.json").read_text())["tensor_bytes"]
    assert set(tb) == {"policy", "reference", "reward"}
    assert tb["reference"]["total"] == 0
    size = lambda params: sum(p.numel() * p.element_size() for p in params)  # noqa: E731
    base_bytes = size(base)
    adapter = size(p for n, p in roles.peft.named_parameters() if "lora_" in n)
    # one base, counted once (with the policy), plus the trained adapter and its AdamW state
    assert tb["policy"] == {"params": base_bytes + adapter, "grads": adapter,
                            "optimizer": 2 * adapter, "total": base_bytes + 4 * adapter}
    assert 0 < tb["reward"]["total"] < base_bytes / 4  # a rank-1 adapter and a scalar head


def test_resume_matches_an_uninterrupted_run(tiny_model_dir, prompt_files, tmp_path):
    data, rewards_py = prompt_files
    reward = f"{rewards_py}:positive"
    full, part = tmp_path / "full", tmp_path / "part"
    assert rloo.main(group_args(tiny_model_dir, data, full, reward, "--max-steps", "4")) == 0
    assert rloo.main(group_args(tiny_model_dir, data, part, reward, "--max-steps", "4",
                                "--save-every", "2")) == 0
    import shutil

    shutil.rmtree(part / "final")
    shutil.rmtree(part / "checkpoints" / "step-4", ignore_errors=True)
    (part / "summary.json").unlink()
    assert rloo.main(group_args(tiny_model_dir, data, part, reward, "--max-steps", "4",
                                "--save-every", "2", "--resume")) == 0
    a = load_file(full / "final/model.safetensors")
    b = load_file(part / "final/model.safetensors")
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(("command", "flag", "value", "says"), [
    ("rloo", "--num-minibatches", "3", "must be a multiple of --num-minibatches"),
    ("grpo", "--num-generations", "1", "--num-generations must be at least 2; got 1"),
    ("grpo", "--scale-rewards", "sometimes", "choose from 'group', 'batch', 'none'"),
    ("rloo", "--importance-sampling-level", "word", "choose from 'sequence', 'token'"),
    ("grpo", "--top-p", "0.9", "--top-p below 1 is refused"),
])
def test_bad_settings_exit_2_naming_the_flag(command, flag, value, says, tiny_model_dir,
                                             prompt_files, tmp_path, capsys):
    from preflab.cli import main

    data, rewards_py = prompt_files
    base = group_args(tiny_model_dir, data, tmp_path / "x", f"{rewards_py}:positive")
    try:
        code = main([command, *base, flag, value])
    except SystemExit as exc:  # argparse's own refusal of an unknown choice
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


UPDATE_SCRIPT = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
import torch
from transformers import AutoModelForCausalLM
from preflab.rl.loop import update
from functools import partial
from preflab.rl.roles import _forward_token_logps
from preflab.rl.tensors import pack_rollout
from preflab.runtime import distributed
from preflab.training import session
from preflab.runtime.precision import MODES

model_dir, out = sys.argv[1], Path(sys.argv[2])
ctx = distributed.setup("cpu")
results = {}
for aggregation, method in (("token", "grpo"), ("sequence", "rloo"), ("fixed", "grpo")):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir).train()
    g, V = torch.Generator().manual_seed(1), model.config.vocab_size
    prompts = [[1] + torch.randint(5, V, (int(n),), generator=g).tolist()
               for n in torch.randint(1, 4, (8,), generator=g)]
    responses = [torch.randint(5, V, (int(n),), generator=g).tolist()
                 for n in torch.randint(1, 7, (8,), generator=g)]  # unequal tokens per rank
    advantages = torch.randn(8, generator=g)
    rows = slice(ctx.rank * 4, ctx.rank * 4 + 4) if ctx.enabled else slice(0, 8)
    batch = pack_rollout(prompts[rows], responses[rows], pad_token_id=0, eos_token_id=2)
    with torch.no_grad():
        old = {"logprobs": _forward_token_logps(
            model, batch["input_ids"], batch["attention_mask"],
            keep_from=batch["context_length"] - 1, scored=batch["response_mask"]).logps}
    old["ref_logprobs"] = old["logprobs"] - 0.1
    cfg = SimpleNamespace(loss_aggregation=aggregation, importance_sampling_level="token",
                          kl_coef=0.05, num_minibatches=1, num_iterations=3, batch_size=2,
                          clip_range=0.2, clip_range_high=0.0, response_length=6,
                          temperature=1.0, max_grad_norm=1.0, nonfinite="stop")
    run = session.Run(config=cfg, command=method, ctx=ctx, device=torch.device("cpu"),
                      precision=MODES["fp32"], dir=out)
    roles = SimpleNamespace(trainable=model,
                            policy_token_logps=partial(_forward_token_logps, model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    mod = __import__(f"preflab.algorithms.{method}", fromlist=["METHOD"])
    update(roles, optimizer, scheduler, batch, old, {"advantages": advantages[rows]}, cfg,
           mod.GROUP, run, torch.Generator().manual_seed(2), lambda: None)
    results[aggregation] = {k: v.tolist() for k, v in model.state_dict().items()}
if ctx.rank == 0:
    (out / ("two.json" if ctx.enabled else "one.json")).write_text(json.dumps(results))
distributed.teardown(ctx)
distributed.exit_rank(0)
"""


def test_two_processes_give_the_update_of_one(tiny_model_dir, tmp_path):
    """The same 8 completions (unequal lengths), split 4 + 4 over 2 gloo processes, give the
    weights of 1 process holding all 8, for each loss aggregation: the loss is normalised by
    the token or completion count over every process."""
    from tests.test_rm import one_and_two_processes

    a, b = one_and_two_processes(tmp_path, UPDATE_SCRIPT, [str(tiny_model_dir), str(tmp_path)])
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    for aggregation in ("token", "sequence", "fixed"):
        moved = False
        for key, value in a[aggregation].items():
            got, want = torch.tensor(b[aggregation][key]), torch.tensor(value)
            torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
            moved |= key in start and not torch.allclose(want, start[key])
        assert moved, aggregation


@pytest.mark.parametrize(("module", "flag"), [(rloo, "--normalize-advantages"),
                                              (grpo, "--scale-rewards=batch")])
def test_torchrun_two_processes_run_the_command(module, flag, tiny_model_dir, prompt_files,
                                                tmp_path):
    """Each process samples its own prompts' groups; the batch-wide statistics (RLOO's
    normalisation, GRPO's batch scale) and the loss's counts are reduced over both."""
    from tests.test_rm import torchrun

    data, rewards_py = prompt_files
    name = module.__name__.rsplit(".", 1)[1]
    out = tmp_path / "two"
    result = torchrun(name, group_args(tiny_model_dir, data, out,
                                                 f"{rewards_py}:positive", "--max-steps", "2",
                                                 flag))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for r in rows_of(out) if "loss" in r]
    assert [r["episode"] for r in rows] == [32, 64]  # 4 prompts x 4 completions x 2 processes
    assert (out / "final/model.safetensors").exists()


# --- compare ----------------------------------------------------------------------------------------

def test_the_quick_comparison_includes_rloo_and_grpo(quick):
    """The shared quick run (tests/conftest.py) adds both on the RLHF road: each shares PPO's
    reward model, finishes, is scored, and shows in the runs table, the memory chart (three
    roles, no value), the frontier and the proxy-against-gold figure's runs."""
    out, _, _ = quick
    results = json.loads((out / "results.json").read_text())
    runs = {r["method"]: r for r in results["runs"] if r["experiment"] == "main"}
    report = (out / "report.md").read_text()
    for method, label in (("rloo", "RLOO (no critic)"), ("grpo", "GRPO (no critic)")):
        run = runs[method]
        assert run["status"] == "done" and "eval/gold_reward" in run["score"]
        assert run["road"] == "rlhf"
        assert [results["stages"][k]["command"] for k in run["stages"]] == ["rm", method]
        assert run["stages"][0] == runs["ppo"]["stages"][0]  # the same reward-model run
        config = next(c for c in results["memory"]["configs"] if c["method"] == method)
        assert set(config["roles"]) == {"policy", "reference", "reward"}
        assert config["roles"]["reward"]["total"] > 0
        assert label in results["frontier"]["points"]
        assert f"| {label} | done |" in report
    ppo = next(c for c in results["memory"]["configs"] if c["method"] == "ppo")
    rloo_cfg = next(c for c in results["memory"]["configs"] if c["method"] == "rloo")
    assert rloo_cfg["total"] < ppo["total"]  # no value model, no value optimizer state
