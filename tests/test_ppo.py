"""PPO: the rollout tensors and per-token reward against hand-computed values, the KL
controller, and a few iterations end to end in both memory modes on a tiny random Llama
(what moves, what must not, the metric names, the bytes per role, kill and resume)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preflab.algorithms import ppo, rm
from preflab.errors import ConfigError
from preflab.rl import roles as roles_module
from preflab.rl.kl_control import AdaptiveKLController, FixedKLController
from preflab.rl.tensors import (
    apply_missing_eos_penalty,
    pack_rollout,
    per_token_rewards,
    truncate_after_eos,
)
from tests.sft_data import write_jsonl
from tests.test_rm import preference_records

EOS, PAD = 2, 0
STANDARD_METRICS = ("objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward",
                    "policy/approxkl", "policy/clipfrac", "loss/policy", "loss/value",
                    "val/clipfrac", "val/explained_variance", "time/generation", "time/scoring",
                    "time/training", "loss", "lr", "tokens_per_sec", "elapsed_s")
REWARD_FILE = '''
def positive(prompts, completions, **kwargs):
    return [sum(w in ("great", "good", "fun") for w in c.split()) / 2 for c in completions]

def brevity(prompts, completions):
    return [-len(c.split()) / 8 for c in completions]
'''


# --- rollout tensors and the per-token reward -------------------------------------------------

def test_truncate_after_eos_keeps_the_first_eos():
    assert truncate_after_eos([5, EOS, 7, EOS], EOS) == ([5, EOS], True)
    assert truncate_after_eos([5, 6, 7], EOS) == ([5, 6, 7], False)


def test_pack_rollout_left_pads_prompts_right_pads_responses_and_cuts_at_eos():
    batch = pack_rollout([[5, 6], [7]], [[8, EOS, 9], [10, 11, 12]],
                         pad_token_id=PAD, eos_token_id=EOS)
    assert batch["context_length"] == 2
    assert batch["input_ids"].tolist() == [[5, 6, 8, EOS, PAD], [PAD, 7, 10, 11, 12]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]]
    assert batch["response_mask"].tolist() == [[True, True, False], [True, True, True]]
    assert batch["ended"].tolist() == [True, False]


def test_missing_eos_penalty_replaces_the_score():
    scores = torch.tensor([0.7, 0.9, -0.2])
    ended = torch.tensor([True, False, True])
    assert apply_missing_eos_penalty(scores, ended, -1.0).tolist() == pytest.approx([0.7, -1.0, -0.2])
    assert apply_missing_eos_penalty(scores, ended, None) is scores


def test_per_token_reward_kl_at_every_token_score_at_the_last():
    """kl_coef 0.1. Row 0 (3 tokens): KL_t = logp - ref = [0.5, 0, -1] -> rewards
    [-0.05, 0, 0.1 + 10]. Row 1 (2 valid tokens): KL = [1, 0] -> [-0.1, 0 + 20, 0 (padding)]."""
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, 5.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    rewards, kl = per_token_rewards(logprobs, ref, torch.tensor([10.0, 20.0]), mask, kl_coef=0.1)
    torch.testing.assert_close(kl, torch.tensor([[0.5, 0.0, -1.0], [1.0, 0.0, 0.0]]))
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.0, 10.1], [-0.1, 20.0, 0.0]]))


def test_response_logps_match_a_token_by_token_loop(tiny_model_dir):
    """Left-padded prompts, right-padded responses, temperature 0.7: each response token's
    log-prob from the roles' pass (the fused head on the response window) equals
    log softmax(model(prefix)[-1] / 0.7) at that token, prefix unpadded."""
    from transformers import AutoModelForCausalLM

    from preflab.rl.roles import _forward_token_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompts, responses = [[1, 5, 6, 7], [1, 9]], [[10, 11, EOS], [12, 13, 14, 15]]
    batch = pack_rollout(prompts, responses, pad_token_id=PAD, eos_token_id=EOS)
    ids, mask, P = batch["input_ids"], batch["attention_mask"], batch["context_length"]
    with torch.no_grad():
        got = _forward_token_logps(model, ids, mask, keep_from=P - 1,
                                   scored=batch["response_mask"], temperature=0.7).logps
        for row, (p, r) in enumerate(zip(prompts, responses)):
            for t, token in enumerate(r):
                prefix = torch.tensor([p + r[:t]])
                want = torch.log_softmax(model(prefix).logits[0, -1] / 0.7, -1)[token]
                assert got[row, t].item() == pytest.approx(want.item(), abs=1e-4)


def test_the_head_runs_only_on_the_response_window(tiny_model_dir):
    """``keep_from`` gives the log-probs of the tokens after it: the same numbers as the
    whole sequence's, computed by the head on the positions from it to the end alone."""
    from transformers import AutoModelForCausalLM

    from preflab.models.fused_head import fused_head_supported
    from preflab.rl.roles import _forward_token_logps

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.tensor([[0, 0, 1, 5, 6, 7, 9, 2], [0, 1, 9, 10, 11, 12, 13, 2]])
    am = (ids != 0).long()
    am[1, 0] = 0
    assert fused_head_supported(model)  # its one check forward, before the hook counts
    seen = []  # the positions the LM head ran on, per call
    model.lm_head.register_forward_hook(lambda module, args, out: seen.append(args[0].shape[1]))
    with torch.no_grad():
        full = _forward_token_logps(model, ids, am).logps
        window = _forward_token_logps(model, ids, am, keep_from=3).logps
    assert full.shape[1] == 8 - 1 and window.shape[1] == 5 - 1
    assert seen == [8, 5]
    torch.testing.assert_close(window, full[:, 3:], atol=1e-5, rtol=1e-5)


