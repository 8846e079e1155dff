"""SFT end to end on a tiny random Llama: training, saving, LoRA, formats, resume, accumulation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from preflab.algorithms import sft
from tests.sft_data import conversational_records, sft_records, write_jsonl

FAST = ["--log-every", "5", "--no-progress", "--learning-rate", "3e-3", "--batch-size", "8",
        "--eval-fraction", "0.2", "--max-length", "32"]


def run_sft(model_dir, data, out, *extra) -> dict:
    args = ["--model", str(model_dir), "--data", str(data), "--output-dir", str(out), *FAST, *extra]
    assert sft.main(args) == 0
    return json.loads((Path(out) / "summary.json").read_text())


def eval_losses(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["eval/loss"] for r in rows if "eval/loss" in r]


def check_generates(final: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(final)
    tokenizer = AutoTokenizer.from_pretrained(final)
    ids = tokenizer("the movie was", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] > ids.shape[1]


def test_sft_trains_saves_and_generates(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", sft_records())
    out = tmp_path / "run"
    summary = run_sft(tiny_model_dir, data, out, "--max-steps", "20")
    losses = eval_losses(out)
    assert len(losses) >= 2 and losses[-1] < losses[0] - 0.5
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "README.md", "final/config.json"):
        assert (out / name).exists(), name
    assert summary["steps"] == 20 and summary["tokens"] > 0
    policy = summary["tensor_bytes"]["policy"]
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(out / "final").parameters())
    assert policy["params"] == 4 * n_params  # float32
    assert policy["grads"] == policy["params"]
    assert policy["optimizer"] == 2 * policy["params"]  # AdamW: two moments
    assert summary["peak_rss_bytes"] > 0
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[1])
    assert {"step", "loss", "lr", "tokens_per_sec", "elapsed_s"} <= row.keys()
    check_generates(out / "final")


def test_sft_lora_saves_adapter_and_merged(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", sft_records())
    out = tmp_path / "run"
    summary = run_sft(tiny_model_dir, data, out, "--max-steps", "20", "--lora-rank", "8",
                      "--learning-rate", "1e-2")
    losses = eval_losses(out)
    assert losses[-1] < losses[0]
    assert (out / "final/adapter/adapter_config.json").exists()
    policy = summary["tensor_bytes"]["policy"]
    adapter = load_file(out / "final/adapter/adapter_model.safetensors")
    adapter_bytes = sum(t.numel() * 4 for t in adapter.values())
    assert policy["optimizer"] == 2 * adapter_bytes  # only adapters have Adam moments
    assert policy["grads"] == adapter_bytes
    merged = AutoModelForCausalLM.from_pretrained(out / "final")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    check_generates(out / "final")


def test_sft_conversational_and_parquet(tiny_model_dir, tmp_path):
    conv = write_jsonl(tmp_path / "chat.jsonl", conversational_records())
    out = tmp_path / "chat"
    run_sft(tiny_model_dir, conv, out, "--max-steps", "20")
    assert eval_losses(out)[-1] < eval_losses(out)[0]

    records = sft_records()
    table = pa.table({k: [r[k] for r in records] for k in ("prompt", "completion")})
    pq.write_table(table, tmp_path / "train.parquet")
    out = tmp_path / "pq"
    run_sft(tiny_model_dir, tmp_path / "train.parquet", out, "--max-steps", "20")
    assert eval_losses(out)[-1] < eval_losses(out)[0]


def test_grad_accum_1x8_equals_8x1(tiny_model_dir, tmp_path):
    """Same examples per step, loss normalised over the whole batch: same weights."""
    data = write_jsonl(tmp_path / "train.jsonl", sft_records())
    a = tmp_path / "a"
    b = tmp_path / "b"
    run_sft(tiny_model_dir, data, a, "--max-steps", "3", "--batch-size", "8", "--grad-accum", "1")
    run_sft(tiny_model_dir, data, b, "--max-steps", "3", "--batch-size", "1", "--grad-accum", "8")
    wa = load_file(a / "final/model.safetensors")
    wb = load_file(b / "final/model.safetensors")
    start = load_file(Path(tiny_model_dir) / "model.safetensors")
    assert any(not torch.equal(wa[k], start[k]) for k in wa)  # it trained
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=2e-5, rtol=1e-4)


def test_kill_and_resume_matches_uninterrupted(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", sft_records(128))
    common = ["--max-steps", "60", "--save-every", "5", "--batch-size", "4"]
    full = tmp_path / "full"
    run_sft(tiny_model_dir, data, full, *common)

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "preflab.cli", "sft", "--model", str(tiny_model_dir),
           "--data", str(data), "--output-dir", str(out), *FAST, *common]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.time() + 120
    while not (out / "checkpoints/step-5").exists():
        assert proc.poll() is None, "the run ended before its first checkpoint"
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "final").exists(), "killed too late to test resuming"

    result = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout
    got = load_file(out / "final/model.safetensors")
    want = load_file(full / "final/model.safetensors")
    for key in want:
        assert torch.equal(got[key], want[key]), key
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # the log reads as one run


def test_existing_run_is_not_overwritten(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", sft_records())
    out = tmp_path / "run"
    run_sft(tiny_model_dir, data, out, "--max-steps", "2")
    before = (out / "metrics.jsonl").read_text()
    from preflab.errors import ConfigError

    with pytest.raises(ConfigError, match="already holds a run"):
        run_sft(tiny_model_dir, data, out, "--max-steps", "2")
    assert (out / "metrics.jsonl").read_text() == before
    run_sft(tiny_model_dir, data, out, "--max-steps", "2", "--overwrite")
