"""The same command under torchrun: 2 CPU processes (gloo) give the 1-process result."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from preflab.algorithms import sft
from tests.sft_data import sft_records, write_jsonl


def test_torchrun_two_processes_match_one(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", sft_records())
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "4",
              "--learning-rate", "3e-3", "--no-progress", "--max-length", "32", "--eval-fraction", "0.2"]
    assert sft.main(common + ["--output-dir", str(tmp_path / "one"), "--batch-size", "4"]) == 0
    with socket.socket() as sock:  # a free port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(port),
           "-m", "preflab.cli", "sft", *common, "--output-dir", str(tmp_path / "two"), "--batch-size", "2",
           "--save-every", "2"]  # checkpoints gather every rank's RNG state
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    one = load_file(tmp_path / "one/final/model.safetensors")
    two = load_file(tmp_path / "two/final/model.safetensors")
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", [
    [],  # a frozen copy of the model
    ["--precompute-ref"],  # the reference's log-probs computed once, the copy freed
    ["--lora-rank", "2"],  # the base with the adapter switched off
    ["--loss", "simpo"],  # no reference
], ids=["copy", "precomputed", "lora-adapters-off", "reference-free"])
def test_dpo_torchrun_each_reference_mode_matches_one_process(mode, tiny_model_dir, tmp_path):
    """2 gloo processes with half the batch each give the weights of 1 process with all of it,
    wherever the reference lives."""
    from preflab.algorithms import dpo
    from tests.test_rm import preference_records, torchrun

    data = write_jsonl(tmp_path / "pairs.jsonl", preference_records(32))
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "3",
              "--learning-rate", "3e-3", "--no-progress", "--max-length", "32",
              "--eval-fraction", "0", *mode]
    assert dpo.main(common + ["--output-dir", str(tmp_path / "one"), "--batch-size", "8"]) == 0
    result = torchrun(tmp_path, "dpo", common + ["--output-dir", str(tmp_path / "two"),
                                                 "--batch-size", "4"])
    assert result.returncode == 0, result.stderr[-3000:]
    one = load_file(tmp_path / "one/final/model.safetensors")
    two = load_file(tmp_path / "two/final/model.safetensors")
    start = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(one[k], start[k]) for k in one)
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("command", ["sft", "dpo"])
def test_accelerate_launch_two_processes_match_one(command, tiny_model_dir, tmp_path):
    """``accelerate launch --multi_gpu --num_processes 2`` on a CPU machine starts 2 gloo
    processes (``--cpu`` would silently start one): the run records world size 2, and its
    weights equal 1 process with the whole batch."""
    import os

    from preflab.algorithms import dpo
    from tests.test_rm import free_port, preference_records

    if command == "sft":
        data = write_jsonl(tmp_path / "train.jsonl", sft_records())
    else:
        data = write_jsonl(tmp_path / "pairs.jsonl", preference_records(32))
    common = ["--model", str(tiny_model_dir), "--data", str(data), "--max-steps", "3",
              "--learning-rate", "3e-3", "--no-progress", "--max-length", "32",
              "--eval-fraction", "0"]
    module = sft if command == "sft" else dpo
    assert module.main(common + ["--output-dir", str(tmp_path / "one"), "--batch-size", "8"]) == 0
    script = tmp_path / "run.py"
    script.write_text(f"import sys\nfrom preflab.algorithms import {command}\n"
                      f"sys.exit({command}.main(sys.argv[1:]))\n")
    port = free_port()
    launcher = Path(sys.executable).with_name("accelerate")
    cmd = [str(launcher), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
           str(script), *common, "--output-dir", str(tmp_path / "two"), "--batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "two/summary.json").read_text())
    assert summary["world_size"] == 2
    one = load_file(tmp_path / "one/final/model.safetensors")
    two = load_file(tmp_path / "two/final/model.safetensors")
    for key in one:
        torch.testing.assert_close(one[key], two[key], atol=2e-5, rtol=1e-4)