def test_adaptive_kl_controller_follows_ziegler():
    """target 6, horizon 100, 10 responses: KL 9 -> error clipped to 0.2 -> x(1 + 0.02);
    KL 5.7 -> error -0.05 -> x(1 - 0.005). A fixed coefficient never moves."""
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=100)
    ctl.update(9.0, 10)
    assert ctl.value == pytest.approx(0.102)
    ctl.update(5.7, 10)
    assert ctl.value == pytest.approx(0.102 * 0.995)
    restored = AdaptiveKLController(0.5, target=6.0, horizon=100)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 10)
    assert fixed.value == 0.05


# --- end to end ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ppo_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo-data")
    prompts = [{"prompt": f"{d} {n} was"} for d in ("the", "a", "this", "that")
               for n in ("movie", "film", "plot", "story", "acting")]
    (root / "rewards.py").write_text(REWARD_FILE)
    return write_jsonl(root / "prompts.jsonl", prompts), root / "rewards.py"


@pytest.fixture(scope="module")
def lora_rm(tiny_model_dir, tmp_path_factory):
    """A reward model trained with LoRA (rank 1) on the tiny base: shareable in shared mode."""
    root = tmp_path_factory.mktemp("rm")
    data = write_jsonl(root / "pairs.jsonl", preference_records(64))
    assert rm.main(["--model", str(tiny_model_dir), "--data", str(data), "--output-dir",
                    str(root / "run"), "--max-steps", "8", "--lora-rank", "1", "--no-progress",
                    "--learning-rate", "1e-2", "--max-length", "32", "--eval-fraction", "0"]) == 0
    return root / "run"


def ppo_args(model, data, out, reward, *extra) -> list[str]:
    return ["--model", str(model), "--data", str(data), "--output-dir", str(out),
            "--reward", reward, "--rollout-batch-size", "8", "--num-minibatches", "2",
            "--ppo-epochs", "2", "--response-length", "6", "--batch-size", "8",
            "--learning-rate", "3e-3", "--log-every", "1", "--no-progress",
            "--eval-fraction", "0.2", *extra]


def assert_same_update(a: dict, b: dict, *, lr: float, steps: int, atol: float = 2e-5) -> None:
    """Two runs that differ only in float rounding (the order of sums) took the same updates.
    AdamW's early steps are close to lr x sign(gradient): where rounding flips the sign of a
    gradient near zero, an element moves by up to 2 lr per step. Such elements are rare; every
    tensor's others agree to ``atol``."""
    assert a.keys() == b.keys()
    for key in a:
        diff = (a[key].double() - b[key].double()).abs()
        off = diff > atol + 1e-4 * b[key].double().abs()
        assert off.double().mean() <= 0.005 and diff.max() <= 2 * lr * steps, (
            key, int(off.sum()), off.numel(), float(diff.max()))


