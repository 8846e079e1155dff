"""Reward model training on a tiny random Llama: the loss terms, accuracy rising, the saved
model loading as AutoModelForSequenceClassification and scoring as preflab scores."""

from __future__ import annotations

import json
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from preflab.algorithms import rm
from preflab.config import parse_config
from preflab.rewards import RewardModel
from tests.sft_data import write_jsonl

GOOD, BAD = ["great", "good", "fun", "fine"], ["bad", "awful", "boring"]
FAST = ["--no-progress", "--batch-size", "8", "--eval-fraction", "0.2", "--max-length", "32",
        "--log-every", "10"]


def preference_records(n: int = 160, seed: int = 0) -> list[dict]:
    """Chosen praises, rejected pans: learnable from one word."""
    rng = random.Random(seed)
    return [{"prompt": f"the {rng.choice(['movie', 'film', 'plot', 'story'])} was",
             "chosen": f"{rng.choice(GOOD)} and {rng.choice(GOOD)}",
             "rejected": f"{rng.choice(BAD)} and {rng.choice(BAD)}"} for _ in range(n)]


def run_rm(model_dir, data, out, *extra) -> dict:
    args = ["--model", str(model_dir), "--data", str(data), "--output-dir", str(out), *FAST, *extra]
    assert rm.main(args) == 0
    return json.loads((Path(out) / "summary.json").read_text())


def eval_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval/accuracy" in r]


def test_pair_step_bradley_terry_margin_and_centering():
    """r_w = 2, r_l = 1: BT loss -log sigmoid(1) = log(1 + e^-1); margin 0.5 gives
    log(1 + e^-0.5); centering adds coef * (2 + 1)^2."""
    scores = torch.tensor([2.0, 1.0])  # rows: chosen, rejected (one pair)
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long),
             "attention_mask": torch.ones(2, 3, dtype=torch.long), "batch_size": 1}
    scorer = lambda ids, mask: scores  # noqa: E731

    def loss(*flags) -> float:
        cfg = parse_config(rm.RMConfig, ["--model", "m", "--data", "d", "--output-dir", "o",
                                         *flags], prog="rm")
        losses, stats = rm.pair_step(scorer, batch, cfg, torch.device("cpu"))
        assert stats[3].item() == 1.0 and stats[4].item() == 1.0  # margin 1, ranked right
        return losses.item()

    assert loss() == pytest.approx(math.log1p(math.exp(-1.0)))
    assert loss("--margin", "0.5") == pytest.approx(math.log1p(math.exp(-0.5)))
    assert loss("--center-rewards-coef", "0.01") == pytest.approx(
        math.log1p(math.exp(-1.0)) + 0.01 * 9.0)


def test_rm_trains_and_final_loads_as_sequence_classifier(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_records())
    out = tmp_path / "rm"
    summary = run_rm(tiny_model_dir, data, out, "--max-steps", "30", "--learning-rate", "3e-3")
    rows = eval_rows(out)
    assert rows[0]["eval/accuracy"] < 0.9 and rows[-1]["eval/accuracy"] >= 0.95
    assert rows[-1]["eval/margin"] > rows[0]["eval/margin"] + 1.0
    train_row = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
    assert {"loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "lr"} <= train_row.keys()

    model = AutoModelForSequenceClassification.from_pretrained(out / "final")
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    n_params = sum(p.numel() for p in model.parameters())
    reward = summary["tensor_bytes"]["reward"]
    assert reward["params"] == 4 * n_params and reward["optimizer"] == 2 * reward["params"]

    # Hugging Face's pooled logits (right padding, pad != EOS) are preflab's score.
    scorer = RewardModel.from_pretrained(str(out / "final"))
    prompts, completions = ["the movie was", "the plot was"], [" great and fun", " awful"]
    ours = scorer(prompts, completions)
    rows_ids = [scorer.encode(p, c) for p, c in zip(prompts, completions)]
    width = max(map(len, rows_ids))
    pad = scorer.tokenizer.pad_token_id
    ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows_ids])
    theirs = model(input_ids=ids, attention_mask=(ids != pad).long()).logits.squeeze(-1)
    assert ours == pytest.approx(theirs.tolist(), abs=1e-5)
    assert ours[0] > ours[1]


