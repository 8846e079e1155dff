"""CPO (Xu et al. 2024): the loss worked by hand, its hyperparameter declared with it, the NLL
term the trainer adds, and `preflab dpo --loss cpo` end to end on a tiny model."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM

from preflab.algorithms import compared, dpo
from preflab.errors import ConfigError
from preflab.losses import LOSS_PARAMS, compute_direct_loss, cpo_loss, get_direct_loss
from preflab.models.logprobs import concatenated_forward
from preflab.training.direct import preference_step
from tests.sft_data import write_jsonl
from tests.test_dpo import pair_records


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def test_cpo_hand_values():
    """log pi(y_w) = -2, log pi(y_l) = -5 (summed), beta = 0.1: the logit is 0.1 * 3 = 0.3 and
    the loss -log sigmoid(0.3) = log(1 + e^-0.3) = log 1.7408182 = 0.5543552; rewards are
    beta * log pi: -0.2 and -0.5. Equal log-probs give log 2."""
    losses, chosen, rejected = cpo_loss(t(-2.0, -1.0), t(-5.0, -1.0), beta=0.1)
    torch.testing.assert_close(losses, t(0.5543552, math.log(2.0)))
    torch.testing.assert_close(chosen, t(-0.2, -0.1))
    torch.testing.assert_close(rejected, t(-0.5, -0.1))
    assert not chosen.requires_grad


def test_cpo_is_declared_with_its_alpha():
    spec = get_direct_loss("cpo")
    assert not spec.needs_reference and spec.logps == "sum" and spec.adds_sft_term
    assert spec.params == {"cpo_alpha": LOSS_PARAMS["cpo_alpha"]}
    assert LOSS_PARAMS["cpo_alpha"].default == 1.0
    assert spec.sft_weight_of({"cpo_alpha": 0.25}) == 0.25
    out = compute_direct_loss(spec, policy_chosen_logps=t(-2.0), policy_rejected_logps=t(-5.0),
                              beta=0.1, cpo_alpha=0.5)
    torch.testing.assert_close(out.losses, t(0.5543552))  # the NLL term is the trainer's
    with pytest.raises(ConfigError, match="cpo_alpha"):  # another loss ignores it: refused
        compute_direct_loss(get_direct_loss("sigmoid"), policy_chosen_logps=t(-2.0),
                            policy_rejected_logps=t(-5.0), ref_chosen_logps=t(-2.0),
                            ref_rejected_logps=t(-2.0), beta=0.1, cpo_alpha=0.5)
    with pytest.raises(ConfigError, match="out of range"):
        compute_direct_loss(spec, policy_chosen_logps=t(-2.0), policy_rejected_logps=t(-5.0),
                            beta=0.1, cpo_alpha=-1.0)


@pytest.mark.parametrize("alpha", [0.0, 1.0, 2.5])
def test_trainer_adds_alpha_times_the_chosen_nll(tiny_model_dir, alpha):
    """preference_step's loss = -log sigmoid(beta (sum log pi_w - sum log pi_l)) - alpha * (mean
    token log pi_w), each term computed here from the model's own log-probs."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (4, 9), generator=g)
    completion = torch.zeros(4, 9, dtype=torch.long)
    completion[:, 5:] = 1
    completion[[0, 2], 8] = 0  # completions of 3 and 4 tokens
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "completion_mask": completion, "batch_size": 2}
    params = {"label_smoothing": 0.0, "gamma": 0.5, "cpo_alpha": alpha}
    cfg = SimpleNamespace(beta=0.1, padding_free=False, loss_params=lambda: params, **params)
    losses, stats = preference_step(model, None, get_direct_loss("cpo"), cfg, batch, "train")
    with torch.no_grad():
        chosen, rejected = concatenated_forward(model, batch)
    preference = -torch.nn.functional.logsigmoid(0.1 * (chosen.sum - rejected.sum))
    expected = preference - alpha * chosen.mean
    torch.testing.assert_close(losses.detach(), expected, rtol=1e-5, atol=1e-5)
    tokens = completion[:2, 1:].sum(1).float()  # the chosen rows' scored tokens: 3 and 4
    torch.testing.assert_close(chosen.mean, chosen.sum / tokens)
    assert stats[0].item() == pytest.approx(expected.sum().item(), rel=1e-5)


def test_dpo_cpo_runs_without_a_reference_and_learns(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records())
    out = tmp_path / "cpo"
    args = ["--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(out),
            "--no-progress", "--log-every", "1", "--batch-size", "4", "--max-length", "32",
            "--learning-rate", "1e-2", "--warmup-ratio", "0", "--eval-fraction", "0.25",
            "--loss", "cpo", "--beta", "0.1", "--cpo-alpha", "0.5", "--max-steps", "12"]
    assert dpo.main(args) == 0
    summary = json.loads((Path(out) / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "loss" in r]
    assert summary["reference_mode"] == "none" and summary["loss"] == "cpo"
    assert summary["tensor_bytes"]["reference"]["total"] == 0
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"]
    assert "  cpo_alpha: 0.5" in (out / "config.yaml").read_text().splitlines()


def test_cpo_alpha_is_refused_with_another_loss(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", pair_records(8))
    with pytest.raises(ConfigError, match="does not use cpo_alpha"):
        dpo.main(["--model", str(tiny_model_dir), "--data", str(data), "--output-dir",
                  str(tmp_path / "x"), "--loss", "sigmoid", "--cpo-alpha", "0.5"])


def test_compare_runs_cpo_as_dpo_with_its_loss():
    method, entry = compared()["cpo"]
    assert method.name == "dpo" and entry.flags == {"loss": "cpo"} and entry.shape == "direct"