def moved(final: dict, start: dict | None = None) -> bool:
    """Whether training changed the weights from ``start``; without it, ``final`` is a LoRA
    adapter, whose B matrices start at zero."""
    if start is None:
        start = {k: torch.zeros_like(t) for k, t in final.items() if "lora_B" in k}
        assert start, "no lora_B weights"
    return any(not torch.equal(final[k], t) for k, t in start.items())


def capture_roles(monkeypatch) -> dict:
    """Wrap build_roles to keep the roles and a copy of every parameter at the start."""
    captured: dict = {}

    def wrapper(*args, **kwargs):
        roles, reward = roles_module.build_roles(*args, **kwargs)
        captured["roles"] = roles
        captured["start"] = {id(p): p.detach().clone() for m in frozen_and_trained(roles)
                             for p in m.parameters()}
        return roles, reward

    from preflab.rl import common

    monkeypatch.setattr(common, "build_roles", wrapper)
    for cls in (roles_module.ClassicRoles, roles_module.SharedRoles):
        original = cls.save_value

        def save_value(self, out_dir, tokenizer, run, _original=original):
            captured["values_at_save"] = value_probe(self)
            return _original(self, out_dir, tokenizer, run)

        monkeypatch.setattr(cls, "save_value", save_value)
    return captured


VALUE_PROBE = torch.tensor([[1, 5, 6, 7, 9, 2], [0, 0, 1, 9, 10, 2]])


def value_probe(roles) -> torch.Tensor:
    mask = (VALUE_PROBE != 0).long()
    with torch.no_grad():
        return roles.values(VALUE_PROBE, mask) * mask


def assert_saved_value_matches(out: Path, want: torch.Tensor) -> None:
    """``final/value`` loads as a sequence classifier whose head gives the trained values."""
    from transformers import AutoModelForSequenceClassification

    from preflab.models.heads import token_values

    value = AutoModelForSequenceClassification.from_pretrained(out / "final/value").eval()
    mask = (VALUE_PROBE != 0).long()
    with torch.no_grad():
        got = token_values(value, VALUE_PROBE, mask) * mask
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def frozen_and_trained(roles) -> list[torch.nn.Module]:
    if roles.mode == "classic":
        return [roles.policy, roles.value, roles.reference, *roles.reward_models]
    return [roles.peft, roles.value_head]


