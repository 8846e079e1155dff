"""The same command under torchrun: 2 CPU processes (gloo) give the 1-process result."""

from __future__ import annotations

import socket
import subprocess
import sys

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