def test_rm_lora_saves_adapter_with_head(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_records())
    out = tmp_path / "rm"
    summary = run_rm(tiny_model_dir, data, out, "--max-steps", "20", "--learning-rate", "1e-2",
                     "--lora-rank", "4")
    assert eval_rows(out)[-1]["eval/accuracy"] >= 0.9
    adapter = load_file(out / "final/adapter/adapter_model.safetensors")
    assert any(k.endswith("score.weight") for k in adapter)  # the head travels with the adapter
    config = json.loads((out / "final/adapter/adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == Path(tiny_model_dir)
    trainable = summary["tensor_bytes"]["reward"]["grads"]
    assert trainable == sum(t.numel() * 4 for t in adapter.values())
    AutoModelForSequenceClassification.from_pretrained(out / "final")  # merged, loadable


def free_port() -> int:
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(module: str, args: list[str]) -> subprocess.CompletedProcess:
    """``preflab <command> args`` in 2 CPU processes (gloo) under torchrun, as a user runs it."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
           "-m", "preflab.cli", module, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def accelerate_launch(module: str, args: list[str]) -> subprocess.CompletedProcess:
    """``preflab <command> args`` in 2 CPU processes under ``accelerate launch --multi_gpu``
    (``--cpu`` would silently start one process)."""
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(free_port()), "-m", "preflab.cli", module, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def one_and_two_processes(tmp_path: Path, code: str, args: list[str]) -> tuple[dict, dict]:
    """Run the script ``code`` (which writes ``one.json`` alone, ``two.json`` as rank 0 of 2)
    in 1 process, then in 2 gloo processes under torchrun; return both JSON results."""
    script = tmp_path / "script.py"
    script.write_text(code)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for cmd in ([sys.executable, str(script), *args],
                [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                 "--master-addr", "127.0.0.1", "--master-port", str(free_port()), str(script),
                 *args]):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
    return tuple(json.loads((tmp_path / name).read_text()) for name in ("one.json", "two.json"))


@pytest.mark.parametrize("fsdp", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_rm_torchrun_two_processes_match_one(fsdp, tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "pairs.jsonl", preference_records(64))
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "4",
              "--learning-rate", "3e-3", "--no-progress", "--max-length", "32",
              "--eval-fraction", "0.2"]
    assert rm.main(common + ["--output-dir", str(tmp_path / "one"), "--batch-size", "8"]) == 0
    result = torchrun("rm", common + [*fsdp, "--output-dir", str(tmp_path / "two"),
                                                "--batch-size", "4", "--eval-batch-size", "5"])
    assert result.returncode == 0, result.stderr[-3000:]
    one = load_file(tmp_path / "one/final/model.safetensors")
    two = load_file(tmp_path / "two/final/model.safetensors")
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=2e-5, rtol=1e-4)
    if fsdp:  # each process held about half of the weights, gradients and AdamW state
        sizes = [json.loads((tmp_path / d / "summary.json").read_text())["tensor_bytes"]
                 ["reward"]["total"] for d in ("two", "one")]
        assert sizes[0] < 0.6 * sizes[1]
        # the sharded scorer's checkpoint (the model inside it, gathered) resumes exactly
        again = torchrun("rm", common + [*fsdp, "--output-dir", str(tmp_path / "two"),
                                                   "--batch-size", "4", "--eval-batch-size", "5",
                                                   "--save-every", "2", "--overwrite"])
        assert again.returncode == 0, again.stderr[-3000:]
        first = load_file(tmp_path / "two/final/model.safetensors")
        resumed = torchrun("rm", common + [*fsdp, "--output-dir", str(tmp_path / "two"),
                                                     "--batch-size", "4", "--eval-batch-size", "5",
                                                     "--save-every", "2", "--resume"])
        assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-3000:]
        last = load_file(tmp_path / "two/final/model.safetensors")
        for key in first:
            torch.testing.assert_close(last[key], first[key], atol=1e-6, rtol=1e-5)