def changed(captured, params) -> list[bool]:
    return [not torch.equal(captured["start"][id(p)], p.detach()) for p in params]


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def n_bytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def test_ppo_classic_four_models(tiny_model_dir, ppo_files, lora_rm, tmp_path, monkeypatch):
    data, rewards_py = ppo_files
    captured = capture_roles(monkeypatch)
    out = tmp_path / "classic"
    reward = f"{lora_rm}:0.5,{rewards_py}:positive:1.0"
    assert ppo.main(ppo_args(tiny_model_dir, data, out, reward, "--max-steps", "3",
                             "--gold-reward", f"{rewards_py}:positive", "--adaptive-kl")) == 0
    roles = captured["roles"]
    rows = metric_rows(out)
    train_rows = [r for r in rows if "loss" in r]
    assert len(train_rows) == 3
    for row in train_rows:
        assert set(STANDARD_METRICS) <= row.keys()
        assert {"objective/scores/run", "objective/scores/positive"} <= row.keys()
        assert all(torch.isfinite(torch.tensor(float(row[k]))) for k in ("loss", "loss/value"))
    assert train_rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # policy == reference
    assert train_rows[-1]["objective/kl_coef"] != train_rows[0]["objective/kl_coef"]  # adaptive
    assert {"eval/gold_reward", "eval/proxy_reward", "eval/kl"} <= rows[-1].keys()

    assert all(changed(captured, roles.policy.parameters()))  # full fine-tuning: every weight
    assert any(changed(captured, roles.value.parameters()))
    assert not any(changed(captured, roles.reference.parameters()))
    assert not any(changed(captured, [p for m in roles.reward_models for p in m.parameters()]))

    # Bytes per role against the parameters actually loaded (float32, AdamW: 2 moments).
    summary = json.loads((out / "summary.json").read_text())
    tb = summary["tensor_bytes"]
    assert set(tb) == {"policy", "value", "reward", "reference"}
    policy_bytes = n_bytes(roles.policy.parameters())
    assert tb["policy"] == {"params": policy_bytes, "grads": policy_bytes,
                            "optimizer": 2 * policy_bytes, "total": 4 * policy_bytes}
    value_bytes = n_bytes(roles.value.parameters())
    assert (tb["value"]["params"], tb["value"]["optimizer"]) == (value_bytes, 2 * value_bytes)
    assert tb["reward"]["params"] == n_bytes(roles.reward_models[0].parameters())
    assert tb["reference"]["params"] == policy_bytes and tb["reference"]["grads"] == 0
    # the article's picture: ~4P + ~4P + ~1P + 1P (value and reward lack the LM head)
    total = sum(r["total"] for r in tb.values())
    assert 8 * policy_bytes < total <= 10 * policy_bytes
    assert set(summary["time_s"]) == {"generation", "scoring", "forward", "training"}

    # final/value is the trained value model, loadable on its own.
    assert_saved_value_matches(out, captured["values_at_save"])

    # Swap the reward and continue from the trained policy and value: one command; the
    # reference stays the original model, so the KL to it starts above zero.
    cont = tmp_path / "continued"
    assert ppo.main(ppo_args(out / "final", data, cont, f"{rewards_py}:brevity", "--max-steps", "1",
                             "--ref-model", str(tiny_model_dir),
                             "--value-model", str(out / "final/value"))) == 0
    first = metric_rows(cont)
    assert first[0]["eval/kl"] > 0.01 and "objective/scores/brevity" in first[1]


def test_ppo_shared_one_base(tiny_model_dir, ppo_files, lora_rm, tmp_path, monkeypatch):
    data, rewards_py = ppo_files
    captured = capture_roles(monkeypatch)
    out = tmp_path / "shared"
    assert ppo.main(ppo_args(tiny_model_dir, data, out, f"{lora_rm}:1.0,{rewards_py}:positive:0.5",
                             "--max-steps", "2", "--memory-mode", "shared",
                             "--lora-rank", "1")) == 0
    roles = captured["roles"]
    base = [p for n, p in roles.peft.named_parameters() if "lora_" not in n]
    policy_adapter = [p for n, p in roles.peft.named_parameters() if ".default." in n]
    assert not any(changed(captured, base))  # the reference is the base: untouched
    assert any(changed(captured, policy_adapter))
    assert any(changed(captured, roles.value_head.parameters()))
    rows = metric_rows(out)
    assert set(STANDARD_METRICS) <= rows[1].keys() and "objective/scores/run" in rows[1]
    assert rows[1]["objective/kl"] == pytest.approx(0.0, abs=1e-5)

    tb = json.loads((out / "summary.json").read_text())["tensor_bytes"]
    adapter = load_file(out / "final/adapter/adapter_model.safetensors")
    a = sum(t.numel() * 4 for t in adapter.values())  # one adapter's bytes
    P = n_bytes(base)
    hidden = roles.value_head.weight.numel() * 4
    assert tb["policy"] == {"params": P + a, "grads": a, "optimizer": 2 * a, "total": P + 4 * a}
    assert tb["value"] == {"params": a + hidden, "grads": a + hidden, "optimizer": 2 * (a + hidden),
                           "total": 4 * (a + hidden)}  # the value adapter copies the reward's
    assert tb["reward"]["params"] == a + hidden and tb["reward"]["grads"] == 0
    assert tb["reference"]["total"] == 0
    assert_saved_value_matches(out, captured["values_at_save"])
    # A LoRA DPO run on the same base: base + adapter + its grads + 2 Adam moments; reference
    # is the base with adapters off (0 extra bytes).
    dpo = P + 4 * a
    assert sum(r["total"] for r in tb.values()) <= 1.3 * dpo


@pytest.mark.parametrize("mode", [[], ["--memory-mode", "shared", "--lora-rank", "2"]],
                         ids=["classic", "shared"])
def test_single_pass_gives_the_update_of_separate_passes(mode, tiny_model_dir, ppo_files, lora_rm,
                                                         tmp_path):
    """One epoch of one minibatch in one micro-batch: the update's own policy and value passes
    stand in for the rollout's (two forward passes fewer). The weights, values and logged
    figures equal those of the same run split into micro-batches of 4, which takes the
    separate no-grad passes."""
    data, rewards_py = ppo_files
    reward = f"{lora_rm}:0.5,{rewards_py}:positive:1.0"
    runs = {}
    for name, size in (("single", "8"), ("separate", "4")):
        out = tmp_path / name
        assert ppo.main(ppo_args(tiny_model_dir, data, out, reward, "--max-steps", "3",
                                 "--ppo-epochs", "1", "--num-minibatches", "1",
                                 "--batch-size", size, "--eval-every", "0", *mode)) == 0
        runs[name] = out
    summaries = {k: json.loads((v / "summary.json").read_text()) for k, v in runs.items()}
    assert (summaries["single"]["single_pass"], summaries["separate"]["single_pass"]) == (True, False)
    names = ["final/value/model.safetensors",
             "final/model.safetensors" if not mode else "final/adapter/adapter_model.safetensors"]
    for name in names:
        a, b = (load_file(runs[k] / name) for k in ("single", "separate"))
        assert_same_update(a, b, lr=3e-3, steps=3)
    rows = {k: [r for r in metric_rows(v) if "loss" in r] for k, v in runs.items()}
    for key in ("objective/kl", "objective/entropy", "loss/policy", "loss/value",
                "val/explained_variance", "policy/approxkl"):
        assert [r[key] for r in rows["single"]] == pytest.approx([r[key] for r in rows["separate"]],
                                                                 abs=1e-5, rel=1e-4), key
    # the policy moved (a real comparison); an adapter's B matrices start at zero
    start = None if mode else load_file(tiny_model_dir / "model.safetensors")
    assert moved(load_file(runs["single"] / names[1]), start)


def test_top_p_below_one_is_refused_for_training(tiny_model_dir, ppo_files, tmp_path):
    data, rewards_py = ppo_files
    with pytest.raises(ConfigError, match="--top-p below 1 is refused"):
        ppo.main(ppo_args(tiny_model_dir, data, tmp_path / "r", f"{rewards_py}:positive",
                          "--top-p", "0.9"))
    assert not (tmp_path / "r").exists()


def test_shared_mode_holds_a_full_reward_model_apart(tiny_model_dir, ppo_files, tmp_path, capsys):
    data, _ = ppo_files
    full_rm = tmp_path / "rm_full"
    assert rm.main(["--model", str(tiny_model_dir), "--data",
                    str(write_jsonl(tmp_path / "p.jsonl", preference_records(16))),
                    "--output-dir", str(full_rm), "--max-steps", "1", "--no-progress",
                    "--eval-fraction", "0", "--max-length", "32"]) == 0
    out = tmp_path / "shared"
    assert ppo.main(ppo_args(tiny_model_dir, data, out, str(full_rm), "--max-steps", "1",
                             "--memory-mode", "shared", "--lora-rank", "2")) == 0
    assert "held as a separate frozen model" in capsys.readouterr().out
    tb = json.loads((out / "summary.json").read_text())["tensor_bytes"]
    assert tb["reward"]["params"] > tb["value"]["params"]  # a whole model, not an adapter


def test_kill_mid_run_and_resume_matches_uninterrupted(tiny_model_dir, ppo_files, tmp_path):
    data, rewards_py = ppo_files
    common = ["--max-steps", "6", "--save-every", "2", "--response-length", "16"]
    full = tmp_path / "full"
    assert ppo.main(ppo_args(tiny_model_dir, data, full, f"{rewards_py}:positive", *common)) == 0

    out = tmp_path / "killed"
    cmd = [sys.executable, "-c", "import sys; from preflab.algorithms import ppo; "
           "sys.exit(ppo.main(sys.argv[1:]))",
           *ppo_args(tiny_model_dir, data, out, f"{rewards_py}:positive", *common)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 180
    while not (out / "checkpoints/step-2").exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # in iteration 3: generating, scoring or updating
    proc.wait()
    assert not (out / "final").exists(), "killed too late to test resuming"

    result = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout
    got = load_file(out / "final/model.safetensors")
    want = load_file(full / "final/model.safetensors")
    for key in want:
        assert torch.equal(got[key], want[key]), key
    rows, want_rows = metric_rows(out), metric_rows(full)
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps) and steps.count(3) == 1  # iteration 3 logged once
    assert rows[-1] == want_rows[-1]  # the final evaluation

    def same_run(row: dict) -> dict:  # all but the clock
        return {k: v for k, v in row.items() if not k.startswith(("time/", "memory/"))
                and k not in ("elapsed_s", "tokens_per_sec")}

    assert [same_run(r) for r in rows] == [same_run(r) for r in want_rows]


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_ppo_two_processes_under_each_launcher(launcher, tiny_model_dir, ppo_files, tmp_path):
    """Each process samples its own rollouts; gradients are averaged over the processes (the
    update itself is held to 1 process's by ``test_ppo_two_processes_give_the_update_of_one``)."""
    from tests.test_rm import accelerate_launch, torchrun

    data, rewards_py = ppo_files
    out = tmp_path / "two"
    launch = torchrun if launcher == "torchrun" else accelerate_launch
    result = launch("ppo", ppo_args(tiny_model_dir, data, out, f"{rewards_py}:positive",
                                    "--max-steps", "2", "--rollout-batch-size", "4"))
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [r for r in metric_rows(out) if "loss" in r]
    assert [r["episode"] for r in rows] == [8, 16]  # 4 prompts x 2 processes per iteration
    assert json.loads((out / "summary.json").read_text())["world_size"] == 2
    assert (out / "final/model.safetensors").exists()


PPO_UPDATE_SCRIPT = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
from preflab.algorithms.ppo import PPO
from preflab.losses import gae
from preflab.models.heads import token_values
from preflab.rl.common import global_whiten
from preflab.rl.loop import update
from functools import partial
from preflab.rl.roles import _forward_token_logps
from preflab.rl.tensors import pack_rollout, per_token_rewards, response_slice
from preflab.runtime import distributed
from preflab.training import session
from preflab.runtime.precision import MODES

model_dir, out = sys.argv[1], Path(sys.argv[2])
ctx = distributed.setup("cpu")
torch.manual_seed(0)
policy = AutoModelForCausalLM.from_pretrained(model_dir).train()
value = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1).train()
value.config.pad_token_id = 0
g, V = torch.Generator().manual_seed(1), policy.config.vocab_size
prompts = [[1] + torch.randint(5, V, (int(n),), generator=g).tolist()
           for n in torch.randint(1, 4, (8,), generator=g)]
responses = [torch.randint(5, V, (int(n),), generator=g).tolist()
             for n in torch.randint(1, 7, (8,), generator=g)]  # unequal tokens per rank
scores = torch.randn(8, generator=g)
rows = slice(ctx.rank * 4, ctx.rank * 4 + 4) if ctx.enabled else slice(0, 8)
batch = pack_rollout(prompts[rows], responses[rows], pad_token_id=0, eos_token_id=2)
P, mask = batch["context_length"], batch["response_mask"]
with torch.no_grad():
    ids, am = batch["input_ids"], batch["attention_mask"]
    logprobs = _forward_token_logps(policy, ids, am, keep_from=P - 1, scored=mask).logps
    old = {"logprobs": logprobs, "ref_logprobs": logprobs - 0.05,
           "values": response_slice(token_values(value, ids, am), P)}
cfg = SimpleNamespace(ppo_epochs=2, num_minibatches=1, batch_size=2, clip_range=0.2,
                      clip_range_value=0.2, vf_coef=0.1, temperature=1.0, max_grad_norm=1.0,
                      nonfinite="stop")
run = session.Run(config=cfg, command="ppo", ctx=ctx, device=torch.device("cpu"),
                  precision=MODES["fp32"], dir=out)
rewards, _ = per_token_rewards(old["logprobs"], old["ref_logprobs"], scores[rows], mask,
                               kl_coef=0.05)
rewards = global_whiten(rewards, mask, run, shift_mean=False)
advantages, returns = gae(rewards, old["values"], mask, gamma=1.0, gae_lambda=0.95)
advantages = global_whiten(advantages, mask, run)
trainable = torch.nn.ModuleDict({"policy": policy, "value": value})
roles = SimpleNamespace(trainable=trainable,
                        policy_token_logps=partial(_forward_token_logps, policy),
                        values=lambda ids, am: token_values(value, ids, am))
optimizer = torch.optim.AdamW(trainable.parameters(), lr=1e-3)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
update(roles, optimizer, scheduler, batch, old, {"advantages": advantages, "returns": returns},
       cfg, PPO, run, torch.Generator().manual_seed(2), lambda: None)
if ctx.rank == 0:
    state = {k: v.tolist() for k, v in trainable.state_dict().items()}
    (out / ("two.json" if ctx.enabled else "one.json")).write_text(json.dumps(state))
distributed.teardown(ctx)
distributed.exit_rank(0)
"""


def test_ppo_two_processes_give_the_update_of_one(tiny_model_dir, tmp_path):
    """The same 8 rollouts (unequal lengths), split 4 + 4 over 2 gloo processes, give the
    policy and value weights of 1 process holding all 8: the rewards and advantages are
    whitened with every process's mean and variance, and the loss is normalised by the token
    count over every process."""
    from tests.test_rm import one_and_two_processes

    a, b = one_and_two_processes(tmp_path, PPO_UPDATE_SCRIPT,
                                 [str(tiny_model_dir), str(tmp_path)])
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.allclose(torch.tensor(a[f"policy.{k}"]), v) for k, v in start.items())
    for key, value in a.items():
        torch.testing.assert_close(torch.tensor(b[key]), torch.tensor(value), atol=2e-5,
                                   rtol=1e-4)


@pytest.mark.parametrize("command", ["ppo", "rloo", "grpo"])
def test_fsdp_gives_the_weights_of_replicated_processes(command, tiny_model_dir, ppo_files,
                                                        tmp_path):
    """``--fsdp``: the policy (and PPO's value model) sharded over 2 gloo processes, each
    sampling its own rollouts in lockstep, give the weights of 2 processes holding whole
    copies (the same rollouts per rank). Each process holds half the policy's bytes. PPO also
    resumes from its step-1 checkpoint (two sharded models, one optimizer) to the same final
    weights."""
    from tests.test_rm import torchrun

    data, rewards_py = ppo_files

    def launch(out: Path, *extra: str) -> None:
        args = ppo_args(tiny_model_dir, data, out, f"{rewards_py}:positive", "--max-steps", "2",
                        "--rollout-batch-size", "4", "--eval-fraction", "0.2", *extra)
        if command != "ppo":  # 2 prompts x 2 completions, and no --ppo-epochs
            at = args.index("--ppo-epochs")
            args = [*args[:at], *args[at + 2:], "--num-generations", "2",
                    "--rollout-batch-size", "2"]
        result = torchrun(command, args)
        assert result.returncode == 0, result.stderr[-3000:]

    whole, sharded = tmp_path / "whole", tmp_path / "sharded"
    launch(whole)
    launch(sharded, "--fsdp", "--save-every", "1")
    parts = ["model.safetensors", *(["value/model.safetensors"] if command == "ppo" else [])]
    for part in parts:
        want, got = (load_file(d / "final" / part) for d in (whole, sharded))
        for key in want:
            torch.testing.assert_close(got[key], want[key], atol=1e-5, rtol=1e-4)
    sizes = [json.loads((d / "summary.json").read_text())["tensor_bytes"]["policy"]["total"]
             for d in (sharded, whole)]
    assert sizes[0] < 0.6 * sizes[1]
    assert metric_rows(sharded)[-1]["eval/kl"] == pytest.approx(metric_rows(whole)[-1]["eval/kl"],
                                                                 rel=1e-4, abs=1e-6)
    if command == "ppo":
        finished = {part: load_file(sharded / "final" / part) for part in parts}
        shutil.rmtree(sharded / "final")
        launch(sharded, "--fsdp", "--save-every", "1", "--resume")
        for part in parts:
            got = load_file(sharded / "final" / part)
            for key, want in finished[part].items():
                torch.testing.assert_close(got[key], want, atol=1e-6, rtol=1e-5)
